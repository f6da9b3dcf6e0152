//! The scale vectors (`protocol/tests/vectors/scale.jsonl`): each frame goes through the framer
//! the agent uses for its decoder and then the decoder, and every expected field is compared.
//!
//! `weight_kg` and `tare_kg` are compared as exact decimal values: the decoders write the
//! canonical form (no trailing zeros, docs/events.md, "decimal string"), while some vectors keep the
//! scale's resolution ("10.00"). Every other field is compared as text.

use edge_protocol::decimal::Decimal;
use edge_protocol::event::WeightMode;
use edge_protocol::framing::{Framed, LineFramer};
use edge_protocol::scale::toledo::{Checksum, ToledoFramer};
use edge_protocol::scale::{ascii, mt_sics, toledo, ScaleError, ScaleReading};
use serde_json::{Map, Value};

/// In the repository (copied from the standards' cases, see `vectors/README.md`); a missing
/// file fails the build, not a test.
const VECTORS: &str = include_str!("vectors/scale.jsonl");

/// The frames the agent's framer makes of the input.
fn frames(decoder: &str, input: &[u8]) -> Vec<Framed> {
    let mut out = Vec::new();
    if decoder == "scale.toledo" {
        let mut f = ToledoFramer::new(4096, Checksum::Auto);
        f.push(input);
        f.flush();
        out.extend(std::iter::from_fn(|| f.next_frame()));
    } else {
        let mut f = LineFramer::new(4096);
        f.push(input);
        out.extend(std::iter::from_fn(|| f.next_frame()));
    }
    out
}

fn decode(decoder: &str, frame: &[u8]) -> Result<Result<ScaleReading, ScaleError>, String> {
    match decoder {
        "scale.mt_sics" => Ok(mt_sics::parse(frame)),
        "scale.toledo" => Ok(toledo::parse(frame)),
        "scale.ascii" => Ok(ascii::parse(frame)),
        other => Err(format!("unknown decoder {other:?}")),
    }
}

/// The reading as the vectors describe it: field name → value.
fn describe(result: &Result<ScaleReading, ScaleError>) -> Map<String, Value> {
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_owned(), v);
    };
    let mode = |mode: &WeightMode| match mode {
        WeightMode::Gross => "gross",
        WeightMode::Net => "net",
    };
    match result {
        Ok(ScaleReading::Weight {
            stable,
            mode: md,
            weight,
            unit,
            weight_kg,
            tare_kg,
        }) => {
            put("stable", Value::from(*stable));
            put("mode", Value::from(mode(md)));
            put("weight", Value::from(weight.as_str()));
            put("unit", Value::from(unit.as_str()));
            put(
                "weight_kg",
                weight_kg.as_deref().map_or(Value::Null, Value::from),
            );
            put(
                "tare_kg",
                tare_kg.as_deref().map_or(Value::Null, Value::from),
            );
        }
        Ok(ScaleReading::Tare {
            stable,
            weight,
            unit,
            weight_kg,
        }) => {
            put("stable", Value::from(*stable));
            put("mode", Value::from("tare"));
            put("weight", Value::from(weight.as_str()));
            put("unit", Value::from(unit.as_str()));
            put(
                "weight_kg",
                weight_kg.as_deref().map_or(Value::Null, Value::from),
            );
        }
        Ok(ScaleReading::Overload) => put("status", Value::from("overload")),
        Ok(ScaleReading::Underload) => put("status", Value::from("underload")),
        Ok(ScaleReading::Busy) => put("status", Value::from("busy")),
        Ok(ScaleReading::Ack(a)) => put("status", Value::from(format!("ack {a}"))),
        Ok(ScaleReading::Error(text)) => {
            put("status", Value::from("error"));
            // "syntax error: …" → "syntax".
            let name = text.split(" error").next().unwrap_or_default();
            put("error", Value::from(name));
            put("error_text", Value::from(text.as_str()));
        }
        Err(e) => {
            put("status", Value::from("error"));
            put("error", Value::from(e.kind()));
            put("error_text", Value::from(e.to_string()));
        }
    }
    m
}

/// Whether `got` says what `want` does: decimals by value (and `got` canonical), else equal.
fn same(field: &str, got: &Value, want: &Value) -> bool {
    match (field, got.as_str(), want.as_str()) {
        ("weight_kg" | "tare_kg", Some(g), Some(w)) => {
            match (Decimal::parse(g), Decimal::parse(w)) {
                (Ok(gd), Ok(wd)) => gd == wd && gd.to_string() == g,
                _ => false,
            }
        }
        _ => got == want,
    }
}

#[test]
fn every_scale_vector_decodes_to_its_expected_reading() {
    let text = VECTORS;
    let mut cases = 0;
    let mut per_decoder = std::collections::BTreeMap::<String, usize>::new();
    let mut failures = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let case: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("line {}: not JSON: {e}", n + 1));
        let decoder = case["decoder"].as_str().unwrap_or_default();
        let input = case["input"]
            .as_str()
            .unwrap_or_else(|| panic!("line {}: no input", n + 1));
        let note = case["note"].as_str().unwrap_or("");
        let expect = case["expect"]
            .as_object()
            .unwrap_or_else(|| panic!("line {}: no expect object", n + 1));
        cases += 1;
        *per_decoder.entry(decoder.to_owned()).or_default() += 1;
        let fail = |what: String| format!("line {} ({note}), {decoder} {input:?}: {what}", n + 1);

        let frames = frames(decoder, input.as_bytes());
        let [Framed::Frame(frame)] = frames.as_slice() else {
            failures.push(fail(format!("framed as {frames:?}, expected one frame")));
            continue;
        };
        let result = match decode(decoder, frame) {
            Ok(r) => r,
            Err(e) => {
                failures.push(fail(e));
                continue;
            }
        };
        // Parsing the raw input directly (with its line end) gives the same reading.
        if decode(decoder, input.as_bytes()).ok().as_ref() != Some(&result) {
            failures.push(fail("the unframed input decodes differently".into()));
        }
        let got = describe(&result);
        for (field, want) in expect {
            let g = got.get(field).cloned().unwrap_or(Value::Null);
            if !same(field, &g, want) {
                failures.push(fail(format!(
                    "{field} is {g}, expected {want}; reading {result:?}"
                )));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(cases, 18, "number of vectors in vectors/scale.jsonl");
    assert_eq!(
        per_decoder.into_iter().collect::<Vec<_>>(),
        vec![
            ("scale.ascii".to_owned(), 5),
            ("scale.mt_sics".to_owned(), 9),
            ("scale.toledo".to_owned(), 4)
        ]
    );
}

#[test]
fn the_comparison_can_fail() {
    assert!(
        !same("weight_kg", &Value::from("0.10"), &Value::from("0.1")),
        "not canonical"
    );
    assert!(!same("weight_kg", &Value::from("0.2"), &Value::from("0.1")));
    assert!(same("weight_kg", &Value::from("10"), &Value::from("10.00")));
    assert!(!same("weight", &Value::from("10"), &Value::from("10.00")));
    assert!(!same("tare_kg", &Value::Null, &Value::from("0")));
}
