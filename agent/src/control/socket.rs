//! The control socket: one JSON object per line in, one JSON object per line out.
//!
//! At most [`MAX_CLIENTS`] clients are served at once; one more is answered with a JSON error
//! line saying so. Every handler races shutdown, so a client that keeps its connection open
//! does not hold up the stop, and is tracked by the shutdown's tracker.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Semaphore};

use super::replay::{parse_replay, ReplayRequest};
use crate::buffer::Store;
use crate::shutdown::Shutdown;
use crate::status::StatusBoard;

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;
/// Clients served at once. `edge-agent status` holds a connection for one request; this bounds
/// what a script that opens connections in a loop (or never closes them) can take.
pub const MAX_CLIENTS: usize = 16;
/// A client that sends no request for this long is disconnected, so that forgotten
/// connections cannot hold every slot for good.
const IDLE: Duration = Duration::from_secs(60);
/// A client refused because every slot is taken gets this long to send its request, so that
/// it reads the refusal rather than a broken pipe.
const REFUSAL_WAIT: Duration = Duration::from_secs(1);

/// Binds the socket, replacing a stale file left by a killed agent.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another edge-agent is running and answers on it",
            ))
        }
        Err(_) if path.exists() => std::fs::remove_file(path)?,
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Serves requests until shutdown, then removes the socket file. Each client's handler is a
/// task of `shutdown` that ends when shutdown begins.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    store: Store,
    board: Arc<StatusBoard>,
    replays: mpsc::Sender<ReplayRequest>,
    shutdown: Shutdown,
) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    // Refusals are bounded too: past both, a connection is closed at once.
    let refusals = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        tokio::select! {
            // Cancel-safe: UnixListener::accept loses no connection when dropped.
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    if let Ok(slot) = slots.clone().try_acquire_owned() {
                        let (store, board, replays) = (store.clone(), board.clone(), replays.clone());
                        let stop = shutdown.clone();
                        shutdown.spawn("control socket client", async move {
                            let _slot = slot;
                            tokio::select! {
                                // Not cancel-safe, and need not be: shutdown ends the
                                // connection; a replay already queued stays queued.
                                r = handle(stream, store, board, replays) => {
                                    if let Err(e) = r {
                                        tracing::debug!("control socket client: {e}");
                                    }
                                }
                                // Cancel-safe: a cancelled token stays cancelled.
                                _ = stop.cancelled() => {}
                            }
                        });
                    } else if let Ok(permit) = refusals.clone().try_acquire_owned() {
                        tracing::debug!("control socket: {MAX_CLIENTS} clients already; refusing one");
                        let stop = shutdown.clone();
                        shutdown.spawn("control socket refusal", async move {
                            let _permit = permit;
                            tokio::select! {
                                // Not cancel-safe, and need not be: it only refuses.
                                _ = refuse(stream) => {}
                                // Cancel-safe: a cancelled token stays cancelled.
                                _ = stop.cancelled() => {}
                            }
                        });
                    } else {
                        drop(stream);
                    }
                }
                Err(e) => {
                    tracing::warn!("control socket {}: accept: {e}", path.display());
                    // Out of file descriptors, say: do not spin on it.
                    tokio::select! {
                        // Cancel-safe: sleeping holds no state.
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        // Cancel-safe: a cancelled token stays cancelled.
                        _ = shutdown.cancelled() => break,
                    }
                }
            },
            // Cancel-safe: a cancelled token stays cancelled.
            _ = shutdown.cancelled() => break,
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// Answers a client past `MAX_CLIENTS`: reads its request (briefly), says why, closes.
async fn refuse(stream: UnixStream) {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r.take(MAX_REQUEST as u64));
    let _ = tokio::time::timeout(REFUSAL_WAIT, reader.read_line(&mut line)).await;
    let mut out = json!({
        "error": format!("the control socket is serving {MAX_CLIENTS} clients already, its limit; try again")
    })
    .to_string();
    out.push('\n');
    let _ = tokio::time::timeout(REFUSAL_WAIT, w.write_all(out.as_bytes())).await;
}

async fn handle(
    stream: UnixStream,
    store: Store,
    board: Arc<StatusBoard>,
    replays: mpsc::Sender<ReplayRequest>,
) -> io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r.take(MAX_REQUEST as u64 * 16)).lines();
    // Lines::next_line is cancel-safe; an idle client is simply disconnected.
    while let Ok(line) = tokio::time::timeout(IDLE, lines.next_line()).await {
        let Some(line) = line? else { break };
        let reply = answer(&line, &store, &board, &replays).await;
        let mut out = reply.to_string();
        out.push('\n');
        // A client that does not read its replies does not keep its slot either.
        tokio::time::timeout(IDLE, w.write_all(out.as_bytes()))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the client reads no reply"))??;
    }
    Ok(())
}

