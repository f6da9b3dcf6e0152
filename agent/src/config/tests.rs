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
    assert_eq!(cfg.upstream.format, Format::Cbor);
    assert_eq!(cfg.upstream.max_inflight, 100);
    assert_eq!(cfg.upstream.replay_rate, 2000);
    assert_eq!(cfg.upstream.topic_prefix, "edge");
    assert_eq!(cfg.control.status_interval.0, Duration::from_secs(30));
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
        "upstream.url: \"http://central\" is not an MQTT URL",
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
fn mqtt_urls_need_scheme_host_and_port() {
    assert_eq!(
        parse_mqtt_url("mqtt://10.0.0.5:1884"),
        Ok(BrokerAddr {
            host: "10.0.0.5".into(),
            port: 1884,
            tls: false
        })
    );
    assert_eq!(parse_mqtt_url("mqtt://broker").map(|a| a.port), Ok(1883));
    assert_eq!(
        parse_mqtt_url("mqtts://central.example.com"),
        Ok(BrokerAddr {
            host: "central.example.com".into(),
            port: 8883,
            tls: true
        })
    );
    assert_eq!(
        parse_mqtt_url("mqtts://127.0.0.1:18883").map(|a| (a.port, a.tls)),
        Ok((18883, true))
    );
    assert!(parse_mqtt_url("tcp://broker:1883").is_err());
    assert!(parse_mqtt_url("mqtt://:1883").is_err());
    assert!(parse_mqtt_url("mqtt://user:pw@broker:1883").is_err());
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

fn tls_problems(upstream_extra: &str, dir: &Path) -> Vec<String> {
    let text = format!("[site]\nid = \"dc-fra-01\"\n[upstream]\n{upstream_extra}\n")
        .replace("{dir}", &dir.display().to_string());
    problems(&text)
}

#[test]
fn tls_and_credential_keys_are_checked_with_their_keys() -> std::io::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("not-pem.crt"), "hello\n")?;
    std::fs::write(
        dir.path().join("broken.key"),
        "-----BEGIN PRIVATE KEY-----\nnot base64 at all!\n",
    )?;
    let cases: &[(&str, &[&str])] = &[
        (
            "url = \"mqtts://central:8883\"",
            &["upstream.ca_file: required for mqtts://"],
        ),
        (
            "url = \"mqtts://central\"\nca_file = \"{dir}/missing.pem\"",
            &["upstream.ca_file: {dir}/missing.pem: does not exist; check the path"],
        ),
        (
            "url = \"mqtts://central\"\nca_file = \"{dir}/not-pem.crt\"\ncert_file = \"{dir}/not-pem.crt\"",
            &[
                "upstream.ca_file: {dir}/not-pem.crt: holds no PEM certificate",
                "upstream.key_file: required with upstream.cert_file",
            ],
        ),
        (
            "url = \"mqtts://central\"\nca_file = \"{dir}/not-pem.crt\"\ncert_file = \"{dir}/not-pem.crt\"\nkey_file = \"{dir}/broken.key\"",
            &[
                "upstream.ca_file: {dir}/not-pem.crt: holds no PEM certificate",
                "upstream.cert_file: {dir}/not-pem.crt: holds no PEM certificate",
                "upstream.key_file: {dir}/broken.key: is not a valid PEM private key",
            ],
        ),
        (
            "url = \"mqtts://central\"\nca_file = \"{dir}/not-pem.crt\"\nkey_file = \"{dir}/not-pem.crt\"",
            &[
                "upstream.ca_file: {dir}/not-pem.crt: holds no PEM certificate",
                "upstream.cert_file: required with upstream.key_file",
            ],
        ),
        (
            "url = \"mqtt://central\"\nca_file = \"{dir}/ca.pem\"\nkey_file = \"{dir}/k.pem\"",
            &[
                "upstream.ca_file: only used with TLS, but upstream.url is mqtt://",
                "upstream.key_file: only used with TLS, but upstream.url is mqtt://",
            ],
        ),
        (
            "url = \"mqtt://central\"\npassword_file = \"{dir}/missing-password\"",
            &[
                "upstream.username: required with password_file",
                "upstream.password_file: {dir}/missing-password: does not exist",
            ],
        ),
    ];
    let d = dir.path().display().to_string();
    for (extra, want) in cases {
        let got = tls_problems(extra, dir.path());
        for w in *want {
            let w = w.replace("{dir}", &d);
            assert!(
                got.iter().any(|g| g.starts_with(&w)),
                "{extra}: missing {w:?} in:\n{}",
                got.join("\n")
            );
        }
        assert_eq!(got.len(), want.len(), "{extra}: {}", got.join("\n"));
    }
    Ok(())
}

