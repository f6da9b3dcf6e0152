//! Wires the stages together and runs them until SIGTERM/SIGINT.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::buffer::{spawn_writer, Capacity, Store, WriterHandle};
use crate::config::Config;
use crate::control::socket;
use crate::normalize::SharedCorrelator;
use crate::remote;
use crate::sources::{build, ids, SourceContext};
use crate::status::StatusBoard;
use crate::upstream::{Limits, Upstream, DRAIN_DEADLINE};

/// Sources get this long to stop after the shutdown signal.
const SOURCES_DEADLINE: Duration = Duration::from_secs(3);
/// The writer gets this long to commit what is queued. The sum of the deadlines (13 s) stays
/// under the unit's TimeoutStopSec.
const WRITER_DEADLINE: Duration = Duration::from_secs(5);

/// A fatal error while starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Buffer(#[from] crate::buffer::StoreError),
    #[error("control socket {path}: {source}; check the directory's permissions (RuntimeDirectory=) or set control.socket")]
    Socket {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// One running source.
struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    /// Its configuration and its station's: a switch restarts it only if this changes.
    fingerprint: serde_json::Value,
}

/// The running sources, by id.
struct SourceSet {
    running: BTreeMap<String, Running>,
    /// Scans seen at each station, for the scales there: shared by every source, across
    /// switches.
    correlator: SharedCorrelator,
}

/// What a source runs from: its entry in the configuration and its station's.
fn fingerprints(config: &Config) -> BTreeMap<String, serde_json::Value> {
    let tree = &config.tree;
    let station = |id: &serde_json::Value| {
        tree["stations"]
            .as_array()
            .and_then(|all| all.iter().find(|s| s["id"] == *id))
            .cloned()
            .unwrap_or_default()
    };
    let mut out = BTreeMap::new();
    for kind in ["serial", "mqtt"] {
        for entry in tree["sources"][kind].as_array().into_iter().flatten() {
            if let Some(id) = entry["id"].as_str() {
                let fp = serde_json::json!([kind, entry, station(&entry["station"])]);
                out.insert(id.to_string(), fp);
            }
        }
    }
    out
}

impl SourceSet {
    fn new() -> SourceSet {
        SourceSet {
            running: BTreeMap::new(),
            correlator: Default::default(),
        }
    }

    /// Makes `config`'s sources the running ones: stops those that are gone or changed (each
    /// commits and acknowledges what it read first), starts those not running, and leaves the
    /// others alone (a serial port that stays open loses nothing). Returns the ids started.
    async fn switch(
        &mut self,
        config: Arc<Config>,
        writer: &WriterHandle,
        status: &Arc<StatusBoard>,
        shutdown: &CancellationToken,
    ) -> Vec<String> {
        let want = fingerprints(&config);
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(id, r)| want.get(*id) != Some(&r.fingerprint))
            .map(|(id, _)| id.clone())
            .collect();
        let stopping: Vec<Running> = stale
            .iter()
            .filter_map(|id| self.running.remove(id))
            .collect();
        stop_all(stopping).await;
        let new: Vec<String> = ids(&config)
            .into_iter()
            .filter(|id| !self.running.contains_key(id))
            .collect();
        status.reset_sources(
            want.keys().map(String::as_str),
            new.iter().map(String::as_str),
        );
        let mut started = Vec::new();
        for id in new {
            let stop = shutdown.child_token();
            let ctx = SourceContext {
                config: config.clone(),
                correlator: self.correlator.clone(),
                writer: writer.clone(),
                status: status.clone(),
                shutdown: stop.clone(),
            };
            let Some(task) = build(&ctx, &id) else {
                continue;
            };
            tracing::debug!("starting source {id}");
            let fingerprint = want.get(&id).cloned().unwrap_or_default();
            self.running.insert(
                id.clone(),
                Running {
                    stop,
                    task: tokio::spawn(task),
                    fingerprint,
                },
            );
            started.push(id);
        }
        started
    }

    async fn stop(self) {
        stop_all(self.running.into_values().collect()).await;
    }
}

/// Stops sources and waits (bounded) for each to finish.
async fn stop_all(sources: Vec<Running>) {
    for s in &sources {
        s.stop.cancel();
    }
    let deadline = tokio::time::Instant::now() + SOURCES_DEADLINE;
    for mut s in sources {
        if tokio::time::timeout_at(deadline, &mut s.task)
            .await
            .is_err()
        {
            // Its successor must not share its port or client id with it.
            tracing::warn!("a source did not stop within {SOURCES_DEADLINE:?}; aborted");
            s.task.abort();
            let _ = s.task.await;
        }
    }
}

