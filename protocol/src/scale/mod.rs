//! Scales (docs/configuration.md, decoders `scale.mt_sics`, `scale.toledo`, `scale.ascii`): each
//! decoder turns one frame into a [`ScaleReading`]; [`settle::Settler`] turns the stream of
//! readings into at most one `shipment.weight` per item.
//!
//! Weights stay exact: the reading keeps the number as the scale displayed it and its unit, and
//! adds the value in kg converted by exact factors ([`crate::decimal`]).

pub mod ascii;
pub mod decoder;
pub mod mt_sics;
pub mod settle;
pub mod toledo;

use crate::decimal::Decimal;
use crate::event::WeightMode;

/// What one scale frame says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScaleReading {
    /// A weight, stable or in motion.
    Weight {
        /// The scale's own stability flag (no motion).
        stable: bool,
        /// Gross, or net of `tare_kg`.
        mode: WeightMode,
        /// The number as the scale displayed it: a sign only when negative, no leading zeros,
        /// the decimals as sent (`"-100.00"`, `"12.34"`, `"250"`).
        weight: String,
        /// The unit as sent (`"g"`, `"kg"`, `"lb"`); for Toledo, which sends status bits, the
        /// unit's usual symbol.
        unit: String,
        /// The weight in kg, exact and canonical (`"0.1"` for 100.00 g); `None` if the unit is
        /// not a unit of mass ([`crate::decimal::kg_per_unit`]).
        weight_kg: Option<String>,
        /// The tare in kg when the frame carries one (Toledo's tare field, zero included).
        tare_kg: Option<String>,
    },
    /// A tare value reported on its own (A&D `TR` header): not a weighing.
    Tare {
        /// The scale's stability flag.
        stable: bool,
        /// As for [`ScaleReading::Weight`].
        weight: String,
        /// The unit as sent.
        unit: String,
        /// The tare in kg, if the unit is known.
        weight_kg: Option<String>,
    },
    /// The load is above the scale's capacity.
    Overload,
    /// The load is below zero, beyond what the scale can show.
    Underload,
    /// The scale cannot answer now (MT-SICS `S I`, Toledo power-up): ask again.
    Busy,
    /// The scale reported a fault; the text says which, for a person, starting with a short
    /// name of the fault (`"syntax error: …"`).
    Error(String),
    /// A line that answers or echoes a command and carries no reading (MT-SICS command echo
    /// `SI`, `SIR`, identification `I4 A "…"`). Settling ignores it.
    Ack(String),
}

/// Why a frame is not a scale reading. The message names the fault for a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScaleError {
    /// The frame holds nothing but its terminator.
    #[error("empty frame")]
    Empty,
    /// The frame's checksum does not match its content: it was damaged on the line.
    #[error("checksum 0x{got:02X}, expected 0x{expected:02X}: the frame was damaged on the line; check cabling and baud rate")]
    Checksum {
        /// The checksum byte received.
        got: u8,
        /// The checksum computed over the frame.
        expected: u8,
    },
    /// The frame does not have the decoder's layout.
    #[error("not a {decoder} frame ({fault}): {frame}")]
    Format {
        /// The decoder's name, e.g. `"scale.toledo"`.
        decoder: &'static str,
        /// What is wrong.
        fault: String,
        /// The frame, escaped and shortened for a log line.
        frame: String,
    },
    /// A weight field is not a number, or too large.
    #[error("{decoder}: {field} {text:?} is not a weight: {fault}")]
    Weight {
        /// The decoder's name.
        decoder: &'static str,
        /// Which field (`"weight"`, `"tare"`).
        field: &'static str,
        /// The field as sent, escaped.
        text: String,
        /// What is wrong with it.
        fault: String,
    },
}

impl ScaleError {
    /// A short name of the fault: `"empty"`, `"checksum"`, `"format"` or `"weight"`.
    pub fn kind(&self) -> &'static str {
        match self {
            ScaleError::Empty => "empty",
            ScaleError::Checksum { .. } => "checksum",
            ScaleError::Format { .. } => "format",
            ScaleError::Weight { .. } => "weight",
        }
    }

    pub(crate) fn format(decoder: &'static str, fault: impl Into<String>, frame: &[u8]) -> Self {
        ScaleError::Format {
            decoder,
            fault: fault.into(),
            frame: escape(frame),
        }
    }
}

/// Bytes as a quoted, escaped string of at most 64 bytes of input, for messages.
pub(crate) fn escape(bytes: &[u8]) -> String {
    const MAX: usize = 64;
    let shown = &bytes[..bytes.len().min(MAX)];
    let mut out = format!("\"{}\"", shown.escape_ascii());
    if bytes.len() > MAX {
        out.push_str(&format!(" ({} bytes)", bytes.len()));
    }
    out
}

/// Removes one trailing CR LF, LF or CR (decoders accept frames with or without it).
pub(crate) fn strip_line_end(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r\n")
        .or_else(|| line.strip_suffix(b"\n"))
        .or_else(|| line.strip_suffix(b"\r"))
        .unwrap_or(line)
}

/// A weight reading from a parsed number: the displayed text, the unit and the kg values.
pub(crate) fn weight_reading(
    decoder: &'static str,
    stable: bool,
    mode: WeightMode,
    value: Decimal,
    unit: &str,
    tare: Option<Decimal>,
) -> Result<ScaleReading, ScaleError> {
    let weight_kg = kg_text(decoder, "weight", value, unit)?;
    let tare_kg = match tare {
        Some(t) => kg_text(decoder, "tare", t, unit)?,
        None => None,
    };
    Ok(ScaleReading::Weight {
        stable,
        mode,
        weight: value.to_fixed(),
        unit: unit.to_owned(),
        weight_kg,
        tare_kg,
    })
}

/// The value in kg as canonical text, `None` for a unit that is not a unit of mass.
pub(crate) fn kg_text(
    decoder: &'static str,
    field: &'static str,
    value: Decimal,
    unit: &str,
) -> Result<Option<String>, ScaleError> {
    let Some(factor) = crate::decimal::kg_per_unit(unit) else {
        return Ok(None);
    };
    value
        .checked_mul(factor)
        .map(|kg| Some(kg.to_string()))
        .ok_or_else(|| ScaleError::Weight {
            decoder,
            field,
            text: value.to_fixed(),
            fault: "too large to convert to kg".into(),
        })
}

/// Parses a weight field, naming the decoder and field in the error.
pub(crate) fn parse_number(
    decoder: &'static str,
    field: &'static str,
    text: &[u8],
) -> Result<Decimal, ScaleError> {
    Decimal::parse_bytes(text).map_err(|e| ScaleError::Weight {
        decoder,
        field,
        text: text.escape_ascii().to_string(),
        fault: e.to_string(),
    })
}
