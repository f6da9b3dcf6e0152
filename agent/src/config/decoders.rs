//! A source's decoder: `decoder = "NAME"` and that decoder's own keys, written in the source's
//! table beside the source's keys. Each decoder has its own settings type, so a key that does
//! not belong to the chosen decoder is refused by name. Adding a device format is one file in
//! `edge_protocol` (its `Decoder`) and one arm here.

use std::time::Duration;

use edge_protocol::decimal::Decimal;
use edge_protocol::decoder::{Decoder, Framing};
use edge_protocol::rules::{RecordKind, Records, RulesDecoder};
use edge_protocol::scale::settle::SettleConfig;
use edge_protocol::scale::{ascii, mt_sics, toledo};
use serde::Deserialize;

mod check;
mod read;

use check::check_scale;
pub(super) use read::read;

use super::defaults;
use super::read::Collector;
use super::{RuleConfig, Span};

/// The names `decoder` takes.
pub const NAMES: [&str; 6] = [
    "barcode",
    "scale.mt_sics",
    "scale.toledo",
    "scale.ascii",
    "json",
    "delimited",
];

impl Default for DecoderConfig {
    /// Stands in for a decoder that could not be read (its key is poisoned, so nothing judges
    /// it) until the loader sets the real one.
    fn default() -> Self {
        DecoderConfig::Barcode(Barcode {
            no_read: defaults::no_read(),
            max_frame: defaults::max_frame(),
            framing: Framing::Line,
        })
    }
}

/// The decoder of a source and its settings.
#[derive(Debug, Clone, PartialEq)]
pub enum DecoderConfig {
    /// One code per line (or STX/ETX telegram).
    Barcode(Barcode),
    /// Mettler Toledo MT-SICS, asked for readings.
    ScaleMtSics(MtSics),
    /// Toledo continuous output.
    ScaleToledo(Toledo),
    /// A&D-style indicator strings.
    ScaleAscii(Scale),
    /// One JSON object per message or line, mapped by rules.
    Json(Json),
    /// Text telegrams split on a separator, mapped by rules.
    Delimited(Delimited),
}

/// `decoder = "barcode"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Barcode {
    /// The scanner's no-read text.
    #[serde(default = "defaults::no_read")]
    pub no_read: String,
    /// Frames longer than this many bytes (16 to 1048576) become an `undecodable` exception.
    #[serde(default = "defaults::max_frame")]
    pub max_frame: usize,
    /// Serial only: "line" (default), "stx_etx" or "stx_etx_lrc".
    #[serde(default)]
    pub framing: Framing,
}

/// The settle rule's keys, the same for every scale.
macro_rules! scale_settings {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $field:ident: $ty:ty = $default:expr),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Frames longer than this many bytes (16 to 1048576) become an exception.
            #[serde(default = "defaults::max_frame")]
            pub max_frame: usize,
            /// How long the scale's stability flag must hold one weight.
            #[serde(default = "defaults::settle")]
            pub settle: Span,
            /// Weights below this (kg, decimal text) are an empty scale; the rule re-arms there.
            #[serde(default = "defaults::min_kg")]
            pub min_kg: String,
            /// An item that never settles in this time gives an `unstable_weight` exception.
            #[serde(default = "defaults::settle_timeout")]
            pub settle_timeout: Span,
            /// A weight carries the SSCC last scanned at the same station within this time.
            #[serde(default = "defaults::correlation_window")]
            pub correlation_window: Span,
            $($(#[$fm])* #[serde(default = $default)] pub $field: $ty,)*
        }

        impl $name {
            fn settle_config(&self) -> SettleConfig {
                SettleConfig {
                    settle_ms: self.settle.0.as_millis() as u64,
                    min_kg: Decimal::parse(&self.min_kg).unwrap_or(Decimal::new(5, 2)),
                    settle_timeout_ms: self.settle_timeout.0.as_millis() as u64,
                }
            }

            fn check(&self, c: &mut Collector, key: &str) {
                check_scale(c, key, &self.min_kg, self.settle, self.settle_timeout);
            }
        }
    };
}

scale_settings! {
    /// `decoder = "scale.mt_sics"`.
    MtSics {
        /// Ask with `SI` this often; unset: ask once for a stream (`SIR`).
        poll_interval: Option<Span> = "Option::default",
    }
}

scale_settings! {
    /// `decoder = "scale.toledo"`.
    Toledo {
        /// "auto" (default), "always" or "never" a checksum byte after CR.
        checksum: toledo::Checksum = "toledo::Checksum::default",
    }
}

