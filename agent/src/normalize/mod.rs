//! Turns what a source read into a `Reading` for the buffer: the source's decoder and its
//! station's role decide the canonical body (the rules live in `edge_protocol`).
//!
//! Scales stream many frames per item: their frames go through the settle rule, which yields
//! one reading per item (or an exception); a settled weight carries the SSCC last scanned at
//! the same station within `correlation_window` (the `Correlator`, shared by all sources).

pub mod framer;

use std::sync::{Arc, Mutex};

use edge_protocol::correlate::Correlator;
use edge_protocol::decimal::Decimal;
use edge_protocol::event::ExceptionReason;
use edge_protocol::framing::Framed;
use edge_protocol::gs1::year_of_unix_ms;
use edge_protocol::normalize::{barcode_frame, frame_raw, overlong_detail};
use edge_protocol::rules::{self, Record, Rule};
use edge_protocol::scale::settle::{SettleConfig, Settler};
use edge_protocol::scale::{self, ScaleError, ScaleReading};
use edge_protocol::{Body, Role};

use crate::buffer::Reading;
use crate::config::{Config, DecoderName, Decoding};
use crate::time::now_ms;

pub use framer::SourceFramer;

/// Scan-to-weight correlation, shared by every source of the agent.
pub type SharedCorrelator = Arc<Mutex<Correlator>>;

type ScaleParse = fn(&[u8]) -> Result<ScaleReading, ScaleError>;

enum State {
    Barcode,
    Scale {
        parse: ScaleParse,
        settler: Box<Settler>,
        /// Inside a run of frames the scale decoder could not read (reported once).
        bad_run: bool,
        /// The last frame read, carried as `raw` by what the settle rule decides.
        last_raw: Vec<u8>,
    },
    Rules {
        rules: Vec<Rule>,
        json: bool,
    },
}

/// Where a source's readings come from and how they are decoded.
pub struct Normalizer {
    source: Arc<str>,
    station: Option<Arc<str>>,
    role: Option<Role>,
    decoding: Decoding,
    state: State,
    correlator: SharedCorrelator,
}

impl Normalizer {
    /// Builds the decoder of a source; its configuration was validated already.
    pub fn new(
        cfg: &Config,
        source: &str,
        station: Option<&str>,
        decoding: Decoding,
        correlator: SharedCorrelator,
    ) -> Normalizer {
        let st = cfg.station(station);
        let scale = |parse: ScaleParse| State::Scale {
            parse,
            settler: Box::new(Settler::new(SettleConfig {
                settle_ms: decoding.settle.0.as_millis() as u64,
                min_kg: Decimal::parse(&decoding.min_kg).unwrap_or(Decimal::new(5, 2)),
                settle_timeout_ms: decoding.settle_timeout.0.as_millis() as u64,
            })),
            bad_run: false,
            last_raw: Vec::new(),
        };
        let state = match decoding.decoder {
            DecoderName::Barcode => State::Barcode,
            DecoderName::ScaleMtSics => scale(scale::mt_sics::parse),
            DecoderName::ScaleToledo => scale(scale::toledo::parse),
            DecoderName::ScaleAscii => scale(scale::ascii::parse),
            DecoderName::Json | DecoderName::Delimited => State::Rules {
                rules: decoding
                    .rules
                    .iter()
                    .filter_map(|r| r.build().ok())
                    .collect(),
                json: decoding.decoder == DecoderName::Json,
            },
        };
        Normalizer {
            source: source.into(),
            station: st.map(|s| s.id.as_str().into()),
            role: st.map(|s| s.role),
            decoding,
            state,
            correlator,
        }
    }

    /// A framer for this source's byte stream.
    pub fn framer(&self) -> SourceFramer {
        SourceFramer::for_decoding(&self.decoding)
    }

    /// Whether the source needs `tick` (the settle rule's timeout).
    pub fn needs_ticks(&self) -> bool {
        matches!(self.state, State::Scale { .. })
    }

    fn reading(&self, body: Body, raw: Vec<u8>, observed_ms: u64) -> Reading {
        Reading {
            source: self.source.clone(),
            station: self.station.clone(),
            role: self.role,
            observed_ms,
            body,
            raw,
        }
    }

    /// One frame from a serial stream; None while a scale has not settled.
    pub fn frame(&mut self, frame: Framed) -> Option<Reading> {
        let now = now_ms();
        if let Framed::Overlong { total, .. } = &frame {
            let body = Body::exception(
                ExceptionReason::Undecodable,
                overlong_detail(self.decoding.max_frame, *total),
            );
            return Some(self.reading(body, frame_raw(frame), now));
        }
        let body = match &mut self.state {
            State::Barcode => barcode_frame(
                &frame,
                &self.decoding.no_read,
                self.decoding.max_frame,
                self.role,
                year_of_unix_ms(now),
            ),
            State::Scale { .. } => return self.scale_frame(frame_raw(frame), now),
            State::Rules { .. } => self.rules_body(
                match &frame {
                    Framed::Frame(b) => b,
                    Framed::Overlong { head, .. } => head,
                },
                now,
            ),
        };
        self.remember_scan(&body, now);
        Some(self.reading(body, frame_raw(frame), now))
    }

