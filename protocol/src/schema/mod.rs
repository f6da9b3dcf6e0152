//! The `edge.v1` JSON Schema (draft 2020-12) of one event as sent with `format = "json"`,
//! generated from the event types of [`crate::event`]; committed as
//! `docs/schema/edge.v1.schema.json` (`cargo run -p edge-protocol --example schema`).
//!
//! Why a generator of our own rather than a derive (schemars): the envelope's wire form is
//! written by hand. `schema` is a constant, `kind` comes from the body, `raw` is base64 only in
//! JSON, `replayed` appears only when true, and `Body` is untagged with its kind in a sibling
//! field. A derive describes none of that without a mirror of every type, which is the same
//! duplication with no link to the real types. Here the link is checked by the compiler: each
//! property names an accessor of the real type (so the field exists with that Rust type), each
//! struct is destructured without `..` (a new field does not compile until it is described),
//! and enum values are the strings serde writes for every variant. The names of the properties
//! are checked by the tests, which validate events serialized by the real code.
//!
//! Objects are open (no `additionalProperties: false`): within `edge.v1` the format only grows
//! by optional fields, and a consumer validating with an older `edge.v1` schema must accept a
//! newer event. Everything else is strict: every field that is always sent is required, types
//! are exact (nullable only where null is sent), and `kind` selects its body's schema.

pub mod compat;

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::event::{
    Envelope, EquipmentState, EquipmentStateValue, Exception, ExceptionReason, Gs1Map,
    InventoryScan, Kind, Role, ShipmentScan, ShipmentSort, ShipmentWeight, SortResult, WeightMode,
    SCHEMA,
};

/// The JSON Schema dialect of the generated document.
pub const DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

/// The path of the committed schema, relative to the repository root.
pub const COMMITTED_PATH: &str = "docs/schema/edge.v1.schema.json";

/// An RFC 3339 UTC timestamp with milliseconds, as the agent writes `observed_at`.
const OBSERVED_AT: &str = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$";
/// A UUID v7 in its lowercase hyphenated form.
const UUID_V7: &str = "^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$";
/// Standard base64 with padding (RFC 4648 section 4).
const BASE64: &str = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$";
/// A decimal number as `decimal::Decimal` prints it: `"12.345"`, `"-0.5"`, `"0"`.
const DECIMAL: &str = r"^-?[0-9]+(\.[0-9]+)?$";
const SSCC: &str = "^[0-9]{18}$";
const GTIN: &str = "^[0-9]{14}$";
const DATE: &str = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$";
/// A GS1 Application Identifier: two to four digits.
const AI: &str = "^[0-9]{2,4}$";

/// The whole schema document.
pub fn edge_v1() -> Value {
    let mut defs = Map::new();
    let mut all_of = Vec::new();
    for kind in Kind::ALL {
        let (name, schema) = body_schema(kind);
        defs.insert(name.to_owned(), schema);
        all_of.push(json!({
            "if": { "properties": { "kind": { "const": kind.as_str() } }, "required": ["kind"] },
            "then": { "properties": { "body": { "$ref": format!("#/$defs/{name}") } } }
        }));
    }
    let mut root = envelope_schema();
    root.insert("$schema".into(), DIALECT.into());
    root.insert("title".into(), "edge.v1 event".into());
    root.insert(
        "description".into(),
        "One event as edge-agent publishes it with upstream.format = \"json\" (docs/events.md). \
         Generated from the Rust types by `cargo run -p edge-protocol --example schema`; do not \
         edit by hand."
            .into(),
    );
    root.insert("allOf".into(), Value::Array(all_of));
    root.insert("$defs".into(), Value::Object(defs));
    Value::Object(root)
}

/// The schema as committed: pretty-printed, with a final newline.
pub fn edge_v1_text() -> String {
    let mut text = serde_json::to_string_pretty(&edge_v1()).unwrap_or_default();
    text.push('\n');
    text
}

