//! GS1 element strings (GS1 General Specifications, sections 3 and 7.8): the data of GS1-128,
//! GS1 DataMatrix, GS1 QR Code and GS1 DataBar, and its bracketed human-readable form.
//!
//! Rules applied, in this order, to each element:
//! - the AI must be in [the table](table), which holds every AI of the current General
//!   Specifications with its format;
//! - an AI whose first two digits are in the predefined-length table takes exactly its fixed
//!   length and needs no separator; every other AI runs to the next GS (ASCII 29, FNC1) or to the
//!   end of the data. A GS after a predefined-length element, a trailing GS and a run of GS are
//!   tolerated;
//! - every character must be in GS1 character set 82 (`8030` uses base64url, `8010` set 39);
//! - the data length, the character set of each component, mod-10 check digits, the
//!   alphanumeric check pair (8013, 8014), dates and times are validated;
//! - an AI that occurs twice with different values is an error.
//!
//! Dates: a two-digit year YY takes the century that puts it between 49 years before and 50
//! years after the current year (the sliding window of the General Specifications, section
//! 7.12): read in 2026, `99` is 1999 and `76` is 2076. This pure crate does not read the clock:
//! the caller passes the current year ([`year_of_unix_ms`] of the reading's time) to
//! [`date_to_iso`]. Validation while parsing checks day and month against 20YY, which has the
//! same leap years as the window's year for every YY until 2050 (only `00` differs, as 1900 or
//! 2100, and the window puts `00` there only from 2050 on). A day of 00 (allowed in AIs 11-17,
//! 4324 and 4325) means the last day of the month.
//!
//! Relations between AIs (02 needs 37, 37 needs 00, …) are not enforced: a unit carries several
//! labels (docs/events.md).

mod table;

use std::fmt;

use table::{Charset, Entry, Lint, Part, AI_DIGITS, PREDEFINED_TOTAL};

use crate::event::Gs1Map;

/// ASCII 29, group separator: FNC1 in the transmitted data.
pub const GS: u8 = 0x1d;

/// One parsed GS1 element string, AIs in the order read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elements(pub Vec<(String, String)>); // (AI, value as encoded)

impl Elements {
    /// The value of an AI, the first one if it occurs more than once.
    pub fn get(&self, ai: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(a, _)| a == ai)
            .map(|(_, v)| v.as_str())
    }

    pub fn to_map(&self) -> Gs1Map {
        self.0.iter().cloned().collect()
    }

    /// AI 00, the SSCC (18 digits).
    pub fn sscc(&self) -> Option<&str> {
        self.get("00")
    }

    /// AI 01, else AI 02 (14 digits).
    pub fn gtin(&self) -> Option<&str> {
        self.get("01").or_else(|| self.get("02"))
    }

    /// The bracketed human-readable form, "(01)12345678901231(10)ABC".
    pub fn to_bracketed(&self) -> String {
        let mut out = String::new();
        for (ai, value) in &self.0 {
            out.push('(');
            out.push_str(ai);
            out.push(')');
            out.push_str(value);
        }
        out
    }

    /// The element string as a scanner transmits it: GS after every element that is not of
    /// predefined length, except the last.
    pub fn to_element_string(&self) -> String {
        let mut out = String::new();
        for (i, (ai, value)) in self.0.iter().enumerate() {
            out.push_str(ai);
            out.push_str(value);
            if i + 1 < self.0.len() && predefined_value_len(ai.as_bytes()).is_none() {
                out.push(char::from(GS));
            }
        }
        out
    }
}

