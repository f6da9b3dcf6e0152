//! A JSON value that borrows its strings from the message where it can: the `json` decoder
//! reads every message once and looks up a few pointers, so building `serde_json::Value` (an
//! allocation per key and string, a tree map per object) would cost more than the rules.
//! Numbers keep `serde_json::Number`, so their text is exactly serde_json's.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

/// One JSON value; objects keep their members in message order.
#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, as serde_json reads it.
    Number(Number),
    /// A string (borrowed unless it had escapes).
    String(Cow<'a, str>),
    /// An array.
    Array(Vec<Json<'a>>),
    /// An object; for a repeated key the last member counts, as in serde_json.
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    /// Parses one JSON document (surrounding whitespace allowed).
    pub fn parse(bytes: &'a [u8]) -> Result<Json<'a>, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The value at a JSON pointer (RFC 6901, `"/a/0/b"`, `~1` for '/', `~0` for '~'); the
    /// empty pointer is the whole value.
    pub fn pointer(&self, pointer: &str) -> Option<&Json<'a>> {
        if pointer.is_empty() {
            return Some(self);
        }
        let mut at = self;
        for token in pointer.strip_prefix('/')?.split('/') {
            let token: Cow<'_, str> = if token.contains('~') {
                Cow::Owned(token.replace("~1", "/").replace("~0", "~"))
            } else {
                Cow::Borrowed(token)
            };
            at = match at {
                Json::Object(members) => members
                    .iter()
                    .rev()
                    .find(|(k, _)| *k == token)
                    .map(|(_, v)| v)?,
                Json::Array(items) => items.get(index(&token)?)?,
                _ => return None,
            };
        }
        Some(at)
    }

    /// The same value as a `serde_json::Value`.
    pub fn to_value(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => Value::Number(n.clone()),
            Json::String(s) => Value::String(s.clone().into_owned()),
            Json::Array(items) => Value::Array(items.iter().map(Json::to_value).collect()),
            Json::Object(members) => Value::Object(
                members
                    .iter()
                    .map(|(k, v)| (k.clone().into_owned(), v.to_value()))
                    .collect(),
            ),
        }
    }
}

/// An array index as RFC 6901 writes it: digits, no leading zero (except "0" itself).
fn index(token: &str) -> Option<usize> {
    if token.is_empty() || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    if !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    token.parse().ok()
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_none<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Json<'de>, E> {
        // JSON has no NaN or infinity; serde_json makes those null too.
        Ok(Number::from_f64(v).map_or(Json::Null, Json::Number))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(v) = seq.next_element()? {
            items.push(v);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8).min(64));
        while let Some(key) = map.next_key::<Key<'de>>()? {
            members.push((key.0, map.next_value()?));
        }
        Ok(Json::Object(members))
    }
}

/// An object key, borrowed unless it had escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pointers_resolve_as_serde_json_resolves_them() {
        let text = br#"{"a":{"b/c":[10,{"~x":"y"}],"":1,"esc\"aped":"q\"uote"},"a2":null,"n":1.50,"dup":1,"dup":2}"#;
        let ours = Json::parse(text).unwrap_or(Json::Null);
        let theirs: Value = serde_json::from_slice(text).unwrap_or_default();
        for p in [
            "",
            "/a",
            "/a/b~1c",
            "/a/b~1c/0",
            "/a/b~1c/1/~0x",
            "/a/",
            "/a2",
            "/n",
            "/dup",
            "/a/b~1c/01",
            "/a/b~1c/2",
            "/missing",
            "a",
            "/a/esc\"aped",
            "/n/0",
        ] {
            assert_eq!(
                ours.pointer(p).map(Json::to_value).as_ref(),
                theirs.pointer(p),
                "pointer {p:?}"
            );
        }
        assert_eq!(ours.to_value(), theirs);
    }

    proptest! {
        #[test]
        fn agrees_with_serde_json_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let ours = Json::parse(&bytes).ok().map(|j| j.to_value());
            let theirs = serde_json::from_slice::<Value>(&bytes).ok();
            prop_assert_eq!(ours, theirs);
        }

        #[test]
        fn agrees_with_serde_json_on_generated_documents(v in arb_json(), p in "(/[a-c0-1~]{0,2}){0,3}") {
            // Compared with serde_json's reading of the same text (its float parsing is not
            // exact, so not with `v` itself).
            let text = v.to_string();
            let theirs = serde_json::from_str::<Value>(&text).ok();
            let ours = Json::parse(text.as_bytes()).ok();
            let back = ours.as_ref().map(Json::to_value);
            prop_assert_eq!(back.as_ref(), theirs.as_ref());
            let found = ours.as_ref().and_then(|o| o.pointer(&p)).map(Json::to_value);
            prop_assert_eq!(found.as_ref(), theirs.as_ref().and_then(|t| t.pointer(&p)));
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            "[a-c~/\"\\\\é]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-c0-1~/]{0,2}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
