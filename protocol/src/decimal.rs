//! Exact decimal numbers for weights: parsed from what a device sent, converted to kg by exact
//! unit factors, printed canonically. No floating point anywhere, so `100.00 g` is exactly
//! `0.1` kg and `1 lb` exactly `0.45359237` kg.
//!
//! A value is `mantissa × 10^-scale`. Parsing keeps the scale as sent (`"100.00"` has scale 2),
//! so [`Decimal::to_fixed`] can show the reading as the scale displayed it, while `Display`
//! gives the canonical form: no leading zeros, no trailing fractional zeros, `"0"` for zero.
//! Comparison and equality are by value (`10.00 == 10`).

use std::cmp::Ordering;
use std::fmt;

/// At most this many digits are read (leading zeros not counted), so that a reading times the
/// longest exact unit factor (12 fractional digits) still fits in an `i128`.
const MAX_DIGITS: u32 = 24;

/// An exact decimal number: `mantissa × 10^-scale`.
#[derive(Debug, Clone, Copy)]
pub struct Decimal {
    mantissa: i128,
    scale: u32,
}

/// Why text is not a decimal number; the message says what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    /// Nothing but blanks (and perhaps a sign or a point).
    #[error("no digits")]
    NoDigits,
    /// A byte that is not a digit, a sign or the one decimal point.
    #[error("{found} at offset {offset} is not part of a decimal number")]
    Character {
        /// Where it is, counting from the start of the text as given.
        offset: usize,
        /// The byte, shown for a person.
        found: crate::gs1::Found,
    },
    /// More significant digits than any scale sends.
    #[error("more than {MAX_DIGITS} significant digits")]
    TooLong,
}

impl Decimal {
    /// Zero, with no decimals.
    pub const ZERO: Decimal = Decimal {
        mantissa: 0,
        scale: 0,
    };

    /// `mantissa × 10^-scale`.
    pub const fn new(mantissa: i128, scale: u32) -> Decimal {
        Decimal { mantissa, scale }
    }

    /// The integer mantissa (as parsed, trailing zeros kept).
    pub fn mantissa(&self) -> i128 {
        self.mantissa
    }

    /// The number of decimals (as parsed).
    pub fn scale(&self) -> u32 {
        self.scale
    }

    /// Reads ASCII text such as `"  -12.345"`, `"0012.34"`, `"+100.00"`, `"5."` or `".5"`.
    /// Surrounding blanks are ignored, and so are blanks between the sign and the digits
    /// (indicators that suppress leading zeros send `"-   1.25"`).
    pub fn parse(text: &str) -> Result<Decimal, DecimalError> {
        Decimal::parse_bytes(text.as_bytes())
    }

    /// [`Decimal::parse`] for bytes as read from a device.
    pub fn parse_bytes(text: &[u8]) -> Result<Decimal, DecimalError> {
        let start = text.len() - text.trim_ascii_start().len();
        let body = text.trim_ascii();
        let (negative, mut i) = match body.first() {
            Some(b'-') => (true, 1),
            Some(b'+') => (false, 1),
            _ => (false, 0),
        };
        if i == 1 {
            i += body[1..].len() - body[1..].trim_ascii_start().len();
        }
        let mut mantissa: i128 = 0;
        let mut digits = 0u32;
        let mut significant = 0u32;
        let mut scale = 0u32;
        let mut point = false;
        for (at, &b) in body.iter().enumerate().skip(i) {
            match b {
                b'0'..=b'9' => {
                    digits += 1;
                    if mantissa != 0 || b != b'0' {
                        significant += 1;
                        if significant > MAX_DIGITS {
                            return Err(DecimalError::TooLong);
                        }
                    }
                    mantissa = mantissa * 10 + i128::from(b - b'0');
                    if point {
                        scale += 1;
                        // Fractional zeros after a zero mantissa still count toward the size.
                        if scale > MAX_DIGITS {
                            return Err(DecimalError::TooLong);
                        }
                    }
                }
                b'.' if !point => point = true,
                _ => {
                    return Err(DecimalError::Character {
                        offset: start + at,
                        found: crate::gs1::Found(b),
                    })
                }
            }
        }
        if digits == 0 {
            return Err(DecimalError::NoDigits);
        }
        Ok(Decimal {
            mantissa: if negative { -mantissa } else { mantissa },
            scale,
        })
    }