fn envelope_schema() -> Map<String, Value> {
    // A field added to the envelope does not compile until it is described below.
    fn _exhaustive(e: Envelope) {
        let Envelope {
            id: _,
            site: _,
            seq: _,
            source: _,
            station: _,
            role: _,
            observed_at: _,
            body: _,
            raw: _,
            replayed: _,
        } = e;
    }
    let body = json!({ "type": "object" });
    Object::<Envelope>::new()
        .prop(
            "schema",
            json!({ "type": "string", "const": SCHEMA }),
            "the envelope version",
        )
        .field(
            "id",
            |e| &e.id,
            "UUID v7 assigned when the reading was stored; the same on every redelivery and replay",
        )
        .pattern(UUID_V7)
        .field("site", |e| &e.site, "site.id")
        .field(
            "seq",
            |e| &e.seq,
            "the agent's sequence number of the stored reading, strictly increasing",
        )
        .field(
            "source",
            |e| &e.source,
            "the id of the source that read it; \"edge-agent\" for the agent's own reports",
        )
        .field(
            "station",
            |e| &e.station,
            "the source's station, null when it has none",
        )
        .field(
            "role",
            |e| &e.role,
            "the station's role at the time of reading",
        )
        .field(
            "observed_at",
            |e| &e.observed_at,
            "when the agent read it: RFC 3339, UTC, milliseconds",
        )
        .pattern(OBSERVED_AT)
        .format("date-time")
        .prop("kind", Kind::describe(), "the event kind; selects the body")
        .wire(
            "body",
            |e| &e.body,
            body,
            "the kind's fields; `kind` selects which (see allOf)",
        )
        .wire(
            "raw",
            |e| &e.raw,
            json!({ "type": "string", "contentEncoding": "base64", "pattern": BASE64 }),
            "the reading as received, standard base64 with padding",
        )
        .optional(
            "replayed",
            |e| &e.replayed,
            "present, and true, only on an event sent again by a replay request",
        )
        .with(json!({ "const": true }))
        .done()
}

/// The `$defs` name and schema of the body of `kind`.
fn body_schema(kind: Kind) -> (&'static str, Value) {
    let schema = match kind {
        Kind::ShipmentScan => shipment_scan(),
        Kind::InventoryScan => inventory_scan(),
        Kind::ShipmentWeight => shipment_weight(),
        Kind::ShipmentSort => shipment_sort(),
        Kind::EquipmentState => equipment_state(),
        Kind::Exception => exception(),
    };
    let name = match kind {
        Kind::ShipmentScan => "ShipmentScan",
        Kind::InventoryScan => "InventoryScan",
        Kind::ShipmentWeight => "ShipmentWeight",
        Kind::ShipmentSort => "ShipmentSort",
        Kind::EquipmentState => "EquipmentState",
        Kind::Exception => "Exception",
    };
    let mut schema = schema;
    schema.insert("title".into(), format!("body of {kind}").into());
    (name, Value::Object(schema))
}

fn shipment_scan() -> Map<String, Value> {
    fn _exhaustive(b: ShipmentScan) {
        let ShipmentScan {
            code: _,
            symbology: _,
            sscc: _,
            gs1: _,
        } = b;
    }
    Object::<ShipmentScan>::new()
        .field(
            "code",
            |b| &b.code,
            "the data after the AIM identifier, as text",
        )
        .field(
            "symbology",
            |b| &b.symbology,
            "from the AIM identifier; \"unknown\" without one",
        )
        .field("sscc", |b| &b.sscc, "AI 00, 18 digits")
        .pattern(SSCC)
        .field(
            "gs1",
            |b| &b.gs1,
            "AI → value as encoded; {} for a non-GS1 code",
        )
        .done()
}

fn inventory_scan() -> Map<String, Value> {
    fn _exhaustive(b: InventoryScan) {
        let InventoryScan {
            code: _,
            symbology: _,
            gtin: _,
            batch: _,
            expiry: _,
            serial: _,
            quantity: _,
            net_kg: _,
            gs1: _,
        } = b;
    }
    Object::<InventoryScan>::new()
        .field(
            "code",
            |b| &b.code,
            "the data after the AIM identifier, as text",
        )
        .field(
            "symbology",
            |b| &b.symbology,
            "from the AIM identifier; \"unknown\" without one",
        )
        .field("gtin", |b| &b.gtin, "AI 01, else AI 02; always 14 digits")
        .pattern(GTIN)
        .field("batch", |b| &b.batch, "AI 10")
        .field("expiry", |b| &b.expiry, "AI 17 as YYYY-MM-DD")
        .pattern(DATE)
        .format("date")
        .field("serial", |b| &b.serial, "AI 21")
        .field("quantity", |b| &b.quantity, "AI 30, else AI 37")
        .field(
            "net_kg",
            |b| &b.net_kg,
            "AI 3100-3105 as a decimal string in kg",
        )
        .pattern(DECIMAL)
        .field(
            "gs1",
            |b| &b.gs1,
            "AI → value as encoded; {} for a non-GS1 code",
        )
        .done()
}

