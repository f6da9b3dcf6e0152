//! Barcode decoding throughput over the standard vectors (and the envelope codecs).
//! Prints a table.
//!
//! cargo bench -p edge-protocol --bench decode

use std::hint::black_box;
use std::time::Instant;

use edge_protocol::barcode;
use edge_protocol::event::{Body, Envelope, Role};

fn vectors() -> Vec<Vec<u8>> {
    let text = include_str!("../tests/vectors/barcode.jsonl");
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["input"].as_str().map(|s| s.as_bytes().to_vec()))
        .collect()
}

fn rate(n: usize, f: impl Fn(usize)) -> f64 {
    // Warm up, then time.
    for i in 0..n / 10 {
        f(i);
    }
    let start = Instant::now();
    for i in 0..n {
        f(i);
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let inputs = vectors();
    assert!(!inputs.is_empty(), "no vectors found");
    let sscc = b"]C100106141412345678908".to_vec();
    let n = 2_000_000;
    println!("{:<44} {:>14}", "operation", "per second");
    let r = rate(n, |i| {
        black_box(barcode::decode(
            black_box(&inputs[i % inputs.len()]),
            "NOREAD",
        ));
    });
    println!(
        "{:<44} {r:>14.0}",
        "decode (mix of the 29 standard vectors)"
    );
    let r = rate(n, |i| {
        let d = barcode::decode(black_box(&inputs[i % inputs.len()]), "NOREAD");
        black_box(barcode::to_body(d, Some(Role::Packing), 2026));
    });
    println!(
        "{:<44} {r:>14.0}",
        "decode + canonical body (the 29 vectors)"
    );
    let r = rate(n, |_| {
        black_box(barcode::decode(black_box(&sscc), "NOREAD"));
    });
    println!("{:<44} {r:>14.0}", "decode one GS1-128 SSCC");
    let env = Envelope {
        id: "0190a6e1-7f3c-7c2a-9b1e-3d4f5a6b7c8d".into(),
        site: "dc-fra-01".into(),
        seq: 1,
        source: "scanner-pack-01".into(),
        station: Some("pack-01".into()),
        role: Some(Role::Packing),
        observed_at: "2026-11-27T10:00:00.123Z".into(),
        body: barcode::to_body(barcode::decode(&sscc, "NOREAD"), Some(Role::Packing), 2026),
        raw: sscc.clone(),
        replayed: false,
    };
    assert!(matches!(env.body, Body::ShipmentScan(_)));
    let cbor = env.to_cbor();
    let r = rate(n / 4, |_| {
        black_box(black_box(&env).to_cbor());
    });
    println!("{:<44} {r:>14.0}", "envelope to CBOR");
    let r = rate(n / 4, |_| {
        black_box(black_box(&env).to_json());
    });
    println!("{:<44} {r:>14.0}", "envelope to JSON");
    let r = rate(n / 4, |_| {
        black_box(Envelope::from_cbor(black_box(&cbor)).ok());
    });
    println!("{:<44} {r:>14.0}", "envelope from CBOR");
}