#[test]
fn a_password_file_readable_by_others_is_a_warning_that_never_shows_the_password(
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let pw = dir.path().join("password");
    std::fs::write(&pw, "pa55word-xyz\n")?;
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644))?;
    let text = format!(
        "[site]\nid = \"dc-fra-01\"\n[upstream]\nurl = \"mqtt://central\"\nusername = \"agent\"\npassword_file = \"{}\"\n",
        pw.display()
    );
    let cfg = load_str(&text, "test").unwrap_or_else(|p| panic!("{p}"));
    let warnings: Vec<String> = cfg.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        warnings,
        [format!(
            "upstream.password_file: {} is readable by others (mode 0644); chmod 600 it",
            pw.display()
        )]
    );
    assert!(!format!("{cfg:?}").contains("pa55word"));

    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600))?;
    let cfg = load_str(&text, "test").unwrap_or_else(|p| panic!("{p}"));
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);

    std::fs::write(&pw, "\n")?;
    let got = problems(&text);
    assert!(
        got.iter()
            .any(|g| g.starts_with("upstream.password_file:") && g.contains("first line is empty")),
        "{got:?}"
    );
    Ok(())
}

#[test]
fn two_mqtt_sources_with_one_client_id_on_one_broker_are_refused() {
    let p = problems(
        r#"
[site]
id = "dc-test-01"
[upstream]
url = "mqtt://central:1883"
[[stations]]
id = "pack-01"
role = "packing"
[[sources.mqtt]]
id = "a"
url = "mqtt://site:1883"
topics = ["a"]
decoder = "barcode"
station = "pack-01"
client_id = "shared"
[[sources.mqtt]]
id = "b"
url = "mqtt://site:1883"
topics = ["b"]
decoder = "barcode"
station = "pack-01"
client_id = "shared"
[[sources.mqtt]]
id = "c"
url = "mqtt://other-site:1883"
topics = ["c"]
decoder = "barcode"
station = "pack-01"
client_id = "shared"
"#,
    );
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with(
            "sources.mqtt[1].client_id: \"shared\" is also the client id of sources.mqtt[0]"
        ),
        "{p:?}"
    );
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

#[test]
fn a_bad_decoder_does_not_hide_a_bad_baud_or_an_unknown_station_of_the_same_entry() {
    let text = format!(
        "{MINIMAL}{STATION}
[[sources.serial]]
id = \"scanner-1\"
path = \"/dev/ttyUSB0\"
baud = 12345
decoder = \"nope\"
station = \"pack-09\"
"
    );
    let got = assert_problems(
        &text,
        &[
            "sources.serial[0].decoder: \"nope\" is not a decoder; use one of barcode, scale.mt_sics, scale.toledo, scale.ascii, json, delimited",
            "sources.serial[0].baud: 12345 is not a standard rate",
            "sources.serial[0].station: \"pack-09\" is not a station; add [[stations]] id = \"pack-09\"",
        ],
    );
    assert!(got[0].starts_with("sources.serial[0].decoder"), "{got:?}");
}

