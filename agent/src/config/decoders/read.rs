//! Reading a source's decoder from the keys of its table that are not the source's own: the
//! name in `decoder`, then that decoder's settings type, every unknown key named with the keys
//! the source and the decoder take.

use super::{Barcode, DecoderConfig, Delimited, Json, MtSics, Scale, Toledo, NAMES};
use crate::config::read::{closest, shown, Collector};

/// Reads the decoder of the source at `key` from its table's keys that are not the source's
/// own (`rest`, with `decoder`); every problem is recorded under the source's key, an unknown
/// key with the source's keys (`own`) and the decoder's. None when it cannot be read; then
/// `{key}.decoder` is poisoned, so no check judges settings that were not read.
pub(in crate::config) fn read(
    c: &mut Collector,
    key: &str,
    mut rest: serde_json::Map<String, serde_json::Value>,
    own: &[&str],
) -> Option<DecoderConfig> {
    let decoder_key = format!("{key}.decoder");
    let fail = |c: &mut Collector, message: String| {
        c.push(&decoder_key, message);
        c.poison(&decoder_key);
        None
    };
    let name = match rest.remove("decoder") {
        Some(serde_json::Value::String(name)) => name,
        Some(other) => {
            unknown_keys(c, key, &rest, own, None);
            return fail(
                c,
                format!(
                    "{} is not a decoder; use one of {}",
                    shown(&other),
                    NAMES.join(", ")
                ),
            );
        }
        None => {
            unknown_keys(c, key, &rest, own, None);
            return fail(c, "required key `decoder` is missing".into());
        }
    };
    if !NAMES.contains(&name.as_str()) {
        unknown_keys(c, key, &rest, own, None);
        return fail(
            c,
            format!("{name:?} is not a decoder; use one of {}", NAMES.join(", ")),
        );
    }
    // Keys that are neither the source's nor this decoder's, named with both lists.
    unknown_keys(c, key, &rest, own, Some(&name));
    let known = keys_of(&name);
    rest.retain(|k, _| known.contains(k));
    let value = serde_json::Value::Object(rest);
    let table = format!("decoder = {name:?}");
    let read = match name.as_str() {
        "barcode" => c.read(key, value, &table).map(DecoderConfig::Barcode),
        "scale.mt_sics" => c.read(key, value, &table).map(DecoderConfig::ScaleMtSics),
        "scale.toledo" => c.read(key, value, &table).map(DecoderConfig::ScaleToledo),
        "scale.ascii" => c.read(key, value, &table).map(DecoderConfig::ScaleAscii),
        "json" => c.read(key, value, &table).map(DecoderConfig::Json),
        _ => c.read(key, value, &table).map(DecoderConfig::Delimited),
    };
    if read.is_none() {
        c.poison(&decoder_key);
    }
    read
}

/// The keys decoder `name` takes, as its settings type declares them (serde lists them when
/// it meets a key they do not have).
fn keys_of(name: &str) -> Vec<String> {
    fn keys<T: serde::de::DeserializeOwned>() -> Vec<String> {
        let probe = serde_json::json!({ "\u{1}": 0 });
        match serde_json::from_value::<T>(probe) {
            Ok(_) => Vec::new(),
            Err(e) => {
                let msg = e.to_string();
                msg.split_once(", expected ")
                    .map(|(_, list)| {
                        list.split('`')
                            .skip(1)
                            .step_by(2)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default()
            }
        }
    }
    match name {
        "barcode" => keys::<Barcode>(),
        "scale.mt_sics" => keys::<MtSics>(),
        "scale.toledo" => keys::<Toledo>(),
        "scale.ascii" => keys::<Scale>(),
        "json" => keys::<Json>(),
        "delimited" => keys::<Delimited>(),
        _ => Vec::new(),
    }
}

/// Records each key of `rest` that neither the source (`own`) nor its decoder takes. With the
/// decoder unknown (`None`), only keys that no decoder takes are certain to be wrong.
fn unknown_keys(
    c: &mut Collector,
    key: &str,
    rest: &serde_json::Map<String, serde_json::Value>,
    own: &[&str],
    decoder: Option<&str>,
) {
    let known: Vec<String> = match decoder {
        Some(name) => keys_of(name),
        None => NAMES.iter().flat_map(|n| keys_of(n)).collect(),
    };
    for field in rest.keys().filter(|k| !known.contains(k)) {
        let all: Vec<&str> = own
            .iter()
            .copied()
            .chain(known.iter().map(String::as_str))
            .collect();
        let hint = closest(field, &all)
            .map(|k| format!("did you mean `{k}`? "))
            .unwrap_or_default();
        let message = match decoder {
            Some(name) => format!(
                "unknown key `{field}`; {hint}the source's keys are {}; decoder {name:?} takes {}",
                own.join(", "),
                if known.is_empty() {
                    "none of its own".to_string()
                } else {
                    known.join(", ")
                }
            ),
            None => format!(
                "unknown key `{field}`; {hint}no decoder and no source takes it; the source's keys are {}",
                own.join(", ")
            ),
        };
        let k = format!("{key}.{field}");
        c.push(&k, message);
        c.poison(k);
    }
}
