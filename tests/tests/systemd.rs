//! sd_notify through a real NOTIFY_SOCKET: READY, STATUS, WATCHDOG cadence, STOPPING.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use edge_tests::{agent_bin, wait_for, Broker, DEADLINE};

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