async fn answer(
    line: &str,
    store: &Store,
    board: &StatusBoard,
    replays: &mpsc::Sender<ReplayRequest>,
) -> Value {
    if line.len() > MAX_REQUEST {
        return json!({"error": "request too long"});
    }
    let req: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return json!({"error": format!("not a JSON object: {e}")}),
    };
    match req.get("cmd").and_then(Value::as_str) {
        Some("status") => super::current_status(store, board).await,
        Some("replay") => {
            let req = match parse_replay(line.as_bytes()) {
                Ok(r) => r,
                Err(e) => return json!({"error": format!("replay: {e}")}),
            };
            let (since, until) = (req.since_ms, req.until_ms);
            let s = store.clone();
            let count = match tokio::task::spawn_blocking(move || {
                s.count_delivered_in_window(since, until)
            })
            .await
            {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return json!({"error": e.to_string()}),
                Err(e) => return json!({"error": e.to_string()}),
            };
            if replays.send(req).await.is_err() {
                return json!({"error": "the agent is stopping"});
            }
            json!({
                "replaying": count,
                "since": crate::time::format_rfc3339_ms(since),
                "until": crate::time::format_rfc3339_ms(until),
            })
        }
        Some(other) => {
            json!({"error": format!("unknown cmd {other:?}; use \"status\" or \"replay\"")})
        }
        None => json!({"error": "missing \"cmd\"; send {\"cmd\":\"status\"}"}),
    }
}

/// Client side: sends one request and returns the reply.
pub async fn request(path: &Path, req: &Value) -> Result<Value, String> {
    let stream = UnixStream::connect(path).await.map_err(|e| {
        format!(
            "control socket {}: {e}; is edge-agent running? (systemctl status edge-agent; or pass --socket)",
            path.display()
        )
    })?;
    let (r, mut w) = stream.into_split();
    let mut line = req.to_string();
    line.push('\n');
    w.write_all(line.as_bytes())
        .await
        .map_err(|e| format!("control socket {}: {e}", path.display()))?;
    let mut reply = String::new();
    BufReader::new(r)
        .read_line(&mut reply)
        .await
        .map_err(|e| format!("control socket {}: {e}", path.display()))?;
    serde_json::from_str(&reply)
        .map_err(|e| format!("control socket {}: unreadable reply: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown::{Deadline, Joined};
    use tokio_util::sync::CancellationToken;

    async fn ask_and_hold(path: &Path) -> BufReader<UnixStream> {
        let mut c = UnixStream::connect(path)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        c.write_all(b"{\"cmd\":\"status\"}\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut c = BufReader::new(c);
        let mut line = String::new();
        c.read_line(&mut line)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(line.contains("\"backlog\""), "{line}");
        c
    }

    #[tokio::test]
    async fn at_most_max_clients_are_served_and_open_connections_do_not_hold_up_shutdown() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("control.sock");
        let store = Store::open(&dir.path().join("buffer.redb")).unwrap_or_else(|e| panic!("{e}"));
        let listener = bind(&path).unwrap_or_else(|e| panic!("{e}"));
        let (replays, _replays) = mpsc::channel(1);
        let shutdown = Shutdown::new(CancellationToken::new());
        let mut server = shutdown.spawn(
            "control socket",
            serve(
                listener,
                path.clone(),
                store,
                Arc::new(StatusBoard::default()),
                replays,
                shutdown.clone(),
            ),
        );
        // Clients that were answered and keep their connection open.
        let mut held = Vec::new();
        for _ in 0..MAX_CLIENTS {
            held.push(ask_and_hold(&path).await);
        }
        let refused = request(&path, &json!({"cmd": "status"}))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            refused["error"]
                .as_str()
                .is_some_and(|e| e.contains("16 clients already")),
            "{refused}"
        );
        // One leaves: its slot is free again.
        drop(held.pop());
        let mut answered = false;
        for _ in 0..500 {
            let v = request(&path, &json!({"cmd": "status"}))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            if v.get("error").is_none() {
                answered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(answered, "no slot came free");

        // Fifteen open connections do not hold up the stop.
        shutdown.token().cancel();
        let deadline = Deadline::after(Duration::from_secs(5));
        assert_eq!(server.join_by(&deadline).await, Joined::Done(()));
        assert_eq!(shutdown.wait_by(&deadline).await, Ok(()));
        assert!(!path.exists(), "the socket file is removed");
        let mut line = String::new();
        let n = held[0]
            .read_line(&mut line)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n, 0, "the connection is closed: {line}");
    }
}
