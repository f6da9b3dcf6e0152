//! The configuration's tests: loading and defaults here; `access`: broker URLs, TLS and
//! credential files; `entries`: one problem hides no other; `http`: the local HTTP server's
//! address and token; `upstream_http`: an HTTP upstream and its control broker.

mod access;
mod entries;
mod http;
mod routes;
mod upstream_http;

use std::path::Path;
use std::time::Duration;

use super::*;

const MINIMAL: &str = r#"
[site]
id = "dc-fra-01"
[upstream]
url = "mqtt://127.0.0.1:1883"
"#;

fn problems(text: &str) -> Vec<String> {
    match load_str(text, "test") {
        Ok(_) => Vec::new(),
        Err(p) => p.0.iter().map(|p| p.to_string()).collect(),
    }
}

#[test]
fn every_file_in_config_dir_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.map(|e| e.path()).unwrap_or_default();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        seen += 1;
        if let Err(p) = load(&path) {
            panic!("{} does not validate:\n{p}", path.display());
        }
    }
    assert!(seen >= 1, "no .toml files in {}", dir.display());
}

#[test]
fn a_minimal_file_gets_the_documented_defaults() {
    let cfg = load_str(MINIMAL, "test").unwrap_or_else(|p| panic!("{p}"));
    assert_eq!(cfg.storage.max_bytes, ByteSize(2 << 30));
    assert_eq!(cfg.storage.on_full, OnFull::DropOldest);
    assert_eq!(cfg.storage.retain_delivered.0, Duration::from_secs(86400));
    assert_eq!(cfg.upstream.format(), Format::Cbor);
    assert_eq!(cfg.upstream.batch_size(), 1);
    assert_eq!(cfg.upstream.max_inflight, 100);
    assert_eq!(cfg.upstream.replay_rate, 2000);
    assert_eq!(cfg.upstream.topic_prefix, "edge");
    assert_eq!(cfg.control.status_interval.0, Duration::from_secs(30));
    assert_eq!(cfg.control.http, "127.0.0.1:9180");
    assert_eq!(cfg.control.health_grace.0, Duration::from_secs(300));
    assert!(cfg.control.http_token_file.is_none());
}

#[test]
fn every_problem_is_reported_at_once_with_its_key() {
    let text = r#"
[site]
id = "DC FRA"
[storage]
max_bytes = "2 parsecs"
[upstream]
url = "http://central"
max_inflight = 0
[[stations]]
id = "pack-01"
role = "packing"
[[stations]]
id = "pack-01"
role = "dancing"
[[sources.serial]]
id = "scanner-1"
path = "/dev/ttyUSB0"
baud = 9600
decoder = "barcode"
station = "pack-09"
[[sources.serial]]
id = "scanner-2"
path = "/dev/ttyUSB1"
baud = 12345
decoder = "barcode"
colour = "red"
[[sources.serial]]
id = "scanner-3"
path = "/dev/ttyUSB2"
baud = 12345
decoder = "barcode"
[[sources.mqtt]]
id = "scanner-1"
url = "mqtt://127.0.0.1:1883"
topics = ["a/#/b"]
decoder = "barcode"
[telemetry]
on = true
"#;
    let got = problems(text);
    // What serde refuses and what the semantic checks refuse, in one report.
    let unreadable = [
        "storage.max_bytes: \"2 parsecs\" has unknown unit",
        "stations[1].role: \"dancing\" is not a station role; use one of receiving, putaway,",
        "sources.serial[1].colour: unknown key `colour`",
        "telemetry: unknown section",
    ];
    let invalid = [
        "site.id: \"DC FRA\" must be",
        "upstream.url: \"http://central\": http:// would send events unencrypted",
        "upstream.max_inflight: 0 would never send",
        "stations[1].id: \"pack-01\" is used twice",
        "sources.serial[0].station: \"pack-09\" is not a station",
        "sources.serial[1].baud: 12345 is not a standard rate",
        "sources.serial[2].baud: 12345 is not a standard rate",
        "sources.mqtt[0].id: \"scanner-1\" is used by another source",
        "sources.mqtt[0].topics[0]: \"a/#/b\": '#' must be a whole last level",
    ];
    for e in unreadable.iter().chain(&invalid) {
        assert!(
            got.iter().any(|g| g.starts_with(e)),
            "missing {e:?} in:\n{}",
            got.join("\n")
        );
    }
    assert_eq!(
        got.len(),
        unreadable.len() + invalid.len(),
        "unexpected extra problems:\n{}",
        got.join("\n")
    );
    // Fixed, only the semantic problems are left.
    let text = text
        .replace("\"2 parsecs\"", "\"1GiB\"")
        .replace("dancing", "loading")
        .replace("colour = \"red\"\n", "")
        .replace("[telemetry]\non = true\n", "");
    let got = problems(&text);
    let expect = invalid;
    for e in expect {
        assert!(
            got.iter().any(|g| g.starts_with(e)),
            "missing {e:?} in:\n{}",
            got.join("\n")
        );
    }
    assert_eq!(
        got.len(),
        expect.len(),
        "unexpected extra problems:\n{}",
        got.join("\n")
    );
}

