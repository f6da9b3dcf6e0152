//! A 1,000,000-event backlog: bytes on disk per event, agent startup time, peak RSS while
//! draining, the drain rate to a local mosquitto and the CPU it took (the agent's, and the whole
//! machine's: mosquitto and its counting subscriber run on the same cores). Prints a table.
//!
//! cargo build --release -p edge-agent && cargo bench -p edge-tests --bench backlog
//!
//! `N=n` events (default 1,000,000), `FORMAT=json` (default cbor) and `BATCH=n` (default: the
//! agent's, one event per message) set the upstream side; `EDGE_AGENT_BIN` the agent binary.
//! The agent runs with its systemd unit's environment (`MALLOC_ARENA_MAX=2`).

use std::time::{Duration, Instant};

use anyhow::Result;
use edge_tests::{machine_busy_secs, process_cpu_secs, rss_kib, wait_for, Agent, Broker};

fn main() -> Result<()> {
    let n: u64 = std::env::var("N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let format = std::env::var("FORMAT").unwrap_or_else(|_| "cbor".into());
    let batch = std::env::var("BATCH")
        .ok()
        .and_then(|b| b.parse::<u16>().ok())
        .map(|b| format!("batch = {b}\n"))
        .unwrap_or_default();
    let central = Broker::start()?;
    let text = format!(
        "[site]\nid = \"dc-bench\"\n[storage]\npath = \"{{dir}}/buffer.redb\"\n[upstream]\nurl = \"{}\"\nformat = \"{format}\"\n{batch}max_inflight = 1000\nreplay_rate = 1000000\n[control]\nsocket = \"{{dir}}/control.sock\"\n",
        central.url()
    );
    // Fill the buffer file as a stopped agent would have left it.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("buffer.redb");
    let start = Instant::now();
    edge_tests::write_backlog(&path, n)?;
    let fill_secs = start.elapsed().as_secs_f64();
    let file = std::fs::metadata(&path)?.len();
    println!(
        "backlog of {n} events, upstream format {format}, {}",
        if batch.is_empty() {
            "one event per message".to_string()
        } else {
            batch.trim().to_string()
        }
    );
    println!("{:<44} {:>14}", "measure", "value");
    println!("{:<44} {:>14.1}", "filling the buffer file (s)", fill_secs);
    println!(
        "{:<44} {:>14}",
        "bytes on disk per buffered event",
        file / n
    );

    let counted = count_upstream(central.port)?;
    let env = edge_tests::unit_environment();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut agent = Agent::start_with_env(
        &text.replace("{dir}/buffer.redb", &path.display().to_string()),
        &env,
    )?;
    let start = Instant::now();
    wait_for(
        "the agent to answer with its backlog",
        Duration::from_secs(120),
        || {
            agent.status().ok()?["backlog"]
                .as_u64()
                .filter(|b| *b > 0)
                .map(|_| ())
        },
    )?;
    println!(
        "{:<44} {:>14.3}",
        "startup to status with the backlog (s)",
        start.elapsed().as_secs_f64()
    );
    let pid = agent.pid().unwrap_or(0);
    let mut peak = 0;
    let drain = Instant::now();
    let cpu = (process_cpu_secs(pid), machine_busy_secs());
    wait_for("the backlog to drain", Duration::from_secs(1200), || {
        peak = peak.max(rss_kib(pid).unwrap_or(0));
        (agent.status().ok()?["backlog"] == 0).then_some(())
    })?;
    let secs = drain.elapsed().as_secs_f64();
    let (own, machine) = (process_cpu_secs(pid) - cpu.0, machine_busy_secs() - cpu.1);
    println!(
        "{:<44} {:>14.0}",
        "drain rate to local mosquitto (events/s)",
        n as f64 / secs
    );
    println!("{:<44} {:>14}", "peak agent RSS while draining (KiB)", peak);
    println!(
        "{:<44} {:>14.2}",
        "agent CPU per event while draining (us)",
        own * 1e6 / n as f64
    );
    println!(
        "{:<44} {:>14.2}",
        "machine CPU per event while draining (us)",
        machine * 1e6 / n as f64
    );
    println!(
        "{:<44} {:>14}",
        "messages counted by a subscriber",
        counted.load(std::sync::atomic::Ordering::Relaxed)
    );
    let _ = agent.signal(nix::sys::signal::Signal::SIGTERM);
    Ok(())
}

/// Counts event messages on central (QoS 0: a counter, not a consumer under test).
fn count_upstream(port: u16) -> Result<std::sync::Arc<std::sync::atomic::AtomicU64>> {
    let n = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut opts = rumqttc::MqttOptions::new("bench-counter", "127.0.0.1", port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut conn) = rumqttc::Client::new(opts, 100);
    client.subscribe("edge/+/events/#", rumqttc::QoS::AtMostOnce)?;
    let c = n.clone();
    std::thread::spawn(move || {
        let _client = client;
        for ev in conn.iter() {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(_))) = ev {
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    Ok(n)
}
