//! Turns what a source read into `Reading`s for the buffer: the source's decoder (an
//! `edge_protocol::decoder::Decoder`, chosen by its configuration) makes canonical bodies, and
//! this adds what spans sources: the station and its role, the time of reading, and the
//! correlation of a settled weight with the SSCC last scanned at the same station within the
//! scale's `correlation_window` (the `Correlator`, shared by all sources).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge_protocol::correlate::Correlator;
use edge_protocol::decoder::{Context, Decoded, Decoder, Requests};
use edge_protocol::{Body, Role};

use crate::buffer::Reading;
use crate::config::{Config, DecoderConfig};
use crate::time::now_ms;

/// Scan-to-weight correlation, shared by every source of the agent.
pub type SharedCorrelator = Arc<Mutex<Correlator>>;

/// A source's decoder with its station.
pub struct Normalizer {
    source: Arc<str>,
    station: Option<Arc<str>>,
    role: Option<Role>,
    decoder: Box<dyn Decoder>,
    /// Scales: how far back a weight looks for its unit's SSCC.
    correlation_window: Option<Duration>,
    correlator: SharedCorrelator,
    out: Vec<Decoded>,
    /// This source's counters for `/metrics`: one atomic add per event.
    tally: Arc<crate::status::SourceTally>,
}

impl Normalizer {
    /// Builds the decoder of a source; its configuration was validated already.
    pub fn new(
        cfg: &Config,
        source: &str,
        station: Option<&str>,
        decoder: &DecoderConfig,
        correlator: SharedCorrelator,
    ) -> Normalizer {
        let st = cfg.station(station);
        Normalizer {
            source: source.into(),
            station: st.map(|s| s.id.as_str().into()),
            role: st.map(|s| s.role),
            decoder: decoder.build(),
            correlation_window: decoder.correlation_window(),
            correlator,
            out: Vec::new(),
            tally: crate::status::tally().source(source),
        }
    }

    /// What to write to the device (a request when the port opens, polls).
    pub fn requests(&self) -> Requests {
        self.decoder.requests()
    }

    /// How often the decoder needs `tick`; None: never.
    pub fn tick_interval(&self) -> Option<Duration> {
        self.decoder.tick_ms().map(Duration::from_millis)
    }

    /// Bytes from a serial port: the readings of every frame they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Reading> {
        let cx = self.context();
        let mut out = std::mem::take(&mut self.out);
        self.decoder.push(bytes, cx, &mut out);
        self.readings(cx.now_ms, out)
    }

    /// One MQTT message payload: its reading(s).
    pub fn message(&mut self, payload: &[u8]) -> Vec<Reading> {
        let cx = self.context();
        let mut out = std::mem::take(&mut self.out);
        self.decoder.message(payload, cx, &mut out);
        self.readings(cx.now_ms, out)
    }

    /// Lets the decoder see time pass (a frame held for its checksum, a weight that does not
    /// settle).
    pub fn tick(&mut self) -> Vec<Reading> {
        let cx = self.context();
        let mut out = std::mem::take(&mut self.out);
        self.decoder.tick(cx, &mut out);
        self.readings(cx.now_ms, out)
    }

    fn context(&self) -> Context {
        Context {
            now_ms: now_ms(),
            role: self.role,
        }
    }

    fn readings(&mut self, now: u64, mut decoded: Vec<Decoded>) -> Vec<Reading> {
        let readings = decoded
            .drain(..)
            .map(|Decoded { mut body, raw }| {
                self.correlate(&mut body, now);
                self.tally.count(&body);
                if let Body::Exception(e) = &body {
                    crate::status::tally().record_exception(&self.source, e, &raw, now);
                }
                Reading {
                    source: self.source.clone(),
                    station: self.station.clone(),
                    role: self.role,
                    observed_ms: now,
                    body,
                    raw,
                    receipt: None,
                }
            })
            .collect();
        // The decoder's output buffer is kept for the next call: no allocation per frame.
        self.out = decoded;
        readings
    }

    /// A scan that names an SSCC feeds the correlation with scales at the same station; a
    /// settled weight takes the SSCC last scanned there within the scale's window.
    fn correlate(&self, body: &mut Body, now: u64) {
        let Some(st) = &self.station else { return };
        let mut correlator = self.correlator.lock().unwrap_or_else(|p| p.into_inner());
        match body {
            Body::ShipmentScan(s) => {
                if let Some(sscc) = &s.sscc {
                    correlator.record_scan(st, sscc, now);
                }
            }
            Body::ShipmentWeight(w) if w.sscc.is_none() => {
                if let Some(window) = self.correlation_window {
                    w.sscc = correlator.sscc_for_weight(st, now, window.as_millis() as u64);
                }
            }
            _ => {}
        }
    }
}
