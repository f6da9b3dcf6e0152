//! The framer a source's decoder needs: lines, Toledo frames or STX/ETX telegrams.

use edge_protocol::framing::{Framed, LineFramer, StxEtxFramer};
use edge_protocol::scale::toledo::{Checksum, ToledoFramer};

use crate::config::{DecoderName, Decoding, Framing, ToledoChecksum};

/// Cuts a serial byte stream into frames.
pub enum SourceFramer {
    Line(LineFramer),
    Toledo(ToledoFramer),
    StxEtx(StxEtxFramer),
}

/// A frame, or a damaged telegram (raw bytes and what is wrong).
pub type FrameResult = Result<Framed, (Vec<u8>, String)>;

impl SourceFramer {
    pub fn for_decoding(d: &Decoding) -> SourceFramer {
        match (d.decoder, d.framing) {
            (DecoderName::ScaleToledo, _) => SourceFramer::Toledo(ToledoFramer::new(
                d.max_frame,
                match d.checksum {
                    ToledoChecksum::Auto => Checksum::Auto,
                    ToledoChecksum::Always => Checksum::Always,
                    ToledoChecksum::Never => Checksum::Never,
                },
            )),
            (_, Framing::StxEtx) => SourceFramer::StxEtx(StxEtxFramer::new(d.max_frame, false)),
            (_, Framing::StxEtxLrc) => SourceFramer::StxEtx(StxEtxFramer::new(d.max_frame, true)),
            (_, Framing::Line) => SourceFramer::Line(LineFramer::new(d.max_frame)),
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        match self {
            SourceFramer::Line(f) => f.push(bytes),
            SourceFramer::Toledo(f) => f.push(bytes),
            SourceFramer::StxEtx(f) => f.push(bytes),
        }
    }

    /// Releases a frame held back waiting for a possible checksum byte (Toledo, auto).
    pub fn flush(&mut self) {
        if let SourceFramer::Toledo(f) = self {
            f.flush();
        }
    }

    pub fn next_frame(&mut self) -> Option<FrameResult> {
        match self {
            SourceFramer::Line(f) => f.next_frame().map(Ok),
            SourceFramer::Toledo(f) => f.next_frame().map(Ok),
            SourceFramer::StxEtx(f) => f
                .next_frame()
                .map(|r| r.map_err(|e| (e.raw.clone(), e.to_string()))),
        }
    }
}
