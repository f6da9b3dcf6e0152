//! The GS1 Application Identifier table: one line per AI or AI range, in the notation of the GS1
//! General Specifications (section 3.2) and the GS1 Barcode Syntax Dictionary.
//!
//! A line is `ai("AI or LO-HI", "component component …", "title")`. A component is a
//! character set (`N` digits, `X` GS1 character set 82, `Y` character set 39, `Z` base64url)
//! with a fixed length (`N6`) or a maximum (`X..20`), in brackets when it may be left out at the
//! end (`[X..17]`), followed by the checks that apply to it (`N14,csum`). The specs are parsed
//! at compile time: a malformed line, an unsorted table or a disagreement with the
//! predefined-length table fails the build.
//!
//! Checks: `csum` GS1 mod-10 check digit, `csumalpha` alphanumeric check character pair,
//! `yymmd0` date whose day may be 00, `yymmdd` and `yyyymmdd` dates, `hh`, `hhmi`, `mi`, `ss`
//! times, `yesno`, `zero`, `nonzero`, `winding`, `pieceoftotal`, `minus`, `nozeroprefix`,
//! `nondigit`, `sex` (ISO/IEC 5218), `lat`/`lon`, `pcenc` (percent-encoding). Checks that need
//! external code lists (ISO 3166 countries, ISO 4217 currencies, IBAN, coupon structure, GS1
//! company prefixes) are not applied: the character set and length still are.

/// The character set of one component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Charset {
    Numeric,
    Cset82,
    Cset39,
    Base64Url,
}

/// A content check on one component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lint {
    None,
    Csum,
    CsumAlpha,
    /// YYMMDD; DD=00 means the month's last day.
    Yymmd0,
    Yymmdd,
    Yyyymmdd,
    Hour,
    HourMinute,
    Minute,
    Second,
    YesNo,
    Zero,
    NonZero,
    Winding,
    PieceOfTotal,
    Minus,
    NoZeroPrefix,
    NonDigit,
    Sex,
    Latitude,
    Longitude,
    PercentEncoded,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Part {
    pub set: Charset,
    pub min: u8,
    pub max: u8,
    /// May be left out, together with every part after it.
    pub optional: bool,
    pub lints: [Lint; 2],
}

const MAX_PARTS: usize = 5;

const NO_PART: Part = Part {
    set: Charset::Numeric,
    min: 0,
    max: 0,
    optional: false,
    lints: [Lint::None; 2],
};

#[derive(Debug)]
pub(super) struct Entry {
    /// What the AI means, briefly.
    pub title: &'static str,
    /// First and last AI of the range, padded to four digits (`"01"` is 100, `"235"` is 2350),
    /// so that numeric order is the lexical order of the AIs.
    pub lo: u16,
    pub hi: u16,
    /// Number of digits of the AI.
    pub digits: u8,
    parts: [Part; MAX_PARTS],
    count: u8,
    /// Shortest and longest data allowed.
    pub min_len: u8,
    pub max_len: u8,
}

impl Entry {
    pub fn parts(&self) -> &[Part] {
        let n = (self.count as usize).min(MAX_PARTS);
        &self.parts[..n]
    }

    /// The lengths the data may have, for a person: "14", "at most 20", "13 to 30", "6 or 12".
    pub fn lengths(&self) -> String {
        let parts = self.parts();
        let variable = parts.last().is_some_and(|p| p.min != p.max);
        if variable {
            return if self.min_len <= 1 {
                format!("at most {}", self.max_len)
            } else {
                format!("{} to {}", self.min_len, self.max_len)
            };
        }
        let mut allowed = vec![self.min_len];
        let mut total = self.min_len;
        for p in parts.iter().filter(|p| p.optional) {
            total += p.max;
            allowed.push(total);
        }
        match allowed.split_last() {
            Some((last, rest)) if !rest.is_empty() => {
                let head: Vec<String> = rest.iter().map(u8::to_string).collect();
                format!("{} or {last}", head.join(", "))
            }
            _ => self.min_len.to_string(),
        }
    }

