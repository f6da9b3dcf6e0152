//! Routing and priority end to end: the built binary, real mosquitto brokers, real redb.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::{ensure, Result};
use edge_tests::{config_keygen, config_sign, wait_for, Agent, Broker, Collector, DEADLINE};
use serde_json::Value;

const ROUTES: &str = r#"
[[routes]]
when = { kind = "exception", reason = "no_read" }
topic = "noreads/{station}"
priority = "high"
[[routes]]
when = { source = "scanner-b" }
topic = "scans/{source}/{role}"
"#;

fn config(central: &Broker, site: &Broker, routes: &str, extra: &str) -> String {
    format!(
        r#"
[site]
id = "dc-test-03"
[storage]
path = "{{dir}}/buffer.redb"
[upstream]
url = "{}"
format = "json"
max_inflight = 10
[[stations]]
id = "pack-01"
role = "packing"
[[sources.mqtt]]
id = "scanner-a"
url = "{site}"
topics = ["site/a"]
decoder = "barcode"
station = "pack-01"
[[sources.mqtt]]
id = "scanner-b"
url = "{site}"
topics = ["site/b"]
decoder = "barcode"
{routes}
[control]
socket = "{{dir}}/control.sock"
{extra}
"#,
        central.url(),
        site = site.url()
    )
}

/// Every event delivered, first delivery only, in arrival order: (topic, event).
fn delivered(sink: &Collector) -> Vec<(String, Value)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for m in sink.all() {
        let rest = m.topic.strip_prefix("edge/dc-test-03/").unwrap_or("");
        if rest.starts_with("status") || rest.starts_with("config/") {
            continue;
        }
        let events = match m.json() {
            Value::Array(a) => a,
            one => vec![one],
        };
        for e in events {
            if seen.insert(e["id"].as_str().unwrap_or("").to_string()) {
                out.push((rest.to_string(), e));
            }
        }
    }
    out
}

fn wait_delivered(sink: &Collector, n: usize) -> Result<Vec<(String, Value)>> {
    wait_for(&format!("{n} events delivered"), DEADLINE, || {
        let got = delivered(sink);
        (got.len() >= n).then_some(got)
    })
}

#[test]
fn a_backlog_drains_high_priority_first_in_source_order_on_routed_topics() -> Result<()> {
    let mut central = Broker::start()?;
    let site = Broker::start()?;
    let device = Collector::subscribe(site.port, "unused/#")?;
    let sink = Collector::subscribe(central.port, "edge/#")?;
    central.stop();
    let agent = Agent::start(&config(&central, &site, ROUTES, ""))?;
    agent.wait_source("scanner-a", "open")?;
    agent.wait_source("scanner-b", "open")?;
    let per_source = 300;
    for i in 0..per_source {
        // Every fourth reading of each scanner is a no-read (high priority).
        let payload = |s: &str| {
            if i % 4 == 3 {
                "NOREAD".to_string()
            } else {
                format!("{s}{i:05}")
            }
        };
        device.publish("site/a", payload("LPNA"))?;
        device.publish("site/b", payload("LPNB"))?;
    }
    let n = 2 * per_source;
    wait_for("the backlog to build", DEADLINE, || {
        (agent.status().ok()?["backlog"].as_u64()? >= n as u64).then_some(())
    })?;
    central.restart()?;
    wait_for("the backlog to drain", Duration::from_secs(60), || {
        (agent.status().ok()?["backlog"] == 0).then_some(())
    })?;
    let got = wait_delivered(&sink, n)?;
    ensure!(
        got.len() == n,
        "{} events delivered, {n} expected",
        got.len()
    );

    // Topics: routed ones, a `none` placeholder, and events/{kind} for what no route matches.
    let mut topics: BTreeMap<String, usize> = BTreeMap::new();
    for (topic, e) in &got {
        let source = e["source"].as_str().unwrap_or("");
        let no_read = e["kind"] == "exception" && e["body"]["reason"] == "no_read";
        let want = match (source, no_read) {
            (_, true) if source == "scanner-a" => "noreads/pack-01".to_string(),
            (_, true) => "noreads/none".to_string(),
            ("scanner-b", false) => "scans/scanner-b/none".to_string(),
            _ => format!("events/{}", e["kind"].as_str().unwrap_or("")),
        };
        ensure!(*topic == want, "{e} went to {topic}, not {want}");
        *topics.entry(topic.clone()).or_default() += 1;
    }
    ensure!(
        topics.get("noreads/pack-01") == Some(&75)
            && topics.get("noreads/none") == Some(&75)
            && topics.get("scans/scanner-b/none") == Some(&225)
            && topics.get("events/shipment.scan") == Some(&225),
        "per topic: {topics:?}"
    );

    // Every high-priority event went out before any normal one.
    let high = |e: &Value| e["body"]["reason"] == "no_read";
    let last_high = got.iter().rposition(|(_, e)| high(e));
    let first_normal = got.iter().position(|(_, e)| !high(e));
    ensure!(
        last_high < first_normal,
        "a normal event went out before a high one: last high at {last_high:?}, first normal at {first_normal:?}"
    );
    // Within each priority, each source's events in the order they were read.
    let mut last: BTreeMap<(String, bool), u64> = BTreeMap::new();
    for (_, e) in &got {
        let key = (e["source"].as_str().unwrap_or("").to_string(), high(e));
        let seq = e["seq"].as_u64().unwrap_or(0);
        if let Some(prev) = last.insert(key.clone(), seq) {
            ensure!(prev < seq, "{key:?}: seq {seq} after {prev}");
        }
    }
    Ok(())
}

#[test]
fn a_pushed_configuration_changes_the_routes() -> Result<()> {
    let central = Broker::start()?;
    let site = Broker::start()?;
    let device = Collector::subscribe(site.port, "unused/#")?;
    let sink = Collector::subscribe(central.port, "edge/#")?;
    let dir = tempfile::tempdir()?;
    let (key, public) = config_keygen(dir.path(), "central")?;
    let trusted = format!("trusted_keys = [\"{public}\"]\nconfirm_timeout = \"10s\"");
    let agent = Agent::start(&config(&central, &site, ROUTES, &trusted))?;
    agent.wait_source("scanner-b", "open")?;
    device.publish("site/b", "LPNB00001")?;
    let got = wait_delivered(&sink, 1)?;
    ensure!(got[0].0 == "scans/scanner-b/none", "{:?}", got[0]);

    // The operational sections with other routes: scanner-b's scans now per kind.
    let ops = config(&central, &site, "", "");
    let ops = ops
        .split("[[stations]]")
        .nth(1)
        .and_then(|rest| rest.split("[control]").next())
        .unwrap_or("");
    let doc = format!(
        "[[stations]]{ops}[[routes]]\nwhen = {{ source = \"scanner-b\" }}\ntopic = \"b/{{kind}}\"\n"
    );
    let (_, signed) = config_sign(dir.path(), &key, 1, &doc)?;
    sink.client_publish_retained("edge/dc-test-03/config/set", signed)?;
    let applied = wait_for("the push to be decided", DEADLINE, || {
        sink.all()
            .iter()
            .filter(|m| m.topic == "edge/dc-test-03/config/status")
            .map(|m| m.json())
            .find(|s| s["version"] == 1 && s["state"] != "confirming")
    })?;
    ensure!(applied["state"] == "applied", "{applied}");
    device.publish("site/b", "LPNB00002")?;
    let got = wait_delivered(&sink, 2)?;
    let (topic, e) = &got[1];
    ensure!(
        topic.starts_with("b/") && e["body"]["code"] == "LPNB00002",
        "after the push: {e} on {topic}"
    );
    Ok(())
}
