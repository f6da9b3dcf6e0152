//! `[[routes]]`: every problem named with its key.

use super::*;

const BASE: &str = r#"
[site]
id = "dc-fra-01"
[upstream]
url = "mqtt://127.0.0.1:1883"
[[stations]]
id = "scale-01"
role = "weighing"
[[sources.mqtt]]
id = "scale-1"
url = "mqtt://127.0.0.1:1883"
topics = ["w"]
decoder = "barcode"
station = "scale-01"
"#;

fn with(routes: &str) -> Vec<String> {
    problems(&format!("{BASE}{routes}"))
}

#[test]
fn routes_read_with_their_defaults() {
    let cfg = load_str(
        &format!("{BASE}[[routes]]\nwhen = {{ kind = \"exception\", reason = [\"no_read\"] }}\ntopic = \"noreads/{{station}}\"\n[[routes]]\ntopic = \"all\"\npriority = \"high\"\n"),
        "test",
    )
    .unwrap_or_else(|p| panic!("{p}"));
    assert_eq!(cfg.routes.len(), 2);
    assert_eq!(cfg.routes[0].priority, Priority::Normal);
    assert_eq!(
        cfg.routes[0].when.reason,
        Some(Strings {
            items: vec!["no_read".into()],
            list: true
        })
    );
    assert_eq!(cfg.routes[1].when, When::default());
    assert_eq!(cfg.routes[1].priority, Priority::High);
}

#[test]
fn unknown_names_in_when_are_named_with_their_key_and_the_known_ones() {
    let got = with(
        r#"
[[routes]]
topic = "a"
[[routes]]
when = { kind = "shipment.scn", reason = ["overload", "overlaod"], role = "weighin", source = "scale-9", station = ["scale-01", "scale-02"] }
topic = "b"
"#,
    );
    let want = [
        "routes[1].when.kind: \"shipment.scn\" is not a kind (shipment.scan, inventory.scan, shipment.weight, shipment.sort, equipment.state, exception)",
        "routes[1].when.reason[1]: \"overlaod\" is not a reason (no_read, invalid_barcode, unstable_weight, overload, underload, scale_error, undecodable, dropped)",
        "routes[1].when.role: \"weighin\" is not a role (receiving, putaway, picking, packing, weighing, sorting, loading, counting)",
        "routes[1].when.source: \"scale-9\" is not a source; sources are scale-1 (and edge-agent, the agent's own events)",
        "routes[1].when.station[1]: \"scale-02\" is not a station; add [[stations]] id = \"scale-02\" or correct the id",
    ];
    for w in want {
        assert!(got.iter().any(|g| g == w), "missing {w:?} in {got:#?}");
    }
    // The first `when.reason` is only about the kind: not reported, as kind did not read.
    assert_eq!(got.len(), want.len(), "{got:#?}");
}

#[test]
fn unknown_keys_values_of_the_wrong_type_and_a_missing_topic_are_reported() {
    let got = with(
        r#"
[[routes]]
when = { kind = "exception", result = "fault" }
topic = "a"
priority = "urgent"
[[routes]]
when = { kind = 3 }
[[routes]]
tpoic = "x"
topic = "c"
"#,
    )
    .join("\n");
    for key in [
        "routes[0].when.result",
        "routes[0].priority",
        "routes[1].when.kind",
        "routes[1].topic",
        "routes[2].tpoic",
    ] {
        assert!(
            got.contains(&format!("{key}: ")),
            "{key} not named in:\n{got}"
        );
    }
    assert!(got.contains("high"), "priority's names not given:\n{got}");
}

#[test]
fn topics_with_wildcards_empty_levels_unknown_placeholders_or_control_levels_are_refused() {
    let cases = [
        ("alerts/+/x", "wildcard"),
        ("alerts/#", "wildcard"),
        ("/alerts", "empty level"),
        ("alerts//x", "empty level"),
        ("alerts/", "empty level"),
        ("", "is empty"),
        ("alerts/{colour}", "{colour} is not a placeholder"),
        ("alerts/{station", "only enclose a placeholder"),
        ("status", "control topics"),
        ("config/x", "control topics"),
        ("cmd/{station}", "control topics"),
    ];
    for (topic, what) in cases {
        let got = with(&format!("[[routes]]\ntopic = {topic:?}\n"));
        assert!(
            got.len() == 1 && got[0].starts_with("routes[0].topic: ") && got[0].contains(what),
            "{topic:?}: expected one routes[0].topic problem with {what:?}, got {got:#?}"
        );
    }
}

#[test]
fn a_placeholder_that_can_render_a_control_level_is_refused_and_one_that_cannot_is_not() {
    // A source named "status" would put its events on {prefix}/{site}/status.
    let base = BASE.replace("id = \"scale-1\"", "id = \"status\"");
    let got = problems(&format!("{base}[[routes]]\ntopic = \"{{source}}/x\"\n"));
    assert!(
        got.iter()
            .any(|g| g.starts_with("routes[0].topic: ") && g.contains("\"status/…\"")),
        "{got:#?}"
    );
    let ok = problems(&format!(
        "{base}[[routes]]\nwhen = {{ source = \"edge-agent\" }}\ntopic = \"{{source}}/x\"\n"
    ));
    assert!(ok.is_empty(), "{ok:#?}");
    let ok = with("[[routes]]\ntopic = \"{station}/{kind}\"\n");
    assert!(ok.is_empty(), "{ok:#?}");
}

#[test]
fn a_reason_with_kinds_that_have_none_or_an_empty_list_is_refused() {
    let got = with(
        "[[routes]]\nwhen = { kind = \"shipment.sort\", reason = \"no_read\" }\ntopic = \"a\"\n[[routes]]\nwhen = { kind = [] }\ntopic = \"b\"\n",
    );
    assert!(
        got.iter()
            .any(|g| g.starts_with("routes[0].when.reason: only exceptions have a reason")),
        "{got:#?}"
    );
    assert!(
        got.iter()
            .any(|g| g.starts_with("routes[1].when.kind: an empty list matches nothing")),
        "{got:#?}"
    );
}