/// Runs the agent until `shutdown` is cancelled; returns after an orderly stop. `file` is the
/// configuration file's; a pushed configuration (see `remote`) may replace its operational
/// sections.
pub async fn run(file: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    let file = Arc::new(file);
    let path = file.storage.resolved_path();
    let state_path = remote::state_path(&path);
    let start = remote::startup(&file, &state_path);
    let config = Arc::new(start.config);
    let status = Arc::new(StatusBoard::default());
    status.set_config_version(start.version);
    let store = {
        let p = path.clone();
        tokio::task::spawn_blocking(move || Store::open(&p))
            .await
            .map_err(|e| crate::buffer::StoreError::CreateDir {
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            })??
    };
    let stats = store.stats()?;
    tracing::info!(
        "buffer {} open: {} events pending, {} stored",
        path.display(),
        stats.backlog,
        stats.stored
    );

    // The writer outlives the other stages: it stops only when they dropped their handles.
    let writer_cancel = CancellationToken::new();
    let (writer, writer_done) = spawn_writer(
        store.clone(),
        config.site.id.as_str().into(),
        config.storage.retain_delivered.0,
        Capacity::from_max_bytes(config.storage.max_bytes.0, config.storage.on_full),
        status.clone(),
        writer_cancel.clone(),
    )?;

    let socket_path = config.control.resolved_socket();
    let listener = socket::bind(&socket_path).map_err(|source| StartError::Socket {
        path: socket_path.clone(),
        source,
    })?;
    let (replay_tx, replay_rx) = tokio::sync::mpsc::channel(16);
    let (limits_tx, limits_rx) = tokio::sync::watch::channel(Limits::of(&config));
    let (config_set_tx, config_set_rx) = tokio::sync::watch::channel(None);
    let (config_status_tx, config_status_rx) = tokio::sync::mpsc::channel(16);
    let (switch_tx, mut switch_rx) = tokio::sync::mpsc::channel::<remote::Switch>(1);
    let control = tokio::spawn(socket::serve(
        listener,
        socket_path,
        store.clone(),
        status.clone(),
        replay_tx,
        shutdown.clone(),
    ));

    let upstream = tokio::spawn(
        Upstream {
            config: config.clone(),
            store: store.clone(),
            writer: writer.clone(),
            status: status.clone(),
            shutdown: shutdown.clone(),
            replays: replay_rx,
            limits: limits_rx,
            config_set: config_set_tx,
            config_status: config_status_rx,
            last_config_status: Default::default(),
            oversized: Default::default(),
        }
        .run(),
    );

    let mut sources = SourceSet::new();
    sources
        .switch(config.clone(), &writer, &status, &shutdown)
        .await;
    let remote = tokio::spawn(
        remote::Manager {
            file: file.clone(),
            state_path,
            state: start.state,
            status: status.clone(),
            switch: switch_tx,
            inbox: config_set_rx,
            outbox: config_status_tx,
            shutdown: shutdown.clone(),
        }
        .run(start.resume),
    );

    let notifier = std::sync::Arc::new(crate::systemd::Notifier::from_env());
    notifier.notify("READY=1");
    let supervisor = tokio::spawn(crate::systemd::supervise(
        notifier.clone(),
        writer.clone(),
        store.clone(),
        status.clone(),
        shutdown.clone(),
    ));
    tracing::info!(
        "edge-agent running: site {}, {} sources",
        config.site.id,
        config.sources.serial.len() + config.sources.mqtt.len()
    );

    loop {
        tokio::select! {
            // Cancel-safe: a cancelled token stays cancelled.
            _ = shutdown.cancelled() => break,
            // Cancel-safe: mpsc::Receiver::recv loses nothing when dropped.
            Some(switch) = switch_rx.recv() => {
                // The buffer, its backlog and the upstream connection stay as they are.
                limits_tx.send_replace(Limits::of(&switch.config));
                let started = sources.switch(switch.config, &writer, &status, &shutdown).await;
                tracing::info!("sources switched; started: {}", if started.is_empty() { "none".into() } else { started.join(", ") });
                let _ = switch.started.send(started);
            }
        }
    }
    // A switch still queued is dropped: the remote task sees the agent stopping.
    drop(switch_rx);
    drop(writer);
    notifier.notify("STOPPING=1");
    let _ = supervisor.await;
    tracing::info!("stopping: sources first, then in-flight upstream events, then the buffer");
    sources.stop().await;
    let _ = remote.await;
    if tokio::time::timeout(DRAIN_DEADLINE + Duration::from_secs(1), upstream)
        .await
        .is_err()
    {
        tracing::warn!("upstream did not stop within {DRAIN_DEADLINE:?}");
    }
    let _ = control.await;
    if tokio::time::timeout(WRITER_DEADLINE, writer_done)
        .await
        .is_err()
    {
        writer_cancel.cancel();
        tracing::warn!("buffer writer did not finish within {WRITER_DEADLINE:?}");
    }
    tracing::info!("stopped");
    Ok(())
}
