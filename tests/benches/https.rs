//! The HTTP upstream's drain rate over HTTPS: a backlog of `N` events (default 50,000) in the
//! buffer file, the agent started against the test endpoint (tests/http-endpoint/endpoint.py
//! with TLS, logging only ids: `--lean`), timed from start to an empty backlog, for each batch
//! size in `BATCHES` (default 100,10,1). Prints a table with the CPU seconds of the agent and
//! of the endpoint (a Python process: when its CPU time is near the wall time, it is the bound).
//!
//! cargo build --release -p edge-agent && cargo bench -p edge-tests --bench https

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use edge_tests::endpoint::{make_pki, Endpoint, Tls};
use edge_tests::{rss_kib, wait_for, Agent};

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // After the command name in parentheses: utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

struct Row {
    batch: u16,
    secs: f64,
    requests: usize,
    agent_cpu: f64,
    endpoint_cpu: f64,
    peak_kib: u64,
}

fn run(n: u64, batch: u16, pki: &std::path::Path) -> Result<Row> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("buffer.redb");
    edge_tests::write_backlog(&path, n)?;
    let mut endpoint = Endpoint::new(Some(Tls {
        cert: pki.join("server.crt"),
        key: pki.join("server.key"),
        client_ca: None,
    }))?;
    endpoint.lean = true;
    endpoint.start()?;
    let endpoint_pid = endpoint.pid().context("the endpoint's pid")?;
    let endpoint_cpu0 = cpu_secs(endpoint_pid);
    let text = format!(
        "[site]\nid = \"dc-bench\"\n[storage]\npath = \"{}\"\n[upstream]\nurl = \"{}\"\nca_file = \"{}\"\nbatch = {batch}\nreplay_rate = 1000000\n[control]\nsocket = \"{{dir}}/control.sock\"\nhttp = \"\"\n",
        path.display(),
        endpoint.url(),
        pki.join("ca.crt").display()
    );
    let start = Instant::now();
    let agent = Agent::start(&text)?;
    let pid = agent.pid().unwrap_or(0);
    let mut peak = 0;
    wait_for("the backlog to drain", Duration::from_secs(1800), || {
        peak = peak.max(rss_kib(pid).unwrap_or(0));
        let s = agent.status().ok()?;
        (s["backlog"] == 0 && s["upstream"]["delivered"].as_u64() == Some(n)).then_some(())
    })?;
    let secs = start.elapsed().as_secs_f64();
    let row = Row {
        batch,
        secs,
        requests: endpoint.requests().len(),
        agent_cpu: cpu_secs(pid),
        endpoint_cpu: cpu_secs(endpoint_pid) - endpoint_cpu0,
        peak_kib: peak,
    };
    Ok(row)
}

fn main() -> Result<()> {
    let n: u64 = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let batches: Vec<u16> = std::env::var("BATCHES")
        .unwrap_or_else(|_| "100,10,1".into())
        .split(',')
        .filter_map(|b| b.trim().parse().ok())
        .collect();
    let pki = tempfile::tempdir()?;
    make_pki(pki.path())?;
    println!("HTTPS upstream: a backlog of {n} events drained to a local TLS endpoint (Python), from agent start");
    println!(
        "{:>6} {:>9} {:>11} {:>9} {:>13} {:>16} {:>13}",
        "batch", "seconds", "events/s", "requests", "agent CPU s", "endpoint CPU s", "peak RSS MiB"
    );
    for batch in batches {
        let r = run(n, batch, pki.path())?;
        println!(
            "{:>6} {:>9.2} {:>11.0} {:>9} {:>13.2} {:>16.2} {:>13.1}",
            r.batch,
            r.secs,
            n as f64 / r.secs,
            r.requests,
            r.agent_cpu,
            r.endpoint_cpu,
            r.peak_kib as f64 / 1024.0
        );
    }
    Ok(())
}
