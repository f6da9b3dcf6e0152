//! Control: the local socket (`edge-agent status`), and the status document shared with the
//! retained status topic.

mod render;
pub mod socket;

pub use render::{inspect, render_status};

use serde_json::{json, Value};

use crate::buffer::BufferStats;
use crate::status::StatusBoard;
use crate::time::now_ms;

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
            "error": board.storage_error(),
        },
        "version": env!("CARGO_PKG_VERSION"),
    })
}
