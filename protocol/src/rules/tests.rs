use super::*;
use crate::event::{InventoryScan, ShipmentScan};
use proptest::prelude::*;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn rule(
    when: &[(&str, &str)],
    kind: &str,
    fields: &[(&str, &str)],
    values: &[(&str, &[(&str, &str)])],
) -> Rule {
    let values = values
        .iter()
        .map(|(f, m)| (f.to_string(), map(m)))
        .collect();
    Rule::from_config(when.iter().copied(), kind, fields.iter().copied(), values)
        .unwrap_or_else(|p| panic!("{p:?}"))
}

/// The sorter of docs/configuration.md, decoders over MQTT JSON.
fn json_rules() -> Vec<Rule> {
    vec![
        rule(
            &[("/type", "CONF")],
            "shipment.sort",
            &[
                ("code", "/barcode"),
                ("destination", "/chute"),
                ("result", "/status"),
            ],
            &[(
                "result",
                &[
                    ("OK", "diverted"),
                    ("RC", "recirculated"),
                    ("NR", "no_read"),
                ],
            )],
        ),
        rule(
            &[("/type", "FAULT")],
            "equipment.state",
            &[("state", "/type"), ("code", "/code"), ("message", "/text")],
            &[("state", &[("FAULT", "fault")])],
        ),
        rule(
            &[("/type", "SCAN")],
            "shipment.scan",
            &[("code", "/barcode")],
            &[],
        ),
    ]
}

/// The serial sorter of the framing vectors: `CONF|0042|code|chute|OK`, `FAULT|0044|JAM|PE12`.
fn delimited_rules() -> Vec<Rule> {
    vec![
        rule(
            &[("0", "CONF")],
            "shipment.sort",
            &[("code", "2"), ("destination", "3"), ("result", "4")],
            &[("result", &[("OK", "diverted"), ("RC", "recirculated")])],
        ),
        rule(
            &[("0", "NORD")],
            "shipment.sort",
            &[("result", "3")],
            &[("result", &[("NOREAD", "no_read")])],
        ),
        rule(
            &[("0", "FAULT")],
            "equipment.state",
            &[("state", "0"), ("code", "2"), ("message", "3")],
            &[("state", &[("FAULT", "fault")])],
        ),
    ]
}

fn json(text: &str) -> Result<Body, String> {
    apply(&json_rules(), &Record::json(text.as_bytes())?, 2026)
}

fn delimited(text: &str) -> Result<Body, String> {
    apply(
        &delimited_rules(),
        &Record::delimited(text.as_bytes(), "|")?,
        2026,
    )
}

const SSCC: &str = "106141412345678908";

fn sort(code: Option<&str>, sscc: Option<&str>, dest: Option<&str>, result: SortResult) -> Body {
    Body::ShipmentSort(ShipmentSort {
        code: code.map(str::to_owned),
        sscc: sscc.map(str::to_owned),
        destination: dest.map(str::to_owned),
        result,
    })
}