scale_settings! {
    /// `decoder = "scale.ascii"`.
    Scale {}
}

/// `decoder = "json"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Json {
    /// Frames longer than this many bytes (16 to 1048576) become an `undecodable` exception.
    #[serde(default = "defaults::max_frame")]
    pub max_frame: usize,
    /// Serial only: "line" (default), "stx_etx" or "stx_etx_lrc".
    #[serde(default)]
    pub framing: Framing,
    /// Mapping rules, first match wins.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

/// `decoder = "delimited"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delimited {
    /// Frames longer than this many bytes (16 to 1048576) become an `undecodable` exception.
    #[serde(default = "defaults::max_frame")]
    pub max_frame: usize,
    /// "line" (default), "stx_etx" or "stx_etx_lrc" (serial only).
    #[serde(default)]
    pub framing: Framing,
    /// The column separator.
    #[serde(default = "defaults::separator")]
    pub separator: String,
    /// Mapping rules, first match wins.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

impl DecoderConfig {
    /// The name written in `decoder`.
    pub fn name(&self) -> &'static str {
        match self {
            DecoderConfig::Barcode(_) => "barcode",
            DecoderConfig::ScaleMtSics(_) => "scale.mt_sics",
            DecoderConfig::ScaleToledo(_) => "scale.toledo",
            DecoderConfig::ScaleAscii(_) => "scale.ascii",
            DecoderConfig::Json(_) => "json",
            DecoderConfig::Delimited(_) => "delimited",
        }
    }

    pub fn max_frame(&self) -> usize {
        match self {
            DecoderConfig::Barcode(d) => d.max_frame,
            DecoderConfig::ScaleMtSics(d) => d.max_frame,
            DecoderConfig::ScaleToledo(d) => d.max_frame,
            DecoderConfig::ScaleAscii(d) => d.max_frame,
            DecoderConfig::Json(d) => d.max_frame,
            DecoderConfig::Delimited(d) => d.max_frame,
        }
    }

    /// Scales: how far back a settled weight looks for the SSCC scanned at its station.
    pub fn correlation_window(&self) -> Option<Duration> {
        match self {
            DecoderConfig::ScaleMtSics(d) => Some(d.correlation_window.0),
            DecoderConfig::ScaleToledo(d) => Some(d.correlation_window.0),
            DecoderConfig::ScaleAscii(d) => Some(d.correlation_window.0),
            _ => None,
        }
    }

    fn framing(&self) -> Framing {
        match self {
            DecoderConfig::Barcode(d) => d.framing,
            DecoderConfig::Json(d) => d.framing,
            DecoderConfig::Delimited(d) => d.framing,
            _ => Framing::Line,
        }
    }

    fn rules(&self) -> Option<(&[RuleConfig], RecordKind)> {
        match self {
            DecoderConfig::Json(d) => Some((&d.rules, RecordKind::Json)),
            DecoderConfig::Delimited(d) => Some((&d.rules, RecordKind::Delimited)),
            _ => None,
        }
    }

    /// The running decoder. The configuration was validated (rules that do not build are
    /// left out, which validation refuses).
    pub fn build(&self) -> Box<dyn Decoder> {
        let rules = |rules: &[RuleConfig]| rules.iter().filter_map(|r| r.build().ok()).collect();
        match self {
            DecoderConfig::Barcode(d) => Box::new(edge_protocol::barcode::BarcodeDecoder::new(
                d.framing,
                &d.no_read,
                d.max_frame,
            )),
            DecoderConfig::ScaleMtSics(d) => Box::new(mt_sics::decoder(
                d.settle_config(),
                d.max_frame,
                d.poll_interval.map(|p| p.0.as_millis() as u64),
            )),
            DecoderConfig::ScaleToledo(d) => {
                Box::new(toledo::decoder(d.settle_config(), d.max_frame, d.checksum))
            }
            DecoderConfig::ScaleAscii(d) => {
                Box::new(ascii::decoder(d.settle_config(), d.max_frame))
            }
            DecoderConfig::Json(d) => Box::new(RulesDecoder::new(
                d.framing,
                Records::Json,
                rules(&d.rules),
                d.max_frame,
            )),
            DecoderConfig::Delimited(d) => Box::new(RulesDecoder::new(
                d.framing,
                Records::Delimited(d.separator.clone()),
                rules(&d.rules),
                d.max_frame,
            )),
        }
    }
}
