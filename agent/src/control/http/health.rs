//! `GET /healthz`: healthy while the buffer takes writes and upstream is connected, or has
//! been unreachable for less than `control.health_grace`. A broker that is down for a moment
//! (a restart, a network blip) is not unhealthy; one that stays down is, even though the agent
//! itself is alive and buffering: the events are not reaching central.

use std::time::Duration;

use serde_json::{json, Value};

use crate::status::StatusBoard;

/// The verdict and, when unhealthy, each cause with what to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub ok: bool,
    pub reasons: Vec<String>,
}

impl Health {
    /// `{"status":"ok"}` or `{"status":"unhealthy","reasons":[…]}`.
    pub fn to_json(&self) -> Value {
        if self.ok {
            json!({"status": "ok"})
        } else {
            json!({"status": "unhealthy", "reasons": self.reasons})
        }
    }
}

/// The health of the pipeline as the board sees it now.
pub fn health(board: &StatusBoard, grace: Duration) -> Health {
    let mut reasons = Vec::new();
    if let Some(e) = board.storage_error() {
        reasons.push(format!("buffer: readings cannot be stored: {e}"));
    }
    if let Some(down) = board.upstream_down_for().filter(|d| *d >= grace) {
        let up = board.upstream();
        reasons.push(format!(
            "upstream: not connected for {} (control.health_grace is {}): {}",
            humantime::format_duration(Duration::from_secs(down.as_secs())),
            humantime::format_duration(grace),
            up.detail
        ));
    }
    Health {
        ok: reasons.is_empty(),
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_within_the_grace_then_each_cause_is_named() {
        let board = StatusBoard::default();
        board.set_upstream(true, "connected to mqtt://central:1883");
        assert_eq!(
            health(&board, Duration::from_secs(300)).to_json(),
            json!({"status": "ok"})
        );
        board.set_upstream(
            false,
            "mqtt://central:1883: connection refused; is the broker up?",
        );
        // Within the grace: still ok.
        assert!(health(&board, Duration::from_secs(300)).ok);
        // Past it (a zero grace is past at once).
        let h = health(&board, Duration::ZERO);
        assert!(!h.ok);
        assert_eq!(h.reasons.len(), 1);
        assert!(
            h.reasons[0].starts_with("upstream: not connected for"),
            "{h:?}"
        );
        assert!(h.reasons[0].contains("connection refused"), "{h:?}");
        board.set_storage_error(Some("no space left on device".into()));
        let h = health(&board, Duration::ZERO);
        assert_eq!(h.reasons.len(), 2);
        assert!(h.reasons[0].starts_with("buffer: "), "{h:?}");
        assert_eq!(h.to_json()["status"], "unhealthy");
        board.set_upstream(true, "connected");
        board.set_storage_error(None);
        assert!(health(&board, Duration::ZERO).ok);
    }
}
