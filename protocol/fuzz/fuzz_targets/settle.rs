//! Any sequence of scale frames (decoded from the input by every scale decoder) never panics
//! the settle rule, and it never emits a weight below min_kg.
#![no_main]

use edge_protocol::decimal::Decimal;
use edge_protocol::scale::settle::{SettleConfig, SettleOutput, Settler};
use edge_protocol::scale::{ascii, mt_sics, toledo};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cfg = SettleConfig {
        settle_ms: u64::from(data.first().copied().unwrap_or(3)) * 10,
        ..SettleConfig::default()
    };
    let min = cfg.min_kg;
    let mut s = Settler::new(cfg);
    let mut now = 0u64;
    for line in data.split(|&b| b == b'\n') {
        now += u64::from(line.first().copied().unwrap_or(0)) * 20;
        for reading in [
            mt_sics::parse(line),
            toledo::parse(line),
            ascii::parse(line),
        ]
        .into_iter()
        .flatten()
        {
            if let Some(SettleOutput::Weight { weight_kg, .. }) = s.feed(now, &reading) {
                assert!(Decimal::parse(&weight_kg).is_ok_and(|k| k >= min));
            }
        }
        let _ = s.tick(now + 5_000);
    }
});
