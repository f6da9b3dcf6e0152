//! Wires the stages together and runs them until SIGTERM/SIGINT.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::buffer::{spawn_writer, Capacity, Store};
use crate::config::Config;
use crate::control::socket;
use crate::sources::{build_all, SourceContext};
use crate::status::StatusBoard;
use crate::upstream::{Upstream, DRAIN_DEADLINE};

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

/// Runs the agent until `shutdown` is cancelled; returns after an orderly stop.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    let config = Arc::new(config);
    let status = Arc::new(StatusBoard::default());
    let path = config.storage.resolved_path();
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
        }
        .run(),
    );

    let sources = TaskTracker::new();
    let ctx = SourceContext {
        config: config.clone(),
        correlator: Default::default(),
        writer: writer.clone(),
        status: status.clone(),
        shutdown: shutdown.clone(),
    };
    for (id, task) in build_all(&ctx) {
        tracing::debug!("starting source {id}");
        sources.spawn(task);
    }
    sources.close();
    drop(ctx);

    let notifier = std::sync::Arc::new(crate::systemd::Notifier::from_env());
    notifier.notify("READY=1");
    let supervisor = tokio::spawn(crate::systemd::supervise(
        notifier.clone(),
        writer.clone(),
        store.clone(),
        status.clone(),
        shutdown.clone(),
    ));
    drop(writer);
    tracing::info!(
        "edge-agent running: site {}, {} sources",
        config.site.id,
        config.sources.serial.len() + config.sources.mqtt.len()
    );

    shutdown.cancelled().await;
    notifier.notify("STOPPING=1");
    let _ = supervisor.await;
    tracing::info!("stopping: sources first, then in-flight upstream events, then the buffer");
    if tokio::time::timeout(SOURCES_DEADLINE, sources.wait())
        .await
        .is_err()
    {
        tracing::warn!("sources did not stop within {SOURCES_DEADLINE:?}");
    }
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
