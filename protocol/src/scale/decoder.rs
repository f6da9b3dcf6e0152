//! The decoder a scale format plugs into: its framer and its frame parser feed the settle rule,
//! which yields one `shipment.weight` per item (or an exception).

use super::settle::{SettleConfig, Settler};
use super::toledo::ToledoFramer;
use super::{ScaleError, ScaleReading};
use crate::decoder::{frame_bytes, message_bytes, Context, Decoded, Decoder, Requests};
use crate::framing::{Framed, LineFramer};

/// A scale frame parser.
pub type Parse = fn(&[u8]) -> Result<ScaleReading, ScaleError>;

/// How often a scale decoder needs to see time pass: the settle timeout, and a Toledo frame
/// held back for its checksum byte.
pub const TICK_MS: u64 = 100;

/// How a scale's byte stream is cut into frames.
#[derive(Debug)]
pub enum ScaleFramer {
    Line(LineFramer),
    Toledo(ToledoFramer),
}

impl ScaleFramer {
    fn push(&mut self, bytes: &[u8]) {
        match self {
            ScaleFramer::Line(f) => f.push(bytes),
            ScaleFramer::Toledo(f) => f.push(bytes),
        }
    }

    fn flush(&mut self) {
        if let ScaleFramer::Toledo(f) = self {
            f.flush();
        }
    }

    fn next_frame(&mut self) -> Option<Framed> {
        match self {
            ScaleFramer::Line(f) => f.next_frame(),
            ScaleFramer::Toledo(f) => f.next_frame(),
        }
    }
}

/// A scale: frames, parsed, through the settle rule.
#[derive(Debug)]
pub struct ScaleDecoder {
    name: &'static str,
    framer: ScaleFramer,
    parse: Parse,
    settler: Settler,
    max_frame: usize,
    requests: Requests,
    /// Inside a run of frames the parser could not read (reported once).
    bad_run: bool,
    /// The last frame read, carried as `raw` by what the settle rule decides on a tick.
    last_raw: Vec<u8>,
}

impl ScaleDecoder {
    /// A scale format: its decoder name (for messages), framer, parser and device requests.
    pub fn new(
        name: &'static str,
        framer: ScaleFramer,
        parse: Parse,
        settle: SettleConfig,
        max_frame: usize,
        requests: Requests,
    ) -> ScaleDecoder {
        ScaleDecoder {
            name,
            framer,
            parse,
            settler: Settler::new(settle),
            max_frame,
            requests,
            bad_run: false,
            last_raw: Vec::new(),
        }
    }

    fn frame(&mut self, raw: Vec<u8>, now_ms: u64, out: &mut Vec<Decoded>) {
        match (self.parse)(&raw) {
            Ok(reading) => {
                self.bad_run = false;
                self.last_raw.clone_from(&raw);
                if let Some(settled) = self.settler.feed(now_ms, &reading) {
                    out.push(Decoded {
                        body: settled.into_body(None),
                        raw,
                    });
                }
            }
            // One exception per run of unreadable frames, not one per frame (a scale streams
            // 10-20 a second).
            Err(e) if !std::mem::replace(&mut self.bad_run, true) => {
                out.push(Decoded::undecodable(
                    format!(
                        "{}: {e}; further unreadable frames are not reported until one reads",
                        self.name
                    ),
                    raw,
                ))
            }
            Err(_) => {}
        }
    }

    fn drain(&mut self, now_ms: u64, out: &mut Vec<Decoded>) {
        while let Some(f) = self.framer.next_frame() {
            match frame_bytes(f, self.max_frame) {
                Ok(raw) => self.frame(raw, now_ms, out),
                Err(overlong) => out.push(overlong),
            }
        }
    }
}

impl Decoder for ScaleDecoder {
    fn push(&mut self, bytes: &[u8], cx: Context, out: &mut Vec<Decoded>) {
        self.framer.push(bytes);
        self.drain(cx.now_ms, out);
    }

    fn message(&mut self, payload: &[u8], cx: Context, out: &mut Vec<Decoded>) {
        match message_bytes(payload, self.max_frame) {
            Ok(frame) => self.frame(frame.to_vec(), cx.now_ms, out),
            Err(overlong) => out.push(overlong),
        }
    }

    fn tick(&mut self, cx: Context, out: &mut Vec<Decoded>) {
        self.framer.flush();
        self.drain(cx.now_ms, out);
        if let Some(settled) = self.settler.tick(cx.now_ms) {
            out.push(Decoded {
                body: settled.into_body(None),
                raw: self.last_raw.clone(),
            });
        }
    }

    fn tick_ms(&self) -> Option<u64> {
        Some(TICK_MS)
    }

    fn requests(&self) -> Requests {
        self.requests
    }
}
