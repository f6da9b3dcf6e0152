//! The `edge.v1` compatibility rule as a check: a new schema may only add optional properties
//! to the released one. Both directions matter: a consumer that validates with the released
//! schema must accept every new event, and one that validates with the new schema must accept
//! the events of agents still on the released version.
//!
//! Compared at every place the two documents describe (local `$ref`s followed):
//! - `required`: the same set (removing a required field, or requiring one, breaks);
//! - `properties`: every released property is still there and compatible; a new one is optional;
//! - `type`, `enum`, `const`: the same values (no retyping, no new or removed kind or reason);
//! - `pattern`, `format`, `minimum`, `contentEncoding`, `propertyNames`, `additionalProperties`,
//!   `items`, `if`/`then`/`else`, `allOf`/`anyOf`/`oneOf` item by item: unchanged or
//!   compatible in the same way.
//!
//! Titles and descriptions may change.

use serde_json::Value;

/// Keywords whose value must stay exactly as released.
const EXACT: &[&str] = &[
    "type",
    "enum",
    "const",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "contentEncoding",
];

/// Keywords holding one subschema, compared recursively.
const NESTED: &[&str] = &[
    "propertyNames",
    "additionalProperties",
    "items",
    "if",
    "then",
    "else",
    "not",
];

/// Keywords holding a list of subschemas, compared item by item.
const LISTS: &[&str] = &["allOf", "anyOf", "oneOf"];

/// Why `new` is not a compatible successor of `released`: one line per change, each naming
/// the place (a JSON pointer into the released schema) and the change. Empty when compatible.
pub fn breaking_changes(released: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut walk = Walk {
        released_root: released,
        new_root: new,
        out: &mut out,
        depth: 0,
    };
    walk.compare("", released, new);
    out
}

struct Walk<'a> {
    released_root: &'a Value,
    new_root: &'a Value,
    out: &'a mut Vec<String>,
    depth: usize,
}

impl Walk<'_> {
    fn compare(&mut self, at: &str, old: &Value, new: &Value) {
        // The event schema has no recursive types; a loop of references is cut off.
        if self.depth > 64 {
            self.out
                .push(format!("{at}: references nest too deeply to compare"));
            return;
        }
        let old = resolve(self.released_root, old);
        let new = resolve(self.new_root, new);
        let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else {
            if old != new {
                self.out.push(format!("{at}: {old} became {new}"));
            }
            return;
        };
        self.depth += 1;
        for key in EXACT {
            if o.get(*key) != n.get(*key) {
                self.out.push(format!(
                    "{at}/{key}: {} became {}",
                    shown(o.get(*key)),
                    shown(n.get(*key))
                ));
            }
        }
        let required = |m: &serde_json::Map<String, Value>| -> Vec<String> {
            let mut r: Vec<String> = m
                .get("required")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            r.sort();
            r
        };
        let (req_old, req_new) = (required(o), required(n));
        for name in req_old.iter().filter(|r| !req_new.contains(r)) {
            self.out
                .push(format!("{at}: {name:?} is no longer required"));
        }
        for name in req_new.iter().filter(|r| !req_old.contains(r)) {
            self.out.push(format!(
                "{at}: {name:?} is newly required (a new field must be optional)"
            ));
        }
        let empty = serde_json::Map::new();
        let props = |m: &'_ serde_json::Map<String, Value>| {
            m.get("properties").and_then(Value::as_object).cloned()
        };
        let (p_old, p_new) = (
            props(o).unwrap_or_else(|| empty.clone()),
            props(n).unwrap_or(empty),
        );
        for (name, schema) in &p_old {
            match p_new.get(name) {
                Some(next) => self.compare(&format!("{at}/properties/{name}"), schema, next),
                None => self
                    .out
                    .push(format!("{at}/properties: {name:?} was removed")),
            }
        }
        for key in NESTED {
            match (o.get(*key), n.get(*key)) {
                (Some(a), Some(b)) => self.compare(&format!("{at}/{key}"), a, b),
                (None, None) => {}
                (a, b) => self
                    .out
                    .push(format!("{at}/{key}: {} became {}", shown(a), shown(b))),
            }
        }
        for key in LISTS {
            let list = |v: Option<&Value>| v.and_then(Value::as_array).cloned().unwrap_or_default();
            let (a, b) = (list(o.get(*key)), list(n.get(*key)));
            if a.len() != b.len() {
                self.out.push(format!(
                    "{at}/{key}: {} entries became {}",
                    a.len(),
                    b.len()
                ));
            }
            for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
                self.compare(&format!("{at}/{key}/{i}"), x, y);
            }
        }
        self.depth -= 1;
    }
}

