//! The committed edge.v1 JSON Schema: it is the generated one, it accepts what the agent sends
//! (events serialized by the real encoder), it refuses what the contract says is wrong, and it
//! only grew by optional fields since the released copy.

use edge_protocol::event::{
    Body, Envelope, EquipmentState, EquipmentStateValue, Exception, ExceptionReason, Gs1Map,
    InventoryScan, Role, ShipmentScan, ShipmentSort, ShipmentWeight, SortResult, WeightMode,
};
use edge_protocol::schema;
use serde_json::{json, Value};

const COMMITTED: &str = include_str!("../../docs/schema/edge.v1.schema.json");
const RELEASED: &str = include_str!("../../docs/schema/released/edge.v1.schema.json");

fn committed() -> Value {
    serde_json::from_str(COMMITTED).unwrap_or(Value::Null)
}

fn validator() -> jsonschema::Validator {
    match jsonschema::draft202012::new(&committed()) {
        Ok(v) => v,
        Err(e) => panic!("docs/schema/edge.v1.schema.json does not compile: {e}"),
    }
}

/// Every way the validator refuses `event`, one line each.
fn problems(event: &Value) -> Vec<String> {
    validator()
        .iter_errors(event)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

fn envelope(body: Body) -> Envelope {
    Envelope {
        id: "0190a6e1-7f3c-7c2a-9b1e-3d4f5a6b7c8d".into(),
        site: "dc-fra-01".into(),
        seq: 42,
        source: "scanner-pack-01".into(),
        station: Some("pack-01".into()),
        role: Some(Role::Packing),
        observed_at: "2026-11-27T10:00:00.123Z".into(),
        body,
        raw: b"]C100106141412345678908\x1d\xff".to_vec(),
        replayed: false,
    }
}

/// One body of each kind, and the variants that change the wire form (nulls, `count`).
fn bodies() -> Vec<Body> {
    let mut gs1 = Gs1Map::new();
    gs1.insert("00".into(), "106141412345678908".into());
    let mut item = Gs1Map::new();
    item.insert("01".into(), "95012345678903".into());
    item.insert("3103".into(), "000123".into());
    vec![
        Body::ShipmentScan(ShipmentScan {
            code: "00106141412345678908".into(),
            symbology: "gs1-128".into(),
            sscc: Some("106141412345678908".into()),
            gs1,
        }),
        Body::ShipmentScan(ShipmentScan {
            code: "PARCEL-7".into(),
            symbology: "unknown".into(),
            sscc: None,
            gs1: Gs1Map::new(),
        }),
        Body::InventoryScan(InventoryScan {
            code: "0195012345678903".into(),
            symbology: "gs1-128".into(),
            gtin: Some("95012345678903".into()),
            batch: Some("LOT42".into()),
            expiry: Some("2025-02-28".into()),
            serial: None,
            quantity: Some(12),
            net_kg: Some("0.123".into()),
            gs1: item,
        }),
        Body::InventoryScan(InventoryScan {
            code: "SHELF-3".into(),
            symbology: "code-128".into(),
            gtin: None,
            batch: None,
            expiry: None,
            serial: None,
            quantity: None,
            net_kg: None,
            gs1: Gs1Map::new(),
        }),
        Body::ShipmentWeight(ShipmentWeight {
            weight_kg: "12.345".into(),
            mode: WeightMode::Net,
            tare_kg: Some("0.5".into()),
            unit: "lb".into(),
            sscc: Some("106141412345678908".into()),
        }),
        Body::ShipmentWeight(ShipmentWeight {
            weight_kg: "-0.5".into(),
            mode: WeightMode::Gross,
            tare_kg: None,
            unit: "kg".into(),
            sscc: None,
        }),
        Body::ShipmentSort(ShipmentSort {
            code: Some("x".into()),
            sscc: None,
            destination: Some("CH017".into()),
            result: SortResult::NoRead,
        }),
        Body::EquipmentState(EquipmentState {
            state: EquipmentStateValue::Fault,
            code: Some("JAM".into()),
            message: None,
        }),
        Body::Exception(Exception::new(
            ExceptionReason::InvalidBarcode,
            "AI 00: check digit is 7, expected 8",
        )),
        Body::Exception(Exception {
            reason: ExceptionReason::Dropped,
            detail: "buffer full".into(),
            count: Some(7),
        }),
    ]
}

fn sample(kind: &str) -> Value {
    bodies()
        .into_iter()
        .map(|b| serde_json::from_slice::<Value>(&envelope(b).to_json()).unwrap_or_default())
        .find(|v| v["kind"] == kind)
        .unwrap_or_default()
}

#[test]
fn the_committed_schema_is_the_one_generated_from_the_types() {
    let generated = schema::edge_v1();
    assert!(
        committed() == generated,
        "{} is out of date with the event types in protocol/src/event.rs; regenerate it with\n\n    \
         cargo run -p edge-protocol --example schema > {}\n\nand commit it (a change to edge.v1 \
         must pass the compatibility test too)",
        schema::COMMITTED_PATH,
        schema::COMMITTED_PATH
    );
    assert_eq!(
        COMMITTED,
        schema::edge_v1_text(),
        "regenerate it: whitespace differs"
    );
}

#[test]
fn the_schema_is_a_valid_draft_2020_12_schema() {
    if let Err(e) = jsonschema::meta::validate(&committed()) {
        panic!("not a valid JSON Schema: {e}");
    }
    assert_eq!(committed()["$schema"], schema::DIALECT);
}

#[test]
fn the_schema_accepts_every_kind_as_the_encoder_writes_it() {
    for body in bodies() {
        for replayed in [false, true] {
            let mut e = envelope(body.clone());
            e.replayed = replayed;
            for (station, role) in [(Some("pack-01".into()), Some(Role::Packing)), (None, None)] {
                e.station = station;
                e.role = role;
                let v: Value = serde_json::from_slice(&e.to_json()).unwrap_or_default();
                assert_eq!(problems(&v), Vec::<String>::new(), "{v}");
            }
        }
    }
    // Every role, and an empty raw.
    for role in Role::ALL {
        let mut e = envelope(bodies().remove(0));
        e.role = Some(role);
        e.raw.clear();
        let v: Value = serde_json::from_slice(&e.to_json()).unwrap_or_default();
        assert_eq!(problems(&v), Vec::<String>::new(), "{v}");
    }
}

/// The validator refuses `event`, and one of its reasons is at `path` and mentions `what`.
fn assert_refused(event: &Value, path: &str, what: &str) {
    let found = problems(event);
    assert!(
        found
            .iter()
            .any(|p| p.starts_with(&format!("{path}: ")) && p.contains(what)),
        "expected a problem at {path:?} mentioning {what:?}; got {found:?} for {event}"
    );
}

#[test]
fn a_missing_required_field_is_refused() {
    for field in [
        "schema",
        "id",
        "seq",
        "station",
        "observed_at",
        "kind",
        "body",
        "raw",
    ] {
        let mut v = sample("shipment.scan");
        v.as_object_mut().map(|o| o.remove(field));
        assert_refused(&v, "", &format!("\"{field}\" is a required property"));
    }
    let mut v = sample("shipment.scan");
    v["body"].as_object_mut().map(|o| o.remove("sscc"));
    assert_refused(&v, "/body", "\"sscc\" is a required property");
    let mut v = sample("inventory.scan");
    v["body"].as_object_mut().map(|o| o.remove("gtin"));
    assert_refused(&v, "/body", "\"gtin\" is a required property");
    let mut v = sample("exception");
    v["body"]["reason"] = json!("dropped");
    assert_refused(&v, "/body", "\"count\" is a required property");
}

#[test]
fn a_wrong_type_is_refused() {
    let cases = [
        ("shipment.scan", "/seq", json!("42")),
        ("shipment.scan", "/station", json!(7)),
        ("shipment.scan", "/replayed", json!(false)),
        ("shipment.scan", "/schema", json!("edge.v2")),
        (
            "shipment.scan",
            "/observed_at",
            json!("2026-11-27 10:00:00"),
        ),
        ("shipment.scan", "/id", json!("not-a-uuid")),
        ("shipment.scan", "/raw", json!("not base64!")),
        ("shipment.scan", "/role", json!("juggling")),
        ("shipment.scan", "/body", json!([])),
        ("inventory.scan", "/body/quantity", json!("12")),
        ("inventory.scan", "/body/gtin", json!("123")),
        ("shipment.scan", "/body/gs1", json!(["00"])),
        ("shipment.weight", "/body/weight_kg", json!(12.345)),
        ("shipment.weight", "/body/mode", json!("tared")),
        ("shipment.sort", "/body/result", json!("lost")),
        ("equipment.state", "/body/state", json!(null)),
        ("exception", "/body/reason", json!("gremlins")),
    ];
    for (kind, path, value) in cases {
        let mut v = sample(kind);
        if let Some(slot) = v.pointer_mut(path) {
            *slot = value.clone();
        } else {
            v[&path[1..]] = value.clone();
        }
        assert!(
            !problems(&v).is_empty(),
            "{kind} with {path} = {value} was accepted"
        );
        assert_refused(&v, path, "");
    }
}

#[test]
fn an_unknown_kind_is_refused() {
    let mut v = sample("shipment.scan");
    v["kind"] = json!("shipment.teleport");
    assert_refused(&v, "/kind", "is not one of");
}

#[test]
fn a_body_of_another_kind_is_refused() {
    let mut v = sample("shipment.scan");
    v["body"] = sample("shipment.weight")["body"].clone();
    assert_refused(&v, "/body", "\"code\" is a required property");
}

#[test]
fn the_schema_only_gained_optional_fields_since_the_release() {
    let released: Value = serde_json::from_str(RELEASED).unwrap_or_default();
    let broken = schema::compat::breaking_changes(&released, &committed());
    assert!(
        broken.is_empty(),
        "docs/schema/edge.v1.schema.json is not compatible with the released \
         docs/schema/released/edge.v1.schema.json: within edge.v1 only optional fields may be \
         added (docs/events.md, Versioning). Make the change optional, or publish it as \
         edge.v2. Changes:\n  {}",
        broken.join("\n  ")
    );
}
