//! The framing vectors (`protocol/tests/vectors/framing.jsonl`): each input is fed to the
//! STX/ETX framer of its `framing`, whole and byte by byte; the telegram split on `|` must give
//! `expect.fields`, or the framer must report the expected error.

use edge_protocol::framing::{Framed, LrcMismatch, StxEtxFramer};
use serde_json::Value;

/// In the repository (copied from the standards' cases, see `vectors/README.md`); a missing
/// file fails the build, not a test.
const VECTORS: &str = include_str!("vectors/framing.jsonl");

fn run(
    framing: &str,
    input: &[u8],
    by_byte: bool,
) -> Result<Vec<Result<Framed, LrcMismatch>>, String> {
    let lrc = match framing {
        "stx_etx_lrc" => true,
        "stx_etx" => false,
        other => return Err(format!("unknown framing {other:?}")),
    };
    let mut f = StxEtxFramer::new(4096, lrc);
    if by_byte {
        for b in input {
            f.push(std::slice::from_ref(b));
        }
    } else {
        f.push(input);
    }
    let items = std::iter::from_fn(|| f.next_frame()).collect();
    if f.pending() != 0 {
        return Err(format!("{} bytes left pending", f.pending()));
    }
    Ok(items)
}

/// The outcome as the vectors describe it.
fn describe(items: &[Result<Framed, LrcMismatch>]) -> Value {
    match items {
        [Ok(Framed::Frame(data))] => {
            let text = String::from_utf8_lossy(data);
            serde_json::json!({ "fields": text.split('|').collect::<Vec<_>>() })
        }
        [Err(e)] => serde_json::json!({ "error": "checksum", "detail": e.to_string() }),
        other => serde_json::json!({ "unexpected": format!("{other:?}") }),
    }
}

#[test]
fn every_framing_vector_frames_to_its_expected_fields() {
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
        let framing = case["framing"].as_str().unwrap_or_default();
        let input = case["input"]
            .as_str()
            .unwrap_or_else(|| panic!("line {}: no input", n + 1));
        let note = case["note"].as_str().unwrap_or("");
        let expect = case["expect"]
            .as_object()
            .unwrap_or_else(|| panic!("line {}: no expect object", n + 1));
        cases += 1;
        for by_byte in [false, true] {
            let got = match run(framing, input.as_bytes(), by_byte) {
                Ok(items) => describe(&items),
                Err(e) => serde_json::json!({ "unexpected": e }),
            };
            for (field, want) in expect {
                if got.get(field) != Some(want) {
                    failures.push(format!(
                        "line {} ({note}), {input:?}{}: {field} expected {want}, got {got}",
                        n + 1,
                        if by_byte { " byte by byte" } else { "" }
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(cases, 5, "number of vectors in vectors/framing.jsonl");
}

#[test]
fn the_vectors_back_to_back_in_one_stream_give_each_outcome_in_order() {
    let text = VECTORS;
    let inputs: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["input"].as_str().map(str::to_owned))
        .collect();
    let stream: Vec<u8> = inputs.iter().flat_map(|i| i.bytes()).collect();
    let items = run("stx_etx_lrc", &stream, false).unwrap_or_default();
    let outcomes: Vec<bool> = items.iter().map(Result::is_ok).collect();
    assert_eq!(outcomes, vec![true, true, true, false, true]);
}
