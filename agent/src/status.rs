//! What the agent knows about its own health, shared by every stage and read by the control
//! socket, the retained status topic and sd_notify.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use edge_protocol::event::{Exception, ExceptionReason, Kind};
use edge_protocol::Body;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
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
    /// Events central refused since start (an HTTP upstream's 4xx, or larger than the MQTT
    /// broker's Maximum Packet Size): set aside.
    pub rejected: u64,
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
    /// Since when upstream has not been connected (ms since the epoch); 0: connected.
    upstream_down_since: AtomicU64,
    /// The local HTTP server (`control.http`); None: turned off.
    http: Mutex<Option<HttpStatus>>,
    /// How long each buffer commit took (the writer times them), for `/metrics`.
    commits: Histogram,
}

/// The local HTTP server's state, in the status document as `http`.
#[derive(Debug, Clone, Serialize)]
pub struct HttpStatus {
    pub address: String,
    pub listening: bool,
    /// Why it is not listening (the bind error, with what to do), while it retries.
    pub error: Option<String>,
}

impl Default for StatusBoard {
    fn default() -> Self {
        StatusBoard {
            sources: Mutex::new(BTreeMap::new()),
            upstream: Mutex::new(UpstreamStatus {
                connected: false,
                detail: "not connected yet".into(),
                delivered: 0,
                rejected: 0,
            }),
            storage_error: Mutex::new(None),
            delivered: AtomicU64::new(0),
            upstream_beat: AtomicU64::new(crate::time::now_ms()),
            samples: Mutex::new(std::collections::VecDeque::new()),
            changes: tokio::sync::watch::channel(0).0,
            config_version: AtomicU64::new(0),
            upstream_down_since: AtomicU64::new(crate::time::now_ms()),
            http: Mutex::new(None),
            // 0.5 ms to about 8 s: an fsync'd commit on flash takes milliseconds, a stalling
            // disk seconds.
            commits: Histogram::new(exponential_buckets(0.0005, 2.0, 15)),
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
        if connected {
            self.upstream_down_since.store(0, Ordering::Relaxed);
        } else {
            let _ = self.upstream_down_since.compare_exchange(
                0,
                crate::time::now_ms().max(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// How long upstream has been without a connection (since start, if it never had one);
    /// None while connected.
    pub fn upstream_down_for(&self) -> Option<Duration> {
        let since = self.upstream_down_since.load(Ordering::Relaxed);
        (since > 0).then(|| Duration::from_millis(crate::time::now_ms().saturating_sub(since)))
    }

    /// The writer's hook: one commit (successful or not) took `took`.
    pub fn commit_took(&self, took: Duration) {
        self.commits.observe(took.as_secs_f64());
    }

    /// The commit durations, for `/metrics` (a handle on the same figures).
    pub fn commit_histogram(&self) -> Histogram {
        self.commits.clone()
    }

    /// The local HTTP server's state (None: turned off).
    pub fn set_http(&self, s: Option<HttpStatus>) {
        *lock(&self.http) = s;
        self.changes.send_modify(|n| *n += 1);
    }

    pub fn http(&self) -> Option<HttpStatus> {
        lock(&self.http).clone()
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

    /// Central refused an event (it is set aside).
    pub fn add_rejected(&self) {
        lock(&self.upstream).rejected += 1;
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

/// What the normalizers counted, process-wide: a normalizer is built by its source without a
/// handle on the board, so it finds its counters here, once, when it is built.
pub fn tally() -> &'static Tally {
    static TALLY: OnceLock<Tally> = OnceLock::new();
    TALLY.get_or_init(Tally::default)
}

/// The last exceptions kept for the status page, at most.
pub const RECENT_EXCEPTIONS: usize = 20;
/// An exception's raw bytes kept for the status page, at most.
pub const RECENT_RAW: usize = 256;

/// Readings and exceptions per source since start, and the last exceptions.
#[derive(Default)]
pub struct Tally {
    sources: Mutex<BTreeMap<Arc<str>, Arc<SourceTally>>>,
    recent: Mutex<VecDeque<RecentException>>,
}

/// One source's counters: a fixed array of atomics, so that counting a reading is one relaxed
/// add, without a lock or an allocation.
#[derive(Default)]
pub struct SourceTally {
    kinds: [AtomicU64; Kind::ALL.len()],
    reasons: [AtomicU64; REASONS.len()],
}

/// Every exception reason, in the order of its counter.
const REASONS: [ExceptionReason; 8] = [
    ExceptionReason::NoRead,
    ExceptionReason::InvalidBarcode,
    ExceptionReason::UnstableWeight,
    ExceptionReason::Overload,
    ExceptionReason::Underload,
    ExceptionReason::ScaleError,
    ExceptionReason::Undecodable,
    ExceptionReason::Dropped,
];

/// An exception as the status page shows it.
#[derive(Debug, Clone)]
pub struct RecentException {
    pub at_ms: u64,
    pub source: Arc<str>,
    pub reason: ExceptionReason,
    pub detail: String,
    /// The first [`RECENT_RAW`] bytes of what the device sent.
    pub raw: Vec<u8>,
    /// How many bytes it sent.
    pub raw_len: usize,
}

impl Tally {
    /// The counters of source `id` (the same ones across a pushed configuration).
    pub fn source(&self, id: &str) -> Arc<SourceTally> {
        lock(&self.sources).entry(id.into()).or_default().clone()
    }

    pub fn sources(&self) -> Vec<(Arc<str>, Arc<SourceTally>)> {
        lock(&self.sources)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Keeps an exception for the status page. Once the ring is full, the oldest entry's
    /// buffers are reused: no allocation in the steady state.
    pub fn record_exception(&self, source: &Arc<str>, e: &Exception, raw: &[u8], at_ms: u64) {
        let mut ring = lock(&self.recent);
        let mut slot = if ring.len() >= RECENT_EXCEPTIONS {
            ring.pop_front()
        } else {
            None
        }
        .unwrap_or_else(|| RecentException {
            at_ms,
            source: source.clone(),
            reason: e.reason,
            detail: String::new(),
            raw: Vec::with_capacity(RECENT_RAW),
            raw_len: 0,
        });
        slot.at_ms = at_ms;
        if !Arc::ptr_eq(&slot.source, source) {
            slot.source = source.clone();
        }
        slot.reason = e.reason;
        slot.detail.clear();
        slot.detail.push_str(&e.detail);
        slot.raw.clear();
        slot.raw
            .extend_from_slice(&raw[..raw.len().min(RECENT_RAW)]);
        slot.raw_len = raw.len();
        ring.push_back(slot);
    }

    /// The last exceptions, newest first.
    pub fn recent_exceptions(&self) -> Vec<RecentException> {
        lock(&self.recent).iter().rev().cloned().collect()
    }
}

impl SourceTally {
    /// One event made from this source's readings.
    pub fn count(&self, body: &Body) {
        if let Some(c) = self.kinds.get(body.kind() as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let Body::Exception(e) = body {
            if let Some(i) = REASONS.iter().position(|r| *r == e.reason) {
                self.reasons[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Events per kind since start.
    pub fn kinds(&self) -> impl Iterator<Item = (Kind, u64)> + '_ {
        Kind::ALL
            .into_iter()
            .filter_map(|k| Some((k, self.kinds.get(k as usize)?.load(Ordering::Relaxed))))
    }

    /// Exceptions per reason since start.
    pub fn reasons(&self) -> impl Iterator<Item = (ExceptionReason, u64)> + '_ {
        REASONS
            .iter()
            .zip(&self.reasons)
            .map(|(r, c)| (*r, c.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exception(reason: ExceptionReason, detail: &str) -> Exception {
        Exception::new(reason, detail)
    }

    #[test]
    fn counts_are_kept_per_source_kind_and_reason() {
        let t = Tally::default();
        let a = t.source("scanner-a");
        a.count(&Body::exception(ExceptionReason::NoRead, "no read"));
        a.count(&Body::exception(ExceptionReason::NoRead, "no read"));
        a.count(&Body::exception(ExceptionReason::Overload, "over"));
        assert!(Arc::ptr_eq(&a, &t.source("scanner-a")));
        let kinds: Vec<_> = a.kinds().filter(|(_, n)| *n > 0).collect();
        assert_eq!(kinds, [(Kind::Exception, 3)]);
        let reasons: Vec<_> = a.reasons().filter(|(_, n)| *n > 0).collect();
        assert_eq!(
            reasons,
            [(ExceptionReason::NoRead, 2), (ExceptionReason::Overload, 1)]
        );
        assert_eq!(
            t.source("scanner-b").kinds().map(|(_, n)| n).sum::<u64>(),
            0
        );
    }

    #[test]
    fn every_exception_reason_has_its_counter() {
        // An exhaustive match: a new reason fails to compile here until it is in REASONS.
        for r in REASONS {
            match r {
                ExceptionReason::NoRead
                | ExceptionReason::InvalidBarcode
                | ExceptionReason::UnstableWeight
                | ExceptionReason::Overload
                | ExceptionReason::Underload
                | ExceptionReason::ScaleError
                | ExceptionReason::Undecodable
                | ExceptionReason::Dropped => {}
            }
        }
        let unique: std::collections::HashSet<_> = REASONS.iter().collect();
        assert_eq!(unique.len(), REASONS.len());
    }

    #[test]
    fn the_ring_keeps_the_last_exceptions_newest_first_with_their_raw_bytes_capped() {
        let t = Tally::default();
        let src: Arc<str> = "scale-1".into();
        for i in 0..RECENT_EXCEPTIONS + 5 {
            let raw = vec![b'x'; if i == 0 { 10 } else { RECENT_RAW + 100 }];
            t.record_exception(
                &src,
                &exception(ExceptionReason::ScaleError, &format!("fault {i}")),
                &raw,
                i as u64,
            );
        }
        let recent = t.recent_exceptions();
        assert_eq!(recent.len(), RECENT_EXCEPTIONS);
        assert_eq!(recent[0].detail, format!("fault {}", RECENT_EXCEPTIONS + 4));
        assert_eq!(recent[RECENT_EXCEPTIONS - 1].detail, "fault 5");
        assert_eq!(recent[0].raw.len(), RECENT_RAW);
        assert_eq!(recent[0].raw_len, RECENT_RAW + 100);
    }

    #[test]
    fn upstream_down_time_runs_from_the_first_disconnection_and_stops_at_connection() {
        let b = StatusBoard::default();
        assert!(
            b.upstream_down_for().is_some(),
            "not connected yet counts as down"
        );
        b.set_upstream(true, "connected");
        assert_eq!(b.upstream_down_for(), None);
        b.set_upstream(false, "refused");
        let first = b.upstream_down_for();
        b.set_upstream(false, "refused again");
        assert!(b.upstream_down_for() >= first);
        b.set_upstream(true, "connected");
        assert_eq!(b.upstream_down_for(), None);
    }
}
