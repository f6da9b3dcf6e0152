//! The decoder interface: what every device format implements, so that a new format is one
//! file here (its framing, its parsing, its settings) and one arm in the agent's configuration.
//!
//! A decoder is sans-IO. The agent hands it bytes as they were read from a serial port
//! ([`Decoder::push`], in any pieces) or one whole message from an MQTT broker
//! ([`Decoder::message`]), lets it see time pass ([`Decoder::tick`], for what waits: a frame
//! held for its checksum byte, a weight that has not settled), and writes to the device what it
//! asks for ([`Decoder::requests`]: a request when the port opens, a poll at an interval). Out
//! come [`Decoded`] readings: a canonical body and the raw bytes it carries. Whatever cannot be
//! decoded (an over-long frame, a damaged telegram, bytes that are not the format) comes out as
//! an `exception` body carrying the raw bytes, never as a panic or an error the caller could
//! drop.
//!
//! Station context the agent owns (a weight's SSCC from the scans at its station) is added by
//! the agent after decoding: it spans sources.

use crate::event::{Body, ExceptionReason, Role};
use crate::framing::{Framed, LineFramer, LrcMismatch, StxEtxFramer};

/// What the agent knows when it hands bytes to a decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// When the bytes were read, ms since the Unix epoch.
    pub now_ms: u64,
    /// The role of the source's station, if it has one.
    pub role: Option<Role>,
}

impl Context {
    /// The year of `now_ms`, for two-digit years in GS1 dates.
    pub fn year(&self) -> u16 {
        crate::gs1::year_of_unix_ms(self.now_ms)
    }
}

/// One reading: its canonical body and the raw bytes it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub body: Body,
    pub raw: Vec<u8>,
}

impl Decoded {
    /// An `undecodable` exception carrying `raw`.
    pub fn undecodable(detail: impl Into<String>, raw: Vec<u8>) -> Decoded {
        Decoded {
            body: Body::exception(ExceptionReason::Undecodable, detail),
            raw,
        }
    }
}

/// What a decoder asks the agent to write to the device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requests {
    /// Written once each time the port opens (e.g. MT-SICS `SIR`: stream every reading).
    pub on_open: Option<&'static [u8]>,
    /// Written every `.0` ms (e.g. MT-SICS `SI`: send the next stable reading).
    pub poll: Option<(u64, &'static [u8])>,
}

/// A device format.
pub trait Decoder: Send {
    /// Bytes read from a stream, in whatever pieces the port returned: each complete frame is
    /// decoded into `out`; an incomplete one waits for more.
    fn push(&mut self, bytes: &[u8], cx: Context, out: &mut Vec<Decoded>);

    /// One whole message (an MQTT payload): one frame, a trailing line end ignored.
    fn message(&mut self, payload: &[u8], cx: Context, out: &mut Vec<Decoded>);

    /// Time passed: releases what waits on time. Called every [`Decoder::tick_ms`].
    fn tick(&mut self, _cx: Context, _out: &mut Vec<Decoded>) {}

    /// How often [`Decoder::tick`] is needed, in ms; `None`: never.
    fn tick_ms(&self) -> Option<u64> {
        None
    }

    /// What to write to the device.
    fn requests(&self) -> Requests {
        Requests::default()
    }
}

/// Describes an over-long frame for a person.
pub fn overlong_detail(max_frame: usize, total: usize) -> String {
    format!(
        "frame exceeds max_frame {max_frame} bytes ({total} bytes and counting); the first {max_frame} bytes are in raw, the rest up to the next frame end was skipped"
    )
}

/// A frame's bytes, or the exception an over-long frame becomes. (The error is the reading
/// itself, handed on as it is: boxing it would only add an allocation.)
#[allow(clippy::result_large_err)]
pub fn frame_bytes(frame: Framed, max_frame: usize) -> Result<Vec<u8>, Decoded> {
    match frame {
        Framed::Frame(b) => Ok(b),
        Framed::Overlong { head, total } => Err(Decoded::undecodable(
            overlong_detail(max_frame, total),
            head,
        )),
    }
}