fn shipment_weight() -> Map<String, Value> {
    fn _exhaustive(b: ShipmentWeight) {
        let ShipmentWeight {
            weight_kg: _,
            mode: _,
            tare_kg: _,
            unit: _,
            sscc: _,
        } = b;
    }
    Object::<ShipmentWeight>::new()
        .field(
            "weight_kg",
            |b| &b.weight_kg,
            "the settled weight in kg, a decimal string",
        )
        .pattern(DECIMAL)
        .field("mode", |b| &b.mode, "gross or net")
        .field(
            "tare_kg",
            |b| &b.tare_kg,
            "the tare the frame carries, in kg",
        )
        .pattern(DECIMAL)
        .field("unit", |b| &b.unit, "the unit as the scale sent it")
        .field(
            "sscc",
            |b| &b.sscc,
            "the SSCC last scanned at the same station within correlation_window",
        )
        .pattern(SSCC)
        .done()
}

fn shipment_sort() -> Map<String, Value> {
    fn _exhaustive(b: ShipmentSort) {
        let ShipmentSort {
            code: _,
            sscc: _,
            destination: _,
            result: _,
        } = b;
    }
    Object::<ShipmentSort>::new()
        .field("code", |b| &b.code, "the code the sorter reported")
        .field(
            "sscc",
            |b| &b.sscc,
            "the unit's SSCC, mapped or taken from code",
        )
        .pattern(SSCC)
        .field(
            "destination",
            |b| &b.destination,
            "chute, lane, … as the sorter names it",
        )
        .field("result", |b| &b.result, "where the unit went")
        .done()
}

fn equipment_state() -> Map<String, Value> {
    fn _exhaustive(b: EquipmentState) {
        let EquipmentState {
            state: _,
            code: _,
            message: _,
        } = b;
    }
    Object::<EquipmentState>::new()
        .field("state", |b| &b.state, "the device's state")
        .field("code", |b| &b.code, "the device's own code")
        .field("message", |b| &b.message, "its text")
        .done()
}

fn exception() -> Map<String, Value> {
    fn _exhaustive(b: Exception) {
        let Exception {
            reason: _,
            detail: _,
            count: _,
        } = b;
    }
    let dropped = serde_json::to_value(ExceptionReason::Dropped).unwrap_or_default();
    Object::<Exception>::new()
        .field(
            "reason",
            |b| &b.reason,
            "why the reading became an exception",
        )
        .field(
            "detail",
            |b| &b.detail,
            "what exactly went wrong, for a person",
        )
        .optional_inner(
            "count",
            |b| &b.count,
            "only with reason dropped: how many events were dropped",
        )
        .also(json!({
            "if": { "properties": { "reason": { "const": dropped } }, "required": ["reason"] },
            "then": { "required": ["count"] }
        }))
        .done()
}

/// A Rust type's JSON Schema.
trait Describe {
    fn describe() -> Value;
}

impl Describe for String {
    fn describe() -> Value {
        json!({ "type": "string" })
    }
}

impl Describe for u64 {
    fn describe() -> Value {
        json!({ "type": "integer", "minimum": 0 })
    }
}

impl Describe for bool {
    fn describe() -> Value {
        json!({ "type": "boolean" })
    }
}

impl Describe for Gs1Map {
    fn describe() -> Value {
        json!({
            "type": "object",
            "propertyNames": { "pattern": AI },
            "additionalProperties": { "type": "string" }
        })
    }
}

/// `None` is serialized as null: the field is present either way.
impl<T: Describe> Describe for Option<T> {
    fn describe() -> Value {
        let mut inner = T::describe();
        match inner.get_mut("type") {
            Some(Value::String(t)) => {
                let t = std::mem::take(t);
                inner["type"] = json!([t, "null"]);
                if let Some(Value::Array(values)) = inner.get_mut("enum") {
                    values.push(Value::Null);
                }
                inner
            }
            _ => json!({ "anyOf": [inner, { "type": "null" }] }),
        }
    }
}

/// A string enum: the values serde writes for each variant. The match makes a new variant a
/// compile error here until it is listed.
macro_rules! string_enum {
    ($ty:ident: $($variant:ident),+ $(,)?) => {
        impl Describe for $ty {
            fn describe() -> Value {
                fn _exhaustive(v: $ty) {
                    match v {
                        $($ty::$variant => {})+
                    }
                }
                enum_of(&[$($ty::$variant),+])
            }
        }
    };
}

