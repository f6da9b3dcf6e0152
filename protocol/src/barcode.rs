//! Barcode scanner lines (docs/configuration.md, decoder `barcode`) and their canonical bodies
//! (docs/events.md).
//!
//! A line may start with an AIM symbology identifier (ISO/IEC 15424): "]", the symbology
//! character and a modifier. It decides how the data is read:
//! - GS1 symbologies (`]C1` GS1-128, `]d2`/`]d5` GS1 DataMatrix, `]Q3`/`]Q4` GS1 QR, `]e0` GS1
//!   DataBar, `]J1` GS1 DotCode, `]z1`/`]z4` GS1 Aztec) carry a GS1 element string (GS as FNC1),
//!   or the bracketed form if the scanner was set to send that. A fault is `Invalid`.
//! - `]E0` (EAN-13; UPC-A as 13 digits with a leading 0, or 12 digits; UPC-E as 8 digits),
//!   `]E4` (EAN-8) and `]E3` (EAN-13 with a 2 or 5 digit add-on) have their check digit
//!   validated and become AI 01 with the GTIN-14 (left-padded with zeros).
//! - Everything else is text: it must be UTF-8 without control characters other than GS (inside
//!   an ISO/IEC 15434 message, which starts with `[)>` RS, also RS, FS, US and EOT). Text that
//!   starts with "(", two to four digits and ")" is read as the bracketed GS1 form when it
//!   parses.
//!
//! Without an AIM identifier (symbology "unknown") the data is also text, but as scanners
//! configured without identifiers send GS1 data bare, it is read as GS1 when it is the
//! bracketed form, contains GS, or starts with AI 00, 01 or 02 and parses completely; a
//! bracketed form or GS-separated string that fails to parse is `Invalid`, anything else is a
//! plain code.

use crate::decoder::{self, Context, Decoder, Framing, TextFramer};
use crate::event::{Body, ExceptionReason, InventoryScan, Role, ShipmentScan};
use crate::gs1::{self, Elements, Gs1Error, GS};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// The data without the AIM prefix (GS bytes kept as \u{1d}; bracketed form kept as read).
    pub code: String,
    /// "gs1-128", "ean-13", "code-128", …, or "unknown" when there was no AIM prefix.
    pub symbology: String,
    /// Some for GS1 codes, including EAN/UPC, which become AI 01 with the GTIN-14.
    pub gs1: Option<Elements>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Scan(Scan),
    NoRead,
    /// A GS1 or EAN/UPC code that breaks the standard (check digit, date, length, AI).
    Invalid {
        detail: String,
    },
    /// Bytes that are not a code at all (binary junk, invalid UTF-8, control characters).
    Undecodable {
        detail: String,
    },
}

/// How a symbology's data is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    Gs1,
    /// `]E0`: EAN-13, UPC-A or UPC-E by length.
    EanUpc,
    /// `]E4`.
    Ean8,
    /// `]E3`: EAN-13 followed by a 2 or 5 digit add-on.
    EanAddOn,
    Text,
}

