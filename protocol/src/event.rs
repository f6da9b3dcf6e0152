//! The canonical event envelope (docs/events.md) and the kinds' bodies (section 5).
//!
//! JSON and CBOR carry the same field names and values. The only field whose representation
//! differs is `raw`: base64 text in JSON, a byte string in CBOR.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

mod nesting;
mod wire_in;

/// The envelope's schema version. A change to any field's meaning needs a new one.
pub const SCHEMA: &str = "edge.v1";

/// Arrays, maps and tags a CBOR envelope may nest (it uses three: the envelope, its body and
/// the body's `gs1` map).
const MAX_NESTING: usize = 32;

/// A station's role: which side of the warehouse a non-GS1 code is read on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Receiving,
    Putaway,
    Picking,
    Packing,
    Weighing,
    Sorting,
    Loading,
    Counting,
}

impl Role {
    pub const ALL: [Role; 8] = [
        Role::Receiving,
        Role::Putaway,
        Role::Picking,
        Role::Packing,
        Role::Weighing,
        Role::Sorting,
        Role::Loading,
        Role::Counting,
    ];

    /// Shipment-side roles turn a non-GS1 code into `shipment.scan`; the others into
    /// `inventory.scan`.
    pub fn is_shipment_side(self) -> bool {
        matches!(
            self,
            Role::Packing | Role::Weighing | Role::Sorting | Role::Loading
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Receiving => "receiving",
            Role::Putaway => "putaway",
            Role::Picking => "picking",
            Role::Packing => "packing",
            Role::Weighing => "weighing",
            Role::Sorting => "sorting",
            Role::Loading => "loading",
            Role::Counting => "counting",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The event kinds of docs/events.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    #[serde(rename = "shipment.scan")]
    ShipmentScan,
    #[serde(rename = "inventory.scan")]
    InventoryScan,
    #[serde(rename = "shipment.weight")]
    ShipmentWeight,
    #[serde(rename = "shipment.sort")]
    ShipmentSort,
    #[serde(rename = "equipment.state")]
    EquipmentState,
    #[serde(rename = "exception")]
    Exception,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::ShipmentScan,
        Kind::InventoryScan,
        Kind::ShipmentWeight,
        Kind::ShipmentSort,
        Kind::EquipmentState,
        Kind::Exception,
    ];

    /// The kind's name as it appears in topics and in the envelope.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ShipmentScan => "shipment.scan",
            Kind::InventoryScan => "inventory.scan",
            Kind::ShipmentWeight => "shipment.weight",
            Kind::ShipmentSort => "shipment.sort",
            Kind::EquipmentState => "equipment.state",
            Kind::Exception => "exception",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// GS1 element strings as read: AI → value as encoded, in AI order.
pub type Gs1Map = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShipmentScan {
    pub code: String,
    pub symbology: String,
    pub sscc: Option<String>,
    pub gs1: Gs1Map,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryScan {
    pub code: String,
    pub symbology: String,
    /// Always 14 digits when present.
    pub gtin: Option<String>,
    pub batch: Option<String>,
    /// YYYY-MM-DD; a DD of 00 is already resolved to the month's last day.
    pub expiry: Option<String>,
    pub serial: Option<String>,
    /// AI 30 or 37.
    pub quantity: Option<u64>,
    /// AI 310n as a decimal string in kg.
    pub net_kg: Option<String>,
    pub gs1: Gs1Map,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightMode {
    Gross,
    Net,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShipmentWeight {
    /// A decimal string in kg, converted exactly from the scale's unit.
    pub weight_kg: String,
    pub mode: WeightMode,
    pub tare_kg: Option<String>,
    /// The unit as the scale sent it.
    pub unit: String,
    pub sscc: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortResult {
    Diverted,
    Recirculated,
    NoRead,
    Full,
    Fault,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShipmentSort {
    pub code: Option<String>,
    pub sscc: Option<String>,
    pub destination: Option<String>,
    pub result: SortResult,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EquipmentStateValue {
    Running,
    Stopped,
    Fault,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EquipmentState {
    pub state: EquipmentStateValue,
    pub code: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExceptionReason {
    NoRead,
    InvalidBarcode,
    UnstableWeight,
    Overload,
    Underload,
    ScaleError,
    Undecodable,
    Dropped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exception {
    pub reason: ExceptionReason,
    /// What exactly went wrong, for a person.
    pub detail: String,
    /// Only with reason `dropped`: how many events were dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

impl Exception {
    pub fn new(reason: ExceptionReason, detail: impl Into<String>) -> Self {
        Exception {
            reason,
            detail: detail.into(),
            count: None,
        }
    }
}

/// A kind's body. The kind itself is `Body::kind()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    ShipmentScan(ShipmentScan),
    InventoryScan(InventoryScan),
    ShipmentWeight(ShipmentWeight),
    ShipmentSort(ShipmentSort),
    EquipmentState(EquipmentState),
    Exception(Exception),
}

impl Body {
    pub fn kind(&self) -> Kind {
        match self {
            Body::ShipmentScan(_) => Kind::ShipmentScan,
            Body::InventoryScan(_) => Kind::InventoryScan,
            Body::ShipmentWeight(_) => Kind::ShipmentWeight,
            Body::ShipmentSort(_) => Kind::ShipmentSort,
            Body::EquipmentState(_) => Kind::EquipmentState,
            Body::Exception(_) => Kind::Exception,
        }
    }

    pub fn exception(reason: ExceptionReason, detail: impl Into<String>) -> Body {
        Body::Exception(Exception::new(reason, detail))
    }
}

impl Serialize for Body {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Body::ShipmentScan(b) => b.serialize(s),
            Body::InventoryScan(b) => b.serialize(s),
            Body::ShipmentWeight(b) => b.serialize(s),
            Body::ShipmentSort(b) => b.serialize(s),
            Body::EquipmentState(b) => b.serialize(s),
            Body::Exception(b) => b.serialize(s),
        }
    }
}

/// One canonical event as central receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// UUID v7, assigned when the reading was stored.
    pub id: String,
    pub site: String,
    pub seq: u64,
    pub source: String,
    pub station: Option<String>,
    pub role: Option<Role>,
    /// RFC 3339 UTC with milliseconds.
    pub observed_at: String,
    pub body: Body,
    /// The reading as received.
    pub raw: Vec<u8>,
    pub replayed: bool,
}

impl Envelope {
    pub fn kind(&self) -> Kind {
        self.body.kind()
    }
}

/// The wire form, shared by both encodings; `raw` is serialized per format.
#[derive(Serialize)]
struct WireOut<'a, R: Serialize> {
    schema: &'static str,
    id: &'a str,
    site: &'a str,
    seq: u64,
    source: &'a str,
    station: Option<&'a str>,
    role: Option<Role>,
    observed_at: &'a str,
    kind: Kind,
    body: &'a Body,
    raw: R,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    replayed: bool,
}

/// Why bytes could not be read back as an envelope.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a valid edge.v1 envelope: {0}")]
    Malformed(String),
    #[error("schema {0:?} is not edge.v1; upgrade the consumer")]
    Schema(String),
    #[error("field raw is not valid base64: {0}")]
    Raw(String),
}

impl Envelope {
    fn wire<R: Serialize>(&self, raw: R) -> WireOut<'_, R> {
        WireOut {
            schema: SCHEMA,
            id: &self.id,
            site: &self.site,
            seq: self.seq,
            source: &self.source,
            station: self.station.as_deref(),
            role: self.role,
            observed_at: &self.observed_at,
            kind: self.kind(),
            body: &self.body,
            raw,
            replayed: self.replayed,
        }
    }

    /// The envelope as one JSON object; `raw` is standard base64.
    pub fn to_json(&self) -> Vec<u8> {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD.encode(&self.raw);
        // Serializing plain structs of strings and integers to a Vec cannot fail.
        serde_json::to_vec(&self.wire(raw)).unwrap_or_default()
    }

    /// The envelope as one CBOR map; `raw` is a byte string.
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.raw.len());
        // Writing into a Vec cannot fail; the value has no non-string map keys.
        let _ = ciborium::into_writer(&self.wire(Bytes(&self.raw)), &mut out);
        out
    }

    pub fn from_json(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        use base64::Engine as _;
        let wire_in::Read(w, _) =
            serde_json::from_slice::<wire_in::Read<String, serde_json::Value>>(bytes)
                .map_err(|e| DecodeError::Malformed(e.to_string()))?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&w.raw)
            .map_err(|e| DecodeError::Raw(e.to_string()))?;
        finish(w, raw)
    }

    pub fn from_cbor(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        // The decoder below recurses per level and has no limit of its own.
        if !nesting::within(bytes, MAX_NESTING) {
            return Err(DecodeError::Malformed(format!(
                "not one complete CBOR item nested at most {MAX_NESTING} levels deep"
            )));
        }
        // minicbor's slice decoder borrows text instead of copying it through a reader's
        // scratch buffer: about twice as fast as ciborium's `from_reader` here. It reads text
        // and byte strings of definite length only, and no tags: `to_cbor` writes neither, and
        // an envelope that has them is refused as malformed.
        let wire_in::Read(mut w, _) = minicbor_serde::from_slice::<
            wire_in::Read<serde_bytes_buf::ByteBuf, ciborium::Value>,
        >(bytes)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
        let raw = std::mem::take(&mut w.raw.0);
        finish(w, raw)
    }
}

fn finish<R>(w: wire_in::WireIn<R>, raw: Vec<u8>) -> Result<Envelope, DecodeError> {
    if w.schema != SCHEMA {
        return Err(DecodeError::Schema(w.schema));
    }
    Ok(Envelope { raw, ..w.envelope })
}

/// Serializes as a CBOR byte string (serde's `serialize_bytes`).
struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

mod serde_bytes_buf {
    /// Deserializes a CBOR byte string (a format whose bytes come as a sequence, as the generic
    /// value's do, is read element by element).
    pub struct ByteBuf(pub Vec<u8>);

    impl<'de> serde::Deserialize<'de> for ByteBuf {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = ByteBuf;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a byte string")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v.to_vec()))
                }
                fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v))
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut a: A,
                ) -> Result<ByteBuf, A::Error> {
                    let mut out = Vec::new();
                    while let Some(b) = a.next_element::<u8>()? {
                        out.push(b);
                    }
                    Ok(ByteBuf(out))
                }
            }
            // `deserialize_byte_buf`: it reads any length, with any deserializer (ciborium's
            // `deserialize_bytes` served only byte strings that fit its 4 KiB scratch buffer).
            d.deserialize_byte_buf(V)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(body: Body) -> Envelope {
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

    fn bodies() -> Vec<Body> {
        let mut gs1 = Gs1Map::new();
        gs1.insert("00".into(), "106141412345678908".into());
        vec![
            Body::ShipmentScan(ShipmentScan {
                code: "00106141412345678908".into(),
                symbology: "gs1-128".into(),
                sscc: Some("106141412345678908".into()),
                gs1: gs1.clone(),
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
                gs1,
            }),
            Body::ShipmentWeight(ShipmentWeight {
                weight_kg: "12.345".into(),
                mode: WeightMode::Net,
                tare_kg: Some("0.5".into()),
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
            Body::Exception(Exception {
                reason: ExceptionReason::Dropped,
                detail: "buffer full".into(),
                count: Some(7),
            }),
        ]
    }

    #[test]
    fn json_and_cbor_round_trip_every_kind() {
        for body in bodies() {
            let mut e = sample(body);
            for replayed in [false, true] {
                e.replayed = replayed;
                assert_eq!(Envelope::from_json(&e.to_json()).ok(), Some(e.clone()));
                assert_eq!(Envelope::from_cbor(&e.to_cbor()).ok(), Some(e.clone()));
            }
        }
    }

    #[test]
    fn the_largest_frames_and_texts_round_trip_in_cbor() {
        // Up to `max_frame` (1 MiB at most) of raw bytes, and long texts in the body: a byte or
        // text string above ciborium's 4 KiB scratch buffer takes another decoding path.
        for len in [0, 4095, 4096, 4097, 65_536, 1 << 20] {
            let mut e = sample(Body::exception(
                ExceptionReason::Undecodable,
                "x".repeat(len),
            ));
            e.raw = (0..len).map(|i| i as u8).collect();
            e.source = "s".repeat(len.min(8192));
            let back = Envelope::from_cbor(&e.to_cbor());
            assert_eq!(back.as_ref().ok(), Some(&e), "{len} bytes: {back:?}");
        }
    }

    #[test]
    fn json_has_contract_field_names_and_base64_raw() {
        let e = sample(bodies().remove(0));
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap_or_default();
        assert_eq!(v["schema"], "edge.v1");
        assert_eq!(v["kind"], "shipment.scan");
        assert_eq!(v["role"], "packing");
        assert_eq!(v["body"]["sscc"], "106141412345678908");
        assert_eq!(v["raw"], "XUMxMDAxMDYxNDE0MTIzNDU2Nzg5MDgd/w==");
        assert!(
            v.get("replayed").is_none(),
            "replayed is present only when true"
        );
    }

    #[test]
    fn cbor_carries_raw_as_a_byte_string() {
        let e = sample(bodies().remove(5));
        let v: ciborium::Value =
            ciborium::from_reader(&e.to_cbor()[..]).unwrap_or(ciborium::Value::Null);
        let map = v.as_map().cloned().unwrap_or_default();
        let raw = map
            .iter()
            .find(|(k, _)| k.as_text() == Some("raw"))
            .map(|(_, v)| v.clone());
        assert_eq!(raw, Some(ciborium::Value::Bytes(e.raw.clone())));
        let body = map
            .iter()
            .find(|(k, _)| k.as_text() == Some("body"))
            .map(|(_, v)| v.clone());
        let count = body
            .and_then(|b| b.as_map().cloned())
            .and_then(|m| m.into_iter().find(|(k, _)| k.as_text() == Some("count")))
            .map(|(_, v)| v);
        assert_eq!(count, Some(ciborium::Value::Integer(7.into())));
    }

    /// A damaged buffer row must be set aside, not abort the agent: the decoder recurses per
    /// level. A test thread has a 2 MiB stack, as the blocking pool's threads do.
    #[test]
    fn cbor_nested_a_million_deep_is_refused_without_overflowing_the_stack() {
        let deep = |prefix: &[u8]| {
            let mut bytes = prefix.to_vec();
            bytes.extend(std::iter::repeat_n(0x81, 1_000_000));
            bytes.push(0x00);
            bytes
        };
        // {"body": [[[...]]]}: a body before its kind is held as a generic value.
        let body_first = deep(b"\xa1\x64body");
        // {"kind": "shipment.scan", "body": {"x": [[[...]]]}}
        let body_after_kind = deep(b"\xa2\x64kind\x6dshipment.scan\x64body\xa1\x61x");
        for bytes in [body_first, body_after_kind] {
            match Envelope::from_cbor(&bytes) {
                Err(DecodeError::Malformed(why)) => assert!(why.contains("32 levels"), "{why}"),
                other => panic!("{other:?}"),
            }
        }
        // As deep as an envelope goes, with room to spare, still decodes.
        for e in bodies().into_iter().map(sample) {
            assert_eq!(Envelope::from_cbor(&e.to_cbor()).ok(), Some(e));
        }
    }

    #[test]
    fn a_foreign_schema_is_refused() {
        let e = sample(bodies().remove(0));
        let text = String::from_utf8_lossy(&e.to_json()).replace("edge.v1", "edge.v9");
        assert!(matches!(
            Envelope::from_json(text.as_bytes()),
            Err(DecodeError::Schema(_))
        ));
    }

    /// The envelope's fields as a JSON object, to reorder or change before encoding.
    fn fields(e: &Envelope) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::from_slice(&e.to_json()) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        }
    }

    /// The same fields as CBOR, raw as a byte string, in the map's order.
    fn to_cbor_map(m: &serde_json::Map<String, serde_json::Value>, raw: &[u8]) -> Vec<u8> {
        let entries = m
            .iter()
            .map(|(k, v)| {
                let v = if k == "raw" {
                    ciborium::Value::Bytes(raw.to_vec())
                } else {
                    ciborium::Value::serialized(v).unwrap_or(ciborium::Value::Null)
                };
                (ciborium::Value::Text(k.clone()), v)
            })
            .collect();
        let mut out = Vec::new();
        let _ = ciborium::into_writer(&ciborium::Value::Map(entries), &mut out);
        out
    }

    #[test]
    fn a_body_before_its_kind_is_read_in_either_format() {
        for body in bodies() {
            let e = sample(body);
            let m = fields(&e);
            // body first, kind last: the order another writer may choose.
            let mut reordered = serde_json::Map::new();
            reordered.insert("body".into(), m["body"].clone());
            for (k, v) in m.iter().filter(|(k, _)| *k != "body" && *k != "kind") {
                reordered.insert(k.clone(), v.clone());
            }
            reordered.insert("kind".into(), m["kind"].clone());
            let json = serde_json::to_vec(&reordered).unwrap_or_default();
            assert_eq!(Envelope::from_json(&json).ok(), Some(e.clone()));
            let cbor = to_cbor_map(&reordered, &e.raw);
            assert_eq!(Envelope::from_cbor(&cbor).ok(), Some(e.clone()));
        }
    }

    #[test]
    fn unknown_repeated_missing_and_mistyped_fields_are_refused() {
        let e = sample(bodies().remove(0));
        let m = fields(&e);
        let refused = |m: &serde_json::Map<String, serde_json::Value>, what: &str| {
            let json = serde_json::to_vec(m).unwrap_or_default();
            let j = Envelope::from_json(&json);
            assert!(matches!(j, Err(DecodeError::Malformed(_))), "{what}: {j:?}");
            let c = Envelope::from_cbor(&to_cbor_map(m, &e.raw));
            assert!(matches!(c, Err(DecodeError::Malformed(_))), "{what}: {c:?}");
            c.err().map(|e| e.to_string()).unwrap_or_default()
        };
        let mut extra = m.clone();
        extra.insert("colour".into(), "red".into());
        assert!(refused(&extra, "unknown field").contains("colour"));
        for field in ["id", "kind", "body", "raw", "observed_at"] {
            let mut less = m.clone();
            less.remove(field);
            assert!(
                refused(&less, field).contains(field),
                "the error names {field}"
            );
        }
        let mut wrong = m.clone();
        wrong.insert("body".into(), serde_json::json!({"code": 5}));
        assert!(refused(&wrong, "mistyped body").contains("body of shipment.scan"));
        // A repeated key (serde_json's Map cannot hold one: CBOR by hand).
        let mut cbor = to_cbor_map(&m, &e.raw);
        let n = m.len() as u8;
        cbor[0] = 0xa0 + n + 1; // one entry more, small map header
        let mut again = Vec::new();
        let _ = ciborium::into_writer(&"seq", &mut again);
        let _ = ciborium::into_writer(&9u64, &mut again);
        cbor.extend(again);
        let c = Envelope::from_cbor(&cbor);
        assert!(
            c.as_ref()
                .is_err_and(|e| e.to_string().contains("duplicate field")),
            "{c:?}"
        );
    }

    #[test]
    fn absent_optional_fields_read_as_none_and_false() {
        let mut e = sample(bodies().remove(0));
        e.station = None;
        e.role = None;
        let mut m = fields(&e);
        m.remove("station");
        m.remove("role");
        assert_eq!(
            Envelope::from_json(&serde_json::to_vec(&m).unwrap_or_default()).ok(),
            Some(e.clone())
        );
        assert_eq!(Envelope::from_cbor(&to_cbor_map(&m, &e.raw)).ok(), Some(e));
    }
}
