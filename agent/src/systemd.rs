//! sd_notify without libsystemd: `READY=1`, `STATUS=…`, `WATCHDOG=1`, `STOPPING=1` as datagrams
//! to `$NOTIFY_SOCKET`. Without that variable every call is a no-op.
//!
//! The watchdog is fed only while the pipeline is alive: the buffer writer answers a ping
//! through its own queue, or it is retrying failed commits (a full disk: alive, reported in
//! status) without being stuck in one storage call; and the upstream task has beaten its
//! heartbeat recently (so a wedged upstream task stops the pings too). A stuck stage stops
//! them, and systemd restarts the agent; a stage that retries does not.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::buffer::{Store, WriterHandle};
use crate::status::StatusBoard;

/// A connection to systemd's notification socket, if there is one.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
    pub fn from_env() -> Notifier {
        let target = std::env::var("NOTIFY_SOCKET").ok().and_then(|p| {
            let addr = if let Some(name) = p.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes()).ok()?
            } else {
                SocketAddr::from_pathname(&p).ok()?
            };
            let sock = UnixDatagram::unbound().ok()?;
            Some((sock, addr))
        });
        Notifier { target }
    }

    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one notification; failures are logged, never fatal.
    pub fn notify(&self, msg: &str) {
        if let Some((sock, addr)) = &self.target {
            if let Err(e) = sock.send_to_addr(msg.as_bytes(), addr) {
                tracing::debug!("sd_notify {msg:?}: {e}");
            }
        }
    }
}

/// Half of `$WATCHDOG_USEC` when the watchdog is on for this process.
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim() != std::process::id().to_string() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Feeds the watchdog and refreshes `STATUS=` until shutdown.
pub async fn supervise(
    notifier: Arc<Notifier>,
    writer: WriterHandle,
    store: Store,
    status: Arc<StatusBoard>,
    shutdown: CancellationToken,
) {
    let watchdog = watchdog_interval();
    let period = watchdog
        .unwrap_or(Duration::from_secs(10))
        .min(Duration::from_secs(10));
    let mut tick = tokio::time::interval(period);
    let mut healthy_before = true;
    loop {
        tokio::select! {
            // Cancel-safe: interval ticks are not lost.
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let s = store.clone();
        let stats = tokio::task::spawn_blocking(move || s.stats()).await;
        let up = status.upstream();
        let backlog = match stats {
            Ok(Ok(stats)) => Some(stats.backlog),
            _ => store.last_stats().map(|(s, _)| s.backlog),
        };
        if let Some(backlog) = backlog {
            notifier.notify(&format!(
                "STATUS=backlog {backlog} events, upstream {}{}",
                if up.connected { "connected" } else { "down" },
                match status.storage_error() {
                    Some(e) => format!(", STORAGE FAILING: {e}"),
                    None => String::new(),
                }
            ));
        }
        let Some(interval) = watchdog else { continue };
        // A writer retrying a failed commit answers no ping (the ping queues behind the
        // readings it holds) but is alive. The ping waits at most half the interval, so that
        // two pings never lie further apart than the interval plus half of it.
        let writer_ok = writer.retrying_not_stuck(interval)
            || match tokio::time::timeout(interval / 2, writer.ping()).await {
                Ok(answer) => answer.is_ok(),
                Err(_) => writer.retrying_not_stuck(interval),
            };
        let upstream_ok = status.upstream_beat_age() < interval * 2;
        if writer_ok && upstream_ok {
            notifier.notify("WATCHDOG=1");
            healthy_before = true;
        } else if healthy_before {
            tracing::error!(
                "pipeline stalled ({}); not feeding the systemd watchdog, so systemd restarts the agent",
                if writer_ok { "upstream task not making progress" } else { "buffer writer not committing" }
            );
            healthy_before = false;
        }
    }
}