/// ISO/IEC 15424 symbology identifiers: the symbology's name and how its data is read.
fn symbology(code: u8, modifier: u8) -> (&'static str, Content) {
    use Content::{EanAddOn, EanUpc, Gs1, Text};
    match (code, modifier) {
        (b'A', _) => ("code-39", Text),
        (b'B', _) => ("telepen", Text),
        (b'C', b'1') => ("gs1-128", Gs1),
        (b'C', _) => ("code-128", Text),
        (b'd', b'2' | b'5') => ("gs1-datamatrix", Gs1),
        (b'd', _) => ("datamatrix", Text),
        (b'E', b'0') => ("ean-13", EanUpc),
        (b'E', b'1') => ("ean-2", Text),
        (b'E', b'2') => ("ean-5", Text),
        (b'E', b'3') => ("ean-13", EanAddOn),
        (b'E', b'4') => ("ean-8", Content::Ean8),
        (b'e', _) => ("gs1-databar", Gs1),
        (b'F', _) => ("codabar", Text),
        (b'G', _) => ("code-93", Text),
        (b'H', _) => ("code-11", Text),
        (b'I', _) => ("interleaved-2of5", Text),
        (b'J', b'1') => ("gs1-dotcode", Gs1),
        (b'J', _) => ("dotcode", Text),
        (b'K', _) => ("code-16k", Text),
        (b'L', _) => ("pdf417", Text),
        (b'M', _) => ("msi", Text),
        (b'O', _) => ("codablock", Text),
        (b'P', _) => ("plessey", Text),
        (b'Q', b'3' | b'4') => ("gs1-qr", Gs1),
        (b'Q', _) => ("qr", Text),
        (b'R', _) => ("straight-2of5", Text),
        (b'S', _) => ("industrial-2of5", Text),
        (b'U', _) => ("maxicode", Text),
        (b'z', b'1' | b'4') => ("gs1-aztec", Gs1),
        (b'z', _) => ("aztec", Text),
        _ => ("unknown", Text),
    }
}

/// A line split into its AIM identifier and data.
struct Reading<'a> {
    /// Length of the AIM prefix (0 or 3): the data's offset in the line.
    prefix: usize,
    data: &'a [u8],
    symbology: &'static str,
    content: Content,
    has_aim: bool,
}

impl<'a> Reading<'a> {
    fn new(line: &'a [u8]) -> Self {
        match line {
            [b']', code, modifier, data @ ..]
                if code.is_ascii_alphabetic() && modifier.is_ascii_alphanumeric() =>
            {
                let (symbology, content) = symbology(*code, *modifier);
                Reading {
                    prefix: 3,
                    data,
                    symbology,
                    content,
                    has_aim: true,
                }
            }
            _ => Reading {
                prefix: 0,
                data: line,
                symbology: "unknown",
                content: Content::Text,
                has_aim: false,
            },
        }
    }

    fn code(&self) -> String {
        String::from_utf8_lossy(self.data).into_owned()
    }

    /// The GS1 content, `Ok(None)` for a code that is not GS1, `Err` with the detail for a
    /// code that claims to be GS1 (or EAN/UPC) and is not valid.
    fn gs1(&self) -> Result<Option<Elements>, String> {
        let data = self.data;
        match self.content {
            Content::Gs1 if looks_bracketed(data) => gs1::parse_bracketed_bytes(data)
                .map(Some)
                .map_err(|e| e.to_string()),
            Content::Gs1 => gs1::parse(data).map(Some).map_err(|e| e.to_string()),
            Content::EanUpc | Content::Ean8 | Content::EanAddOn => {
                ean_upc(self.content, data).map(|(_, gtin)| Some(gtin_elements(gtin)))
            }
            Content::Text if looks_bracketed(data) => match gs1::parse_bracketed_bytes(data) {
                Ok(e) => Ok(Some(e)),
                Err(e) if !self.has_aim => Err(e.to_string()),
                Err(_) => Ok(None),
            },
            Content::Text if self.has_aim || is_iso15434(data) => Ok(None),
            Content::Text if data.first().is_some_and(u8::is_ascii_digit) && data.contains(&GS) => {
                gs1::parse(data).map(Some).map_err(|e| e.to_string())
            }
            Content::Text if matches!(data, [b'0', b'0' | b'1' | b'2', ..]) => {
                Ok(gs1::parse(data).ok())
            }
            Content::Text => Ok(None),
        }
    }

    /// The symbology's name; for `]E0` it depends on the number of digits.
    fn name(&self) -> &'static str {
        match (self.content, self.data.len()) {
            (Content::EanUpc, 12) => "upc-a",
            (Content::EanUpc, 8) => "upc-e",
            _ => self.symbology,
        }
    }
}

