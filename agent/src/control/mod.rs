//! Control: the local socket (`edge-agent status`), and the status document shared with the
//! retained status topic.

pub mod http;
pub mod plane;
mod render;
pub mod replay;
pub mod socket;

pub use render::{inspect, render_status};

use serde_json::{json, Value};

use crate::buffer::{BufferStats, Store};
use crate::status::StatusBoard;
use crate::time::{format_rfc3339_ms, now_ms};

/// The status document with the buffer's figures as they are now, or, while the buffer cannot
/// be read (a write error, the file being reopened), with the last figures it gave, marked with
/// their time, and the storage error with its cause: status never goes blank when storage fails.
pub async fn current_status(store: &Store, board: &StatusBoard) -> Value {
    let s = store.clone();
    let read = match tokio::task::spawn_blocking(move || s.stats()).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("reading the buffer: {e}")),
    };
    match read {
        Ok(stats) => status_json(&stats, board),
        Err(e) => {
            let (stats, at) = store.last_stats().unwrap_or_default();
            let mut doc = status_json(&stats, board);
            let storage = &mut doc["storage"];
            if storage["error"].is_null() {
                storage["error"] = Value::String(e);
            }
            storage["figures_as_of"] = if at > 0 {
                Value::String(format_rfc3339_ms(at))
            } else {
                Value::Null
            };
            doc
        }
    }
}

/// The status document (docs/operations.md), extended with details for operators.
pub fn status_json(stats: &BufferStats, board: &StatusBoard) -> Value {
    let oldest_pending_s = stats
        .oldest_pending_ms
        .map(|t| now_ms().saturating_sub(t) as f64 / 1000.0)
        .unwrap_or(0.0);
    let sources: serde_json::Map<String, Value> = board
        .sources()
        .into_iter()
        .map(|(id, s)| (id, serde_json::to_value(s).unwrap_or(Value::Null)))
        .collect();
    let rate = board.drain_rate();
    let eta_s = (stats.backlog > 0 && rate >= 0.1).then(|| (stats.backlog as f64 / rate).round());
    json!({
        "state": "online",
        "backlog": stats.backlog,
        "drain_rate": (rate * 10.0).round() / 10.0,
        "eta_s": eta_s,
        "oldest_pending_s": (oldest_pending_s * 10.0).round() / 10.0,
        "dropped": stats.dropped,
        "config_version": board.config_version(),
        "sources": sources,
        "upstream": board.upstream(),
        "storage": {
            "stored": stats.stored,
            "file_bytes": stats.file_bytes,
            "set_aside": stats.set_aside,
            "error": board.storage_error(),
        },
        "http": board.http(),
        "version": env!("CARGO_PKG_VERSION"),
    })
}
