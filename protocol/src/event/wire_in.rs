//! Reading an envelope back in one pass.
//!
//! A body's type depends on the envelope's `kind`, a sibling field. This crate writes `kind`
//! before `body`, so the body is decoded as its kind's type straight from the input. Only when
//! `body` comes first (another writer's field order) is it kept as the format's generic value
//! and converted once `kind` is known. Either way the same fields are required, unknown and
//! repeated fields are refused, and `station`, `role` and `replayed` may be absent.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::{
    Body, EquipmentState, Exception, InventoryScan, Kind, Role, ShipmentScan, ShipmentSort,
    ShipmentWeight,
};

/// An envelope as read: its schema, `raw` in the format's form (`R`), and the rest (with an
/// empty `raw`).
pub(super) struct WireIn<R> {
    pub schema: String,
    pub raw: R,
    pub envelope: super::Envelope,
}

/// A format's generic value, holding a body that came before its `kind`.
pub(super) trait Buffer: for<'de> Deserialize<'de> {
    fn body(self, kind: Kind) -> Result<Body, String>;
}

impl Buffer for ciborium::Value {
    fn body(self, kind: Kind) -> Result<Body, String> {
        match kind {
            Kind::ShipmentScan => self.deserialized().map(Body::ShipmentScan),
            Kind::InventoryScan => self.deserialized().map(Body::InventoryScan),
            Kind::ShipmentWeight => self.deserialized().map(Body::ShipmentWeight),
            Kind::ShipmentSort => self.deserialized().map(Body::ShipmentSort),
            Kind::EquipmentState => self.deserialized().map(Body::EquipmentState),
            Kind::Exception => self.deserialized().map(Body::Exception),
        }
        .map_err(|e| e.to_string())
    }
}

impl Buffer for serde_json::Value {
    fn body(self, kind: Kind) -> Result<Body, String> {
        use serde_json::from_value;
        match kind {
            Kind::ShipmentScan => from_value(self).map(Body::ShipmentScan),
            Kind::InventoryScan => from_value(self).map(Body::InventoryScan),
            Kind::ShipmentWeight => from_value(self).map(Body::ShipmentWeight),
            Kind::ShipmentSort => from_value(self).map(Body::ShipmentSort),
            Kind::EquipmentState => from_value(self).map(Body::EquipmentState),
            Kind::Exception => from_value(self).map(Body::Exception),
        }
        .map_err(|e| e.to_string())
    }
}

/// An envelope read with raw as `R`, a body before its kind held as `B`: what a format's
/// `from_slice`/`from_reader` is asked for.
pub(super) struct Read<R, B>(pub WireIn<R>, pub PhantomData<B>);

impl<'de, R: Deserialize<'de>, B: Buffer> Deserialize<'de> for Read<R, B> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_struct("Envelope", FIELDS, Envelope::<R, B>(PhantomData))
            .map(|w| Read(w, PhantomData))
    }
}

const FIELDS: &[&str] = &[
    "schema",
    "id",
    "site",
    "seq",
    "source",
    "station",
    "role",
    "observed_at",
    "kind",
    "body",
    "raw",
    "replayed",
];

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    Schema,
    Id,
    Site,
    Seq,
    Source,
    Station,
    Role,
    ObservedAt,
    Kind,
    Body,
    Raw,
    Replayed,
}

/// Decodes a body as `kind`'s type.
struct BodyOf(Kind);

impl<'de> DeserializeSeed<'de> for BodyOf {
    type Value = Body;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Body, D::Error> {
        let kind = self.0;
        match kind {
            Kind::ShipmentScan => ShipmentScan::deserialize(d).map(Body::ShipmentScan),
            Kind::InventoryScan => InventoryScan::deserialize(d).map(Body::InventoryScan),
            Kind::ShipmentWeight => ShipmentWeight::deserialize(d).map(Body::ShipmentWeight),
            Kind::ShipmentSort => ShipmentSort::deserialize(d).map(Body::ShipmentSort),
            Kind::EquipmentState => EquipmentState::deserialize(d).map(Body::EquipmentState),
            Kind::Exception => Exception::deserialize(d).map(Body::Exception),
        }
        .map_err(|e| de::Error::custom(format!("body of {kind}: {e}")))
    }
}

struct Envelope<R, B>(PhantomData<(R, B)>);

/// A field's value, refusing a second one.
fn once<'de, T: Deserialize<'de>, A: MapAccess<'de>>(
    slot: &mut Option<T>,
    name: &'static str,
    map: &mut A,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(de::Error::duplicate_field(name));
    }
    *slot = Some(map.next_value()?);
    Ok(())
}

impl<'de, R: Deserialize<'de>, B: Buffer> Visitor<'de> for Envelope<R, B> {
    type Value = WireIn<R>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an edge.v1 envelope")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireIn<R>, A::Error> {
        let mut schema = None;
        let mut id = None;
        let mut site = None;
        let mut seq = None;
        let mut source = None;
        let mut station: Option<Option<String>> = None;
        let mut role: Option<Option<Role>> = None;
        let mut observed_at = None;
        let mut kind: Option<Kind> = None;
        let mut body: Option<Body> = None;
        let mut early: Option<B> = None;
        let mut raw = None;
        let mut replayed = None;
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Schema => once(&mut schema, "schema", &mut map)?,
                Field::Id => once(&mut id, "id", &mut map)?,
                Field::Site => once(&mut site, "site", &mut map)?,
                Field::Seq => once(&mut seq, "seq", &mut map)?,
                Field::Source => once(&mut source, "source", &mut map)?,
                Field::Station => once(&mut station, "station", &mut map)?,
                Field::Role => once(&mut role, "role", &mut map)?,
                Field::ObservedAt => once(&mut observed_at, "observed_at", &mut map)?,
                Field::Kind => once(&mut kind, "kind", &mut map)?,
                Field::Raw => once(&mut raw, "raw", &mut map)?,
                Field::Replayed => once(&mut replayed, "replayed", &mut map)?,
                Field::Body => {
                    if body.is_some() || early.is_some() {
                        return Err(de::Error::duplicate_field("body"));
                    }
                    match kind {
                        Some(k) => body = Some(map.next_value_seed(BodyOf(k))?),
                        None => early = Some(map.next_value()?),
                    }
                }
            }
        }
        let kind = kind.ok_or_else(|| de::Error::missing_field("kind"))?;
        let body = match (body, early) {
            (Some(b), _) => b,
            (None, Some(v)) => v
                .body(kind)
                .map_err(|e| de::Error::custom(format!("body of {kind}: {e}")))?,
            (None, None) => return Err(de::Error::missing_field("body")),
        };
        Ok(WireIn {
            schema: schema.ok_or_else(|| de::Error::missing_field("schema"))?,
            raw: raw.ok_or_else(|| de::Error::missing_field("raw"))?,
            envelope: super::Envelope {
                id: id.ok_or_else(|| de::Error::missing_field("id"))?,
                site: site.ok_or_else(|| de::Error::missing_field("site"))?,
                seq: seq.ok_or_else(|| de::Error::missing_field("seq"))?,
                source: source.ok_or_else(|| de::Error::missing_field("source"))?,
                station: station.flatten(),
                role: role.flatten(),
                observed_at: observed_at.ok_or_else(|| de::Error::missing_field("observed_at"))?,
                body,
                raw: Vec::new(),
                replayed: replayed.unwrap_or(false),
            },
        })
    }
}
