//! Readings to canonical bodies: the decoder of a source and the role of its station decide.

use crate::barcode;
use crate::event::{Body, ExceptionReason, Role};
use crate::framing::Framed;

/// Describes an over-long frame for a person.
pub fn overlong_detail(max_frame: usize, total: usize) -> String {
    format!(
        "frame exceeds max_frame {max_frame} bytes ({total} bytes and counting); the first {max_frame} bytes are in raw, the rest up to the next frame end was skipped"
    )
}

/// A barcode line (or an over-long one) to its canonical body, read in `year`.
pub fn barcode_frame(
    frame: &Framed,
    no_read: &str,
    max_frame: usize,
    role: Option<Role>,
    year: u16,
) -> Body {
    match frame {
        Framed::Frame(line) => barcode::to_body(barcode::decode(line, no_read), role, year),
        Framed::Overlong { total, .. } => Body::exception(
            ExceptionReason::Undecodable,
            overlong_detail(max_frame, *total),
        ),
    }
}

/// The raw bytes an event carries for a frame.
pub fn frame_raw(frame: Framed) -> Vec<u8> {
    match frame {
        Framed::Frame(b) => b,
        Framed::Overlong { head, .. } => head,
    }
}