    /// Every AI the entry covers, e.g. "3100" to "3105".
    #[cfg(test)]
    pub fn ais(&self) -> Vec<String> {
        let step = 10u16.pow(4 - u32::from(self.digits));
        (self.lo..=self.hi)
            .step_by(usize::from(step))
            .map(|k| format!("{:0width$}", k / step, width = usize::from(self.digits)))
            .collect()
    }
}

/// The table, sorted by AI. GS1 AIs are prefix-free: no AI is the beginning of another.
#[rustfmt::skip]
pub(super) const TABLE: &[Entry] = &[
    ai("00", "N18,csum", "SSCC"),
    ai("01", "N14,csum", "GTIN"),
    ai("02", "N14,csum", "GTIN of contained trade items"),
    ai("03", "N14,csum", "GTIN of a made-to-order trade item"),
    ai("10", "X..20", "batch or lot"),
    ai("11", "N6,yymmd0", "production date"),
    ai("12", "N6,yymmd0", "due date"),
    ai("13", "N6,yymmd0", "packaging date"),
    ai("15", "N6,yymmd0", "best before"),
    ai("16", "N6,yymmd0", "sell by"),
    ai("17", "N6,yymmd0", "expiration date"),
    ai("20", "N2", "internal product variant"),
    ai("21", "X..20", "serial number"),
    ai("22", "X..20", "consumer product variant"),
    ai("235", "X..28", "third-party serialised extension (TPX)"),
    ai("240", "X..30", "additional product identification"),
    ai("241", "X..30", "customer part number"),
    ai("242", "N..6", "made-to-order variation number"),
    ai("243", "X..20", "packaging component number"),
    ai("250", "X..30", "secondary serial number"),
    ai("251", "X..30", "reference to source entity"),
    ai("253", "N13,csum [X..17]", "GDTI"),
    ai("254", "X..20", "GLN extension component"),
    ai("255", "N13,csum [N..12]", "GCN"),
    ai("30", "N..8", "variable count of items"),
    ai("3100-3105", "N6", "net weight, kg"),
    ai("3110-3115", "N6", "length, m"),
    ai("3120-3125", "N6", "width, m"),
    ai("3130-3135", "N6", "depth, m"),
    ai("3140-3145", "N6", "area, m²"),
    ai("3150-3155", "N6", "net volume, l"),
    ai("3160-3165", "N6", "net volume, m³"),
    ai("3200-3205", "N6", "net weight, lb"),
    ai("3210-3215", "N6", "length, in"),
    ai("3220-3225", "N6", "length, ft"),
    ai("3230-3235", "N6", "length, yd"),
    ai("3240-3245", "N6", "width, in"),
    ai("3250-3255", "N6", "width, ft"),
    ai("3260-3265", "N6", "width, yd"),
    ai("3270-3275", "N6", "depth, in"),
    ai("3280-3285", "N6", "depth, ft"),
    ai("3290-3295", "N6", "depth, yd"),
    ai("3300-3305", "N6", "logistic weight, kg"),
    ai("3310-3315", "N6", "length, m, logistics"),
    ai("3320-3325", "N6", "width, m, logistics"),
    ai("3330-3335", "N6", "depth, m, logistics"),
    ai("3340-3345", "N6", "area, m², logistics"),
    ai("3350-3355", "N6", "logistic volume, l"),
    ai("3360-3365", "N6", "logistic volume, m³"),
    ai("3370-3375", "N6", "kg per m²"),
    ai("3400-3405", "N6", "logistic weight, lb"),
    ai("3410-3415", "N6", "length, in, logistics"),
    ai("3420-3425", "N6", "length, ft, logistics"),
    ai("3430-3435", "N6", "length, yd, logistics"),
    ai("3440-3445", "N6", "width, in, logistics"),
    ai("3450-3455", "N6", "width, ft, logistics"),
    ai("3460-3465", "N6", "width, yd, logistics"),
    ai("3470-3475", "N6", "depth, in, logistics"),
    ai("3480-3485", "N6", "depth, ft, logistics"),
    ai("3490-3495", "N6", "depth, yd, logistics"),
    ai("3500-3505", "N6", "area, in²"),
    ai("3510-3515", "N6", "area, ft²"),
    ai("3520-3525", "N6", "area, yd²"),
    ai("3530-3535", "N6", "area, in², logistics"),
    ai("3540-3545", "N6", "area, ft², logistics"),
    ai("3550-3555", "N6", "area, yd², logistics"),
    ai("3560-3565", "N6", "net weight, troy oz"),
    ai("3570-3575", "N6", "net weight or volume, oz"),
    ai("3600-3605", "N6", "net volume, qt"),
    ai("3610-3615", "N6", "net volume, US gal"),
    ai("3620-3625", "N6", "logistic volume, qt"),
    ai("3630-3635", "N6", "logistic volume, US gal"),
    ai("3640-3645", "N6", "net volume, in³"),
    ai("3650-3655", "N6", "net volume, ft³"),
    ai("3660-3665", "N6", "net volume, yd³"),
    ai("3670-3675", "N6", "logistic volume, in³"),
    ai("3680-3685", "N6", "logistic volume, ft³"),
    ai("3690-3695", "N6", "logistic volume, yd³"),
    ai("37", "N..8", "count of trade items in a logistic unit"),
    ai("3900-3909", "N..15", "amount payable, local currency"),
    ai("3910-3919", "N3 N..15", "amount payable with ISO currency"),
    ai("3920-3929", "N..15", "price, single monetary area"),
    ai("3930-3939", "N3 N..15", "price with ISO currency"),
    ai("3940-3943", "N4", "percentage discount of a coupon"),
    ai("3950-3955", "N6", "amount payable per unit of measure"),
    ai("400", "X..30", "customer's purchase order number"),
    ai("401", "X..30", "GINC"),
    ai("402", "N17,csum", "GSIN"),
    ai("403", "X..30", "routing code"),
    ai("410-417", "N13,csum", "GLNs: ship to, bill to, …, party"),
    ai("420", "X..20", "ship-to postal code"),
    ai("421", "N3 X..9", "ship-to postal code with ISO country"),
    ai("422", "N3", "country of origin"),
    ai("423", "N3 [N3] [N3] [N3] [N3]", "countries of initial processing"),
    ai("424", "N3", "country of processing"),
    ai("425", "N3 [N3] [N3] [N3] [N3]", "countries of disassembly"),
    ai("426", "N3", "country covering full process chain"),
    ai("427", "X..3", "country subdivision of origin"),
    ai("4300-4301", "X..35,pcenc", "ship-to company, contact"),
    ai("4302-4306", "X..70,pcenc", "ship-to address lines, suburb, locality, region"),
    ai("4307", "X2", "ship-to country code"),
    ai("4308", "X..30", "ship-to telephone"),
    ai("4309", "N10,lat N10,lon", "ship-to geolocation"),
    ai("4310-4311", "X..35,pcenc", "return-to company, contact"),
    ai("4312-4316", "X..70,pcenc", "return-to address lines, suburb, locality, region"),
    ai("4317", "X2", "return-to country code"),
    ai("4318", "X..20", "return-to postal code"),
    ai("4319", "X..30", "return-to telephone"),
    ai("4320", "X..35,pcenc", "service code description"),
    ai("4321-4323", "N1,yesno", "dangerous goods, authority to leave, signature"),
    ai("4324-4325", "N6,yymmd0 N4,hhmi", "not before / not after delivery date-time"),
    ai("4326", "N6,yymmdd", "release date"),
    ai("4330-4333", "N6 [X1,minus]", "max/min temperature, °F/°C"),
    ai("7001", "N13", "NATO stock number"),
    ai("7002", "X..30", "UNECE meat carcasses and cuts"),
    ai("7003", "N6,yymmdd N4,hhmi", "expiration date and time"),
    ai("7004", "N..4", "active potency"),
    ai("7005", "X..12", "catch area"),
    ai("7006", "N6,yymmdd", "first freeze date"),
    ai("7007", "N6,yymmdd [N6,yymmdd]", "harvest date (range)"),
    ai("7008", "X..3", "species for fishery purposes"),
    ai("7009", "X..10", "fishing gear type"),
    ai("7010", "X..2", "production method"),
    ai("7011", "N6,yymmdd [N4,hhmi]", "test by date"),
    ai("7020", "X..20", "refurbishment lot"),
    ai("7021", "X..20", "functional status"),
    ai("7022", "X..20", "revision status"),
    ai("7023", "X..30", "GIAI of an assembly"),
    ai("7030-7039", "N3 X..27", "approval number of processor 0-9"),
    ai("7040", "N1 X1 X1 X1", "GS1 UIC with extension 1 and importer index"),
    ai("7041", "X..4", "UN/CEFACT freight unit type"),
    ai("710-717", "X..20", "national healthcare reimbursement numbers"),
    ai("7230-7239", "X2 X..28", "certification references"),
    ai("7240", "X..20", "protocol ID"),
    ai("7241", "N2", "AIDC media type"),
    ai("7242", "X..25", "version control number"),
    ai("7250", "N8,yyyymmdd", "date of birth"),
    ai("7251", "N8,yyyymmdd N4,hhmi", "date and time of birth"),
    ai("7252", "N1,sex", "biological sex"),
    ai("7253-7254", "X..40,pcenc", "family name, given name"),
    ai("7255", "X..10", "name suffix"),
    ai("7256", "X..90,pcenc", "full name"),
    ai("7257", "X..70,pcenc", "address of a person"),
    ai("7258", "X3", "baby birth sequence indicator"),
    ai("7259", "X..40,pcenc", "baby of family name"),
    ai("8001", "N4,nonzero N5,nonzero N3,nonzero N1,winding N1", "roll products"),
    ai("8002", "X..20", "cellular mobile telephone identifier"),
    ai("8003", "N1,zero N13,csum [X..16]", "GRAI"),
    ai("8004", "X..30", "GIAI"),
    ai("8005", "N6", "price per unit of measure"),
    ai("8006", "N14,csum N4,pieceoftotal", "ITIP"),
    ai("8007", "X..34", "IBAN"),
    ai("8008", "N6,yymmdd N2,hh [N2,mi] [N2,ss]", "date and time of production"),
    ai("8009", "X..50", "optically readable sensor indicator"),
    ai("8010", "Y..30", "component/part identifier (CPID)"),
    ai("8011", "N..12,nozeroprefix", "CPID serial number"),
    ai("8012", "X..20", "software version"),
    ai("8013", "X..25,csumalpha", "global model number (GMN)"),
    ai("8014", "X..25,csumalpha,nondigit", "medical device UDI-DI (MUDI)"),
    ai("8017-8018", "N18,csum", "GSRN provider / recipient"),
    ai("8019", "N..10", "service relation instance number"),
    ai("8020", "X..25", "payment slip reference number"),
    ai("8026", "N14,csum N4,pieceoftotal", "ITIP of contained trade items"),
    ai("8030", "Z..90", "digital signature"),
    ai("8040-8041", "N15", "IMEI, second IMEI"),
    ai("8042", "N32", "eSIM identifier (EID)"),
    ai("8043", "N18 [N..2]", "physical SIM identifier (ICCID)"),
    ai("8110", "X..70", "coupon code identification (North America)"),
    ai("8111", "N4", "loyalty points of a coupon"),
    ai("8112", "X..70", "paperless coupon code (North America)"),
    ai("8200", "X..70", "extended packaging URL"),
    ai("90", "X..30", "mutually agreed between trading partners"),
    ai("91-99", "X..90", "company internal information"),
];