#[test]
fn a_bad_entry_does_not_hide_the_problems_of_the_others() {
    let text = format!(
        "{MINIMAL}{STATION}
[[sources.serial]]
id = \"scanner-1\"
path = \"/dev/ttyUSB0\"
baud = 9600
decoder = \"nope\"
[[sources.serial]]
id = \"scanner-2\"
path = \"/dev/ttyUSB1\"
baud = 12345
decoder = \"barcode\"
station = \"pack-09\"
[[sources.mqtt]]
id = \"sorter\"
url = \"mqtt://127.0.0.1:1883\"
topics = [\"t\"]
decoder = \"barcode\"
format = \"xml\"
[[sources.mqtt]]
id = \"scanner-2\"
url = \"ftp://site\"
topics = [\"t\"]
decoder = \"barcode\"
"
    );
    assert_problems(
        &text,
        &[
            "sources.serial[0].decoder: \"nope\" is not a decoder",
            "sources.serial[1].baud: 12345 is not a standard rate",
            "sources.serial[1].station: \"pack-09\" is not a station",
            "sources.mqtt[0].format: unknown key `format`",
            "sources.mqtt[1].id: \"scanner-2\" is used by another source",
            "sources.mqtt[1].url: \"ftp://site\" is not an MQTT URL",
        ],
    );
}

#[test]
fn a_key_of_another_decoder_is_refused_naming_the_keys_of_the_chosen_one() {
    let text = format!(
        "{MINIMAL}{STATION}
[[sources.serial]]
id = \"scanner-1\"
path = \"/dev/ttyUSB0\"
baud = 9600
decoder = \"barcode\"
poll_interval = \"200ms\"
[[sources.serial]]
id = \"scale-1\"
path = \"/dev/ttyUSB1\"
baud = 9600
decoder = \"scale.toledo\"
no_read = \"NR\"
poll_interval = \"200ms\"
[[sources.mqtt]]
id = \"sorter\"
url = \"mqtt://127.0.0.1:1883\"
topics = [\"a\"]
decoder = \"json\"
separator = \";\"
[[sources.mqtt.rules]]
kind = \"shipment.sort\"
fields = {{ result = \"/r\" }}
"
    );
    assert_problems(
        &text,
        &[
            "sources.serial[0].poll_interval: unknown key `poll_interval`; the source's keys are id, path,",
            "sources.serial[1].no_read: unknown key `no_read`; the source's keys are",
            "sources.serial[1].poll_interval: unknown key `poll_interval`; the source's keys are",
            "sources.mqtt[0].separator: unknown key `separator`; the source's keys are",
        ],
    );
}

#[test]
fn every_unknown_key_of_an_entry_is_reported_with_the_known_keys() {
    let text = format!(
        "{MINIMAL}{STATION}
[[sources.serial]]
id = \"scanner-1\"
path = \"/dev/ttyUSB0\"
bauds = 9600
baud = 12345
colour = \"red\"
decoder = \"barcode\"
"
    );
    let got = assert_problems(
        &text,
        &[
            "sources.serial[0].bauds: unknown key `bauds`; did you mean `baud`? the source's keys are id, path, baud,",
            "sources.serial[0].colour: unknown key `colour`; the source's keys are id, path, baud,",
            "sources.serial[0].baud: 12345 is not a standard rate",
        ],
    );
    assert!(
        got.iter().all(|g| !g.contains("unknown key")
            || (g.contains("flow_control, station;")
                && g.ends_with("decoder \"barcode\" takes no_read, max_frame, framing"))),
        "the known keys are listed in full, the source's and the decoder's: {got:?}"
    );
}

#[test]
fn an_unknown_storage_policy_does_not_hide_a_bad_source_or_the_other_sections() {
    let text = format!(
        "[site]
id = \"DC 1\"
[storage]
on_full = \"panic\"
max_bytes = \"1KiB\"
[upstream]
url = \"mqtt://127.0.0.1:1883\"
format = \"yaml\"
{STATION}
[[sources.serial]]
id = \"scanner-1\"
path = \"/dev/ttyUSB0\"
baud = 12345
decoder = \"barcode\"
[control]
confirm_timeout = \"soon\"
"
    );
    assert_problems(
        &text,
        &[
            "storage.on_full: \"panic\" is not a valid value for on_full; use one of drop_oldest, reject_new",
            "storage.max_bytes: 1KiB is too small",
            "upstream.format: \"yaml\" is not a valid value for format; use one of cbor, json",
            "control.confirm_timeout: \"soon\" is not a duration",
            "site.id: \"DC 1\" must be 1-64 characters",
            "sources.serial[0].baud: 12345 is not a standard rate",
        ],
    );
}

#[test]
fn values_of_the_wrong_type_are_named_by_key_and_the_rest_still_checked() {
    let text = format!(
        "{MINIMAL}{STATION}
[[sources.serial]]
id = \"scanner-1\"
path = \"/dev/ttyUSB0\"
baud = \"fast\"
data_bits = 300
station = 7
decoder = \"scale.ascii\"
max_frame = 2
settle = 5
[[sources.mqtt]]
id = \"sorter\"
url = \"mqtt://127.0.0.1:1883\"
topics = [\"a/#/b\", 5]
decoder = 5
"
    );
    assert_problems(
        &text,
        &[
            "sources.serial[0].baud: \"fast\" is not a whole number from 0 to 4294967295",
            "sources.serial[0].data_bits: 300 is not a whole number from 0 to 255",
            "sources.serial[0].station: 7 is not text in quotes",
            "sources.serial[0].settle: 5 is not a duration in quotes, e.g. \"300ms\"",
            "sources.serial[0].max_frame: 2 must be from 16 to 1048576 bytes",
            "sources.mqtt[0].topics[1]: 5 is not text in quotes",
            "sources.mqtt[0].decoder: 5 is not a decoder; use one of barcode, scale.mt_sics,",
            "sources.mqtt[0].topics[0]: \"a/#/b\": '#' must be a whole last level",
        ],
    );
}

#[test]
fn missing_required_keys_of_an_entry_are_named_with_its_other_problems() {
    let text = format!(
        "{MINIMAL}{STATION}
[[sources.serial]]
id = \"scanner-1\"
baud = 12345
station = \"pack-09\"
[[stations]]
id = \"pack-02\"
"
    );
    assert_problems(
        &text,
        &[
            "sources.serial[0].path: required key `path` is missing",
            "sources.serial[0].decoder: required key `decoder` is missing",
            "sources.serial[0].baud: 12345 is not a standard rate",
            "sources.serial[0].station: \"pack-09\" is not a station",
            "stations[1].role: required key `role` is missing",
        ],
    );
}

#[test]
fn the_problems_of_each_rule_are_found_with_those_of_its_source() {
    let text = format!(
        "{MINIMAL}
[[sources.mqtt]]
id = \"sorter\"
url = \"mqtt://127.0.0.1:1883\"
topics = [\"t\"]
decoder = \"json\"
receive_maximum = 0
[[sources.mqtt.rules]]
kind = \"shipment.sort\"
field = {{ sscc = \"/sscc\" }}
[[sources.mqtt.rules]]
kind = \"shipment.teleport\"
[[sources.mqtt.rules]]
when = {{ \"/type\" = \"x\" }}
"
    );
    let got = problems(&text);
    for want in [
        "sources.mqtt[0].rules[0].field: unknown key `field`; did you mean `fields`?",
        "sources.mqtt[0].rules[1].kind: \"shipment.teleport\" is not a kind",
        "sources.mqtt[0].rules[2].kind: required key `kind` is missing",
        "sources.mqtt[0].receive_maximum: 0 would receive nothing",
    ] {
        assert!(
            got.iter().any(|g| g.starts_with(want)),
            "missing {want:?} in:\n{}",
            got.join("\n")
        );
    }
    assert!(
        !got.iter()
            .any(|g| g.starts_with("sources.mqtt[0].rules[2].kind: \"\"")),
        "a stand-in value is never reported: {got:?}"
    );
}

#[test]
fn a_section_that_is_not_a_table_or_is_missing_does_not_stop_the_other_checks() {
    let text = "site = \"dc-1\"
[storage]
max_bytes = 7
[[sources.serial]]
id = \"scanner-1\"
path = \"/dev/ttyUSB0\"
baud = 12345
decoder = \"barcode\"
";
    assert_problems(
        text,
        &[
            "site: \"dc-1\" is not a table; write [site] with its keys",
            "upstream.url: required key is missing",
            "storage.max_bytes: 7B is too small",
            "sources.serial[0].baud: 12345 is not a standard rate",
        ],
    );
}

#[test]
fn a_pushed_style_tree_reports_every_problem_too() {
    // from_value is what a pushed configuration goes through: the same complete report.
    let doc = serde_json::json!({
        "site": { "id": "dc-1" },
        "upstream": { "url": "mqtt://central:1883" },
        "sources": { "serial": [
            { "id": "a", "path": "/dev/ttyUSB0", "baud": 12345, "decoder": "nope", "x": 1 },
            { "id": "b", "path": "/dev/ttyUSB1", "baud": 9600, "decoder": "barcode", "station": "s" }
        ] }
    });
    let got: Vec<String> = match from_value(doc) {
        Ok(_) => Vec::new(),
        Err(p) => p.0.iter().map(|p| p.to_string()).collect(),
    };
    for want in [
        "sources.serial[0].x: unknown key `x`",
        "sources.serial[0].decoder: \"nope\" is not a decoder",
        "sources.serial[0].baud: 12345 is not a standard rate",
        "sources.serial[1].station: \"s\" is not a station",
    ] {
        assert!(
            got.iter().any(|g| g.starts_with(want)),
            "missing {want:?} in:\n{}",
            got.join("\n")
        );
    }
    assert_eq!(got.len(), 4, "{}", got.join("\n"));
}