    /// True for zero, whatever the scale.
    pub fn is_zero(&self) -> bool {
        self.mantissa == 0
    }

    /// True below zero.
    pub fn is_negative(&self) -> bool {
        self.mantissa < 0
    }

    /// The exact product, or `None` if it does not fit.
    pub fn checked_mul(self, other: Decimal) -> Option<Decimal> {
        Some(Decimal {
            mantissa: self.mantissa.checked_mul(other.mantissa)?,
            scale: self.scale.checked_add(other.scale)?,
        })
    }

    /// The value times `10^exp`, exactly, or `None` if it does not fit.
    pub fn checked_shift(self, exp: i32) -> Option<Decimal> {
        if exp >= 0 {
            Some(Decimal {
                mantissa: self
                    .mantissa
                    .checked_mul(10i128.checked_pow(exp.unsigned_abs())?)?,
                scale: self.scale,
            })
        } else {
            Some(Decimal {
                mantissa: self.mantissa,
                scale: self.scale.checked_add(exp.unsigned_abs())?,
            })
        }
    }

    /// The same value with trailing fractional zeros removed.
    pub fn normalized(self) -> Decimal {
        let Decimal {
            mut mantissa,
            mut scale,
        } = self;
        if mantissa == 0 {
            return Decimal::ZERO;
        }
        if let Ok(mut small) = i64::try_from(mantissa) {
            // u64/i64 division is much cheaper than i128; most weights fit.
            while scale > 0 && small % 10 == 0 {
                small /= 10;
                scale -= 1;
            }
            return Decimal {
                mantissa: i128::from(small),
                scale,
            };
        }
        while scale > 0 && mantissa % 10 == 0 {
            mantissa /= 10;
            scale -= 1;
        }
        Decimal { mantissa, scale }
    }

    /// The value with exactly `scale()` decimals and no leading zeros, as a display shows it:
    /// `"0012.340"` reads back as `"12.340"`, `"-100.00"` as `"-100.00"`, zero as `"0.00"`.
    pub fn to_fixed(&self) -> String {
        let mut out = String::with_capacity(24);
        // Writing to a String cannot fail.
        let _ = write_digits(&mut out, self.mantissa, self.scale);
        out
    }

    /// The value in kg of `self` in `unit`, exactly, if the unit is known (see [`kg_per_unit`])
    /// and the product fits.
    pub fn to_kg(self, unit: &str) -> Option<Decimal> {
        self.checked_mul(kg_per_unit(unit)?)
    }
}

/// Writes `mantissa × 10^-scale` with exactly `scale` decimals, without allocating.
fn write_digits(out: &mut impl fmt::Write, mantissa: i128, scale: u32) -> fmt::Result {
    // u128::MAX has 39 digits.
    let mut buf = [0u8; 40];
    let mut at = buf.len();
    let mut rest = mantissa.unsigned_abs();
    loop {
        // u64 division is much cheaper than u128; most weights fit.
        let (digit, next) = match u64::try_from(rest) {
            Ok(small) => ((small % 10) as u8, u128::from(small / 10)),
            Err(_) => ((rest % 10) as u8, rest / 10),
        };
        at -= 1;
        buf[at] = b'0' + digit;
        rest = next;
        if rest == 0 {
            break;
        }
    }
    let digits = std::str::from_utf8(&buf[at..]).map_err(|_| fmt::Error)?;
    if mantissa < 0 {
        out.write_char('-')?;
    }
    let scale = scale as usize;
    if scale == 0 {
        return out.write_str(digits);
    }
    if digits.len() > scale {
        let (int, frac) = digits.split_at(digits.len() - scale);
        out.write_str(int)?;
        out.write_char('.')?;
        out.write_str(frac)
    } else {
        out.write_str("0.")?;
        for _ in digits.len()..scale {
            out.write_char('0')?;
        }
        out.write_str(digits)
    }
}