/// "(" followed by two to four digits and ")".
fn looks_bracketed(data: &[u8]) -> bool {
    let digits = data
        .iter()
        .skip(1)
        .take_while(|c| c.is_ascii_digit())
        .count();
    data.first() == Some(&b'(') && (2..=4).contains(&digits) && data.get(1 + digits) == Some(&b')')
}

/// An ISO/IEC 15434 message envelope (ANSI MH10.8.2 data in 2D codes): "[)>" RS.
fn is_iso15434(data: &[u8]) -> bool {
    data.starts_with(b"[)>\x1e")
}

/// One line from a scanner (without CR/LF), optional AIM identifier ("]" + symbology char +
/// modifier char). `no_read` is the scanner's no-read text; a line that is exactly that text
/// (surrounding whitespace ignored, with or without an AIM prefix) is a no-read.
pub fn decode(line: &[u8], no_read: &str) -> Decoded {
    let line = line
        .strip_suffix(b"\r\n")
        .or_else(|| line.strip_suffix(b"\n"))
        .or_else(|| line.strip_suffix(b"\r"))
        .unwrap_or(line);
    let no_read = no_read.trim().as_bytes();
    let reading = Reading::new(line);
    if line.trim_ascii() == no_read || (reading.has_aim && reading.data.trim_ascii() == no_read) {
        return Decoded::NoRead;
    }
    if reading.data.is_empty() {
        let detail = match reading.content {
            _ if !reading.has_aim => "empty line".to_owned(),
            Content::Gs1 => Gs1Error::Empty.to_string(),
            _ => format!(
                "no data after the AIM identifier {}",
                String::from_utf8_lossy(&line[..reading.prefix])
            ),
        };
        return Decoded::Invalid { detail };
    }
    if reading.content == Content::Text {
        if let Err(detail) = check_text(reading.data, reading.prefix) {
            return Decoded::Undecodable { detail };
        }
    }
    match reading.gs1() {
        Ok(gs1) => Decoded::Scan(Scan {
            code: reading.code(),
            symbology: reading.name().to_owned(),
            gs1,
        }),
        Err(detail) => Decoded::Invalid { detail },
    }
}

/// A code that arrived as a field of a telegram (sorter etc.): GS1 element string with GS,
/// bracketed form, or plain, with or without an AIM prefix. Never errors: `gs1` is `None` when
/// the code is not valid GS1.
pub fn classify_code(code: &str) -> Scan {
    let reading = Reading::new(code.as_bytes());
    Scan {
        code: reading.code(),
        symbology: reading.name().to_owned(),
        gs1: reading.gs1().ok().flatten(),
    }
}

/// The canonical body for a decoded line at a station with this role (docs/events.md), read in
/// `year` (two-digit years in dates take their century from it).
pub fn to_body(decoded: Decoded, role: Option<Role>, year: u16) -> Body {
    match decoded {
        Decoded::NoRead => Body::exception(
            ExceptionReason::NoRead,
            "the scanner sent its no-read text: it saw no readable code",
        ),
        Decoded::Invalid { detail } => Body::exception(ExceptionReason::InvalidBarcode, detail),
        Decoded::Undecodable { detail } => Body::exception(ExceptionReason::Undecodable, detail),
        Decoded::Scan(scan) => scan_body(scan, role, year),
    }
}

