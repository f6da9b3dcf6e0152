//! A scanner line never panics the barcode decoder, at any station role, and a mapped code
//! never panics `classify_code`.
#![no_main]

use edge_protocol::barcode::{classify_code, decode, to_body};
use edge_protocol::Role;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let role = data
        .first()
        .and_then(|b| Role::ALL.get(usize::from(*b) % 9))
        .copied();
    let _ = to_body(decode(data, "NOREAD"), role, 2026);
    let _ = classify_code(&String::from_utf8_lossy(data));
});
