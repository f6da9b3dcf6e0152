//! MT-SICS lines, framed as the agent frames them, never panic the decoder.
#![no_main]

use edge_protocol::framing::{Framed, LineFramer};
use edge_protocol::scale::mt_sics;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mt_sics::parse(data);
    let mut f = LineFramer::new(64);
    f.push(data);
    while let Some(frame) = f.next_frame() {
        if let Framed::Frame(line) = frame {
            let _ = mt_sics::parse(&line);
        }
    }
});
