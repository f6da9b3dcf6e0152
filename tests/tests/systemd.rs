//! sd_notify through a real NOTIFY_SOCKET: READY, STATUS, WATCHDOG cadence, STOPPING.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use edge_tests::{agent_bin, fill, wait_for, Agent, Broker, Collector, SmallDisk, DEADLINE};

#[test]
fn the_agent_tells_systemd_ready_status_watchdog_and_stopping() -> Result<()> {
    let central = Broker::start()?;
    let dir = tempfile::tempdir()?;
    let notify = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify)?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[site]\nid = \"dc-sd\"\n[storage]\npath = \"{0}/buffer.redb\"\n[upstream]\nurl = \"{1}\"\n[control]\nsocket = \"{0}/control.sock\"\n",
            dir.path().display(),
            central.url()
        ),
    )?;
    let mut child = std::process::Command::new(agent_bin())
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "2000000")
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut got: Vec<(Instant, String)> = Vec::new();
    let mut buf = [0u8; 4096];
    let mut recv = |got: &mut Vec<(Instant, String)>| {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            ));
        }
    };
    wait_for("READY=1 and three WATCHDOG=1", DEADLINE, || {
        recv(&mut got);
        let dogs = got.iter().filter(|(_, m)| m == "WATCHDOG=1").count();
        (dogs >= 3).then_some(())
    })?;
    ensure!(
        got.first().map(|(_, m)| m.as_str()) == Some("READY=1"),
        "{got:?}"
    );
    ensure!(
        got.iter()
            .any(|(_, m)| m.starts_with("STATUS=backlog 0 events, upstream")),
        "{got:?}"
    );
    // Fed at half of WATCHDOG_USEC (1 s); what matters to systemd is that no gap reaches the
    // timeout itself (2 s).
    let dogs: Vec<Instant> = got
        .iter()
        .filter(|(_, m)| m == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .collect();
    for w in dogs.windows(2) {
        ensure!(
            w[1] - w[0] < Duration::from_secs(2),
            "watchdog gap {:?}",
            w[1] - w[0]
        );
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    wait_for("STOPPING=1", DEADLINE, || {
        recv(&mut got);
        got.iter().any(|(_, m)| m == "STOPPING=1").then_some(())
    })?;
    let status = wait_for("exit", DEADLINE, || child.try_wait().ok().flatten())?;
    ensure!(status.code() == Some(0), "{status:?}");
    Ok(())
}

/// Messages from a notify socket, with when they came.
struct Notifications {
    sock: UnixDatagram,
    got: Vec<(Instant, String)>,
}

impl Notifications {
    fn bind(path: &std::path::Path) -> Result<Notifications> {
        let sock = UnixDatagram::bind(path)?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        Ok(Notifications {
            sock,
            got: Vec::new(),
        })
    }

    /// Reads whatever arrived (waits at most the read timeout).
    fn poll(&mut self) {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.sock.recv(&mut buf) {
            self.got.push((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            ));
        }
    }

    fn watchdogs_since(&self, t: Instant) -> Vec<Instant> {
        self.got
            .iter()
            .filter(|(at, m)| *at >= t && m == "WATCHDOG=1")
            .map(|(at, _)| *at)
            .collect()
    }
}

#[test]
fn the_watchdog_is_fed_while_a_full_disk_is_retried_and_status_keeps_answering() -> Result<()> {
    let central = Broker::start()?;
    let site = Broker::start()?;
    let device = Collector::subscribe(site.port, "unused/#")?;
    let disk_dir = tempfile::tempdir()?;
    let _disk = SmallDisk::mount(disk_dir.path(), "4m")?;
    let notify_dir = tempfile::tempdir()?;
    let notify = notify_dir.path().join("notify.sock");
    let mut notes = Notifications::bind(&notify)?;
    let config = format!(
        r#"
[site]
id = "dc-sd-02"
[storage]
path = "{}/buffer.redb"
[upstream]
url = "{}"
[[sources.mqtt]]
id = "scanner-mqtt"
url = "{}"
topics = ["site/scan"]
decoder = "barcode"
[control]
socket = "{{dir}}/control.sock"
"#,
        disk_dir.path().display(),
        central.url(),
        site.url()
    );
    let notify_env = notify.display().to_string();
    let agent = Agent::start_with_env(
        &config,
        &[
            ("NOTIFY_SOCKET", notify_env.as_str()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    )?;
    agent.wait_source("scanner-mqtt", "open")?;

    fill(&disk_dir.path().join("filler"))?;
    for i in 0..50 {
        device.publish("site/scan", format!("LPN{i:06}"))?;
    }
    wait_for("the storage error in status", DEADLINE, || {
        notes.poll();
        let s = agent.status().ok()?;
        s["storage"]["error"].as_str().is_some().then_some(())
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", agent.log()))?;

    // Eight seconds (four watchdog timeouts) of a full disk: the writer retries, so it is
    // alive; systemd must get a ping well within every 2 s.
    let failing_since = Instant::now();
    let mut statuses = Vec::new();
    while failing_since.elapsed() < Duration::from_secs(8) {
        notes.poll();
        statuses.push(agent.status()?);
    }
    let dogs = notes.watchdogs_since(failing_since);
    ensure!(
        dogs.len() >= 6,
        "{} WATCHDOG=1 in 8 s of a full disk: {:?}\n{}",
        dogs.len(),
        notes.got,
        agent.log()
    );
    let mut edges = vec![failing_since];
    edges.extend(&dogs);
    for w in edges.windows(2) {
        ensure!(
            w[1] - w[0] < Duration::from_secs(2),
            "watchdog gap {:?}",
            w[1] - w[0]
        );
    }
    ensure!(
        notes
            .got
            .iter()
            .any(|(_, m)| m.starts_with("STATUS=") && m.contains("STORAGE FAILING")),
        "{:?}",
        notes.got
    );
    // Logged once with its cause, however often the commit is retried.
    let logged = agent
        .log()
        .matches("no space left on device (ENOSPC)")
        .count();
    ensure!(logged == 1, "logged {logged} times:\n{}", agent.log());
    // Status says everything it knows while the buffer cannot be written.
    for s in &statuses {
        ensure!(s["backlog"].is_u64(), "status without a backlog: {s}");
        ensure!(s["sources"]["scanner-mqtt"]["state"] == "open", "{s}");
        let err = s["storage"]["error"].as_str().unwrap_or("");
        ensure!(
            err.contains("no space left") && err.contains("df -h"),
            "{s}"
        );
    }
    Ok(())
}