/// Why GS1 data was rejected; the text names the AI and the fault for a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Gs1Error {
    #[error("empty GS1 data")]
    Empty,
    #[error("unknown AI {ai}")]
    UnknownAi { ai: String },
    #[error(
        "offset {offset} of the GS1 data: expected the digits of an AI{}, found {found}",
        after_ai(.after)
    )]
    NotAnAi {
        offset: usize,
        found: Found,
        /// The AI of the element before, if any.
        after: Option<String>,
    },
    #[error("the data ends inside an AI: {digits:?}")]
    IncompleteAi { digits: String },
    #[error("AI {ai}: {}", length_text(*.got, *.digits, .need))]
    Length {
        ai: String,
        got: usize,
        /// The value was all digits ("13 digits") rather than "13 characters".
        digits: bool,
        /// The allowed lengths, e.g. "14", "at most 20".
        need: String,
    },
    #[error("AI {ai}: {found} {}", .rule.text())]
    Character {
        ai: String,
        found: Found,
        rule: CharRule,
    },
    #[error("AI {ai}: check digit is {got}, expected {expected}")]
    CheckDigit { ai: String, got: u8, expected: u8 },
    #[error("AI {ai}: check characters are {got}, expected {expected}")]
    CheckPair {
        ai: String,
        got: String,
        expected: String,
    },
    #[error("AI {ai}: month {month:02} is not a month")]
    Month { ai: String, month: u8 },
    #[error("AI {ai}: day {day:02} does not exist in {} {year}", month_name(*.month))]
    Day {
        ai: String,
        year: u16,
        month: u8,
        day: u8,
    },
    #[error("AI {ai}: day 00 (last day of the month) is not allowed in this date")]
    DayZero { ai: String },
    #[error("AI {ai}: {unit} {value:02} is not {}", .unit.article())]
    Time {
        ai: String,
        unit: TimeUnit,
        value: u8,
    },
    #[error("AI {ai}: {fault}")]
    Field { ai: String, fault: &'static str },
    #[error("AI {ai} occurs twice with different values")]
    Duplicate { ai: String },
    #[error("bracketed GS1 text, offset {offset}: {fault}")]
    Bracket { offset: usize, fault: &'static str },
}

/// A byte as an error message shows it: `character '^'` or `byte 0x07`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found(pub u8);

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == b' ' || self.0.is_ascii_graphic() {
            write!(f, "character '{}'", char::from(self.0))
        } else {
            write!(f, "byte 0x{:02X}", self.0)
        }
    }
}

/// The character rule a byte broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CharRule {
    /// Not in GS1 character set 82 (which every GS1 field uses).
    Gs1Set,
    Digit,
    /// GS1 character set 39 (AI 8010).
    Set39,
    Base64Url,
}

impl CharRule {
    fn text(self) -> &'static str {
        match self {
            CharRule::Gs1Set => "is not allowed in GS1 data",
            CharRule::Digit => "is not a digit",
            CharRule::Set39 => "is not allowed here (digits, A-Z, '#', '-', '/')",
            CharRule::Base64Url => "is not base64url",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeUnit {
    Hour,
    Minute,
    Second,
}

impl TimeUnit {
    fn article(self) -> &'static str {
        match self {
            TimeUnit::Hour => "an hour",
            TimeUnit::Minute => "a minute",
            TimeUnit::Second => "a second",
        }
    }
}

impl fmt::Display for TimeUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeUnit::Hour => "hour",
            TimeUnit::Minute => "minute",
            TimeUnit::Second => "second",
        })
    }
}

fn after_ai(after: &Option<String>) -> String {
    after
        .as_ref()
        .map(|ai| format!(" after AI {ai}"))
        .unwrap_or_default()
}

fn length_text(got: usize, digits: bool, need: &str) -> String {
    if got == 0 {
        return "no data".to_owned();
    }
    let unit = if digits { "digits" } else { "characters" };
    let unit = if got == 1 {
        &unit[..unit.len() - 1]
    } else {
        unit
    };
    format!("{got} {unit}, needs {need}")
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

fn month_name(month: u8) -> &'static str {
    MONTHS
        .get(usize::from(month).wrapping_sub(1))
        .copied()
        .unwrap_or("?")
}

/// Element string with ASCII 29 (GS) as FNC1 separator (the data after the AIM prefix).
pub fn parse(data: &[u8]) -> Result<Elements, Gs1Error> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(4);
    let mut i = 0;
    while i < data.len() {
        if data[i] == GS {
            i += 1;
            continue;
        }
        let (entry, ai) = read_ai(data, i, out.last().map(|(ai, _)| ai.as_str()))?;
        i += ai.len();
        let rest = &data[i..];
        let to_gs = rest.iter().position(|&b| b == GS).unwrap_or(rest.len());
        let end = match predefined_value_len(ai) {
            Some(n) => to_gs.min(n),
            None => to_gs,
        };
        let value = &rest[..end];
        check_value(entry, ai, value)?;
        push(&mut out, ai, value)?;
        i += end;
    }
    if out.is_empty() {
        return Err(Gs1Error::Empty);
    }
    Ok(Elements(out))
}

