//! What the agent knows about its own health, shared by every stage and read by the control
//! socket, the retained status topic and sd_notify.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// A source's state as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceState {
    Open,
    Retrying,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    pub state: SourceState,
    /// Why it is retrying (with what to do), or what it is connected to.
    pub detail: String,
    /// When its last reading arrived, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_reading_at: Option<String>,
    #[serde(skip)]
    pub last_reading_ms: Option<u64>,
    pub readings: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpstreamStatus {
    pub connected: bool,
    pub detail: String,
    /// Events acknowledged by upstream since start.
    pub delivered: u64,
}

/// Shared health of all stages.
pub struct StatusBoard {
    sources: Mutex<BTreeMap<String, SourceStatus>>,
    upstream: Mutex<UpstreamStatus>,
    storage_error: Mutex<Option<String>>,
    delivered: AtomicU64,
    /// When the upstream task last went round its loop (ms since the epoch).
    upstream_beat: AtomicU64,
    /// (ms, delivered) once a second, for the drain rate.
    samples: Mutex<std::collections::VecDeque<(u64, u64)>>,
    /// Bumped on every change of a source's state (the status topic republishes then).
    changes: tokio::sync::watch::Sender<u64>,
    /// The version of the pushed configuration in effect; 0: the file's.
    config_version: AtomicU64,
}

impl Default for StatusBoard {
    fn default() -> Self {
        StatusBoard {
            sources: Mutex::new(BTreeMap::new()),
            upstream: Mutex::new(UpstreamStatus {
                connected: false,
                detail: "not connected yet".into(),
                delivered: 0,
            }),
            storage_error: Mutex::new(None),
            delivered: AtomicU64::new(0),
            upstream_beat: AtomicU64::new(crate::time::now_ms()),
            samples: Mutex::new(std::collections::VecDeque::new()),
            changes: tokio::sync::watch::channel(0).0,
            config_version: AtomicU64::new(0),
        }
    }
}

/// The drain rate is measured over this many one-second samples.
const RATE_WINDOW_SAMPLES: usize = 30;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the maps inconsistent: recover the data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StatusBoard {
    /// Marks a source as retrying and logs why, once per distinct reason (a port that stays
    /// missing is logged once, not at every retry).
    pub fn source_retrying(&self, id: &str, why: String) {
        if self.set_source(id, SourceState::Retrying, why.clone()) {
            tracing::warn!(source = %id, "{why}; retrying");
        }
    }

    /// Records a source's state; signals (and returns true) only when it changed.
    pub fn set_source(&self, id: &str, state: SourceState, detail: impl Into<String>) -> bool {
        let detail = detail.into();
        let mut map = lock(&self.sources);
        let entry = map.entry(id.to_string()).or_insert_with(|| SourceStatus {
            state,
            detail: String::new(),
            last_reading_at: None,
            last_reading_ms: None,
            readings: 0,
        });
        let changed = entry.state != state || entry.detail != detail;
        entry.state = state;
        entry.detail = detail;
        drop(map);
        if changed {
            self.changes.send_modify(|n| *n += 1);
        }
        changed
    }

    /// The sources are now `keep` (a pushed configuration): forgets the others, and shows
    /// `starting` ones as starting until they report.
    pub fn reset_sources<'a>(
        &self,
        keep: impl IntoIterator<Item = &'a str>,
        starting: impl IntoIterator<Item = &'a str>,
    ) {
        let keep: std::collections::BTreeSet<&str> = keep.into_iter().collect();
        let mut map = lock(&self.sources);
        map.retain(|id, _| keep.contains(id.as_str()));
        for id in starting {
            map.insert(
                id.to_string(),
                SourceStatus {
                    state: SourceState::Retrying,
                    detail: "starting".into(),
                    last_reading_at: None,
                    last_reading_ms: None,
                    readings: 0,
                },
            );
        }
        drop(map);
        self.changes.send_modify(|n| *n += 1);
    }

    /// The pushed configuration in effect (None: the file's); status shows it.
    pub fn set_config_version(&self, v: Option<u64>) {
        self.config_version.store(v.unwrap_or(0), Ordering::Relaxed);
        self.changes.send_modify(|n| *n += 1);
    }

    pub fn config_version(&self) -> Option<u64> {
        Some(self.config_version.load(Ordering::Relaxed)).filter(|v| *v > 0)
    }

    pub fn source_reading(&self, id: &str, at_ms: u64) {
        if let Some(s) = lock(&self.sources).get_mut(id) {
            s.readings += 1;
            s.last_reading_ms = Some(at_ms);
        }
    }

    pub fn sources(&self) -> BTreeMap<String, SourceStatus> {
        let mut map = lock(&self.sources).clone();
        for s in map.values_mut() {
            s.last_reading_at = s.last_reading_ms.map(crate::time::format_rfc3339_ms);
        }
        map
    }

    pub fn set_upstream(&self, connected: bool, detail: impl Into<String>) {
        let mut u = lock(&self.upstream);
        u.connected = connected;
        u.detail = detail.into();
    }

    /// The upstream task is alive and going round its loop; also samples the delivered count
    /// (at most once a second) for the drain rate.
    pub fn upstream_beat(&self) {
        let now = crate::time::now_ms();
        self.upstream_beat.store(now, Ordering::Relaxed);
        let delivered = self.delivered.load(Ordering::Relaxed);
        let mut samples = lock(&self.samples);
        if samples.back().is_none_or(|(t, _)| now >= t + 1000) {
            samples.push_back((now, delivered));
            while samples.len() > RATE_WINDOW_SAMPLES {
                samples.pop_front();
            }
        }
    }

    /// Events acknowledged upstream per second over the last half minute.
    pub fn drain_rate(&self) -> f64 {
        let samples = lock(&self.samples);
        let now = crate::time::now_ms();
        let delivered = self.delivered.load(Ordering::Relaxed);
        match samples.front() {
            Some((t, d)) if now > *t + 500 => (delivered - d) as f64 * 1000.0 / (now - t) as f64,
            _ => 0.0,
        }
    }

    pub fn upstream_beat_age(&self) -> std::time::Duration {
        let last = self.upstream_beat.load(Ordering::Relaxed);
        std::time::Duration::from_millis(crate::time::now_ms().saturating_sub(last))
    }

    pub fn add_delivered(&self, n: u64) {
        self.delivered.fetch_add(n, Ordering::Relaxed);
    }

    pub fn upstream(&self) -> UpstreamStatus {
        let mut u = lock(&self.upstream).clone();
        u.delivered = self.delivered.load(Ordering::Relaxed);
        u
    }

    pub fn set_storage_error(&self, e: Option<String>) {
        *lock(&self.storage_error) = e;
        self.changes.send_modify(|n| *n += 1);
    }

    pub fn storage_error(&self) -> Option<String> {
        lock(&self.storage_error).clone()
    }

    /// Resolves on the next change of a source's state.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
