//! An STX/ETX byte stream never panics the framer, frames hold no delimiters, memory stays
//! within the cap, and the delimited decoder never panics on what comes out.
#![no_main]

use edge_protocol::framing::{Framed, StxEtxFramer, ETX, STX};
use edge_protocol::rules::Record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let cap = usize::from(head >> 1).max(1);
    let mut f = StxEtxFramer::new(cap, head & 1 == 1);
    for chunk in rest.chunks(usize::from(head % 5) + 1) {
        f.push(chunk);
        assert!(f.pending() <= cap);
        while let Some(item) = f.next_frame() {
            match item {
                Ok(Framed::Frame(b)) => {
                    assert!(!b.is_empty() && b.len() <= cap);
                    assert!(!b.contains(&STX) && !b.contains(&ETX));
                    let _ = Record::delimited(&b, "|");
                }
                Ok(Framed::Overlong { head, total }) => assert!(head.len() <= cap && total > cap),
                Err(e) => assert_ne!(e.got, e.expected),
            }
        }
    }
});