/// Follows a local reference (`#/$defs/Name`) within its document.
fn resolve<'a>(root: &'a Value, mut schema: &'a Value) -> &'a Value {
    for _ in 0..16 {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => match r.strip_prefix('#').and_then(|p| root.pointer(p)) {
                Some(target) => schema = target,
                None => return schema,
            },
            None => return schema,
        }
    }
    schema
}

fn shown(v: Option<&Value>) -> String {
    v.map_or_else(|| "absent".to_owned(), Value::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn released() -> Value {
        super::super::edge_v1()
    }

    fn push(list: &mut Value, item: Value) {
        if let Some(list) = list.as_array_mut() {
            list.push(item);
        }
    }

    fn changed(f: impl FnOnce(&mut Value)) -> Vec<String> {
        let mut new = released();
        f(&mut new);
        breaking_changes(&released(), &new)
    }

    #[test]
    fn the_schema_is_compatible_with_itself() {
        assert_eq!(
            breaking_changes(&released(), &released()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_new_optional_field_is_compatible() {
        let found = changed(|s| {
            s["$defs"]["ShipmentScan"]["properties"]["reader"] = json!({ "type": "string" });
            s["properties"]["trace"] = json!({ "type": "string" });
            s["$defs"]["ShipmentScan"]["properties"]["code"]["description"] = json!("reworded");
        });
        assert_eq!(found, Vec::<String>::new());
    }

    #[test]
    fn a_removed_field_breaks() {
        let found = changed(|s| {
            if let Some(p) = s["$defs"]["ShipmentScan"]["properties"].as_object_mut() {
                p.remove("sscc");
            }
            s["$defs"]["ShipmentScan"]["required"] = json!(["code", "symbology", "gs1"]);
        });
        assert!(
            found.iter().any(|f| f.contains("\"sscc\" was removed")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|f| f.contains("\"sscc\" is no longer required")),
            "{found:?}"
        );
    }

    #[test]
    fn a_retyped_field_breaks() {
        let found = changed(|s| {
            s["$defs"]["InventoryScan"]["properties"]["quantity"]["type"] =
                json!(["string", "null"]);
            s["properties"]["seq"]["type"] = json!("string");
        });
        assert!(
            found.iter().any(|f| f
                == "/allOf/1/then/properties/body/properties/quantity/type: \
                    [\"integer\",\"null\"] became [\"string\",\"null\"]"),
            "{found:?}"
        );
        assert!(
            found.iter().any(|f| f.starts_with("/properties/seq/type")),
            "{found:?}"
        );
    }

    #[test]
    fn a_newly_required_field_breaks() {
        let found = changed(|s| {
            push(&mut s["required"], json!("replayed"));
        });
        assert!(
            found
                .iter()
                .any(|f| f.contains("\"replayed\" is newly required")),
            "{found:?}"
        );
    }

    #[test]
    fn a_new_required_field_breaks() {
        let found = changed(|s| {
            s["$defs"]["ShipmentWeight"]["properties"]["gross_kg"] = json!({ "type": "string" });
            push(
                &mut s["$defs"]["ShipmentWeight"]["required"],
                json!("gross_kg"),
            );
        });
        assert!(
            found
                .iter()
                .any(|f| f.contains("\"gross_kg\" is newly required")),
            "{found:?}"
        );
    }

    #[test]
    fn a_new_kind_or_reason_breaks() {
        let found = changed(|s| {
            push(
                &mut s["properties"]["kind"]["enum"],
                json!("shipment.teleport"),
            );
            push(
                &mut s["$defs"]["Exception"]["properties"]["reason"]["enum"],
                json!("gremlins"),
            );
        });
        assert!(
            found.iter().any(|f| f.starts_with("/properties/kind/enum")),
            "{found:?}"
        );
        assert!(found.iter().any(|f| f.contains("reason/enum")), "{found:?}");
    }
}