fn scan_body(scan: Scan, role: Option<Role>, year: u16) -> Body {
    let Scan {
        code,
        symbology,
        gs1,
    } = scan;
    let Some(gs1) = gs1 else {
        return if role.is_none_or(Role::is_shipment_side) {
            Body::ShipmentScan(ShipmentScan {
                code,
                symbology,
                sscc: None,
                gs1: Default::default(),
            })
        } else {
            Body::InventoryScan(InventoryScan {
                code,
                symbology,
                gtin: None,
                batch: None,
                expiry: None,
                serial: None,
                quantity: None,
                net_kg: None,
                gs1: Default::default(),
            })
        };
    };
    if gs1.sscc().is_some() || gs1.gtin().is_none() {
        return Body::ShipmentScan(ShipmentScan {
            code,
            symbology,
            sscc: gs1.sscc().map(str::to_owned),
            gs1: gs1.to_map(),
        });
    }
    let owned = |ai: &str| gs1.get(ai).map(str::to_owned);
    Body::InventoryScan(InventoryScan {
        gtin: gs1.gtin().map(str::to_owned),
        batch: owned("10"),
        expiry: gs1.get("17").and_then(|d| gs1::date_to_iso(d, year)),
        serial: owned("21"),
        quantity: gs1
            .get("30")
            .or_else(|| gs1.get("37"))
            .and_then(|q| q.parse().ok()),
        net_kg: net_kg(&gs1),
        gs1: gs1.to_map(),
        code,
        symbology,
    })
}

/// AI 310n (net weight in kg, n implied decimals) as a canonical decimal string.
fn net_kg(gs1: &Elements) -> Option<String> {
    gs1.0.iter().find_map(|(ai, value)| match ai.as_bytes() {
        [b'3', b'1', b'0', n @ b'0'..=b'5'] => Some(decimal(value, usize::from(n - b'0'))),
        _ => None,
    })
}

/// Digits with `places` implied decimals, written without leading or trailing zeros:
/// ("000123", 3) → "0.123", ("001234", 2) → "12.34", ("012300", 2) → "123", ("000000", 0) → "0".
pub(crate) fn decimal(digits: &str, places: usize) -> String {
    let split = digits.len().saturating_sub(places);
    let (int, frac) = digits.split_at(split);
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let mut out = String::with_capacity(digits.len() + 2);
    out.push_str(if int.is_empty() { "0" } else { int });
    if !frac.is_empty() {
        out.push('.');
        // Fewer digits than places: the missing leading zeros of the fraction.
        for _ in digits.len()..places {
            out.push('0');
        }
        out.push_str(frac);
    }
    out
}

/// Non-GS1 data must be UTF-8 without control characters other than GS (and the ISO/IEC 15434
/// envelope's separators inside such a message). Offsets count from the start of the line.
fn check_text(data: &[u8], offset: usize) -> Result<(), String> {
    let text = std::str::from_utf8(data).map_err(|e| {
        let at = e.valid_up_to();
        let byte = data.get(at).copied().unwrap_or(0);
        format!(
            "byte 0x{byte:02X} at offset {} is not valid UTF-8",
            offset + at
        )
    })?;
    let envelope = is_iso15434(data);
    let allowed = |c: char| {
        c == '\u{1d}' || (envelope && matches!(c, '\u{04}' | '\u{1c}' | '\u{1e}' | '\u{1f}'))
    };
    match text
        .char_indices()
        .find(|&(_, c)| c.is_control() && !allowed(c))
    {
        Some((i, c)) if c.is_ascii() => Err(format!(
            "control character 0x{:02X} at offset {} is not allowed in a barcode",
            u32::from(c),
            offset + i
        )),
        Some((i, c)) => Err(format!(
            "control character U+{:04X} at offset {} is not allowed in a barcode",
            u32::from(c),
            offset + i
        )),
        None => Ok(()),
    }
}

fn gtin_elements(gtin14: String) -> Elements {
    Elements(vec![("01".to_owned(), gtin14)])
}

