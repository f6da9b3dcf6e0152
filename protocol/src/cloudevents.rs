//! An event as a CloudEvents 1.0 structured-mode JSON document (`upstream.format =
//! "cloudevents"`, docs/events.md): the attributes below, and `data` the edge.v1 JSON event
//! exactly as `format = "json"` sends it.
//!
//! | attribute | value |
//! | --- | --- |
//! | `specversion` | `"1.0"` |
//! | `id` | the event's `id` |
//! | `source` | `/sites/{site}/sources/{source}` (each id percent-encoded outside RFC 3986 unreserved characters) |
//! | `type` | `edge.{kind}.v1`, e.g. `edge.shipment.scan.v1` |
//! | `time` | the event's `observed_at` |
//! | `subject` | the body's `sscc`, else its `gtin`; absent when neither has a value |
//! | `datacontenttype` | `"application/json"` |

use serde::Serialize;

use crate::event::{Body, Envelope};

/// The media type of a structured-mode CloudEvents JSON message (an MQTT 5 content type or an
/// HTTP `Content-Type`).
pub const CONTENT_TYPE: &str = "application/cloudevents+json";

#[derive(Serialize)]
struct Attributes<'a> {
    specversion: &'static str,
    id: &'a str,
    source: String,
    #[serde(rename = "type")]
    ty: String,
    time: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    datacontenttype: &'static str,
}

/// The CloudEvents `source` of an event: `/sites/{site}/sources/{source}`.
pub fn source_of(env: &Envelope) -> String {
    format!(
        "/sites/{}/sources/{}",
        percent_encode(&env.site),
        percent_encode(&env.source)
    )
}

/// The CloudEvents `type` of an event: `edge.{kind}.v1`.
pub fn type_of(env: &Envelope) -> String {
    format!("edge.{}.v1", env.kind())
}

/// The CloudEvents `subject`: the unit's SSCC, else the trade item's GTIN.
pub fn subject_of(env: &Envelope) -> Option<&str> {
    match &env.body {
        Body::ShipmentScan(b) => b.sscc.as_deref(),
        Body::ShipmentWeight(b) => b.sscc.as_deref(),
        Body::ShipmentSort(b) => b.sscc.as_deref(),
        Body::InventoryScan(b) => b.gtin.as_deref(),
        Body::EquipmentState(_) | Body::Exception(_) => None,
    }
}

/// The event as one CloudEvents JSON document (UTF-8).
pub fn to_json(env: &Envelope) -> Vec<u8> {
    let attributes = Attributes {
        specversion: "1.0",
        id: &env.id,
        source: source_of(env),
        ty: type_of(env),
        time: &env.observed_at,
        subject: subject_of(env),
        datacontenttype: "application/json",
    };
    let data = env.to_json();
    // Serializing a struct of strings to a Vec cannot fail; it ends with the closing brace,
    // which `data` (the edge.v1 document, byte for byte) goes before.
    let mut out = serde_json::to_vec(&attributes).unwrap_or_default();
    out.pop();
    out.reserve(data.len() + 9);
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(&data);
    out.push(b'}');
    out
}

/// `text` with every byte outside RFC 3986's unreserved set as `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{
        EquipmentState, EquipmentStateValue, Gs1Map, InventoryScan, ShipmentScan, ShipmentWeight,
        WeightMode,
    };
    use serde_json::{json, Value};

    fn envelope(body: Body) -> Envelope {
        Envelope {
            id: "0190a6e1-7f3c-7c2a-9b1e-3d4f5a6b7c8d".into(),
            site: "dc-fra-01".into(),
            seq: 42,
            source: "scanner-pack-01".into(),
            station: Some("pack-01".into()),
            role: None,
            observed_at: "2026-11-27T10:00:00.123Z".into(),
            body,
            raw: b"]C1001".to_vec(),
            replayed: false,
        }
    }

    fn scan(sscc: Option<&str>) -> Body {
        Body::ShipmentScan(ShipmentScan {
            code: "x".into(),
            symbology: "unknown".into(),
            sscc: sscc.map(Into::into),
            gs1: Gs1Map::new(),
        })
    }

    fn doc(env: &Envelope) -> Value {
        serde_json::from_slice(&to_json(env)).unwrap_or_default()
    }

    #[test]
    fn attributes_follow_the_mapping_and_data_is_the_json_event_unchanged() {
        let e = envelope(scan(Some("106141412345678908")));
        let bytes = to_json(&e);
        let v = doc(&e);
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["id"], json!(e.id));
        assert_eq!(v["source"], "/sites/dc-fra-01/sources/scanner-pack-01");
        assert_eq!(v["type"], "edge.shipment.scan.v1");
        assert_eq!(v["time"], "2026-11-27T10:00:00.123Z");
        assert_eq!(v["subject"], "106141412345678908");
        assert_eq!(v["datacontenttype"], "application/json");
        let data = e.to_json();
        assert!(
            bytes.ends_with(&[b",\"data\":".as_slice(), &data, b"}"].concat()),
            "data is the edge.v1 document byte for byte"
        );
        assert_eq!(
            Envelope::from_json(v["data"].to_string().as_bytes()).ok(),
            Some(e)
        );
    }

    #[test]
    fn subject_is_the_sscc_else_the_gtin_else_absent() {
        let weight = Body::ShipmentWeight(ShipmentWeight {
            weight_kg: "1".into(),
            mode: WeightMode::Gross,
            tare_kg: None,
            unit: "kg".into(),
            sscc: Some("106141412345678908".into()),
        });
        let item = Body::InventoryScan(InventoryScan {
            code: "x".into(),
            symbology: "ean-13".into(),
            gtin: Some("95012345678903".into()),
            batch: None,
            expiry: None,
            serial: None,
            quantity: None,
            net_kg: None,
            gs1: Gs1Map::new(),
        });
        let state = Body::EquipmentState(EquipmentState {
            state: EquipmentStateValue::Running,
            code: None,
            message: None,
        });
        assert_eq!(doc(&envelope(weight))["subject"], "106141412345678908");
        assert_eq!(doc(&envelope(item))["subject"], "95012345678903");
        for body in [scan(None), state] {
            let v = doc(&envelope(body));
            assert!(v.get("subject").is_none(), "{v}");
        }
    }

    #[test]
    fn ids_in_the_source_are_percent_encoded() {
        let mut e = envelope(scan(None));
        e.source = "line 1/äb".into();
        assert_eq!(
            doc(&e)["source"],
            "/sites/dc-fra-01/sources/line%201%2F%C3%A4b"
        );
    }
}
