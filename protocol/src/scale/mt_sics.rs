//! Mettler Toledo MT-SICS (Standard Interface Command Set), decoder `scale.mt_sics`.
//!
//! The balance answers only when asked: the agent writes [`STREAM`] (`SIR`: send every weight,
//! stable or not, until told otherwise) or [`POLL`] (`SI`: one weight now) and frames the
//! answers with [`crate::framing::LineFramer`] (lines end CR LF). Answers to `S`, `SI` and
//! `SIR` all start with the identifier `S`:
//!
//! | line | meaning |
//! | --- | --- |
//! | `S S     12.345 kg` | stable weight |
//! | `S D     12.340 kg` | dynamic (in motion) weight |
//! | `S +` / `S -` | overload / underload |
//! | `S I` | command not executable now (busy, e.g. taring): ask again |
//! | `ES` / `ET` / `EL` | syntax, transmission or logical error |
//!
//! The weight is the balance's current net weight (its manual's wording: with no tare set it is
//! the gross weight), so readings have mode net and no tare. Echoes of the commands (`SI`,
//! `SIR`, …) and identification lines (`I4 A "…"`, sent after power-up or reset) are
//! [`ScaleReading::Ack`].

use super::{escape, parse_number, strip_line_end, weight_reading, ScaleError, ScaleReading};
use crate::event::WeightMode;

/// Asks the balance to stream every weight (stable or not) until another command arrives.
pub const STREAM: &[u8] = b"SIR\r\n";
/// Asks the balance for the current weight once.
pub const POLL: &[u8] = b"SI\r\n";

const DECODER: &str = "scale.mt_sics";

/// Decodes one MT-SICS response line (with or without its CR LF).
pub fn parse(line: &[u8]) -> Result<ScaleReading, ScaleError> {
    let line = strip_line_end(line).trim_ascii();
    let (id, rest) = split_token(line);
    match id {
        b"" => Err(ScaleError::Empty),
        b"ES" if rest.is_empty() => Ok(ScaleReading::Error(
            "syntax error: the balance did not recognise the command (ES)".into(),
        )),
        b"ET" if rest.is_empty() => Ok(ScaleReading::Error(
            "transmission error: the balance received a damaged command; check baud rate, parity and cabling (ET)".into(),
        )),
        b"EL" if rest.is_empty() => Ok(ScaleReading::Error(
            "logical error: the balance cannot execute the command (EL)".into(),
        )),
        b"S" => weight_answer(line, rest),
        b"SI" | b"SIR" | b"SIU" | b"SIRU" | b"@" if rest.is_empty() => {
            Ok(ScaleReading::Ack(String::from_utf8_lossy(line).into_owned()))
        }
        [b'I', digits @ ..] if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) => {
            Ok(ScaleReading::Ack(String::from_utf8_lossy(line).into_owned()))
        }
        _ => Err(ScaleError::format(
            DECODER,
            "unknown response identifier",
            line,
        )),
    }
}

/// The part of an `S …` answer after the identifier.
fn weight_answer(line: &[u8], rest: &[u8]) -> Result<ScaleReading, ScaleError> {
    let (status, value) = split_token(rest);
    match status {
        // `S` alone is the echo of the command S.
        b"" => Ok(ScaleReading::Ack("S".into())),
        b"+" if value.is_empty() => Ok(ScaleReading::Overload),
        b"-" if value.is_empty() => Ok(ScaleReading::Underload),
        b"I" if value.is_empty() => Ok(ScaleReading::Busy),
        b"S" | b"D" => {
            // The unit is the last token; everything before it is the number (a sign may be
            // set apart by blanks).
            let Some(blank) = value.iter().rposition(|&b| b == b' ') else {
                return Err(ScaleError::format(DECODER, "weight without a unit", line));
            };
            let (number, unit) = (&value[..blank], &value[blank + 1..]);
            let unit = std::str::from_utf8(unit)
                .map_err(|_| ScaleError::format(DECODER, "unit is not text", line))?;
            let value = parse_number(DECODER, "weight", number)?;
            weight_reading(DECODER, status == b"S", WeightMode::Net, value, unit, None)
        }
        _ => Err(ScaleError::format(
            DECODER,
            format!("unknown status {}", escape(status)),
            line,
        )),
    }
}