#[test]
fn json_divert_confirmations_map_to_shipment_sort_with_the_sscc() {
    assert_eq!(
        json(
            r#"{"type":"CONF","barcode":"]C100106141412345678908","chute":"CH017","status":"OK"}"#
        ),
        Ok(sort(
            Some("]C100106141412345678908"),
            Some(SSCC),
            Some("CH017"),
            SortResult::Diverted
        ))
    );
    assert_eq!(
        json(r#"{"type":"CONF","barcode":"106141412345678908","chute":17,"status":"RC"}"#),
        Ok(sort(
            Some(SSCC),
            Some(SSCC),
            Some("17"),
            SortResult::Recirculated
        ))
    );
    assert_eq!(
        json(r#"{"type":"CONF","chute":null,"status":"no_read"}"#),
        Ok(sort(None, None, None, SortResult::NoRead)),
        "a canonical value needs no translation; missing and null fields are null"
    );
    assert_eq!(
        json(r#"{"type":"CONF","barcode":"ABC123","status":"full"}"#),
        Ok(sort(Some("ABC123"), None, None, SortResult::Full))
    );
}

#[test]
fn delimited_telegrams_map_by_column() {
    assert_eq!(
        delimited("CONF|0042|106141412345678908|CH017|OK"),
        Ok(sort(
            Some(SSCC),
            Some(SSCC),
            Some("CH017"),
            SortResult::Diverted
        ))
    );
    assert_eq!(
        delimited("NORD|0043|T01|NOREAD"),
        Ok(sort(None, None, None, SortResult::NoRead))
    );
    assert_eq!(
        delimited("FAULT|0044|JAM|PE12"),
        Ok(Body::EquipmentState(EquipmentState {
            state: EquipmentStateValue::Fault,
            code: Some("JAM".into()),
            message: Some("PE12".into()),
        }))
    );
    assert_eq!(
        delimited(" CONF | 1 | | CH01 | OK "),
        Ok(sort(None, None, Some("CH01"), SortResult::Diverted)),
        "columns are trimmed; an empty one is null"
    );
}

#[test]
fn a_mapped_scan_is_read_exactly_as_the_barcode_decoder_reads_it() {
    let body = json(r#"{"type":"SCAN","barcode":"]C100106141412345678908"}"#);
    let want = barcode::to_body(
        barcode::decode(b"]C100106141412345678908", "NOREAD"),
        Some(Role::Packing),
        2026,
    );
    assert_eq!(body, Ok(want));
    assert!(matches!(
        json(r#"{"type":"SCAN","barcode":"]C10195012345678903"}"#),
        Ok(Body::InventoryScan(InventoryScan { gtin: Some(g), .. })) if g == "95012345678903"
    ));
    let r = rule(
        &[],
        "inventory.scan",
        &[("code", "0"), ("symbology", "1")],
        &[],
    );
    assert_eq!(
        apply(
            &[r],
            &Record::delimited(b"ABC-1;code-39", ";").unwrap_or(Record::Columns(vec![])),
            2026
        ),
        Ok(Body::InventoryScan(InventoryScan {
            code: "ABC-1".into(),
            symbology: "code-39".into(),
            gtin: None,
            batch: None,
            expiry: None,
            serial: None,
            quantity: None,
            net_kg: None,
            gs1: Default::default(),
        }))
    );
    let r = rule(&[], "shipment.scan", &[("code", "0")], &[]);
    assert!(matches!(
        apply(&[r], &Record::Columns(vec!["XYZ"]), 2026),
        Ok(Body::ShipmentScan(ShipmentScan { sscc: None, .. }))
    ));
}

#[test]
fn when_compares_numbers_and_booleans_by_their_json_text() {
    let r = rule(
        &[("/n", "42"), ("/ok", "true"), ("/x", "null")],
        "shipment.sort",
        &[("result", "/r")],
        &[],
    );
    fn rec(t: &str) -> Record<'_> {
        Record::json(t.as_bytes()).unwrap_or(Record::Columns(vec![]))
    }
    assert!(apply(
        std::slice::from_ref(&r),
        &rec(r#"{"n":42,"ok":true,"x":null,"r":"fault"}"#),
        2026
    )
    .is_ok());
    assert!(apply(
        std::slice::from_ref(&r),
        &rec(r#"{"n":"42","ok":"true","x":null,"r":"fault"}"#),
        2026
    )
    .is_ok());
    assert!(apply(
        std::slice::from_ref(&r),
        &rec(r#"{"n":42.0,"ok":true,"x":null,"r":"fault"}"#),
        2026
    )
    .is_err());
    assert!(apply(
        std::slice::from_ref(&r),
        &rec(r#"{"n":42,"ok":true,"r":"fault"}"#),
        2026
    )
    .is_err());
}

#[test]
fn failures_say_what_is_wrong() {
    assert_eq!(
        json(r#"{"type":"CONF","status":"XX"}"#),
        Err("rule 1 (shipment.sort): field result: \"XX\" is not one of diverted, recirculated, no_read, full, fault and values.result does not translate it".into())
    );
    assert_eq!(
        json(r#"{"type":"CONF"}"#),
        Err("rule 1 (shipment.sort): field result: /status is not in the record".into())
    );
    assert_eq!(
        json(r#"{"type":"PING"}"#),
        Err("no rule matches (rule 1: /type is \"PING\", not \"CONF\"; rule 2: /type is \"PING\", not \"FAULT\"; rule 3: /type is \"PING\", not \"SCAN\")".into())
    );
    assert_eq!(
        json(r#"{"type":"CONF","status":"OK","barcode":{"a":1}}"#),
        Err(
            "rule 1 (shipment.sort): field code: /barcode is an object, not a text or number"
                .into()
        )
    );
    assert_eq!(
        delimited("CONF|1"),
        Err("rule 1 (shipment.sort): field result: column 4 is not in the telegram (it has 2 columns)".into())
    );
    assert!(json("{\"type\":").is_err_and(|e| e.starts_with("not JSON: ")));
    assert_eq!(
        Record::delimited(b"A|\xff", "|"),
        Err("byte 0xFF at offset 2 is not valid UTF-8".into())
    );
    assert_eq!(
        apply(&json_rules(), &Record::Columns(vec!["CONF"]), 2026),
        Err("rule 1: JSON pointer \"/type\" used on a delimited telegram; use a column index such as \"0\"".into())
    );
    let r = rule(&[], "shipment.sort", &[("sscc", "0"), ("result", "1")], &[]);
    assert_eq!(
        apply(&[r], &Record::Columns(vec!["106141412345678907", "diverted"]), 2026),
        Err("rule 1 (shipment.sort): field sscc: \"106141412345678907\" is not an SSCC (18 digits with a valid check digit)".into())
    );
    assert_eq!(
        apply(&[], &Record::Columns(vec![]), 2026),
        Err("no rules are configured for this source".into())
    );
}

#[test]
fn selectors() {
    assert_eq!(
        Selector::parse("/type"),
        Ok(Selector::Pointer("/type".into()))
    );
    assert_eq!(
        Selector::parse("/a~1b/~0"),
        Ok(Selector::Pointer("/a~1b/~0".into()))
    );
    assert_eq!(Selector::parse("3"), Ok(Selector::Column(3)));
    assert!(Selector::parse("/a~2").is_err());
    assert!(Selector::parse("").is_err());
    assert!(Selector::parse("99999999999999999999999").is_err());
    assert_eq!(
        Selector::parse("type"),
        Err("\"type\" is neither a JSON pointer (starting with '/', e.g. \"/type\") nor a column index (\"0\", \"1\", …)".into())
    );
}

#[test]
fn check_rule_lists_every_problem() {
    let bad = Rule {
        when: vec![],
        kind: Kind::ShipmentSort,
        fields: vec![
            ("code".into(), Selector::Column(0)),
            ("chute".into(), Selector::Column(1)),
            ("code".into(), Selector::Column(2)),
        ],
        values: [
            ("result".to_owned(), map(&[("OK", "divert")])),
            ("code".to_owned(), map(&[("a", "b")])),
        ]
        .into_iter()
        .collect(),
    };
    assert_eq!(
        check_rule(&bad),
        vec![
            "fields.chute: shipment.sort has no field chute (it has code, sscc, destination, result)",
            "fields.code: mapped twice",
            "fields.result: shipment.sort needs it mapped",
            "values.code: only result can have values",
            "values.result: the field is not mapped in fields",
            "values.result.OK: \"divert\" is not one of diverted, recirculated, no_read, full, fault",
        ]
    );
    let weight = Rule {
        kind: Kind::ShipmentWeight,
        ..bad.clone()
    };
    assert_eq!(check_rule(&weight).len(), 1);
    let scan = Rule {
        kind: Kind::ShipmentScan,
        fields: vec![("code".into(), Selector::Column(0))],
        values: [("code".to_owned(), map(&[]))].into_iter().collect(),
        when: vec![],
    };
    assert_eq!(
        check_rule(&scan),
        vec!["values.code: shipment.scan has no field that takes values"]
    );
    assert_eq!(
        check_rule_for(&json_rules()[0], RecordKind::Delimited),
        vec![
            "when.\"/type\": needs a column index such as \"0\" (decoder delimited)",
            "fields.code: needs a column index such as \"0\" (decoder delimited)",
            "fields.destination: needs a column index such as \"0\" (decoder delimited)",
            "fields.result: needs a column index such as \"0\" (decoder delimited)",
        ]
    );
    assert!(check_rule_for(&json_rules()[0], RecordKind::Json).is_empty());
    assert_eq!(
        Rule::from_config([("type", "CONF")], "shipment.weight", [("code", "/x")], BTreeMap::new()),
        Err(vec![
            "when.\"type\": \"type\" is neither a JSON pointer (starting with '/', e.g. \"/type\") nor a column index (\"0\", \"1\", …)".to_owned(),
            "kind: shipment.weight cannot be made by a rule (rules make shipment.sort, equipment.state, shipment.scan, inventory.scan)".to_owned(),
        ])
    );
    assert!(Rule::from_config([], "sorted", [], BTreeMap::new()).is_err_and(|p| p == vec!["kind: \"sorted\" is not a kind rules make (shipment.sort, equipment.state, shipment.scan, inventory.scan)"]));
}

proptest! {
    #[test]
    fn json_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        if let Ok(r) = Record::json(&bytes) {
            let _ = apply(&json_rules(), &r, 2026);
        }
    }

    #[test]
    fn json_near_misses_never_panic(t in "(CONF|FAULT|SCAN|X)", code in "[\\]C0-9A-Z\u{1d}]{0,24}", status in "(OK|RC|NR|XX|fault|)") {
        let text = serde_json::json!({"type": t, "barcode": code, "status": status, "code": 1, "text": [1]}).to_string();
        let _ = json(&text);
    }

    #[test]
    fn delimited_never_panics(bytes in proptest::collection::vec(prop_oneof![Just(b'|'), any::<u8>()], 0..80)) {
        if let Ok(r) = Record::delimited(&bytes, "|") {
            let _ = apply(&delimited_rules(), &r, 2026);
        }
    }
}
