//! Wires the stages together and runs them until SIGTERM/SIGINT, then stops them in order
//! against one deadline (see `shutdown`).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::buffer::{spawn_writer, Capacity, Store};
use crate::config::Config;
use crate::control::socket;
use crate::remote;
use crate::shutdown::{Deadline, Joined, Shutdown, Task, Unclean, REPORT_GRACE, STOP_DEADLINE};
use crate::sources::SourceSet;
use crate::status::StatusBoard;
use crate::upstream::http::HttpUpstream;
use crate::upstream::routes::Routes;
use crate::upstream::{Limits, Role, Upstream};

/// Why `run` failed: at start (exit 1, or 64 for a bad configuration, found before `run`), or
/// at the stop (exit 1: a stage missed the deadline or readings were abandoned).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Buffer(#[from] crate::buffer::StoreError),
    #[error("control socket {path}: {source}; check the directory's permissions (RuntimeDirectory=) or set control.socket")]
    Socket {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// `control.http_token_file` cannot be read: the server is not started without its token.
    #[error("control.http_token_file: {0}")]
    HttpToken(#[from] crate::tls::SetupError),
    /// The stop was not clean: names the stages that missed the deadline and what was
    /// abandoned.
    #[error(transparent)]
    Unclean(#[from] Unclean),
}

/// Runs the agent until `shutdown` is cancelled, then stops it: sources first, then upstream
/// waits for the PUBACKs of what is in flight, then the buffer writer commits what is queued,
/// all within `STOP_DEADLINE`. Returns `Ok` after a clean stop, and `RunError::Unclean` naming
/// what missed the deadline and how many readings were not stored otherwise. `file` is the
/// configuration file's; a pushed configuration (see `remote`) may replace its operational
/// sections.
pub async fn run(file: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    let shutdown = Shutdown::new(shutdown);
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
    // `writer_cancel` (at the deadline) makes it give up a commit that keeps failing.
    let writer_cancel = CancellationToken::new();
    let (writer, writer_done) = spawn_writer(
        store.clone(),
        config.site.id.as_str().into(),
        config.storage.retain_delivered.0,
        Capacity::from_max_bytes(config.storage.max_bytes.0, config.storage.on_full),
        status.clone(),
        writer_cancel.clone(),
    )?;
    // Before any source starts: every reading's priority comes from the routes.
    writer.set_routes(Routes::of(&config));
    let mut writer_task = shutdown.spawn("buffer writer", writer_done);

    let socket_path = config.control.resolved_socket();
    let listener = socket::bind(&socket_path).map_err(|source| RunError::Socket {
        path: socket_path.clone(),
        source,
    })?;
    let (replay_tx, replay_rx) = tokio::sync::mpsc::channel(16);
    let (limits_tx, limits_rx) = tokio::sync::watch::channel(Limits::of(&config));
    let (config_set_tx, config_set_rx) = tokio::sync::watch::channel(None);
    let (config_status_tx, config_status_rx) = tokio::sync::mpsc::channel(16);
    let (switch_tx, mut switch_rx) = tokio::sync::mpsc::channel::<remote::Switch>(1);
    let mut control = shutdown.spawn(
        "control socket",
        socket::serve(
            listener,
            socket_path,
            store.clone(),
            status.clone(),
            replay_tx.clone(),
            shutdown.clone(),
        ),
    );

    // The local HTTP server (metrics, health, status page), unless `control.http = ""`.
    let mut http = match config.control.http_addr() {
        Some(Ok(addr)) => {
            let token = match &config.control.http_token_file {
                Some(path) => Some(crate::control::http::read_token(path)?),
                None => None,
            };
            let server = crate::control::http::Server {
                addr,
                token,
                site: config.site.id.as_str().into(),
                grace: config.control.health_grace.0,
                store: store.clone(),
                board: status.clone(),
            };
            Some(shutdown.spawn("http server", server.run(shutdown.clone())))
        }
        // Validation refuses an address that does not parse.
        _ => None,
    };

    // The control plane on the upstream connection: status, cmd/replay, config/set and
    // config/status (see control::plane).
    let (link, heard, say) = crate::control::plane::channels(&config);
    let mut plane = shutdown.spawn(
        "control plane",
        crate::control::plane::Plane {
            config: config.clone(),
            store: store.clone(),
            status: status.clone(),
            heard,
            say,
            replays: replay_tx,
            config_set: config_set_tx,
            config_status: config_status_rx,
            shutdown: shutdown.token().clone(),
        }
        .run(),
    );

    // Upstream stops after the sources, so that it still sends what they commit as they stop.
    let upstream_stop = CancellationToken::new();
    let mqtt = |role, replays, limits, link| Upstream {
        config: config.clone(),
        store: store.clone(),
        writer: writer.clone(),
        status: status.clone(),
        shutdown: upstream_stop.clone(),
        replays,
        limits,
        link,
        oversized: Default::default(),
        role,
    };
    let mut upstream = if config.upstream.is_http() {
        // Events over HTTP; the control plane over `control.broker`, if set.
        let http = HttpUpstream {
            config: config.clone(),
            store: store.clone(),
            writer: writer.clone(),
            status: status.clone(),
            shutdown: upstream_stop.clone(),
            replays: replay_rx,
            limits: limits_rx.clone(),
        };
        let control = match &config.control.broker {
            Some(_) => {
                // Replay requests go to the HTTP upstream; this connection gets none.
                let (_, no_replays) = tokio::sync::mpsc::channel(1);
                Ok(mqtt(Role::ControlOnly, no_replays, limits_rx, link))
            }
            None => {
                tracing::info!(
                    "no control.broker: status, replay and pushed configuration are served by the control socket and control.http only"
                );
                // Held, so that the control plane keeps serving the socket and HTTP.
                Err(link)
            }
        };
        shutdown.spawn("upstream", async move {
            match control {
                Ok(control) => {
                    tokio::join!(http.run(), control.run());
                }
                Err(_link) => http.run().await,
            }
        })
    } else {
        shutdown.spawn(
            "upstream",
            mqtt(Role::Events, replay_rx, limits_rx, link).run(),
        )
    };

    let mut sources = SourceSet::default();
    sources
        .switch(config.clone(), &writer, &status, &shutdown)
        .await;
    let mut remote = shutdown.spawn(
        "remote configuration",
        remote::Manager {
            file: file.clone(),
            state_path,
            state: start.state,
            status: status.clone(),
            switch: switch_tx,
            inbox: config_set_rx,
            outbox: config_status_tx,
            shutdown: shutdown.token().clone(),
        }
        .run(start.resume),
    );

    let notifier = std::sync::Arc::new(crate::systemd::Notifier::from_env());
    notifier.notify("READY=1");
    let mut supervisor = shutdown.spawn(
        "systemd notifier",
        crate::systemd::supervise(
            notifier.clone(),
            writer.clone(),
            store.clone(),
            status.clone(),
            shutdown.token().clone(),
        ),
    );
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
                // Readings stored from now on get their priority, and events sent from now on
                // (the backlog too) their topic, from the pushed routes.
                writer.set_routes(Routes::of(&switch.config));
                let started = sources.switch(switch.config, &writer, &status, &shutdown).await;
                tracing::info!("sources switched; started: {}", if started.is_empty() { "none".into() } else { started.join(", ") });
                let _ = switch.started.send(started);
            }
        }
    }
    // One deadline for the whole stop, from the signal.
    let deadline = Deadline::after(STOP_DEADLINE);
    // A switch still queued is dropped: the remote task sees the agent stopping.
    drop(switch_rx);
    drop(writer);
    notifier.notify("STOPPING=1");
    tracing::info!(
        "stopping: sources first, then in-flight upstream events, then the buffer (within {STOP_DEADLINE:?})"
    );
    let mut unclean = Unclean::default();
    let failed = &mut unclean.failed;
    join_stage(&mut supervisor, &deadline, failed).await;
    let late_sources = sources.stop(&deadline).await;
    join_stage(&mut remote, &deadline, failed).await;
    upstream_stop.cancel();
    join_stage(&mut upstream, &deadline, failed).await;
    join_stage(&mut control, &deadline, failed).await;
    join_stage(&mut plane, &deadline, failed).await;
    if let Some(http) = http.as_mut() {
        join_stage(http, &deadline, failed).await;
    }
    // The writer ends once every other stage dropped its handle and the queue is committed.
    let mut abandoned = match writer_task.join_by(&deadline).await {
        Joined::Done(Ok(n)) => Some(n),
        Joined::Done(Err(e)) => {
            tracing::error!("buffer writer failed: {e}");
            unclean.failed.push(writer_task.name().to_string());
            Some(0)
        }
        Joined::Failed => {
            unclean.failed.push(writer_task.name().to_string());
            Some(0)
        }
        Joined::Running => None,
    };
    // Control socket clients, and anything else spawned on the tracker.
    if let Err(missed) = shutdown.wait_by(&deadline).await {
        tracing::error!("shutdown: {missed}; cancelling what is left");
        unclean.missed = Some(missed);
        // Aborted, a stage drops its writer handle; cancelled, the writer gives up a commit
        // that keeps failing and says how many readings it could not store.
        upstream_stop.cancel();
        writer_cancel.cancel();
        for t in &late_sources {
            t.abort();
        }
        for t in [&supervisor, &remote, &upstream, &control, &plane]
            .into_iter()
            .chain(http.as_ref())
        {
            t.abort();
        }
        if abandoned.is_none() {
            let grace = Deadline::after(REPORT_GRACE);
            match writer_task.join_by(&grace).await {
                Joined::Done(Ok(n)) => abandoned = Some(n),
                Joined::Done(Err(e)) => tracing::error!("buffer writer failed: {e}"),
                Joined::Failed => {}
                Joined::Running => tracing::error!(
                    "buffer writer did not give up within {REPORT_GRACE:?} of being cancelled (stuck in a storage call?); readings it held may not be stored"
                ),
            }
        }
    }
    unclean.abandoned = abandoned.unwrap_or(0);
    if unclean.is_clean() {
        tracing::info!("stopped");
        Ok(())
    } else {
        Err(unclean.into())
    }
}

/// Waits for a stage until `deadline`, noting it in `failed` if it panicked.
async fn join_stage(task: &mut Task<()>, deadline: &Deadline, failed: &mut Vec<String>) {
    if let Joined::Failed = task.join_by(deadline).await {
        failed.push(task.name().to_string());
    }
}