/// Validates EAN/UPC data; returns the symbology's name and the GTIN-14.
fn ean_upc(content: Content, data: &[u8]) -> Result<(&'static str, String), String> {
    let name = match (content, data.len()) {
        (Content::Ean8, _) => "ean-8",
        (Content::EanUpc, 12) => "upc-a",
        (Content::EanUpc, 8) => "upc-e",
        _ => "ean-13",
    };
    if let Some(&b) = data.iter().find(|b| !b.is_ascii_digit()) {
        return Err(format!("{name}: {} is not a digit", gs1::Found(b)));
    }
    let digits = String::from_utf8_lossy(data);
    let base = match (content, data.len()) {
        (Content::EanUpc, 13 | 12) | (Content::Ean8, 8) => digits.into_owned(),
        (Content::EanUpc, 8) => upc_e_to_upc_a(data)
            .ok_or_else(|| format!("upc-e: number system {} is not 0 or 1", char::from(data[0])))?,
        (Content::EanAddOn, 15 | 18) => digits[..13].to_owned(),
        (Content::EanUpc, n) => {
            return Err(format!(
                "ean-13: {n} digits, needs 13 (EAN-13), 12 (UPC-A) or 8 (UPC-E)"
            ))
        }
        (Content::Ean8, n) => return Err(format!("ean-8: {n} digits, needs 8")),
        (_, n) => return Err(format!("ean-13 with add-on: {n} digits, needs 15 or 18")),
    };
    if let Some((body, last)) = base.split_at_checked(base.len().saturating_sub(1)) {
        let expected = gs1::check_digit(body).unwrap_or(0);
        if last.as_bytes() != [b'0' + expected] {
            return Err(format!(
                "{name}: check digit is {last}, expected {expected}"
            ));
        }
    }
    Ok((name, format!("{base:0>14}")))
}

/// Expands an 8-digit UPC-E (number system, six digits, check digit) to the 12-digit UPC-A.
fn upc_e_to_upc_a(e: &[u8]) -> Option<String> {
    let [ns @ (b'0' | b'1'), d1, d2, d3, d4, d5, d6, check] = *e else {
        return None;
    };
    let body: [u8; 10] = match d6 {
        b'0'..=b'2' => [d1, d2, d6, b'0', b'0', b'0', b'0', d3, d4, d5],
        b'3' => [d1, d2, d3, b'0', b'0', b'0', b'0', b'0', d4, d5],
        b'4' => [d1, d2, d3, d4, b'0', b'0', b'0', b'0', b'0', d5],
        _ => [d1, d2, d3, d4, d5, b'0', b'0', b'0', b'0', d6],
    };
    let mut out = String::with_capacity(12);
    out.push(char::from(ns));
    out.extend(body.iter().map(|&b| char::from(b)));
    out.push(char::from(check));
    Some(out)
}

/// The `barcode` decoder: one code per frame (a line, or an STX/ETX telegram on a serial port).
#[derive(Debug)]
pub struct BarcodeDecoder {
    framer: TextFramer,
    no_read: String,
    max_frame: usize,
}

impl BarcodeDecoder {
    /// `no_read`: the scanner's no-read text.
    pub fn new(framing: Framing, no_read: &str, max_frame: usize) -> BarcodeDecoder {
        BarcodeDecoder {
            framer: TextFramer::new(framing, max_frame),
            no_read: no_read.to_owned(),
            max_frame,
        }
    }
}

impl Decoder for BarcodeDecoder {
    fn push(&mut self, bytes: &[u8], cx: Context, out: &mut Vec<decoder::Decoded>) {
        let no_read = &self.no_read;
        self.framer.decode(bytes, self.max_frame, out, |line| {
            to_body(decode(line, no_read), cx.role, cx.year())
        });
    }

