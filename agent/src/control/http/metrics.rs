//! `GET /metrics`: the figures of the status document, the normalizers' counters and the
//! writer's commit durations, encoded by `prometheus-client` as the Prometheus text format
//! (0.0.4), or OpenMetrics when the scraper asks for it.
//!
//! Counters of readings and exceptions live in atomics the normalizers bump (see
//! `status::Tally`); they are copied into a registry made for each scrape, so the readings'
//! path takes no lock and allocates nothing for metrics. They start from zero at a restart;
//! `dropped`, the backlog and the oldest pending age come from the buffer file.

use prometheus_client::encoding::{prometheus_text, text as openmetrics_text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::Value;

use crate::status::StatusBoard;

type Labels = Vec<(&'static str, String)>;

/// The content type of `openmetrics_text::encode`'s output.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The metrics text and its content type.
pub fn encode(
    doc: &Value,
    board: &StatusBoard,
    open_metrics: bool,
) -> Result<(String, &'static str), std::fmt::Error> {
    let registry = registry(doc, board);
    let mut out = String::new();
    if open_metrics {
        openmetrics_text::encode(&mut out, &registry)?;
        Ok((out, OPENMETRICS))
    } else {
        prometheus_text::encode(&mut out, &registry)?;
        Ok((out, prometheus_text::CONTENT_TYPE))
    }
}

fn registry(doc: &Value, board: &StatusBoard) -> Registry {
    let mut r = Registry::default();
    let readings = Family::<Labels, Counter>::default();
    let exceptions = Family::<Labels, Counter>::default();
    for (source, tally) in crate::status::tally().sources() {
        for (kind, n) in tally.kinds().filter(|(_, n)| *n > 0) {
            readings
                .get_or_create(&vec![
                    ("source", source.to_string()),
                    ("kind", kind.as_str().to_string()),
                ])
                .inc_by(n);
        }
        for (reason, n) in tally.reasons().filter(|(_, n)| *n > 0) {
            let reason = serde_json::to_value(reason)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            exceptions
                .get_or_create(&vec![("source", source.to_string()), ("reason", reason)])
                .inc_by(n);
        }
    }
    r.register(
        "edge_agent_readings",
        "Events made from each source's readings since start, by kind (exceptions included)",
        readings,
    );
    r.register(
        "edge_agent_exceptions",
        "Exception events made from each source's readings since start, by reason",
        exceptions,
    );
    let counter = |v: &Value| {
        let c = Counter::<u64>::default();
        c.inc_by(v.as_u64().unwrap_or(0));
        c
    };
    let gauge = |v: i64| {
        let g = Gauge::<i64>::default();
        g.set(v);
        g
    };
    r.register(
        "edge_agent_delivered",
        "Events acknowledged by upstream (PUBACK, or an HTTP 2xx/409) since start",
        counter(&doc["upstream"]["delivered"]),
    );
    r.register(
        "edge_agent_rejected",
        "Events central refused since start (an HTTP 4xx for the event alone): set aside, kept in the buffer file",
        counter(&doc["upstream"]["rejected"]),
    );
    r.register(
        "edge_agent_dropped",
        "Undelivered events dropped for room, ever (kept in the buffer file)",
        counter(&doc["dropped"]),
    );
    r.register(
        "edge_agent_backlog_events",
        "Events stored and not yet acknowledged by upstream",
        gauge(doc["backlog"].as_i64().unwrap_or(0)),
    );
    let oldest = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    oldest.set(doc["oldest_pending_s"].as_f64().unwrap_or(0.0));
    r.register(
        "edge_agent_oldest_pending_seconds",
        "Age of the oldest pending event by its observed_at; 0 with no backlog",
        oldest,
    );
    r.register(
        "edge_agent_upstream_up",
        "1 while connected to the upstream broker, else 0",
        gauge(i64::from(doc["upstream"]["connected"] == true)),
    );
    let sources = Family::<Labels, Gauge>::default();
    if let Some(map) = doc["sources"].as_object() {
        for (id, s) in map {
            sources
                .get_or_create(&vec![("source", id.clone())])
                .set(i64::from(s["state"] == "open"));
        }
    }
    r.register(
        "edge_agent_source_up",
        "1 while the source's device or broker is open, 0 while it is retrying",
        sources,
    );
    r.register(
        "edge_agent_config_version",
        "The pushed configuration in effect; 0 while the file's configuration runs",
        gauge(doc["config_version"].as_i64().unwrap_or(0)),
    );
    r.register(
        "edge_agent_storage_ok",
        "1 while the buffer takes writes, 0 while commits fail and are retried",
        gauge(i64::from(doc["storage"]["error"].is_null())),
    );
    r.register(
        "edge_agent_commit_duration_seconds",
        "How long each buffer commit took (one fsync'd redb transaction per group of readings)",
        board.commit_histogram(),
    );
    r
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use edge_protocol::event::ExceptionReason;
    use edge_protocol::Body;

    use super::*;
    use crate::buffer::BufferStats;

    #[test]
    fn every_required_name_is_there_with_the_figures_of_the_status_document() {
        let board = Arc::new(StatusBoard::default());
        board.set_source(
            "metrics-test-scanner",
            crate::status::SourceState::Open,
            "x",
        );
        let tally = crate::status::tally().source("metrics-test-scanner");
        tally.count(&Body::exception(ExceptionReason::NoRead, "no read"));
        board.commit_took(Duration::from_millis(3));
        let stats = BufferStats {
            backlog: 7,
            dropped: 2,
            ..Default::default()
        };
        let doc = crate::control::status_json(&stats, &board);
        let (text, ct) = encode(&doc, &board, false).unwrap_or_else(|e| panic!("{e}"));
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        for line in [
            "# TYPE edge_agent_readings_total counter",
            "edge_agent_readings_total{source=\"metrics-test-scanner\",kind=\"exception\"} 1",
            "edge_agent_exceptions_total{source=\"metrics-test-scanner\",reason=\"no_read\"} 1",
            "edge_agent_delivered_total 0",
            "edge_agent_rejected_total 0",
            "edge_agent_dropped_total 2",
            "edge_agent_backlog_events 7",
            "edge_agent_upstream_up 0",
            "edge_agent_source_up{source=\"metrics-test-scanner\"} 1",
            "edge_agent_config_version 0",
            "# TYPE edge_agent_commit_duration_seconds histogram",
            "edge_agent_commit_duration_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        assert!(
            text.contains("edge_agent_oldest_pending_seconds "),
            "{text}"
        );
        let (om, ct) = encode(&doc, &board, true).unwrap_or_else(|e| panic!("{e}"));
        assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
        assert!(om.ends_with("# EOF\n"), "{om}");
    }
}
