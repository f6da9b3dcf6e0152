//! Outages: kill -9 mid-ingest, the uplink going away, and the agent restarting with a backlog.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Result};
use edge_tests::{wait_for, Agent, Broker, Collector, DEADLINE};

fn config(central: &Broker, site: &Broker) -> String {
    format!(
        r#"
[site]
id = "dc-test-02"
[storage]
path = "{{dir}}/buffer.redb"
[upstream]
url = "{}"
format = "json"
[[stations]]
id = "pack-01"
role = "packing"
[[sources.mqtt]]
id = "scanner-mqtt"
url = "{}"
topics = ["site/scan"]
decoder = "barcode"
station = "pack-01"
[control]
socket = "{{dir}}/control.sock"
"#,
        central.url(),
        site.url()
    )
}

fn codes(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["body"]["code"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn readings_acknowledged_before_kill_9_all_arrive_after_restart() -> Result<()> {
    let mut central = Broker::start()?;
    let site = Broker::start()?;
    let device = Collector::subscribe(site.port, "unused/#")?;
    let sink = Collector::subscribe(central.port, "edge/+/events/#")?;
    // Uplink down: everything has to survive in the buffer (or in the site broker's session).
    central.stop();
    let mut agent = Agent::start(&config(&central, &site))?;
    agent.wait_source("scanner-mqtt", "open")?;

    let n = 1000;
    let mut sent = 0;
    for round in 0..3 {
        for _ in 0..n / 4 {
            device.publish("site/scan", format!("LPN{sent:06}"))?;
            sent += 1;
        }
        // Kill as soon as some of this round is stored: mid-ingest, not after it.
        let floor = (round * n / 4 + 1) as u64;
        wait_for("some readings stored", DEADLINE, || {
            (agent.status().ok()?["storage"]["stored"].as_u64()? >= floor).then_some(())
        })?;
        let status = agent.signal(nix::sys::signal::Signal::SIGKILL)?;
        ensure!(status.code().is_none(), "killed by a signal: {status:?}");
        agent.restart()?;
        agent.wait_source("scanner-mqtt", "open")?;
    }
    for _ in 0..n / 4 {
        device.publish("site/scan", format!("LPN{sent:06}"))?;
        sent += 1;
    }
    central.restart()?;
    let events = wait_for("every reading upstream", Duration::from_secs(60), || {
        let e = sink.events();
        let distinct: BTreeSet<String> = codes(&e).into_iter().collect();
        (distinct.len() >= n).then_some(e)
    })
    .map_err(|e| anyhow::anyhow!("{e}; got {} events\n{}", sink.events().len(), agent.log()))?;
    let got = codes(&events);
    let distinct: BTreeSet<&String> = got.iter().collect();
    ensure!(distinct.len() == n, "{} distinct of {n}", distinct.len());
    // First arrivals keep the order the readings were taken.
    let mut seen = BTreeSet::new();
    let firsts: Vec<&String> = got.iter().filter(|c| seen.insert(*c)).collect();
    ensure!(
        firsts.windows(2).all(|w| w[0] < w[1]),
        "first arrivals out of order"
    );
    let dup = got.len() - n;
    ensure!(dup * 50 < n, "{dup} duplicates of {n} (over 2%)");
    Ok(())
}

#[test]
fn the_uplink_dropping_mid_drain_loses_nothing_and_repeats_the_same_ids() -> Result<()> {
    let mut central = Broker::start()?;
    let site = Broker::start()?;
    let device = Collector::subscribe(site.port, "unused/#")?;
    let sink = Collector::subscribe(central.port, "edge/+/events/#")?;
    central.stop();
    let agent = Agent::start(&config(&central, &site))?;
    agent.wait_source("scanner-mqtt", "open")?;
    let n = 2000;
    for i in 0..n {
        device.publish("site/scan", format!("LPN{i:06}"))?;
    }
    wait_for("the backlog to build", DEADLINE, || {
        (agent.status().ok()?["backlog"].as_u64()? >= n as u64).then_some(())
    })?;
    central.restart()?;
    sink.wait_events(1, DEADLINE)?;
    central.stop();
    wait_for("upstream to notice", DEADLINE, || {
        (agent.status().ok()?["upstream"]["connected"] == false).then_some(())
    })?;
    central.restart()?;
    wait_for("the backlog to drain", Duration::from_secs(60), || {
        (agent.status().ok()?["backlog"] == 0).then_some(())
    })?;
    let all = sink.wait_events(n, DEADLINE)?;
    let mut by_code = std::collections::BTreeMap::new();
    for e in &all {
        let code = e["body"]["code"].as_str().unwrap_or("").to_string();
        let id = e["id"].as_str().unwrap_or("").to_string();
        let prev = by_code.insert(code.clone(), id.clone());
        ensure!(
            prev.is_none() || prev == Some(id),
            "a redelivery of {code} changed its id"
        );
    }
    ensure!(by_code.len() == n, "{} of {n} delivered", by_code.len());
    Ok(())
}
