//! A&D-style lines never panic the decoder.
#![no_main]

use edge_protocol::scale::ascii;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ascii::parse(data);
});