    fn message(&mut self, payload: &[u8], cx: Context, out: &mut Vec<decoder::Decoded>) {
        decoder::decode_message(payload, self.max_frame, out, |line| {
            to_body(decode(line, &self.no_read), cx.role, cx.year())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Exception, Kind};

    fn scan(line: &str) -> Scan {
        match decode(line.as_bytes(), "NOREAD") {
            Decoded::Scan(s) => s,
            other => panic!("{line:?} did not decode to a scan: {other:?}"),
        }
    }

    fn invalid(line: &[u8]) -> String {
        match decode(line, "NOREAD") {
            Decoded::Invalid { detail } | Decoded::Undecodable { detail } => detail,
            other => panic!("{line:?} is not invalid: {other:?}"),
        }
    }

    #[test]
    fn net_kg_is_a_canonical_decimal() {
        assert_eq!(decimal("000123", 3), "0.123");
        assert_eq!(decimal("001234", 2), "12.34");
        assert_eq!(decimal("012300", 2), "123");
        assert_eq!(decimal("000100", 3), "0.1");
        assert_eq!(decimal("000005", 0), "5");
        assert_eq!(decimal("000000", 5), "0");
        assert_eq!(decimal("100000", 5), "1");
        assert_eq!(decimal("000001", 5), "0.00001");
        assert_eq!(decimal("123456", 5), "1.23456");
        assert_eq!(decimal("12", 5), "0.00012");
    }

    #[test]
    fn an_expiry_year_takes_its_century_from_the_year_of_reading() {
        let expiry =
            |year| match to_body(decode(b"]C1019501234567890317990606", "NOREAD"), None, year) {
                Body::InventoryScan(b) => b.expiry,
                other => panic!("not an inventory scan: {other:?}"),
            };
        assert_eq!(expiry(2026).as_deref(), Some("1999-06-06"));
        assert_eq!(expiry(2060).as_deref(), Some("2099-06-06"));
    }

    #[test]
    fn a_bracketed_code_with_an_unknown_ai_is_an_invalid_barcode() {
        let Body::Exception(e) = to_body(decode(b"(01)95012345678903(89)12", "NOREAD"), None, 2026)
        else {
            panic!("not an exception");
        };
        assert_eq!(e.reason, ExceptionReason::InvalidBarcode);
        assert!(e.detail.contains("89"), "{}", e.detail);
    }

    #[test]
    fn inventory_body_carries_every_field() {
        let s = scan("]C10195012345678903310200123410LOT42\u{1d}17250200\u{1d}21SN7\u{1d}3012");
        let Body::InventoryScan(b) = to_body(Decoded::Scan(s), Some(Role::Picking), 2026) else {
            panic!("not an inventory scan");
        };
        assert_eq!(b.gtin.as_deref(), Some("95012345678903"));
        assert_eq!(b.batch.as_deref(), Some("LOT42"));
        assert_eq!(b.expiry.as_deref(), Some("2025-02-28"));
        assert_eq!(b.serial.as_deref(), Some("SN7"));
        assert_eq!(b.quantity, Some(12));
        assert_eq!(b.net_kg.as_deref(), Some("12.34"));
        assert_eq!(b.gs1.len(), 6);
        assert_eq!(b.symbology, "gs1-128");
    }

    #[test]
    fn a_plain_code_follows_the_station_role() {
        for role in Role::ALL {
            let body = to_body(Decoded::Scan(scan("LPN0004711")), Some(role), 2026);
            let want = if role.is_shipment_side() {
                Kind::ShipmentScan
            } else {
                Kind::InventoryScan
            };
            assert_eq!(body.kind(), want, "{role}");
            if let Body::InventoryScan(b) = body {
                assert_eq!(b.gtin, None);
                assert_eq!(b.code, "LPN0004711");
                assert!(b.gs1.is_empty());
            }
        }
        let body = to_body(Decoded::Scan(scan("LPN0004711")), None, 2026);
        assert_eq!(body.kind(), Kind::ShipmentScan, "no station: shipment side");
    }

    #[test]
    fn sscc_wins_over_gtin_and_neither_is_a_shipment_scan() {
        let s = scan("]C1001061414123456789080295012345678903");
        let Body::ShipmentScan(b) = to_body(Decoded::Scan(s), Some(Role::Receiving), 2026) else {
            panic!("not a shipment scan");
        };
        assert_eq!(b.sscc.as_deref(), Some("106141412345678908"));
        assert_eq!(b.gs1.len(), 2);

        let s = scan("]C1400PO-77");
        let Body::ShipmentScan(b) = to_body(Decoded::Scan(s), Some(Role::Receiving), 2026) else {
            panic!("not a shipment scan");
        };
        assert_eq!(b.sscc, None);
        assert_eq!(b.gs1.get("400").map(String::as_str), Some("PO-77"));
    }

    #[test]
    fn no_read_and_invalid_become_exceptions() {
        assert_eq!(decode(b"NOREAD", "NOREAD"), Decoded::NoRead);
        assert_eq!(decode(b"  NOREAD \r\n", "NOREAD"), Decoded::NoRead);
        assert_eq!(decode(b"]Z0ERROR", "ERROR"), Decoded::NoRead);
        assert!(matches!(decode(b"NOREAD", "ERR"), Decoded::Scan(_)));
        let body = to_body(decode(b"]C100106141412345678907", "NOREAD"), None, 2026);
        assert_eq!(
            body,
            Body::Exception(Exception::new(
                ExceptionReason::InvalidBarcode,
                "AI 00: check digit is 7, expected 8"
            ))
        );
        let Body::Exception(e) = to_body(Decoded::NoRead, None, 2026) else {
            panic!("not an exception");
        };
        assert_eq!(e.reason, ExceptionReason::NoRead);
    }

    #[test]
    fn aim_identifiers_name_the_symbology() {
        assert_eq!(scan("]C0ABC-123").symbology, "code-128");
        assert_eq!(scan("]A0ABC").symbology, "code-39");
        assert_eq!(scan("]I012345678").symbology, "interleaved-2of5");
        assert_eq!(scan("]d1hello").symbology, "datamatrix");
        assert_eq!(scan("]Q1hello").symbology, "qr");
        assert_eq!(scan("]X0hello").symbology, "unknown");
        assert_eq!(scan("]d50112345678901231").symbology, "gs1-datamatrix");
        assert_eq!(scan("hello").symbology, "unknown");
        // A code-128 that is not GS1 stays plain even when it looks like an SSCC.
        assert_eq!(scan("]C000106141412345678908").gs1, None);
    }

    #[test]
    fn ean_and_upc_become_gtin_14() {
        let gtin = |line: &str| scan(line).gs1.and_then(|g| g.gtin().map(str::to_owned));
        assert_eq!(gtin("]E04006381333931").as_deref(), Some("04006381333931"));
        assert_eq!(gtin("]E0036000291452").as_deref(), Some("00036000291452"));
        assert_eq!(scan("]E0036000291452").symbology, "upc-a");
        // UPC-E 0425261 4 expands to UPC-A 042100005264.
        assert_eq!(gtin("]E004252614").as_deref(), Some("00042100005264"));
        assert_eq!(scan("]E004252614").symbology, "upc-e");
        assert_eq!(
            gtin("]E3400638133393112").as_deref(),
            Some("04006381333931")
        );
        assert_eq!(gtin("]E402345673").as_deref(), Some("00000002345673"));
        assert_eq!(
            invalid(b"]E04006381333932"),
            "ean-13: check digit is 2, expected 1"
        );
        assert_eq!(
            invalid(b"]E402345674"),
            "ean-8: check digit is 4, expected 3"
        );
        assert_eq!(
            invalid(b"]E040063813339311"),
            "ean-13: 14 digits, needs 13 (EAN-13), 12 (UPC-A) or 8 (UPC-E)"
        );
        assert_eq!(
            invalid(b"]E0400638133393X"),
            "ean-13: character 'X' is not a digit"
        );
    }

    #[test]
    fn bad_bytes_are_named_with_their_offset() {
        assert_eq!(
            invalid(b"]C0AB\xffC"),
            "byte 0xFF at offset 5 is not valid UTF-8"
        );
        assert_eq!(
            invalid(b"AB\x07C"),
            "control character 0x07 at offset 2 is not allowed in a barcode"
        );
        assert_eq!(
            invalid("AB\u{85}C".as_bytes()),
            "control character U+0085 at offset 2 is not allowed in a barcode"
        );
        assert_eq!(invalid(b""), "empty line");
        assert_eq!(invalid(b"]C1"), "empty GS1 data");
        assert_eq!(invalid(b"]C0"), "no data after the AIM identifier ]C0");
        // GS is allowed in text; so are the separators of an ISO/IEC 15434 message.
        assert_eq!(scan("]C0AB\u{1d}C").code, "AB\u{1d}C");
        let msg = "[)>\u{1e}06\u{1d}1JUN123\u{1e}\u{4}";
        assert_eq!(scan(&format!("]d1{msg}")).code, msg);
        assert_eq!(scan(msg).gs1, None);
    }

    #[test]
    fn gs1_without_aim_prefix_is_recognised() {
        let s = scan("00106141412345678908");
        assert_eq!(s.symbology, "unknown");
        assert_eq!(
            s.gs1.as_ref().and_then(Elements::sscc),
            Some("106141412345678908")
        );
        assert!(scan("0112345678901231\u{1d}10ABC").gs1.is_some());
        // Looks like an SSCC but the check digit is wrong: a plain code, not an error.
        assert_eq!(scan("00106141412345678907").gs1, None);
        // Clearly meant as GS1, and broken: an error that names the AI.
        assert_eq!(
            invalid(b"(01)12345678901234"),
            "AI 01: check digit is 4, expected 1"
        );
        assert_eq!(
            invalid(b"0112345678901234\x1d10A"),
            "AI 01: check digit is 4, expected 1"
        );
        assert_eq!(scan("LPN0004711").gs1, None);
    }

    #[test]
    fn classify_code_never_errors() {
        let s = classify_code("00106141412345678908");
        assert_eq!(
            s.gs1.as_ref().and_then(Elements::sscc),
            Some("106141412345678908")
        );
        let s = classify_code("]C100106141412345678908");
        assert_eq!(s.code, "00106141412345678908");
        assert_eq!(s.symbology, "gs1-128");
        assert!(s.gs1.is_some());
        let s = classify_code("(00)106141412345678908");
        assert!(s.gs1.is_some());
        let s = classify_code("]C100106141412345678907");
        assert_eq!(s.gs1, None);
        assert_eq!(s.code, "00106141412345678907");
        assert_eq!(classify_code("(01)bad").gs1, None);
        assert_eq!(classify_code("").code, "");
        assert_eq!(classify_code("TOTE-17").gs1, None);
    }

    #[test]
    fn bracketed_form_under_a_gs1_identifier() {
        let s = scan("]C1(01)12345678901231(10)ABC");
        assert_eq!(s.gs1.as_ref().and_then(|g| g.get("10")), Some("ABC"));
        assert_eq!(s.code, "(01)12345678901231(10)ABC");
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn decode_never_panics_on_bytes(line in proptest::collection::vec(any::<u8>(), 0..80)) {
                let d = decode(&line, "NOREAD");
                let _ = to_body(d, Some(Role::Receiving), 2026);
            }

            #[test]
            fn decode_never_panics_on_gs1_data(data in "\\PC{0,60}") {
                let line = format!("]C1{data}");
                let _ = to_body(decode(line.as_bytes(), "NOREAD"), None, 2026);
            }

            #[test]
            fn decode_never_panics_on_gs1_like_data(
                data in "[0-9()A-Z\\x1d]{0,60}",
                aim in prop_oneof![
                    Just(""), Just("]C1"), Just("]E0"), Just("]E3"), Just("]e0"), Just("]C0")
                ],
            ) {
                let line = format!("{aim}{data}");
                let _ = to_body(decode(line.as_bytes(), "NOREAD"), Some(Role::Picking), 2026);
                let _ = classify_code(&line);
            }

            #[test]
            fn classify_code_never_panics(code in "\\PC{0,60}") {
                let _ = classify_code(&code);
            }
        }
    }
}