/// The first blank-separated token and the rest (leading blanks removed).
fn split_token(s: &[u8]) -> (&[u8], &[u8]) {
    match s.iter().position(|&b| b == b' ') {
        Some(i) => (&s[..i], s[i..].trim_ascii_start()),
        None => (s, &[]),
    }
}

/// The `scale.mt_sics` decoder: lines, asked for with `SI` every `poll_ms`, or once with `SIR`
/// for a stream when `poll_ms` is `None`.
pub fn decoder(
    settle: super::settle::SettleConfig,
    max_frame: usize,
    poll_ms: Option<u64>,
) -> super::decoder::ScaleDecoder {
    let requests = match poll_ms {
        Some(ms) => crate::decoder::Requests {
            on_open: None,
            poll: Some((ms, POLL)),
        },
        None => crate::decoder::Requests {
            on_open: Some(STREAM),
            poll: None,
        },
    };
    super::decoder::ScaleDecoder::new(
        DECODER,
        super::decoder::ScaleFramer::Line(crate::framing::LineFramer::new(max_frame)),
        parse,
        settle,
        max_frame,
        requests,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn weight(line: &str) -> (bool, String, String, Option<String>) {
        match parse(line.as_bytes()) {
            Ok(ScaleReading::Weight {
                stable,
                weight,
                unit,
                weight_kg,
                mode: WeightMode::Net,
                tare_kg: None,
            }) => (stable, weight, unit, weight_kg),
            other => panic!("{line:?}: {other:?}"),
        }
    }

    #[test]
    fn weights_in_every_unit_convert_exactly() {
        assert_eq!(
            weight("S S     100.00 g\r\n"),
            (true, "100.00".into(), "g".into(), Some("0.1".into()))
        );
        assert_eq!(weight("S D     12.345 kg").3, Some("12.345".into()));
        assert_eq!(weight("S S       2.000 lb").3, Some("0.90718474".into()));
        assert_eq!(weight("S S      16.00 oz").3, Some("0.45359237".into()));
        assert_eq!(weight("S S      1.2345 t").3, Some("1234.5".into()));
        assert_eq!(weight("S S    -  0.50 g").1, "-0.50");
        assert_eq!(weight("S S      5 PCS").3, None, "pieces are not a mass");
    }

    #[test]
    fn status_answers_and_echoes() {
        assert_eq!(parse(b"S +\r\n"), Ok(ScaleReading::Overload));
        assert_eq!(parse(b"S -"), Ok(ScaleReading::Underload));
        assert_eq!(parse(b"S I"), Ok(ScaleReading::Busy));
        assert!(
            matches!(parse(b"ET"), Ok(ScaleReading::Error(e)) if e.starts_with("transmission"))
        );
        assert!(matches!(parse(b"SIR"), Ok(ScaleReading::Ack(_))));
        assert!(matches!(parse(b"SI\r\n"), Ok(ScaleReading::Ack(_))));
        assert!(matches!(
            parse(b"I4 A \"B021002593\""),
            Ok(ScaleReading::Ack(_))
        ));
    }

    #[test]
    fn malformed_answers_are_errors_that_say_why() {
        assert_eq!(parse(b"\r\n"), Err(ScaleError::Empty));
        let e = |l: &[u8]| {
            parse(l)
                .map_err(|e| e.to_string())
                .err()
                .unwrap_or_default()
        };
        assert_eq!(
            e(b"S X 1 g"),
            "not a scale.mt_sics frame (unknown status \"X\"): \"S X 1 g\""
        );
        assert_eq!(
            e(b"S S 12.3"),
            "not a scale.mt_sics frame (weight without a unit): \"S S 12.3\""
        );
        assert_eq!(
            e(b"S S 12,3 g"),
            "scale.mt_sics: weight \"12,3\" is not a weight: character ',' at offset 2 is not part of a decimal number"
        );
        assert!(parse(b"S + 12").is_err());
        assert!(parse(b"XYZ").is_err());
        assert!(parse(b"S S \xff g").is_err());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn never_panics_on_near_misses(status in "[SD+\\-I ]{0,3}", num in "[-+ 0-9.]{0,14}", unit in "[a-zA-Z ]{0,4}") {
            let _ = parse(format!("S {status} {num} {unit}").as_bytes());
        }
    }
}