/// A whole message as one frame: without its trailing line end, or the exception an
/// over-long message becomes (carrying its first `max_frame` bytes).
#[allow(clippy::result_large_err)]
pub fn message_bytes(payload: &[u8], max_frame: usize) -> Result<&[u8], Decoded> {
    if payload.len() > max_frame {
        return Err(Decoded::undecodable(
            overlong_detail(max_frame, payload.len()),
            payload[..max_frame].to_vec(),
        ));
    }
    let mut b = payload;
    while let [rest @ .., b'\r' | b'\n'] = b {
        b = rest;
    }
    Ok(b)
}

/// How a text stream is cut into frames (`framing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// CR, LF or CRLF end a frame.
    #[default]
    Line,
    /// STX … ETX.
    StxEtx,
    /// STX … ETX and an LRC byte (XOR of the bytes after STX through ETX).
    StxEtxLrc,
}

/// A line or STX/ETX framer, chosen by [`Framing`].
#[derive(Debug)]
pub enum TextFramer {
    Line(LineFramer),
    StxEtx(StxEtxFramer),
}

impl TextFramer {
    pub fn new(framing: Framing, max_frame: usize) -> TextFramer {
        match framing {
            Framing::Line => TextFramer::Line(LineFramer::new(max_frame)),
            Framing::StxEtx => TextFramer::StxEtx(StxEtxFramer::new(max_frame, false)),
            Framing::StxEtxLrc => TextFramer::StxEtx(StxEtxFramer::new(max_frame, true)),
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        match self {
            TextFramer::Line(f) => f.push(bytes),
            TextFramer::StxEtx(f) => f.push(bytes),
        }
    }

    pub fn next_frame(&mut self) -> Option<Result<Framed, LrcMismatch>> {
        match self {
            TextFramer::Line(f) => f.next_frame().map(Ok),
            TextFramer::StxEtx(f) => f.next_frame(),
        }
    }

    /// Pushes `bytes` and decodes every frame they complete with `body`: each reading carries
    /// its frame; an over-long or damaged frame becomes an exception carrying its bytes.
    pub fn decode(
        &mut self,
        bytes: &[u8],
        max_frame: usize,
        out: &mut Vec<Decoded>,
        body: impl Fn(&[u8]) -> Body,
    ) {
        self.push(bytes);
        while let Some(f) = self.next_frame() {
            out.push(match f {
                Ok(frame) => match frame_bytes(frame, max_frame) {
                    Ok(raw) => Decoded {
                        body: body(&raw),
                        raw,
                    },
                    Err(overlong) => overlong,
                },
                Err(damaged) => Decoded::undecodable(damaged.to_string(), damaged.raw),
            });
        }
    }
}

/// One whole message decoded with `body` as one frame (without its line end); the reading
/// carries the whole payload, and an over-long message becomes an exception.
pub fn decode_message(
    payload: &[u8],
    max_frame: usize,
    out: &mut Vec<Decoded>,
    body: impl FnOnce(&[u8]) -> Body,
) {
    out.push(match message_bytes(payload, max_frame) {
        Ok(frame) => Decoded {
            body: body(frame),
            raw: payload.to_vec(),
        },
        Err(overlong) => overlong,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_loses_its_line_end_and_an_overlong_one_becomes_an_exception() {
        assert_eq!(message_bytes(b"ABC\r\n", 16), Ok(&b"ABC"[..]));
        let Err(e) = message_bytes(&[b'x'; 20], 16) else {
            panic!("not refused");
        };
        assert_eq!(e.raw.len(), 16);
        assert!(matches!(e.body, Body::Exception(ref x) if x.detail.contains("max_frame 16")));
    }

    #[test]
    fn a_damaged_telegram_becomes_an_exception_with_its_bytes() {
        let mut f = TextFramer::new(Framing::StxEtxLrc, 64);
        let mut got = Vec::new();
        f.decode(b"\x02A|B\x03\x00", 64, &mut got, |_| {
            Body::exception(ExceptionReason::NoRead, "not a damaged telegram")
        });
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].raw, b"\x02A|B\x03\x00");
        assert!(
            matches!(&got[0].body, Body::Exception(e) if e.detail.contains("LRC")),
            "{got:?}"
        );
    }
}
