//! Shutdown: one deadline (15 s), control socket clients that do not hold up the stop, and a
//! non-zero exit naming the readings abandoned when the buffer cannot be written.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Result};
use edge_tests::{fill, run_cli, wait_for, Agent, Broker, Collector, SmallDisk, DEADLINE};

/// The agent's stop deadline, and the unit's TimeoutStopSec.
const STOP_DEADLINE: Duration = Duration::from_secs(15);
const TIMEOUT_STOP_SEC: Duration = Duration::from_secs(20);
/// Clients the control socket serves at once.
const MAX_CLIENTS: usize = 16;

fn config(site_id: &str, central: &Broker, site: &Broker, storage: &str) -> String {
    format!(
        r#"
[site]
id = "{site_id}"
[storage]
path = "{storage}"
[upstream]
url = "{}"
format = "json"
[[sources.mqtt]]
id = "scanner-mqtt"
url = "{}"
topics = ["site/scan"]
decoder = "barcode"
[control]
socket = "{{dir}}/control.sock"
"#,
        central.url(),
        site.url()
    )
}

/// Connects, asks for status once, reads the answer and keeps the connection open.
fn hold_client(agent: &Agent) -> Result<BufReader<UnixStream>> {
    let mut s = UnixStream::connect(&agent.socket)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"{\"cmd\":\"status\"}\n")?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    ensure!(line.contains("\"backlog\""), "{line}");
    Ok(r)
}

#[test]
fn sigterm_with_control_clients_holding_their_connections_open_exits_0_promptly() -> Result<()> {
    let central = Broker::start()?;
    let site = Broker::start()?;
    let mut agent = Agent::start(&config("dc-stop-01", &central, &site, "{dir}/buffer.redb"))?;
    agent.wait_source("scanner-mqtt", "open")?;

    // Every slot taken by a client that keeps its connection open...
    let mut held = Vec::new();
    for _ in 0..MAX_CLIENTS {
        held.push(hold_client(&agent)?);
    }
    // ...and one more that connected and never sends anything.
    let _silent = UnixStream::connect(&agent.socket)?;
    // One more is refused, and told why.
    let (code, _, err) = run_cli(
        &["status", "--socket", &agent.socket.to_string_lossy()],
        &[],
    )?;
    ensure!(
        code == 1 && err.contains(&format!("serving {MAX_CLIENTS} clients already")),
        "exit {code}: {err}"
    );

    let asked = Instant::now();
    let exit = agent.signal(nix::sys::signal::Signal::SIGTERM)?;
    let took = asked.elapsed();
    let log = agent.log();
    ensure!(exit.code() == Some(0), "exit {exit:?}\n{log}");
    ensure!(
        took < Duration::from_secs(5),
        "the stop took {took:?} with clients connected\n{log}"
    );
    ensure!(!log.contains("did not stop"), "{log}");
    ensure!(!agent.socket.exists(), "the socket file is left behind");
    // The held connections were closed by the agent.
    let mut line = String::new();
    ensure!(
        matches!(held[0].read_line(&mut line), Ok(0) | Err(_)),
        "still open: {line}"
    );
    Ok(())
}

/// Needs root (a 4 MiB tmpfs), as CI has.
#[test]
fn sigterm_while_the_disk_is_full_exits_1_naming_the_readings_not_stored() -> Result<()> {
    const N: usize = 50;
    let central = Broker::start()?;
    let site = Broker::start()?;
    let device = Collector::subscribe(site.port, "unused/#")?;
    let sink = Collector::subscribe(central.port, "edge/+/events/#")?;
    let disk_dir = tempfile::tempdir()?;
    let _disk = SmallDisk::mount(disk_dir.path(), "4m")?;
    let buffer = disk_dir.path().join("buffer.redb");
    let text = config("dc-stop-02", &central, &site, &buffer.display().to_string());
    let mut agent = Agent::start(&text)?;
    agent.wait_source("scanner-mqtt", "open")?;

    let filler = disk_dir.path().join("filler");
    fill(&filler)?;
    for i in 0..N {
        device.publish("site/scan", format!("LPN{i:06}"))?;
    }
    wait_for("the storage error in status", DEADLINE, || {
        let s = agent.status().ok()?;
        s["storage"]["error"].as_str().is_some().then_some(())
    })
    .map_err(|e| anyhow!("{e}\n{}", agent.log()))?;

    let asked = Instant::now();
    let exit = agent.signal(nix::sys::signal::Signal::SIGTERM)?;
    let took = asked.elapsed();
    let log = agent.log();
    ensure!(exit.code() == Some(1), "exit {exit:?}\n{log}");
    // The writer retried until the deadline (the disk might have come back), then gave up,
    // before systemd's SIGKILL.
    ensure!(
        took >= STOP_DEADLINE && took < TIMEOUT_STOP_SEC,
        "stopped after {took:?}\n{log}"
    );
    let report = log
        .lines()
        .find(|l| l.contains("shutdown: ") && l.contains("readings were not stored"))
        .ok_or_else(|| anyhow!("no report of the readings abandoned\n{log}"))?;
    ensure!(
        report.contains("buffer writer") && report.contains("did not stop within 15s"),
        "{report}"
    );
    let count = abandoned_count(report).ok_or_else(|| anyhow!("no count in {report}"))?;
    ensure!((1..=N as u64).contains(&count), "{report}");

    // MQTT readings were not acknowledged: once there is room, the site broker sends them
    // again and every one arrives.
    std::fs::remove_file(&filler)?;
    agent.restart()?;
    let events = wait_for("every reading delivered", Duration::from_secs(60), || {
        let e = sink.events();
        let codes: BTreeSet<String> = e
            .iter()
            .filter_map(|e| e["body"]["code"].as_str().map(str::to_string))
            .collect();
        (codes.len() >= N).then_some(codes)
    })
    .map_err(|e| anyhow!("{e}\n{}", agent.log()))?;
    ensure!(events.len() == N, "{events:?}");
    ensure!(
        agent.signal(nix::sys::signal::Signal::SIGTERM)?.code() == Some(0),
        "{}",
        agent.log()
    );
    Ok(())
}

/// "...; 37 readings were not stored ..." → 37.
fn abandoned_count(report: &str) -> Option<u64> {
    report.split("; ").find_map(|part| {
        let (n, rest) = part.split_once(' ')?;
        rest.starts_with("readings were not stored")
            .then(|| n.parse().ok())
            .flatten()
    })
}