/// Bracketed human-readable form "(01)12345678901231(10)ABC".
///
/// A value runs to the next "(" that is followed by two to four digits and ")": that is the next
/// AI, and one that is not in the table is an error (`UnknownAi`), never part of the value. Any
/// other "(" is data ("(B)", "(7)"). No separators are needed or allowed.
pub fn parse_bracketed(text: &str) -> Result<Elements, Gs1Error> {
    parse_bracketed_bytes(text.trim().as_bytes())
}

pub(crate) fn parse_bracketed_bytes(b: &[u8]) -> Result<Elements, Gs1Error> {
    if b.is_empty() {
        return Err(Gs1Error::Empty);
    }
    let mut out: Vec<(String, String)> = Vec::with_capacity(4);
    let mut i = 0;
    while i < b.len() {
        let Some((ai, entry)) = bracket_at(b, i) else {
            return Err(bracket_fault(b, i));
        };
        let start = i + ai.len() + 2;
        let end = (start..b.len())
            .find(|&j| b[j] == b'(' && ai_shaped(b, j))
            .unwrap_or(b.len());
        let value = &b[start..end];
        check_value(entry, ai, value)?;
        push(&mut out, ai, value)?;
        i = end;
    }
    Ok(Elements(out))
}

/// Does "(" with two to four digits and ")" (an AI, known or not) start at `i`?
fn ai_shaped(b: &[u8], i: usize) -> bool {
    let digits = b
        .iter()
        .skip(i + 1)
        .take_while(|c| c.is_ascii_digit())
        .count();
    b.get(i) == Some(&b'(') && (2..=4).contains(&digits) && b.get(i + 1 + digits) == Some(&b')')
}

/// Does a known "(AI)" start at `i`?
fn bracket_at(b: &[u8], i: usize) -> Option<(&[u8], &'static Entry)> {
    if b.get(i) != Some(&b'(') {
        return None;
    }
    let len = b.iter().skip(i + 1).take(5).position(|&c| c == b')')?;
    let ai = &b[i + 1..i + 1 + len];
    table::lookup(ai).map(|e| (ai, e))
}

fn bracket_fault(b: &[u8], i: usize) -> Gs1Error {
    if b.get(i) != Some(&b'(') {
        return Gs1Error::Bracket {
            offset: i,
            fault: "expected \"(\" and an AI",
        };
    }
    let digits = b
        .iter()
        .skip(i + 1)
        .take_while(|c| c.is_ascii_digit())
        .count();
    let close = b.get(i + 1 + digits) == Some(&b')');
    if close && (2..=4).contains(&digits) {
        return Gs1Error::UnknownAi {
            ai: text(&b[i + 1..i + 1 + digits]),
        };
    }
    Gs1Error::Bracket {
        offset: i,
        fault: "expected \"(\", an AI of two to four digits and \")\"",
    }
}

/// Reads the AI at `at`: its length comes from its first two digits.
fn read_ai<'a>(
    data: &'a [u8],
    at: usize,
    after: Option<&str>,
) -> Result<(&'static Entry, &'a [u8]), Gs1Error> {
    let rest = &data[at..];
    let not_ai = |k: usize| Gs1Error::NotAnAi {
        offset: at + k,
        found: Found(rest.get(k).copied().unwrap_or(0)),
        after: after.map(str::to_owned),
    };
    let digits_ok = |n: usize| match rest.iter().take(n).position(|b| !b.is_ascii_digit()) {
        Some(k) => Err(not_ai(k)),
        None if rest.len() < n => Err(Gs1Error::IncompleteAi { digits: text(rest) }),
        None => Ok(()),
    };
    digits_ok(2)?;
    let prefix = usize::from(rest[0] - b'0') * 10 + usize::from(rest[1] - b'0');
    let n = usize::from(AI_DIGITS[prefix]);
    if n == 0 {
        return Err(Gs1Error::UnknownAi {
            ai: text(&rest[..2]),
        });
    }
    digits_ok(n)?;
    let ai = &rest[..n];
    match table::lookup(ai) {
        Some(entry) => Ok((entry, ai)),
        None => Err(Gs1Error::UnknownAi { ai: text(ai) }),
    }
}

/// The fixed data length of an AI from the predefined-length table, by its first two digits.
fn predefined_value_len(ai: &[u8]) -> Option<usize> {
    let prefix = match ai {
        [a, b, ..] if a.is_ascii_digit() && b.is_ascii_digit() => {
            usize::from(a - b'0') * 10 + usize::from(b - b'0')
        }
        _ => return None,
    };
    match usize::from(PREDEFINED_TOTAL[prefix]) {
        0 => None,
        total => total.checked_sub(ai.len()),
    }
}