/// The predefined-length table of the GS1 General Specifications (figure 5.10.1-2): AIs whose
/// first two digits are listed here have a fixed length and are never followed by a separator.
/// Every other AI, even a fixed-length one such as 402, ends with GS unless it is last.
/// Value: digits of AI and data together.
const PREDEFINED: &[(u8, u8)] = &[
    (0, 20),
    (1, 16),
    (2, 16),
    (3, 16),
    (4, 18),
    (11, 8),
    (12, 8),
    (13, 8),
    (14, 8),
    (15, 8),
    (16, 8),
    (17, 8),
    (18, 8),
    (19, 8),
    (20, 4),
    (31, 10),
    (32, 10),
    (33, 10),
    (34, 10),
    (35, 10),
    (36, 10),
    (41, 16),
];

/// By the AI's first two digits: how many digits the AI has (0 when no AI starts so).
pub(super) static AI_DIGITS: [u8; 100] = ai_digits(TABLE);

/// By the AI's first two digits: the predefined length of AI and data (0 when not predefined).
pub(super) static PREDEFINED_TOTAL: [u8; 100] = predefined_totals(PREDEFINED, TABLE);

/// The entry for an AI, given as text of 2 to 4 digits.
pub(super) fn lookup(ai: &[u8]) -> Option<&'static Entry> {
    if !(2..=4).contains(&ai.len()) || !ai.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut key: u16 = 0;
    for &d in ai {
        key = key * 10 + u16::from(d - b'0');
    }
    for _ in ai.len()..4 {
        key *= 10;
    }
    let i = TABLE
        .binary_search_by(|e| {
            if e.hi < key {
                std::cmp::Ordering::Less
            } else if e.lo > key {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .ok()?;
    TABLE.get(i).filter(|e| usize::from(e.digits) == ai.len())
}

// ---- compile-time construction and checks -------------------------------------------------

const fn digits_at(s: &[u8], mut i: usize) -> (u16, u8, usize) {
    let mut value: u16 = 0;
    let mut n = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        value = value * 10 + (s[i] - b'0') as u16;
        n += 1;
        i += 1;
    }
    (value, n, i)
}

const fn word_is(s: &[u8], start: usize, end: usize, name: &str) -> bool {
    let n = name.as_bytes();
    if end - start != n.len() {
        return false;
    }
    let mut k = 0;
    while k < n.len() {
        if s[start + k] != n[k] {
            return false;
        }
        k += 1;
    }
    true
}

const fn lint_named(s: &[u8], start: usize, end: usize) -> Lint {
    const NAMES: &[(&str, Lint)] = &[
        ("csum", Lint::Csum),
        ("csumalpha", Lint::CsumAlpha),
        ("yymmd0", Lint::Yymmd0),
        ("yymmdd", Lint::Yymmdd),
        ("yyyymmdd", Lint::Yyyymmdd),
        ("hh", Lint::Hour),
        ("hhmi", Lint::HourMinute),
        ("mi", Lint::Minute),
        ("ss", Lint::Second),
        ("yesno", Lint::YesNo),
        ("zero", Lint::Zero),
        ("nonzero", Lint::NonZero),
        ("winding", Lint::Winding),
        ("pieceoftotal", Lint::PieceOfTotal),
        ("minus", Lint::Minus),
        ("nozeroprefix", Lint::NoZeroPrefix),
        ("nondigit", Lint::NonDigit),
        ("sex", Lint::Sex),
        ("lat", Lint::Latitude),
        ("lon", Lint::Longitude),
        ("pcenc", Lint::PercentEncoded),
    ];
    let mut k = 0;
    while k < NAMES.len() {
        if word_is(s, start, end, NAMES[k].0) {
            return NAMES[k].1;
        }
        k += 1;
    }
    panic!("GS1 table: unknown check name")
}

/// Builds one table entry from its AI (range) and component spec; malformed input fails the build.
const fn ai(range: &str, spec: &str, title: &'static str) -> Entry {
    let r = range.as_bytes();
    let (lo, digits, i) = digits_at(r, 0);
    let hi = if i == r.len() {
        lo
    } else {
        assert!(r[i] == b'-', "GS1 table: AI range must be LO-HI");
        let (hi, hi_digits, end) = digits_at(r, i + 1);
        assert!(
            hi_digits == digits && end == r.len() && hi > lo,
            "GS1 table: bad AI range"
        );
        hi
    };
    assert!(
        digits >= 2 && digits <= 4,
        "GS1 table: an AI has 2 to 4 digits"
    );
    let pad = match digits {
        2 => 100,
        3 => 10,
        _ => 1,
    };

    let s = spec.as_bytes();
    let mut parts = [NO_PART; MAX_PARTS];
    let mut count = 0;
    let mut min_len: u16 = 0;
    let mut max_len: u16 = 0;
    let mut seen_optional = false;
    let mut seen_variable = false;
    let mut i = 0;
    while i < s.len() {
        if s[i] == b' ' {
            i += 1;
            continue;
        }
        assert!(count < MAX_PARTS, "GS1 table: too many components");
        assert!(
            !seen_variable,
            "GS1 table: only the last component may be variable"
        );
        let optional = s[i] == b'[';
        if optional {
            i += 1;
        }
        assert!(
            optional || !seen_optional,
            "GS1 table: mandatory after optional"
        );
        let set = match s[i] {
            b'N' => Charset::Numeric,
            b'X' => Charset::Cset82,
            b'Y' => Charset::Cset39,
            b'Z' => Charset::Base64Url,
            _ => panic!("GS1 table: component must start with N, X, Y or Z"),
        };
        i += 1;
        let variable = i + 1 < s.len() && s[i] == b'.' && s[i + 1] == b'.';
        if variable {
            i += 2;
        }
        let (len, len_digits, next) = digits_at(s, i);
        assert!(
            len_digits > 0 && len > 0 && len < 100,
            "GS1 table: bad length"
        );
        i = next;
        let mut lints = [Lint::None; 2];
        let mut nl = 0;
        while i < s.len() && s[i] == b',' {
            let start = i + 1;
            let mut end = start;
            while end < s.len() && s[end] != b',' && s[end] != b' ' && s[end] != b']' {
                end += 1;
            }
            assert!(nl < 2, "GS1 table: at most two checks per component");
            lints[nl] = lint_named(s, start, end);
            nl += 1;
            i = end;
        }
        if optional {
            assert!(i < s.len() && s[i] == b']', "GS1 table: unclosed [");
            i += 1;
        }
        let min = if variable { 1 } else { len as u8 };
        parts[count] = Part {
            set,
            min,
            max: len as u8,
            optional,
            lints,
        };
        count += 1;
        if !optional {
            min_len += min as u16;
        }
        max_len += len;
        seen_optional = seen_optional || optional;
        seen_variable = variable;
    }
    assert!(count > 0, "GS1 table: empty spec");
    assert!(max_len <= 99, "GS1 table: data longer than 99");
    Entry {
        title,
        lo: lo * pad,
        hi: hi * pad,
        digits,
        parts,
        count: count as u8,
        min_len: min_len as u8,
        max_len: max_len as u8,
    }
}

/// Checks the table's order and derives the AI length from the first two digits.
const fn ai_digits(table: &[Entry]) -> [u8; 100] {
    let mut out = [0u8; 100];
    let mut k = 0;
    while k < table.len() {
        let e = &table[k];
        assert!(
            k == 0 || table[k - 1].hi < e.lo,
            "GS1 table: entries must be sorted and must not overlap"
        );
        let mut p = (e.lo / 100) as usize;
        while p <= (e.hi / 100) as usize {
            assert!(
                out[p] == 0 || out[p] == e.digits,
                "GS1 table: AIs with the same first two digits must have the same length"
            );
            out[p] = e.digits;
            p += 1;
        }
        k += 1;
    }
    out
}

/// Derives the predefined lengths by prefix and checks that every table entry under a
/// predefined prefix has exactly that fixed length.
const fn predefined_totals(predefined: &[(u8, u8)], table: &[Entry]) -> [u8; 100] {
    let mut out = [0u8; 100];
    let mut k = 0;
    while k < predefined.len() {
        out[predefined[k].0 as usize] = predefined[k].1;
        k += 1;
    }
    let mut k = 0;
    while k < table.len() {
        let e = &table[k];
        let total = out[(e.lo / 100) as usize];
        if total != 0 {
            let mut fixed = true;
            let mut p = 0;
            while p < e.count as usize {
                let part = &e.parts[p];
                fixed = fixed && !part.optional && part.min == part.max;
                p += 1;
            }
            assert!(
                fixed && e.min_len + e.digits == total && (e.lo / 100) == (e.hi / 100),
                "GS1 table: an AI under a predefined-length prefix must have that fixed length"
            );
        }
        k += 1;
    }
    out
}
