//! Any message never panics JSON or delimited record parsing or the mapping rules, and a body
//! the rules make is always a kind the matching rule names.
#![no_main]

use std::collections::BTreeMap;

use edge_protocol::rules::{apply, Record, Rule};
use libfuzzer_sys::fuzz_target;

fn rules(json: bool) -> Vec<Rule> {
    let p = |ptr: &'static str, col: &'static str| if json { ptr } else { col };
    let result: BTreeMap<String, BTreeMap<String, String>> = [(
        "result".to_owned(),
        [
            ("OK", "diverted"),
            ("RC", "recirculated"),
            ("NR", "no_read"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect(),
    )]
    .into_iter()
    .collect();
    let state: BTreeMap<String, BTreeMap<String, String>> = [(
        "state".to_owned(),
        [("FAULT".to_owned(), "fault".to_owned())]
            .into_iter()
            .collect(),
    )]
    .into_iter()
    .collect();
    [
        Rule::from_config(
            [(p("/type", "0"), "CONF")],
            "shipment.sort",
            [
                ("code", p("/barcode", "2")),
                ("destination", p("/chute", "3")),
                ("result", p("/status", "4")),
            ],
            result,
        ),
        Rule::from_config(
            [(p("/type", "0"), "FAULT")],
            "equipment.state",
            [
                ("state", p("/type", "0")),
                ("code", p("/code", "2")),
                ("message", p("/a/0/b", "3")),
            ],
            state,
        ),
        Rule::from_config(
            [(p("/type", "0"), "SCAN")],
            "shipment.scan",
            [("code", p("/barcode", "3"))],
            BTreeMap::new(),
        ),
        Rule::from_config(
            [],
            "inventory.scan",
            [("code", p("/barcode", "1"))],
            BTreeMap::new(),
        ),
    ]
    .into_iter()
    .map(|r| r.unwrap_or_else(|p| panic!("fuzz rules: {p:?}")))
    .collect()
}

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = Record::json(data) {
        let _ = apply(&rules(true), &record, 2026);
    }
    if let Ok(record) = Record::delimited(data, "|") {
        let _ = apply(&rules(false), &record, 2026);
    }
});
