//! The barcode vectors (`protocol/tests/vectors/barcode.jsonl`): each line is decoded as a
//! scanner line at a packing station and every expected body field is compared.

use edge_protocol::barcode::{decode, to_body};
use edge_protocol::Role;
use serde_json::Value;

/// In the repository (copied from the standards' cases, see `vectors/README.md`); a missing
/// file fails the build, not a test.
const VECTORS: &str = include_str!("vectors/barcode.jsonl");

#[test]
fn every_barcode_vector_decodes_to_its_expected_body() {
    let text = VECTORS;
    let mut cases = 0;
    let mut failures = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let case: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("line {}: not JSON: {e}", n + 1));
        let input = case["input"]
            .as_str()
            .unwrap_or_else(|| panic!("line {}: no input", n + 1));
        let note = case["note"].as_str().unwrap_or("");
        let expect = case["expect"]
            .as_object()
            .unwrap_or_else(|| panic!("line {}: no expect object", n + 1));
        cases += 1;

        let body = to_body(
            decode(input.as_bytes(), "NOREAD"),
            Some(Role::Packing),
            2026,
        );
        let kind = body.kind().as_str();
        let json = serde_json::to_value(&body).unwrap_or_else(|e| panic!("serialize: {e}"));
        for (field, want) in expect {
            let got = if field == "kind" {
                Value::from(kind)
            } else {
                json.get(field).cloned().unwrap_or(Value::Null)
            };
            if &got != want {
                failures.push(format!(
                    "line {} ({note}), input {input:?}: {field} is {got}, expected {want}; body {json}",
                    n + 1
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(cases, 29, "number of vectors in vectors/barcode.jsonl");
}