fn push(out: &mut Vec<(String, String)>, ai: &[u8], value: &[u8]) -> Result<(), Gs1Error> {
    if let Some((_, seen)) = out.iter().find(|(a, _)| a.as_bytes() == ai) {
        if seen.as_bytes() != value {
            return Err(Gs1Error::Duplicate { ai: text(ai) });
        }
    }
    out.push((text(ai), text(value)));
    Ok(())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ---- validation -------------------------------------------------------------------------

const C_GS1: u8 = 1;
const C_DIGIT: u8 = 2;
const C_SET39: u8 = 4;
const C_B64: u8 = 8;

/// Character classes by byte.
static CLASS: [u8; 256] = classes();

const fn classes() -> [u8; 256] {
    const SET82: &[u8] =
        b"!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz";
    const SET39: &[u8] = b"#-/0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    const B64: &[u8] = b"-0123456789=ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz";
    let mut out = [0u8; 256];
    let mut k = 0;
    while k < SET82.len() {
        out[SET82[k] as usize] |= C_GS1;
        k += 1;
    }
    let mut k = 0;
    while k < SET39.len() {
        out[SET39[k] as usize] |= C_SET39;
        k += 1;
    }
    let mut k = 0;
    while k < B64.len() {
        out[B64[k] as usize] |= C_B64;
        k += 1;
    }
    let mut d = b'0';
    while d <= b'9' {
        out[d as usize] |= C_DIGIT;
        d += 1;
    }
    out
}

fn class(b: u8) -> u8 {
    CLASS[usize::from(b)]
}

fn ai_text(ai: &[u8]) -> String {
    text(ai)
}

/// Validates one element's data against its table entry.
fn check_value(entry: &Entry, ai: &[u8], v: &[u8]) -> Result<(), Gs1Error> {
    // Bytes no GS1 field may hold come first: they are the most basic fault.
    if let Some(&b) = v
        .iter()
        .find(|&&b| class(b) & (C_GS1 | C_SET39 | C_B64) == 0)
    {
        return Err(Gs1Error::Character {
            ai: ai_text(ai),
            found: Found(b),
            rule: CharRule::Gs1Set,
        });
    }
    let length_error = || Gs1Error::Length {
        ai: ai_text(ai),
        got: v.len(),
        digits: v.iter().all(u8::is_ascii_digit),
        need: entry.lengths(),
    };
    if v.len() < usize::from(entry.min_len) || v.len() > usize::from(entry.max_len) {
        return Err(length_error());
    }
    let mut pos = 0;
    for part in entry.parts() {
        if pos == v.len() && part.optional {
            break;
        }
        let left = v.len() - pos;
        let take = if part.min == part.max {
            usize::from(part.max)
        } else {
            left.min(usize::from(part.max))
        };
        if take > left {
            return Err(length_error());
        }
        let field = &v[pos..pos + take];
        check_part(part, ai, field)?;
        pos += take;
    }
    if pos != v.len() {
        return Err(length_error());
    }
    Ok(())
}

fn check_part(part: &Part, ai: &[u8], field: &[u8]) -> Result<(), Gs1Error> {
    let (mask, rule) = match part.set {
        Charset::Numeric => (C_DIGIT, CharRule::Digit),
        Charset::Cset82 => (C_GS1, CharRule::Gs1Set),
        Charset::Cset39 => (C_SET39, CharRule::Set39),
        Charset::Base64Url => (C_B64, CharRule::Base64Url),
    };
    if let Some(&b) = field.iter().find(|&&b| class(b) & mask == 0) {
        return Err(Gs1Error::Character {
            ai: ai_text(ai),
            found: Found(b),
            rule,
        });
    }
    for &lint in &part.lints {
        check_lint(lint, ai, field)?;
    }
    Ok(())
}

/// The number in a run of ASCII digits (already validated).
fn num(digits: &[u8]) -> u64 {
    digits.iter().fold(0u64, |n, &d| {
        n.wrapping_mul(10)
            .wrapping_add(u64::from(d.wrapping_sub(b'0')))
    })
}

fn num2(field: &[u8], at: usize) -> u8 {
    field
        .get(at..at + 2)
        .map_or(0, |d| u8::try_from(num(d)).unwrap_or(u8::MAX))
}

fn check_lint(lint: Lint, ai: &[u8], f: &[u8]) -> Result<(), Gs1Error> {
    let fault = |fault: &'static str| {
        Err(Gs1Error::Field {
            ai: ai_text(ai),
            fault,
        })
    };
    match lint {
        Lint::None => Ok(()),
        Lint::Csum => match f.split_last() {
            Some((&last, body)) => {
                let expected = mod10(body);
                let got = last - b'0';
                if got == expected {
                    Ok(())
                } else {
                    Err(Gs1Error::CheckDigit {
                        ai: ai_text(ai),
                        got,
                        expected,
                    })
                }
            }
            None => Ok(()),
        },
        Lint::CsumAlpha => match check_pair(f) {
            Some(expected) if f.ends_with(&expected) => Ok(()),
            Some(expected) => Err(Gs1Error::CheckPair {
                ai: ai_text(ai),
                got: text(&f[f.len() - 2..]),
                expected: text(&expected),
            }),
            None => fault("too short for its two check characters"),
        },
        Lint::Yymmd0 | Lint::Yymmdd => {
            let year = 2000 + u16::from(num2(f, 0));
            check_date(ai, year, num2(f, 2), num2(f, 4), lint == Lint::Yymmd0)
        }
        Lint::Yyyymmdd => {
            let year = u16::try_from(num(&f[..4.min(f.len())])).unwrap_or(0);
            check_date(ai, year, num2(f, 4), num2(f, 6), false)
        }
        Lint::Hour => check_time(ai, TimeUnit::Hour, num2(f, 0)),
        Lint::HourMinute => {
            check_time(ai, TimeUnit::Hour, num2(f, 0))?;
            check_time(ai, TimeUnit::Minute, num2(f, 2))
        }
        Lint::Minute => check_time(ai, TimeUnit::Minute, num2(f, 0)),
        Lint::Second => check_time(ai, TimeUnit::Second, num2(f, 0)),
        Lint::YesNo if f != b"0" && f != b"1" => fault("must be 0 (no) or 1 (yes)"),
        Lint::Zero if f != b"0" => fault("the first digit must be 0"),
        Lint::NonZero if f.iter().all(|&d| d == b'0') => fault("a dimension must not be zero"),
        Lint::Winding if !matches!(f, b"0" | b"1" | b"9") => {
            fault("winding direction must be 0, 1 or 9")
        }
        Lint::PieceOfTotal => {
            let (piece, total) = (num2(f, 0), num2(f, 2));
            if piece == 0 || total == 0 || piece > total {
                fault("piece number must be between 1 and the total count")
            } else {
                Ok(())
            }
        }
        Lint::Minus if f != b"-" => fault("only '-' (below zero) may follow the temperature"),
        Lint::NoZeroPrefix if f.len() > 1 && f[0] == b'0' => fault("must not start with 0"),
        Lint::NonDigit if f.iter().all(u8::is_ascii_digit) => {
            fault("must contain a character that is not a digit")
        }
        Lint::Sex if !matches!(f, b"0" | b"1" | b"2" | b"9") => {
            fault("sex must be 0, 1, 2 or 9 (ISO/IEC 5218)")
        }
        Lint::Latitude if num(f) > 1_800_000_000 => fault("latitude is out of range"),
        Lint::Longitude if num(f) > 3_600_000_000 => fault("longitude is out of range"),
        Lint::PercentEncoded if !percent_ok(f) => {
            fault("'%' must be followed by two hexadecimal digits")
        }
        _ => Ok(()),
    }
}

