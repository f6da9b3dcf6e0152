//! One problem hides no other: every problem of an entry, of each entry and of each section
//! is reported with its key.

use super::*;

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
