//! A&D-style indicator strings, decoder `scale.ascii`: `header,[mode,]data unit`, one per line.
//!
//! | part | values |
//! | --- | --- |
//! | header | `ST` stable, `US` unstable, `OL` out of range, `QT` counting (stable) |
//! | mode (indicators; balances omit it) | `GS` gross, `NT` net, `TR` a tare value |
//! | data | sign, digits with a point (blanks may replace leading zeros), the unit (`kg`, `  g`, `lb`, `PC`, …) |
//!
//! `OL` frames blank their digits (`OL,GS,+    .  kg`): they are overload, or underload with a
//! minus sign. A `TR` frame reports the tare ([`ScaleReading::Tare`]), not a weighing.

use super::{escape, kg_text, parse_number, weight_reading, ScaleError, ScaleReading};
use crate::event::WeightMode;

const DECODER: &str = "scale.ascii";

/// What the mode field says.
enum Mode {
    Weight(WeightMode),
    Tare,
}

/// Decodes one line (with or without its CR LF).
pub fn parse(line: &[u8]) -> Result<ScaleReading, ScaleError> {
    let line = super::strip_line_end(line).trim_ascii();
    if line.is_empty() {
        return Err(ScaleError::Empty);
    }
    let mut parts = line.splitn(3, |&b| b == b',');
    let header = parts.next().unwrap_or_default();
    let (mode, data) = match (parts.next(), parts.next()) {
        (Some(data), None) => (Mode::Weight(WeightMode::Gross), data),
        (Some(mode), Some(data)) => (mode_of(mode, line)?, data),
        (None, _) => {
            return Err(ScaleError::format(
                DECODER,
                "no comma after the header",
                line,
            ))
        }
    };
    let stable = match header {
        b"ST" | b"QT" => true,
        b"US" => false,
        b"OL" => {
            return Ok(if data.trim_ascii_start().starts_with(b"-") {
                ScaleReading::Underload
            } else {
                ScaleReading::Overload
            })
        }
        _ => {
            return Err(ScaleError::format(
                DECODER,
                format!("header {} is not ST, US, OL or QT", escape(header)),
                line,
            ))
        }
    };
    // The number runs up to the first byte that cannot be part of it; the unit is the rest.
    let split = data
        .iter()
        .position(|b| !matches!(b, b'+' | b'-' | b' ' | b'.' | b'0'..=b'9'))
        .unwrap_or(data.len());
    let (number, unit) = (&data[..split], data[split..].trim_ascii());
    if unit.is_empty() {
        return Err(ScaleError::format(
            DECODER,
            "no unit after the weight",
            line,
        ));
    }
    let unit = std::str::from_utf8(unit)
        .map_err(|_| ScaleError::format(DECODER, "unit is not text", line))?;
    let value = parse_number(DECODER, "weight", number)?;
    match mode {
        Mode::Weight(mode) => weight_reading(DECODER, stable, mode, value, unit, None),
        Mode::Tare => Ok(ScaleReading::Tare {
            stable,
            weight: value.to_fixed(),
            unit: unit.to_owned(),
            weight_kg: kg_text(DECODER, "tare", value, unit)?,
        }),
    }
}

fn mode_of(mode: &[u8], line: &[u8]) -> Result<Mode, ScaleError> {
    match mode {
        b"GS" => Ok(Mode::Weight(WeightMode::Gross)),
        b"NT" => Ok(Mode::Weight(WeightMode::Net)),
        b"TR" => Ok(Mode::Tare),
        _ => Err(ScaleError::format(
            DECODER,
            format!("mode {} is not GS, NT or TR", escape(mode)),
            line,
        )),
    }
}

/// The `scale.ascii` decoder: one indicator string per line, streamed by the indicator.
pub fn decoder(
    settle: super::settle::SettleConfig,
    max_frame: usize,
) -> super::decoder::ScaleDecoder {
    super::decoder::ScaleDecoder::new(
        DECODER,
        super::decoder::ScaleFramer::Line(crate::framing::LineFramer::new(max_frame)),
        parse,
        settle,
        max_frame,
        crate::decoder::Requests::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn balances_without_a_mode_field_and_padded_units() {
        assert_eq!(
            parse(b"ST,+00123.45  g\r\n"),
            Ok(ScaleReading::Weight {
                stable: true,
                mode: WeightMode::Gross,
                weight: "123.45".into(),
                unit: "g".into(),
                weight_kg: Some("0.12345".into()),
                tare_kg: None,
            })
        );
        assert!(matches!(
            parse(b"US,NT,-   1.50 lb"),
            Ok(ScaleReading::Weight { stable: false, mode: WeightMode::Net, weight, weight_kg: Some(kg), .. })
                if weight == "-1.50" && kg == "-0.680388555"
        ));
        assert!(matches!(
            parse(b"QT,+0000012PC"),
            Ok(ScaleReading::Weight {
                weight_kg: None,
                ..
            })
        ));
    }

    #[test]
    fn out_of_range_is_overload_or_underload_by_sign() {
        assert_eq!(parse(b"OL,GS,+    .  kg"), Ok(ScaleReading::Overload));
        assert_eq!(parse(b"OL,GS,-    .  kg"), Ok(ScaleReading::Underload));
        assert_eq!(parse(b"OL,+9999.99kg"), Ok(ScaleReading::Overload));
    }

    #[test]
    fn malformed_lines_say_why() {
        let e = |l: &[u8]| {
            parse(l)
                .map_err(|e| e.to_string())
                .err()
                .unwrap_or_default()
        };
        assert_eq!(
            e(b"ST"),
            "not a scale.ascii frame (no comma after the header): \"ST\""
        );
        assert_eq!(
            e(b"XX,GS,+1.0kg"),
            "not a scale.ascii frame (header \"XX\" is not ST, US, OL or QT): \"XX,GS,+1.0kg\""
        );
        assert_eq!(
            e(b"ST,GR,+1.0kg"),
            "not a scale.ascii frame (mode \"GR\" is not GS, NT or TR): \"ST,GR,+1.0kg\""
        );
        assert_eq!(
            e(b"ST,GS,+    .  kg"),
            "scale.ascii: weight \"+    .  \" is not a weight: no digits"
        );
        assert_eq!(
            e(b"ST,GS,+12.0"),
            "not a scale.ascii frame (no unit after the weight): \"ST,GS,+12.0\""
        );
        assert_eq!(parse(b"\r\n"), Err(ScaleError::Empty));
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn never_panics_on_near_misses(h in "(ST|US|OL|QT|X)", m in "(GS,|NT,|TR,|)", n in "[-+ 0-9.]{0,10}", u in "[a-zA-Z %]{0,4}") {
            let _ = parse(format!("{h},{m}{n}{u}").as_bytes());
        }
    }
}
