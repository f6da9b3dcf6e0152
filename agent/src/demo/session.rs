//! One demo run: broker, central, the agent on a demo configuration, the simulated devices, and
//! an orderly stop.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{broker, central::Central, devices};
use crate::config::Config;

const SITE: &str = "demo-site";
/// The agent's sources must be open within this time.
const OPEN_DEADLINE: Duration = Duration::from_secs(10);

/// A fresh directory under the system's temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn create() -> anyhow::Result<TempDir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("edge-agent-demo-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path)
            .with_context(|| format!("cannot create the demo directory {}", path.display()))?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("edge-agent demo: cannot remove {}: {e}", self.0.display());
        }
    }
}

/// Runs the demo until Ctrl-C or `duration`; returns the summary line.
pub async fn run(dir: &Path, duration: Option<Duration>) -> anyhow::Result<String> {
    let stop = CancellationToken::new();
    tokio::spawn(stop_on_signal_or_timeout(duration, stop.clone()));

    let ports = broker::start()?;
    let port = ports.v4;
    let url = format!("mqtt://127.0.0.1:{port}");
    let site_url = format!("mqtt://127.0.0.1:{}", ports.v5);
    let central = Central::subscribe(port, &format!("edge/{SITE}/events/#")).await?;
    let (pty, tty) = devices::scanner_pty()?;
    let config = demo_config(dir, &url, &site_url, &tty)?;
    let socket = config.control.resolved_socket();
    eprintln!(
        "edge-agent demo: embedded broker at {url}, simulated serial scanner on {}, buffer in {}; Ctrl-C stops",
        tty.display(),
        dir.display()
    );

    let shutdown = CancellationToken::new();
    let agent_done = CancellationToken::new();
    let agent = tokio::spawn({
        let (shutdown, done) = (shutdown.clone(), agent_done.clone());
        async move {
            let r = crate::app::run(config, shutdown).await;
            done.cancel();
            r
        }
    });

    let devices_stop = CancellationToken::new();
    let running = async {
        // Each branch is cancel-safe: polling status and waiting on tokens hold no state.
        tokio::select! {
            r = wait_until_open(&socket) => r?,
            _ = stop.cancelled() => return Ok(()),
            _ = agent_done.cancelled() => bail!("the agent stopped while starting"),
        }
        tokio::spawn(devices::serial_scanner(
            pty,
            Duration::from_millis(700),
            devices_stop.clone(),
        ));
        tokio::spawn(devices::mqtt_scanner(
            port,
            Duration::from_millis(1100),
            devices_stop.clone(),
        ));
        tokio::select! {
            _ = stop.cancelled() => Ok(()),
            _ = agent_done.cancelled() => Err(anyhow!("the agent stopped on its own")),
        }
    }
    .await;

    devices_stop.cancel();
    shutdown.cancel();
    let stopped = match agent.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(anyhow!("the agent failed: {e}")),
        Err(e) => Err(anyhow!("the agent's task failed: {e}")),
    };
    let counts = central.finish().await?;
    // The agent's own error explains more than "it stopped".
    stopped?;
    running?;
    let total: u64 = counts.values().sum();
    let by_kind: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
    Ok(format!(
        "edge-agent demo: central received {total} events ({}); stopped cleanly",
        by_kind.join(", ")
    ))
}

async fn stop_on_signal_or_timeout(duration: Option<Duration>, stop: CancellationToken) {
    let timeout = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = tokio::signal::ctrl_c() => if let Err(e) = r {
            eprintln!("edge-agent demo: cannot listen for Ctrl-C ({e}); stopping");
        },
        _ = timeout => {}
    }
    stop.cancel();
}

/// The demo configuration, validated like a real file.
fn demo_config(dir: &Path, url: &str, site_url: &str, tty: &Path) -> anyhow::Result<Config> {
    // A JSON string literal is a valid TOML basic string: this quotes paths safely.
    let quote = |p: &Path| Value::String(p.to_string_lossy().into_owned()).to_string();
    let text = format!(
        r#"
[site]
id = "{SITE}"

[storage]
path = {buffer}
max_bytes = "64MiB"

[upstream]
url = "{url}"
format = "json"
keep_alive = "5s"

[[stations]]
id = "pack-01"
role = "packing"

[[stations]]
id = "recv-01"
role = "receiving"

[[sources.serial]]
id = "scanner-pack-01"
path = {tty}
baud = 9600
decoder = "barcode"
station = "pack-01"

[[sources.mqtt]]
id = "scanner-recv-01"
url = "{site_url}"
topics = ["{topic}"]
decoder = "barcode"
station = "recv-01"

[control]
socket = {socket}
"#,
        buffer = quote(&dir.join("buffer.redb")),
        tty = quote(tty),
        topic = devices::SCAN_TOPIC,
        socket = quote(&dir.join("control.sock")),
    );
    crate::config::load_str(&text, "demo configuration").map_err(|p| {
        anyhow!("the demo configuration is invalid (check EDGE_AGENT__* variables):\n{p}")
    })
}

/// Polls the control socket until every source is open.
async fn wait_until_open(socket: &Path) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + OPEN_DEADLINE;
    let mut last = Value::Null;
    while tokio::time::Instant::now() < deadline {
        if let Ok(status) = crate::control::socket::request(socket, &json!({"cmd": "status"})).await
        {
            let open = |id: &str| status["sources"][id]["state"] == "open";
            if open("scanner-pack-01") && open("scanner-recv-01") {
                return Ok(());
            }
            last = status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let said = if last.is_null() {
        "the control socket did not answer".to_string()
    } else {
        crate::control::render_status(&last)
    };
    bail!("the agent's sources did not open within {OPEN_DEADLINE:?}; status says:\n{said}")
}