#[test]
fn missing_required_sections_are_named() {
    let got = problems("");
    assert!(
        got.iter().any(|g| g.starts_with("site.id: required")),
        "{got:?}"
    );
    assert!(
        got.iter().any(|g| g.starts_with("upstream.url: required")),
        "{got:?}"
    );
}

#[test]
fn keys_keep_their_case_in_values_and_tables() {
    let cfg = load_str(
        &format!(
            "{MINIMAL}\n[[stations]]\nid = \"Pack-01\"\nrole = \"packing\"\n[[sources.serial]]\nid = \"Scanner-A\"\npath = \"/dev/ttyUSB0\"\nbaud = 9600\ndecoder = \"barcode\"\nstation = \"Pack-01\"\nno_read = \"NoRead\"\n"
        ),
        "test",
    )
    .unwrap_or_else(|p| panic!("{p}"));
    assert_eq!(cfg.sources.serial[0].id, "Scanner-A");
    assert!(
        matches!(&cfg.sources.serial[0].decoder, crate::config::DecoderConfig::Barcode(b) if b.no_read == "NoRead"),
        "{:?}",
        cfg.sources.serial[0].decoder
    );
}

#[test]
fn decoder_settings_are_checked_per_source_with_their_keys() {
    let text = format!(
        "{MINIMAL}
[[sources.mqtt]]
id = \"sorter\"
url = \"mqtt://127.0.0.1:1883\"
topics = [\"t\"]
decoder = \"json\"
[[sources.mqtt]]
id = \"sorter-2\"
url = \"mqtt://127.0.0.1:1883\"
topics = [\"t\"]
decoder = \"json\"
[[sources.mqtt.rules]]
when = {{ \"/type\" = \"CONF\" }}
kind = \"shipment.teleport\"
[[sources.mqtt]]
id = \"scale-on-mqtt\"
url = \"mqtt://127.0.0.1:1883\"
topics = [\"t\"]
decoder = \"scale.toledo\"
[[sources.serial]]
id = \"scale\"
path = \"/dev/ttyS0\"
baud = 9600
decoder = \"scale.ascii\"
min_kg = \"heavy\"
"
    );
    let got = problems(&text);
    for want in [
        "sources.mqtt[0].rules: the json decoder needs at least one",
        "sources.mqtt[1].rules[0].kind: \"shipment.teleport\" is not a kind",
        "sources.mqtt[2].decoder: \"scale.toledo\" reads a scale on a serial port",
        "sources.serial[0].min_kg: \"heavy\" is not a weight in kg",
    ] {
        assert!(
            got.iter().any(|g| g.starts_with(want)),
            "missing {want:?} in:\n{}",
            got.join("\n")
        );
    }
}

/// Asserts that `text` has exactly the problems `want` (each the start of one message).
#[track_caller]
fn assert_problems(text: &str, want: &[&str]) -> Vec<String> {
    let got = problems(text);
    for w in want {
        assert!(
            got.iter().any(|g| g.starts_with(w)),
            "missing {w:?} in:\n{}",
            got.join("\n")
        );
    }
    assert_eq!(
        got.len(),
        want.len(),
        "expected only {want:#?}, got:\n{}",
        got.join("\n")
    );
    got
}

const STATION: &str = "[[stations]]\nid = \"pack-01\"\nrole = \"packing\"\n";
