//! The control socket: one JSON object per line in, one JSON object per line out.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::buffer::Store;
use crate::status::StatusBoard;
use crate::upstream::{parse_replay, ReplayRequest};

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;

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

/// Serves requests until shutdown, then removes the socket file.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    store: Store,
    board: Arc<StatusBoard>,
    replays: mpsc::Sender<ReplayRequest>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            // Cancel-safe: UnixListener::accept loses no connection when dropped.
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let store = store.clone();
                    let board = board.clone();
                    let replays = replays.clone();
                    tokio::spawn(async move {
                        if let Err(e) = handle(stream, store, board, replays).await {
                            tracing::debug!("control socket client: {e}");
                        }
                    });
                }
                Err(e) => tracing::warn!("control socket {}: accept: {e}", path.display()),
            },
            _ = shutdown.cancelled() => break,
        }
    }
    let _ = std::fs::remove_file(&path);
}

async fn handle(
    stream: UnixStream,
    store: Store,
    board: Arc<StatusBoard>,
    replays: mpsc::Sender<ReplayRequest>,
) -> io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r.take(MAX_REQUEST as u64 * 16)).lines();
    while let Some(line) = lines.next_line().await? {
        let reply = answer(&line, &store, &board, &replays).await;
        let mut out = reply.to_string();
        out.push('\n');
        w.write_all(out.as_bytes()).await?;
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