fn check_time(ai: &[u8], unit: TimeUnit, value: u8) -> Result<(), Gs1Error> {
    let max = match unit {
        TimeUnit::Hour => 23,
        TimeUnit::Minute | TimeUnit::Second => 59,
    };
    if value > max {
        return Err(Gs1Error::Time {
            ai: ai_text(ai),
            unit,
            value,
        });
    }
    Ok(())
}

fn check_date(ai: &[u8], year: u16, month: u8, day: u8, day_zero: bool) -> Result<(), Gs1Error> {
    if !(1..=12).contains(&month) {
        return Err(Gs1Error::Month {
            ai: ai_text(ai),
            month,
        });
    }
    if day == 0 {
        return if day_zero {
            Ok(())
        } else {
            Err(Gs1Error::DayZero { ai: ai_text(ai) })
        };
    }
    if day > days_in_month(year, month) {
        return Err(Gs1Error::Day {
            ai: ai_text(ai),
            year,
            month,
            day,
        });
    }
    Ok(())
}

fn percent_ok(f: &[u8]) -> bool {
    f.iter().enumerate().all(|(i, &c)| {
        c != b'%'
            || (f.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && f.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

/// What an AI means, briefly ("SSCC", "batch or lot", "net weight, kg"); `None` for an AI
/// that does not exist.
pub fn ai_title(ai: &str) -> Option<&'static str> {
    table::lookup(ai.as_bytes()).map(|e| e.title)
}

/// Gregorian leap year.
pub fn is_leap_year(year: u16) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

/// Days in a month (1-12) of a Gregorian year; 0 for a month out of range.
pub fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// The four-digit year of a two-digit one, read in `current_year` (GS1 General Specifications
/// 7.12): the century that puts it between 49 years before and 50 years after the current year.
pub fn full_year(yy: u8, current_year: u16) -> u16 {
    let century = current_year - current_year % 100;
    let diff = i32::from(yy) - i32::from(current_year % 100);
    let year = i32::from(century) + i32::from(yy);
    let year = if diff >= 51 {
        year - 100
    } else if diff <= -50 {
        year + 100
    } else {
        year
    };
    u16::try_from(year).unwrap_or(0)
}

/// The (UTC, proleptic Gregorian) year of an instant given in ms since the Unix epoch.
pub fn year_of_unix_ms(ms: u64) -> u16 {
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm), keeping only the year.
    let days = (ms / 86_400_000) as i64 + 719_468;
    let era = days / 146_097;
    let doe = days - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let year = yoe + era * 400 + i64::from(mp >= 10);
    u16::try_from(year).unwrap_or(u16::MAX)
}

/// A GS1 date YYMMDD as YYYY-MM-DD, its century by [`full_year`] in `current_year`; DD=00
/// becomes the month's last day. `None` unless it is a valid date.
pub fn date_to_iso(yymmdd: &str, current_year: u16) -> Option<String> {
    let b = yymmdd.as_bytes();
    if b.len() != 6 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let year = full_year(num2(b, 0), current_year);
    let (month, mut day) = (num2(b, 2), num2(b, 4));
    let last = days_in_month(year, month);
    if last == 0 || day > last {
        return None;
    }
    if day == 0 {
        day = last;
    }
    Some(format!("{year:04}-{month:02}-{day:02}"))
}

/// The GS1 mod-10 check digit for `body` (the digits before the check digit).
fn mod10(body: &[u8]) -> u8 {
    let sum: u32 = body
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d.wrapping_sub(b'0'));
            if i % 2 == 0 {
                3 * d
            } else {
                d
            }
        })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