impl fmt::Display for Decimal {
    /// The canonical form: `"0.1"`, `"12.345"`, `"-0.5"`, `"1000"`, `"0"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.normalized();
        write_digits(f, n.mantissa, n.scale)
    }
}

impl std::ops::Neg for Decimal {
    type Output = Decimal;
    /// The same value negated (`i128::MIN`, which no parse yields, saturates).
    fn neg(self) -> Decimal {
        Decimal {
            mantissa: self.mantissa.checked_neg().unwrap_or(i128::MAX),
            scale: self.scale,
        }
    }
}

impl std::str::FromStr for Decimal {
    type Err = DecimalError;
    fn from_str(s: &str) -> Result<Decimal, DecimalError> {
        Decimal::parse(s)
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Decimal) -> Ordering {
        let (a, b) = (self.normalized(), other.normalized());
        match a.mantissa.signum().cmp(&b.mantissa.signum()) {
            Ordering::Equal => {}
            unequal => return unequal,
        }
        if a.scale == b.scale {
            return a.mantissa.cmp(&b.mantissa);
        }
        // Bring both to the larger scale. If that overflows, the scaled one is the larger in
        // magnitude (the other fits); the shared sign then decides.
        let (low, high, swapped) = if a.scale < b.scale {
            (a, b, false)
        } else {
            (b, a, true)
        };
        let shifted = i32::try_from(high.scale - low.scale)
            .ok()
            .and_then(|exp| low.checked_shift(exp));
        let ord = match shifted {
            Some(l) => l.mantissa.cmp(&high.mantissa),
            None if low.mantissa > 0 => Ordering::Greater,
            None => Ordering::Less,
        };
        if swapped {
            ord.reverse()
        } else {
            ord
        }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Decimal) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Decimal {
    fn eq(&self, other: &Decimal) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Decimal {}

/// How many kg one `unit` is, exactly (international avoirdupois and troy definitions).
/// Units are matched without regard to case and surrounding blanks: `g`, `kg`, `mg`, `t`
/// (metric tonne), `lb`/`lbs`, `oz`, `ozt` (troy ounce), `dwt` (pennyweight), `ct` (metric
/// carat), `lt` (long ton, 2240 lb). Anything else (pieces, percent, custom units) is `None`.
pub fn kg_per_unit(unit: &str) -> Option<Decimal> {
    let unit = unit.trim();
    let is = |name: &str| unit.eq_ignore_ascii_case(name);
    Some(if is("kg") {
        Decimal::new(1, 0)
    } else if is("g") {
        Decimal::new(1, 3)
    } else if is("mg") {
        Decimal::new(1, 6)
    } else if is("t") {
        Decimal::new(1000, 0)
    } else if is("lb") || is("lbs") {
        Decimal::new(45_359_237, 8)
    } else if is("oz") {
        // 1/16 lb.
        Decimal::new(28_349_523_125, 12)
    } else if is("ozt") {
        // 480 grains of 64.79891 mg.
        Decimal::new(311_034_768, 10)
    } else if is("dwt") {
        // 1/20 troy ounce.
        Decimal::new(155_517_384, 11)
    } else if is("ct") {
        Decimal::new(2, 4)
    } else if is("lt") {
        Decimal::new(10_160_469_088, 7)
    } else {
        return None;
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn parses_device_text_and_keeps_the_scale_as_sent() {
        assert_eq!(
            (d("  -12.345").mantissa(), d("  -12.345").scale()),
            (-12345, 3)
        );
        assert_eq!(d("0012.34").to_fixed(), "12.34");
        assert_eq!(d("100.00").to_fixed(), "100.00");
        assert_eq!(d("+0.50").to_fixed(), "0.50");
        assert_eq!(d("-   1.25").to_fixed(), "-1.25");
        assert_eq!(d(".5").to_fixed(), "0.5");
        assert_eq!(d("5.").to_fixed(), "5");
        assert_eq!(d("-0.00").to_fixed(), "0.00");
    }

    #[test]
    fn rejects_what_is_not_a_number_with_a_reason() {
        assert_eq!(Decimal::parse("  "), Err(DecimalError::NoDigits));
        assert_eq!(Decimal::parse("-."), Err(DecimalError::NoDigits));
        assert_eq!(
            Decimal::parse("1.2.3").map_err(|e| e.to_string()),
            Err("character '.' at offset 3 is not part of a decimal number".to_owned())
        );
        assert_eq!(
            Decimal::parse(" 12a").map_err(|e| e.to_string()),
            Err("character 'a' at offset 3 is not part of a decimal number".to_owned())
        );
        assert!(Decimal::parse("1 2").is_err());
        assert_eq!(Decimal::parse(&"9".repeat(25)), Err(DecimalError::TooLong));
        assert!(Decimal::parse(&format!("{}1", "0".repeat(60))).is_ok());
    }

    #[test]
    fn canonical_text_has_no_leading_or_trailing_zeros() {
        assert_eq!(
            d("100.00").to_kg("g").map(|k| k.to_string()),
            Some("0.1".into())
        );
        assert_eq!(
            d("12.345").to_kg("kg").map(|k| k.to_string()),
            Some("12.345".into())
        );
        assert_eq!(d("0000").to_string(), "0");
        assert_eq!(d("-0.500").to_string(), "-0.5");
        assert_eq!(
            d("1.5").to_kg("t").map(|k| k.to_string()),
            Some("1500".into())
        );
        assert_eq!(d("0.001").to_string(), "0.001");
    }

    #[test]
    fn imperial_units_convert_exactly() {
        let kg = |v: &str, u: &str| d(v).to_kg(u).map(|k| k.to_string());
        assert_eq!(kg("1", "lb"), Some("0.45359237".into()));
        assert_eq!(kg("250", "lb"), Some("113.3980925".into()));
        assert_eq!(kg("16", "oz"), Some("0.45359237".into()));
        assert_eq!(kg("1", "LB"), Some("0.45359237".into()));
        assert_eq!(kg("2240", "lb"), kg("1", "lt"));
        assert_eq!(kg("20", "dwt"), kg("1", "ozt"));
        assert_eq!(kg("1", "pcs"), None);
    }

    #[test]
    fn compares_by_value() {
        assert_eq!(d("10.00"), d("10"));
        assert!(d("0.05") > d("0.0499"));
        assert!(d("-1") < d("0"));
        assert!(d("-1.5") < d("-1.49"));
        assert!(Decimal::new(i128::MAX, 0) > Decimal::new(1, 30));
        assert!(Decimal::new(-i128::MAX, 0) < Decimal::new(-1, 30));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = Decimal::parse(&s);
        }

        #[test]
        fn canonical_text_reads_back_to_the_same_value(m in -10i128.pow(20)..10i128.pow(20), s in 0u32..12) {
            let v = Decimal::new(m, s);
            let text = v.to_string();
            prop_assert_eq!(Decimal::parse(&text).ok(), Some(v));
            prop_assert_eq!(Decimal::parse(&v.to_fixed()).ok(), Some(v));
            prop_assert!(!text.starts_with("00") && !text.starts_with("-0") || text == "0" || text.starts_with("0.") || text.starts_with("-0."));
            if text.contains('.') {
                prop_assert!(!text.ends_with('0'));
            }
        }

        #[test]
        fn order_matches_rationals(a in -10i64.pow(12)..10i64.pow(12), sa in 0u32..8, b in -10i64.pow(12)..10i64.pow(12), sb in 0u32..8) {
            let (x, y) = (Decimal::new(a.into(), sa), Decimal::new(b.into(), sb));
            // a/10^sa vs b/10^sb  ⇔  a·10^sb vs b·10^sa
            let lhs = i128::from(a) * 10i128.pow(sb);
            let rhs = i128::from(b) * 10i128.pow(sa);
            prop_assert_eq!(x.cmp(&y), lhs.cmp(&rhs));
        }
    }
}
