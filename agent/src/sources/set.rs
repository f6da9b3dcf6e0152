//! The running sources: a pushed configuration switches them without a restart, touching only
//! those that are new, changed or gone (an unchanged serial port stays open, an unchanged MQTT
//! session stays connected); at the stop they go first.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{build, ids, SourceContext};
use crate::buffer::WriterHandle;
use crate::config::Config;
use crate::normalize::SharedCorrelator;
use crate::shutdown::{Deadline, Joined, Shutdown, Task};
use crate::status::StatusBoard;

/// Sources replaced by a pushed configuration get this long to stop (the agent goes on
/// running); one that does not is aborted, so that its successor does not share its port or
/// client id.
const SWITCH_DEADLINE: Duration = Duration::from_secs(3);

/// One running source.
struct Running {
    stop: CancellationToken,
    task: Task<()>,
    /// Its configuration and its station's: a switch restarts it only if this changes.
    fingerprint: serde_json::Value,
}

/// The running sources, by id.
#[derive(Default)]
pub struct SourceSet {
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
    /// Makes `config`'s sources the running ones: stops those that are gone or changed (each
    /// commits and acknowledges what it read first), starts those not running, and leaves the
    /// others alone (a serial port that stays open loses nothing). Returns the ids started.
    pub async fn switch(
        &mut self,
        config: Arc<Config>,
        writer: &WriterHandle,
        status: &Arc<StatusBoard>,
        shutdown: &Shutdown,
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
        for mut late in stop_all(stopping, &Deadline::after(SWITCH_DEADLINE)).await {
            // Its successor must not share its port or client id with it.
            tracing::warn!(
                "{} did not stop within {SWITCH_DEADLINE:?}; aborted",
                late.name()
            );
            late.abort();
            let _ = late.join_by(&Deadline::after(SWITCH_DEADLINE)).await;
        }
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
            let stop = shutdown.token().child_token();
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
                    task: shutdown.spawn(format!("source {id}"), task),
                    fingerprint,
                },
            );
            started.push(id);
        }
        started
    }

    /// Stops every source; returns those still running at `deadline`.
    pub async fn stop(self, deadline: &Deadline) -> Vec<Task<()>> {
        stop_all(self.running.into_values().collect(), deadline).await
    }
}

/// Stops sources and waits for each until `deadline`; returns those still running.
async fn stop_all(sources: Vec<Running>, deadline: &Deadline) -> Vec<Task<()>> {
    for s in &sources {
        s.stop.cancel();
    }
    let mut late = Vec::new();
    for mut s in sources {
        if let Joined::Running = s.task.join_by(deadline).await {
            late.push(s.task);
        }
    }
    late
}
