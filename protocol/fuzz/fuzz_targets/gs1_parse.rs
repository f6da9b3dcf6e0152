//! GS1 element strings and the bracketed form never panic the parser, and whatever parses
//! reads back the same from its own element string and bracketed text.
//!
//! The bracketed round trip is checked only for values without '(': `Elements::to_bracketed`
//! does not escape it (the GS1 Syntax Engine writes "\(" ), so "(251)(251)X" cannot be told
//! from two elements.
#![no_main]

use edge_protocol::gs1::{self, Elements};
use libfuzzer_sys::fuzz_target;

fn bracketed_round_trip(e: &Elements) {
    if e.0.iter().all(|(_, v)| !v.contains('(')) {
        assert_eq!(gs1::parse_bracketed(&e.to_bracketed()).as_ref(), Ok(e));
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = gs1::parse(data) {
        assert_eq!(
            gs1::parse(e.to_element_string().as_bytes()).as_ref(),
            Ok(&e)
        );
        bracketed_round_trip(&e);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(e) = gs1::parse_bracketed(text) {
            bracketed_round_trip(&e);
        }
    }
});
