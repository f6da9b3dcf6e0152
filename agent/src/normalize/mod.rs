//! Turns what a source read into a `Reading` for the buffer: the source's decoder and its
//! station's role decide the canonical body (the rules live in `edge_protocol`).

use std::sync::Arc;

use edge_protocol::framing::{Framed, LineFramer};
use edge_protocol::normalize::{barcode_frame, frame_raw, overlong_detail};
use edge_protocol::{Body, Role};

use crate::buffer::Reading;
use crate::config::{Config, DecoderName};
use crate::time::now_ms;

/// Where a source's readings come from and how they are decoded.
#[derive(Debug, Clone)]
pub struct Normalizer {
    source: Arc<str>,
    station: Option<Arc<str>>,
    role: Option<Role>,
    decoder: DecoderName,
    no_read: String,
    max_frame: usize,
}

impl Normalizer {
    pub fn new(
        cfg: &Config,
        source: &str,
        station: Option<&str>,
        decoder: DecoderName,
        no_read: &str,
        max_frame: usize,
    ) -> Normalizer {
        let st = cfg.station(station);
        Normalizer {
            source: source.into(),
            station: st.map(|s| s.id.as_str().into()),
            role: st.map(|s| s.role),
            decoder,
            no_read: no_read.to_string(),
            max_frame,
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// A framer for this source's byte stream.
    pub fn framer(&self) -> LineFramer {
        LineFramer::new(self.max_frame)
    }

    fn reading(&self, body: Body, raw: Vec<u8>) -> Reading {
        Reading {
            source: self.source.clone(),
            station: self.station.clone(),
            role: self.role,
            observed_ms: now_ms(),
            body,
            raw,
        }
    }

    /// One frame from a serial stream.
    pub fn frame(&mut self, frame: Framed) -> Reading {
        let body = match self.decoder {
            DecoderName::Barcode => barcode_frame(&frame, &self.no_read, self.max_frame, self.role),
            other => unimplemented_decoder(other),
        };
        self.reading(body, frame_raw(frame))
    }

    /// One MQTT message payload.
    pub fn message(&mut self, payload: &[u8]) -> Reading {
        if payload.len() > self.max_frame {
            let body = Body::exception(
                edge_protocol::event::ExceptionReason::Undecodable,
                overlong_detail(self.max_frame, payload.len()),
            );
            return self.reading(body, payload[..self.max_frame].to_vec());
        }
        let line = trim_line_end(payload);
        let body = match self.decoder {
            DecoderName::Barcode => barcode_frame(
                &Framed::Frame(line.to_vec()),
                &self.no_read,
                self.max_frame,
                self.role,
            ),
            other => unimplemented_decoder(other),
        };
        self.reading(body, payload.to_vec())
    }
}

fn unimplemented_decoder(d: DecoderName) -> Body {
    Body::exception(
        edge_protocol::event::ExceptionReason::Undecodable,
        format!("decoder {} is not implemented in this build", d.as_str()),
    )
}

fn trim_line_end(mut b: &[u8]) -> &[u8] {
    while let [rest @ .., b'\r' | b'\n'] = b {
        b = rest;
    }
    b
}
