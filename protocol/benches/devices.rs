//! Device decoder throughput: frames per second for each scale decoder, STX/ETX framing and the
//! mapping rules, and the settle rule's cost per frame. Prints a table.
//!
//! cargo bench -p edge-protocol --bench devices

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use edge_protocol::framing::{lrc, StxEtxFramer, ETX, STX};
use edge_protocol::rules::{apply, Record, Rule};
use edge_protocol::scale::settle::{SettleConfig, Settler};
use edge_protocol::scale::toledo::{Checksum, ToledoFramer};
use edge_protocol::scale::{ascii, mt_sics, toledo, ScaleReading};

/// Runs `f` `n` times (after a tenth as warm-up); returns calls per second.
fn rate(n: usize, mut f: impl FnMut(usize)) -> f64 {
    for i in 0..n / 10 {
        f(i);
    }
    let start = Instant::now();
    for i in 0..n {
        f(i);
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn row(name: &str, per_second: f64) {
    println!("{name:<52} {per_second:>14.0}");
}

fn rules(json: bool) -> Vec<Rule> {
    let values = |pairs: &[(&str, &str)]| -> BTreeMap<String, BTreeMap<String, String>> {
        let m = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        [("result".to_owned(), m)].into_iter().collect()
    };
    let (when, code, dest, result) = if json {
        ("/type", "/barcode", "/chute", "/status")
    } else {
        ("0", "2", "3", "4")
    };
    let mut out = Vec::new();
    for (tag, kind) in [("SCAN", "shipment.scan"), ("CONF", "shipment.sort")] {
        let fields: Vec<(&str, &str)> = if kind == "shipment.scan" {
            vec![("code", code)]
        } else {
            vec![("code", code), ("destination", dest), ("result", result)]
        };
        let v = if kind == "shipment.sort" {
            values(&[("OK", "diverted"), ("RC", "recirculated")])
        } else {
            BTreeMap::new()
        };
        match Rule::from_config([(when, tag)], kind, fields, v) {
            Ok(r) => out.push(r),
            Err(p) => panic!("bench rule: {p:?}"),
        }
    }
    // The common telegram matches the last rule: every rule is tried.
    out.reverse();
    out
}

fn main() {
    let n = 2_000_000;
    println!("{:<52} {:>14}", "operation", "per second");

    let mt = [
        &b"S S      12.345 kg"[..],
        b"S D      12.340 kg",
        b"S S     100.00 g",
        b"S +",
    ];
    row(
        "scale.mt_sics parse (mix of 4 lines)",
        rate(n, |i| {
            black_box(mt_sics::parse(black_box(mt[i % mt.len()])).ok());
        }),
    );

    let tol = b"\x02,1 001000000234\r*";
    row(
        "scale.toledo parse (net with tare, checksum)",
        rate(n, |_| {
            black_box(toledo::parse(black_box(tol)).ok());
        }),
    );
    let stream: Vec<u8> = tol.repeat(1000);
    let mut framer = ToledoFramer::new(4096, Checksum::Auto);
    row(
        "scale.toledo framer + parse (1000-frame reads)",
        rate(n / 1000, |_| {
            framer.push(black_box(&stream));
            while let Some(f) = framer.next_frame() {
                if let edge_protocol::framing::Framed::Frame(b) = f {
                    black_box(toledo::parse(&b).ok());
                }
            }
        }) * 1000.0,
    );

    let ad = [
        &b"ST,GS,+0012.34kg"[..],
        b"US,NT,+0010.00kg",
        b"OL,GS,+    .  kg",
    ];
    row(
        "scale.ascii parse (mix of 3 lines)",
        rate(n, |i| {
            black_box(ascii::parse(black_box(ad[i % ad.len()])).ok());
        }),
    );

    let data = b"CONF|0042|106141412345678908|CH017|OK";
    let mut telegram = vec![STX];
    telegram.extend_from_slice(data);
    telegram.extend_from_slice(&[ETX, lrc(data)]);
    let stream: Vec<u8> = telegram.repeat(1000);
    let mut stx = StxEtxFramer::new(4096, true);
    row(
        "stx_etx_lrc framing (1000-telegram reads)",
        rate(n / 1000, |_| {
            stx.push(black_box(&stream));
            while let Some(f) = stx.next_frame() {
                black_box(f.ok());
            }
        }) * 1000.0,
    );

    let json_rules = rules(true);
    let msg =
        br#"{"type":"CONF","id":42,"barcode":"106141412345678908","chute":"CH017","status":"OK"}"#;
    row(
        "rules json (parse + 2 rules + body)",
        rate(n / 2, |_| {
            let r = Record::json(black_box(msg));
            black_box(r.and_then(|r| apply(&json_rules, &r, 2026)).ok());
        }),
    );
    let delimited_rules = rules(false);
    row(
        "rules delimited (split + 2 rules + body)",
        rate(n / 2, |_| {
            let r = Record::delimited(black_box(data), "|");
            black_box(r.and_then(|r| apply(&delimited_rules, &r, 2026)).ok());
        }),
    );

    // A realistic stream: 20 frames per item moving, 20 stable, 10 empty.
    let reading = |stable: bool, kg: &str| ScaleReading::Weight {
        stable,
        mode: edge_protocol::event::WeightMode::Gross,
        weight: kg.into(),
        unit: "kg".into(),
        weight_kg: Some(kg.into()),
        tare_kg: None,
    };
    let cycle: Vec<ScaleReading> = (0..50)
        .map(|i| match i {
            0..20 => reading(false, if i % 2 == 0 { "12.31" } else { "12.36" }),
            20..40 => reading(true, "12.345"),
            _ => reading(true, "0"),
        })
        .collect();
    let mut settler = Settler::new(SettleConfig::default());
    let per_second = rate(n, |i| {
        black_box(settler.feed(i as u64 * 50, black_box(&cycle[i % cycle.len()])));
    });
    println!(
        "{:<52} {per_second:>14.0}   ({:.0} ns per frame)",
        "settle rule feed (50-frame item cycle)",
        1e9 / per_second
    );
}