string_enum!(WeightMode: Gross, Net);
string_enum!(SortResult: Diverted, Recirculated, NoRead, Full, Fault);
string_enum!(EquipmentStateValue: Running, Stopped, Fault);
string_enum!(
    ExceptionReason: NoRead,
    InvalidBarcode,
    UnstableWeight,
    Overload,
    Underload,
    ScaleError,
    Undecodable,
    Dropped,
);

impl Describe for Role {
    fn describe() -> Value {
        enum_of(&Role::ALL)
    }
}

impl Describe for Kind {
    fn describe() -> Value {
        enum_of(&Kind::ALL)
    }
}

fn enum_of<T: Serialize>(values: &[T]) -> Value {
    let values: Vec<Value> = values
        .iter()
        .filter_map(|v| serde_json::to_value(v).ok())
        .collect();
    json!({ "type": "string", "enum": values })
}

/// Builds an object schema over the Rust type `S`, one property at a time; the accessors tie
/// each property to a field of `S` and its type.
struct Object<S> {
    properties: Map<String, Value>,
    required: Vec<Value>,
    last: Option<String>,
    extra: Map<String, Value>,
    _of: std::marker::PhantomData<fn(&S)>,
}

impl<S> Object<S> {
    fn new() -> Self {
        Object {
            properties: Map::new(),
            required: Vec::new(),
            last: None,
            extra: Map::new(),
            _of: std::marker::PhantomData,
        }
    }

    /// A property that is always sent, typed by the field `get` reads.
    fn field<T: Describe>(self, name: &str, _get: fn(&S) -> &T, doc: &str) -> Self {
        self.put(name, T::describe(), doc, true)
    }

    /// A property left out when it has no value (`skip_serializing_if`), typed by the field.
    fn optional<T: Describe>(self, name: &str, _get: fn(&S) -> &T, doc: &str) -> Self {
        self.put(name, T::describe(), doc, false)
    }

    /// An `Option<T>` field left out when it is `None`: when present it is a `T`, never null.
    fn optional_inner<T: Describe>(
        self,
        name: &str,
        _get: fn(&S) -> &Option<T>,
        doc: &str,
    ) -> Self {
        self.put(name, T::describe(), doc, false)
    }

    /// A property that is always sent and is no field of `S`, with its schema.
    fn prop(self, name: &str, schema: Value, doc: &str) -> Self {
        self.put(name, schema, doc, true)
    }

    /// A field of `S` that is always sent in a wire form of its own, with its schema.
    fn wire<T>(self, name: &str, _get: fn(&S) -> &T, schema: Value, doc: &str) -> Self {
        self.put(name, schema, doc, true)
    }

    fn put(mut self, name: &str, mut schema: Value, doc: &str, required: bool) -> Self {
        if let Value::Object(o) = &mut schema {
            o.insert("description".into(), doc.into());
        }
        self.properties.insert(name.to_owned(), schema);
        if required {
            self.required.push(name.into());
        }
        self.last = Some(name.to_owned());
        self
    }

    /// Adds keywords to the last property's schema.
    fn with(mut self, keywords: Value) -> Self {
        let target = match &self.last {
            Some(name) => self.properties.get_mut(name),
            None => None,
        };
        if let (Some(Value::Object(o)), Value::Object(k)) = (target, keywords) {
            o.extend(k);
        }
        self
    }

    /// Adds keywords to the object's schema.
    fn also(mut self, keywords: Value) -> Self {
        if let Value::Object(k) = keywords {
            self.extra.extend(k);
        }
        self
    }

    /// The last property's strings match `re`.
    fn pattern(self, re: &str) -> Self {
        self.with(json!({ "pattern": re }))
    }

    /// The last property's `format` annotation.
    fn format(self, format: &str) -> Self {
        self.with(json!({ "format": format }))
    }

    fn done(mut self) -> Map<String, Value> {
        let mut o = Map::new();
        o.insert("type".into(), "object".into());
        o.insert(
            "properties".into(),
            Value::Object(std::mem::take(&mut self.properties)),
        );
        o.insert(
            "required".into(),
            Value::Array(std::mem::take(&mut self.required)),
        );
        o.extend(std::mem::take(&mut self.extra));
        o
    }
}