/// The GS1 mod-10 check digit for a string of digits that lacks it; `None` unless all are
/// ASCII digits.
pub fn check_digit(body: &str) -> Option<u8> {
    let b = body.as_bytes();
    b.iter().all(u8::is_ascii_digit).then(|| mod10(b))
}

/// Mod-10 check digit validity of a digit string (GS1 algorithm; the last digit is the check
/// digit), as used by GTIN, SSCC, GLN, GSIN, GDTI, GSRN…. False unless it is at least two
/// ASCII digits.
pub fn check_digit_ok(digits: &str) -> bool {
    let b = digits.as_bytes();
    match b.split_last() {
        Some((&last, body)) if !body.is_empty() && b.iter().all(u8::is_ascii_digit) => {
            mod10(body) == last - b'0'
        }
        _ => false,
    }
}

/// The two check characters of a GS1 alphanumeric key (section 7.9.5) whose last two
/// characters are the check pair; `None` when too short or too long.
fn check_pair(f: &[u8]) -> Option<[u8; 2]> {
    const SET82: &[u8] =
        b"!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz";
    const SET32: &[u8; 32] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZ";
    const PRIMES: [u32; 30] = [
        2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89,
        97, 101, 103, 107, 109, 113,
    ];
    let data = f.get(..f.len().checked_sub(2)?)?;
    if data.len() > PRIMES.len() {
        return None;
    }
    let sum: u32 = data
        .iter()
        .rev()
        .zip(PRIMES)
        .map(|(c, p)| {
            let weight = SET82.iter().position(|s| s == c).unwrap_or(0);
            weight as u32 * p
        })
        .sum::<u32>()
        % 1021;
    Some([SET32[(sum >> 5) as usize], SET32[(sum & 31) as usize]])
}

#[cfg(test)]
mod tests;