    /// A telegram the framer rejected (bad LRC): an exception with its raw bytes.
    pub fn damaged(&mut self, raw: Vec<u8>, detail: String) -> Reading {
        self.reading(
            Body::exception(ExceptionReason::Undecodable, detail),
            raw,
            now_ms(),
        )
    }

    /// One MQTT message payload.
    pub fn message(&mut self, payload: &[u8]) -> Reading {
        let now = now_ms();
        let max = self.decoding.max_frame;
        if payload.len() > max {
            let body = Body::exception(
                ExceptionReason::Undecodable,
                overlong_detail(max, payload.len()),
            );
            return self.reading(body, payload[..max].to_vec(), now);
        }
        let body = match &self.state {
            State::Barcode => {
                let line = trim_line_end(payload);
                barcode_frame(
                    &Framed::Frame(line.to_vec()),
                    &self.decoding.no_read,
                    max,
                    self.role,
                    year_of_unix_ms(now),
                )
            }
            State::Rules { .. } => self.rules_body(trim_line_end(payload), now),
            // Refused by check-config: scales are read on serial ports.
            State::Scale { .. } => Body::exception(
                ExceptionReason::Undecodable,
                "scale decoders read serial ports, not MQTT messages",
            ),
        };
        self.remember_scan(&body, now);
        self.reading(body, payload.to_vec(), now)
    }

    /// Lets a scale's settle rule time out an item that never settles.
    pub fn tick(&mut self) -> Option<Reading> {
        let now = now_ms();
        let State::Scale {
            settler, last_raw, ..
        } = &mut self.state
        else {
            return None;
        };
        let out = settler.tick(now)?;
        let raw = last_raw.clone();
        // A weight may settle on a tick (the settle time ran out between frames): it carries
        // the unit scanned at its station exactly as one settled on a frame does.
        let sscc = self.sscc_for(&out, now);
        let body = out.into_body(sscc);
        Some(self.reading(body, raw, now))
    }

    /// The SSCC a settled weight carries: the last scanned at the same station within
    /// `correlation_window`.
    fn sscc_for(&self, out: &scale::settle::SettleOutput, now: u64) -> Option<String> {
        match (out, &self.station) {
            (scale::settle::SettleOutput::Weight { .. }, Some(st)) => self
                .correlator
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .sscc_for_weight(
                    st,
                    now,
                    self.decoding.correlation_window.0.as_millis() as u64,
                ),
            _ => None,
        }
    }

    fn scale_frame(&mut self, raw: Vec<u8>, now: u64) -> Option<Reading> {
        let State::Scale {
            parse,
            settler,
            bad_run,
            last_raw,
        } = &mut self.state
        else {
            return None;
        };
        let out = match parse(&raw) {
            Ok(reading) => {
                *bad_run = false;
                *last_raw = raw.clone();
                settler.feed(now, &reading)?
            }
            Err(e) => {
                // One exception per run of unreadable frames, not one per frame (a scale
                // streams 10-20 a second).
                if std::mem::replace(bad_run, true) {
                    return None;
                }
                let body = Body::exception(
                    ExceptionReason::Undecodable,
                    format!(
                        "{}: {e}; further unreadable frames are not reported until one reads",
                        self.decoding.decoder.as_str()
                    ),
                );
                return Some(self.reading(body, raw, now));
            }
        };
        let sscc = self.sscc_for(&out, now);
        Some(self.reading(out.into_body(sscc), raw, now))
    }

    fn rules_body(&self, bytes: &[u8], now: u64) -> Body {
        let State::Rules { rules, json } = &self.state else {
            return Body::exception(ExceptionReason::Undecodable, "no rules");
        };
        let record = if *json {
            Record::json(bytes)
        } else {
            Record::delimited(bytes, &self.decoding.separator)
        };
        match record.and_then(|r| rules::apply(rules, &r, year_of_unix_ms(now))) {
            Ok(body) => body,
            Err(detail) => Body::exception(ExceptionReason::Undecodable, detail),
        }
    }

    /// Scans that name an SSCC feed the correlation with scales at the same station.
    fn remember_scan(&self, body: &Body, now: u64) {
        let sscc = match body {
            Body::ShipmentScan(s) => s.sscc.as_deref(),
            _ => None,
        };
        if let (Some(sscc), Some(st)) = (sscc, &self.station) {
            self.correlator
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record_scan(st, sscc, now);
        }
    }
}

fn trim_line_end(mut b: &[u8]) -> &[u8] {
    while let [rest @ .., b'\r' | b'\n'] = b {
        b = rest;
    }
    b
}
