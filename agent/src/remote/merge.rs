//! What a pushed document may change, and the configuration it makes.
//!
//! A document holds the site's operational sections: `[[stations]]`, `[[sources.serial]]`,
//! `[[sources.mqtt]]`, `[[routes]]`, and `[upstream]` `replay_rate` / `max_inflight`. Its
//! stations, sources and routes replace the file's (a document without stations has none, one
//! without routes sends every event to `events/{kind}`); `replay_rate` and
//! `max_inflight` replace the file's when the document sets them. Anything else (site
//! identity, storage, the upstream address and credentials, `[control]`) stays local: a
//! document that sets it is rejected.

use serde_json::Value;

use super::error::MergeError;
use crate::config::{self, Config};

/// The upstream keys a document may set.
const UPSTREAM_KEYS: [&str; 2] = ["replay_rate", "max_inflight"];

/// The configuration `doc_toml` makes of `local` (the file's), validated like `check-config`;
/// Err is the reason, for the config/status topic and the log.
pub fn merge(local: &Config, doc_toml: &str) -> Result<Config, MergeError> {
    let doc = config::toml_tree(doc_toml, "pushed configuration").map_err(MergeError::NotToml)?;
    let Value::Object(doc) = doc else {
        return Err(MergeError::NotATable);
    };
    let mut tree = local.tree.clone();
    let Value::Object(top) = &mut tree else {
        return Err(MergeError::LocalNotATable);
    };
    let mut local_keys = Vec::new();
    let mut stations = Value::Array(Vec::new());
    let mut sources = Value::Object(Default::default());
    let mut routes = Value::Array(Vec::new());
    for (key, value) in doc {
        match key.as_str() {
            "stations" => stations = value,
            "sources" => sources = value,
            "routes" => routes = value,
            "upstream" => {
                let Value::Object(up) = value else {
                    return Err(MergeError::UpstreamNotATable);
                };
                for (k, v) in up {
                    if UPSTREAM_KEYS.contains(&k.as_str()) {
                        if let Some(Value::Object(u)) = top.get_mut("upstream") {
                            u.insert(k, v);
                        }
                    } else {
                        local_keys.push(format!("upstream.{k}"));
                    }
                }
            }
            _ => local_keys.push(key),
        }
    }
    if !local_keys.is_empty() {
        return Err(MergeError::LocalKeys(local_keys));
    }
    top.insert("stations".into(), stations);
    top.insert("sources".into(), sources);
    top.insert("routes".into(), routes);
    config::from_value(tree).map_err(MergeError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> Config {
        config::load_str(
            r#"
[site]
id = "dc-test-01"
[upstream]
url = "mqtt://central:1883"
max_inflight = 50
[[stations]]
id = "pack-01"
role = "packing"
[[sources.mqtt]]
id = "scanner-a"
url = "mqtt://127.0.0.1:1883"
topics = ["site/a"]
decoder = "barcode"
station = "pack-01"
"#,
            "test",
        )
        .unwrap()
    }

    #[test]
    fn stations_and_sources_are_replaced_and_the_rest_stays_local() {
        let merged = merge(
            &local(),
            r#"
[upstream]
replay_rate = 500
[[stations]]
id = "recv-01"
role = "receiving"
[[sources.mqtt]]
id = "scanner-b"
url = "mqtt://127.0.0.1:1883"
topics = ["site/b"]
decoder = "barcode"
station = "recv-01"
"#,
        )
        .unwrap();
        assert_eq!(merged.site.id, "dc-test-01");
        assert_eq!(merged.upstream.url, "mqtt://central:1883");
        assert_eq!(merged.upstream.replay_rate, 500);
        assert_eq!(
            merged.upstream.max_inflight, 50,
            "not in the document: the file's"
        );
        let ids: Vec<&str> = merged.sources.mqtt.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["scanner-b"]);
        assert_eq!(merged.stations.len(), 1);
        assert!(merged.sources.serial.is_empty());
    }

    #[test]
    fn routes_are_replaced_by_the_document_and_validated_like_the_file() {
        let mut file = local();
        let with_route = "[[stations]]\nid = \"pack-01\"\nrole = \"packing\"\n[[routes]]\nwhen = { kind = \"exception\" }\ntopic = \"alerts/{station}\"\npriority = \"high\"\n";
        file = merge(&file, with_route).unwrap();
        assert_eq!(file.routes.len(), 1);
        assert_eq!(file.routes[0].priority, crate::config::Priority::High);
        // A document without routes has none: every event goes to events/{kind} again.
        let merged = merge(
            &file,
            "[[stations]]\nid = \"pack-01\"\nrole = \"packing\"\n",
        )
        .unwrap();
        assert!(merged.routes.is_empty());
        let err = merge(
            &file,
            "[[routes]]\nwhen = { kind = \"shipment.scn\" }\ntopic = \"status\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("routes[0].when.kind: \"shipment.scn\" is not a kind"),
            "{err}"
        );
        assert!(err.contains("routes[0].topic: "), "{err}");
    }

    #[test]
    fn a_document_touching_identity_storage_address_or_control_is_rejected_naming_them() {
        let err = merge(
            &local(),
            "[site]\nid = \"other\"\n[upstream]\nurl = \"mqtt://evil:1883\"\n[control]\ntrusted_keys = []\n",
        )
        .unwrap_err()
        .to_string();
        for key in ["site", "upstream.url", "control"] {
            assert!(err.contains(key), "{key} not named in: {err}");
        }
    }

    #[test]
    fn an_invalid_document_gets_the_check_config_report() {
        let err = merge(
            &local(),
            "[[sources.mqtt]]\nid = \"x\"\nurl = \"ftp://nope\"\ntopics = []\ndecoder = \"barcode\"\nstation = \"missing\"\n",
        )
        .unwrap_err();
        assert!(matches!(err, MergeError::Invalid(_)), "{err}");
        let err = err.to_string();
        assert!(err.starts_with("invalid configuration:"), "{err}");
        assert!(err.contains("sources.mqtt[0].url"), "{err}");
        assert!(err.contains("sources.mqtt[0].station"), "{err}");
    }
}
