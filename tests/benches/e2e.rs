//! End-to-end throughput of the release binary through two local mosquitto brokers with QoS 1:
//! a device publishes to the site broker, the agent stores and forwards, central receives.
//! Also the drain rate of a backlog built while central was down. Prints a table.
//!
//! cargo build --release -p edge-agent && cargo bench -p edge-tests --bench e2e
//!
//! `RECEIVE_MAXIMUM=20 cargo bench ...` sets the MQTT source's window (default: the agent's).

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use edge_tests::{rss_kib, wait_for, Agent, Broker, Collector};

const N: usize = 50_000;

fn config(site: &Broker, central: &Broker) -> String {
    format!(
        r#"
[site]
id = "dc-bench"
[storage]
path = "{{dir}}/buffer.redb"
[upstream]
url = "{}"
format = "cbor"
max_inflight = 1000
replay_rate = 1000000
[[stations]]
id = "pack-01"
role = "packing"
[[sources.mqtt]]
id = "scanner"
url = "{}"
topics = ["bench/scan"]
decoder = "barcode"
station = "pack-01"
{window}
[control]
socket = "{{dir}}/control.sock"
"#,
        central.url(),
        site.url(),
        window = receive_maximum()
            .map(|n| format!("receive_maximum = {n}"))
            .unwrap_or_default()
    )
}

/// `RECEIVE_MAXIMUM` from the environment, if set.
fn receive_maximum() -> Option<u16> {
    std::env::var("RECEIVE_MAXIMUM").ok()?.parse().ok()
}

fn publish_all(device: &Collector, n: usize, tag: &str) -> Result<f64> {
    let start = Instant::now();
    for i in 0..n {
        device.publish("bench/scan", format!("]C1001061414{tag}{i:07}"))?;
    }
    Ok(start.elapsed().as_secs_f64())
}

fn main() -> Result<()> {
    let site = Broker::start()?;
    let mut central = Broker::start()?;
    let device = Collector::subscribe(site.port, "unused/#")?;
    let sink = Collector::subscribe(central.port, "edge/+/events/#")?;
    let agent = Agent::start(&config(&site, &central))?;
    agent.wait_source("scanner", "open")?;
    println!(
        "end to end through two mosquitto brokers (QoS 1 in and out), {N} readings, receive_maximum {}",
        receive_maximum().map_or("default (100)".into(), |n| n.to_string())
    );
    println!("{:<48} {:>12}", "measure", "value");

    // Live: device → site broker → agent (stored, acked) → central.
    let start = Instant::now();
    let publish_secs = publish_all(&device, N, "1")?;
    sink.wait_events(N, Duration::from_secs(600))?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{:<48} {:>12.0}",
        "device publish rate into the site broker (msg/s)",
        N as f64 / publish_secs
    );
    println!(
        "{:<48} {:>12.0}",
        "live end-to-end rate (events/s)",
        N as f64 / secs
    );
    let rss = rss_kib(agent.pid().unwrap_or(0)).unwrap_or(0);
    println!("{:<48} {:>12}", "agent RSS after live run (KiB)", rss);

    // Backlog: central down while readings arrive, then up again.
    central.stop();
    publish_all(&device, N, "2")?;
    wait_for("the backlog to build", Duration::from_secs(600), || {
        (agent.status().ok()?["backlog"].as_u64()? >= N as u64).then_some(())
    })?;
    let st = agent.status()?;
    let file = st["storage"]["file_bytes"].as_u64().unwrap_or(0);
    let stored = st["storage"]["stored"].as_u64().unwrap_or(1);
    println!(
        "{:<48} {:>12}",
        "buffer file bytes per stored event",
        file / stored.max(1)
    );
    let rss = rss_kib(agent.pid().unwrap_or(0)).unwrap_or(0);
    println!("{:<48} {:>12}", "agent RSS with the backlog (KiB)", rss);
    central.restart()?;
    let sink = Collector::subscribe(central.port, "edge/+/events/#")?;
    let start = Instant::now();
    sink.wait_events(N, Duration::from_secs(600))?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{:<48} {:>12.0}",
        "backlog drain rate after the uplink returns (events/s)",
        N as f64 / secs
    );
    ensure!(sink.events().len() >= N, "all delivered");
    Ok(())
}
