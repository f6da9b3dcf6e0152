//! Every device format through the decoder interface, as the agent drives it: bytes pushed in
//! pieces of any size, ticks in between, whole messages; no input panics a decoder or makes
//! it hold more than its frame cap, and every reading carries at most `max_frame` raw bytes.
#![no_main]

use edge_protocol::barcode::BarcodeDecoder;
use edge_protocol::decoder::{Context, Decoder, Framing};
use edge_protocol::rules::{Records, Rule, RulesDecoder};
use edge_protocol::scale::settle::SettleConfig;
use edge_protocol::scale::{ascii, mt_sics, toledo};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 64;

fn rule() -> Vec<Rule> {
    Rule::from_config(
        [("/t", "S")].into_iter(),
        "shipment.sort",
        [("code", "/c"), ("result", "/r")].into_iter(),
        Default::default(),
    )
    .into_iter()
    .collect()
}

fn decoders() -> Vec<Box<dyn Decoder>> {
    vec![
        Box::new(BarcodeDecoder::new(Framing::Line, "NOREAD", MAX)),
        Box::new(BarcodeDecoder::new(Framing::StxEtxLrc, "NOREAD", MAX)),
        Box::new(mt_sics::decoder(SettleConfig::default(), MAX, Some(100))),
        Box::new(toledo::decoder(
            SettleConfig::default(),
            MAX,
            toledo::Checksum::Auto,
        )),
        Box::new(ascii::decoder(SettleConfig::default(), MAX)),
        Box::new(RulesDecoder::new(Framing::Line, Records::Json, rule(), MAX)),
        Box::new(RulesDecoder::new(
            Framing::StxEtx,
            Records::Delimited("|".into()),
            rule(),
            MAX,
        )),
    ]
}

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(1, |b| usize::from(*b % 16) + 1);
    for mut d in decoders() {
        let mut out = Vec::new();
        for (i, piece) in data.chunks(split).enumerate() {
            let cx = Context {
                now_ms: 1_700_000_000_000 + (i as u64) * 50,
                role: None,
            };
            d.push(piece, cx, &mut out);
            if i % 3 == 0 {
                d.tick(cx, &mut out);
            }
        }
        d.message(
            data,
            Context {
                now_ms: 1_800_000_000_000,
                role: None,
            },
            &mut out,
        );
        for r in &out {
            assert!(r.raw.len() <= MAX + 3, "{} raw bytes", r.raw.len());
        }
    }
});
