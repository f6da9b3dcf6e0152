//! The HTTP upstream (`upstream.url = "https://…"`): buffered events POSTed to an endpoint in
//! batches, deleted from the backlog only on a 2xx or 409.
//!
//! One request at a time, oldest first (high-priority events before normal ones, each in seq
//! order), so the order of the backlog is the order of arrival. A batch is read from the
//! buffer, encoded once and kept as it is until the endpoint decides about it:
//! - delivered (2xx, 409): acknowledged to the buffer, the next batch is read;
//! - retried (408, 425, 429, 5xx, no answer, and answers about the endpoint or credentials,
//!   see [`answer::judge`]): the same bytes with the same `Idempotency-Key` are sent again
//!   after the backoff, and never before the endpoint's `Retry-After` has passed;
//! - refused (any other 4xx): split in halves, left first, until the refused event is alone;
//!   that event is set aside (kept in the buffer file, listed by `edge-agent inspect`, counted
//!   as rejected) and the others go on in order.
//!
//! A kill -9 at any point loses nothing: acknowledgement comes only after the answer, and the
//! next run reads the same oldest events into the same batch, with the same key.
//!
//! Replays (control socket, `cmd/replay` on `control.broker`) are sent after the backlog, in
//! batches marked `"replayed": true` whose key differs from the original batch's.
//!
//! A batch is at most `upstream.batch` events and at most [`BATCH_BYTES`] of them as stored
//! (plus the event that reaches it; an event larger than that goes alone), so that large
//! frames (`max_frame` up to 1 MiB) cannot make one request, and the memory that holds it,
//! hundreds of MiB. Both bounds depend only on what is stored, so a restart cuts the same
//! batch again.

pub mod answer;
mod client;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::rate::TokenBucket;
use super::{encode, Limits, ReplayJob, DRAIN_DEADLINE, HEARTBEAT};
use crate::backoff::Backoff;
use crate::buffer::{PendingRow, ReadLimit, Store, WriterHandle};
use crate::config::{parse_http_url, Config, Format, Priority};
use crate::control::replay::ReplayRequest;
use crate::status::StatusBoard;
use answer::Verdict;
use client::{Client, Post};

/// The HTTP upstream stage.
pub struct HttpUpstream {
    pub config: Arc<Config>,
    pub store: Store,
    pub writer: WriterHandle,
    pub status: Arc<StatusBoard>,
    pub shutdown: CancellationToken,
    /// Replay requests (control socket, `cmd/replay`): delivered events sent again.
    pub replays: mpsc::Receiver<ReplayRequest>,
    /// `replay_rate`, which a pushed configuration may change.
    pub limits: watch::Receiver<Limits>,
}

/// The stored CBOR of a batch's events, at most, plus the event that reaches it.
pub const BATCH_BYTES: usize = super::reader::CHUNK_BYTES;

/// One event of a batch, encoded.
struct Item {
    seq: u64,
    id: String,
    payload: Vec<u8>,
    /// Its CBOR's length as stored (what `BATCH_BYTES` counts).
    stored: usize,
}

/// Events sent in one request, until the endpoint decides about them.
struct Batch {
    items: Vec<Item>,
    /// The pending table it was read from; None: events sent again by a replay (delivered
    /// already: nothing to acknowledge or set aside).
    priority: Option<Priority>,
    /// Events pending after it may join it before the next attempt, up to `upstream.batch`:
    /// a batch as read (not a half of a refused one) that no endpoint can have taken yet
    /// (never sent, or refused without being read: no connection, 408, 425, 429, 503, or an
    /// answer about credentials or the path). Otherwise it is sent again exactly as it was,
    /// with the same Idempotency-Key. So after an outage the first batch is the oldest
    /// `upstream.batch` events, whatever was pending when the outage began, and a restart
    /// reads the same batch again.
    may_grow: bool,
    /// Events of it the rate (`replay_rate`) has allowed already.
    paid: usize,
}

impl Batch {
    fn replay(&self) -> bool {
        self.priority.is_none()
    }

    /// What a batch of `upstream.batch` events may hold.
    fn limit(batch: usize) -> ReadLimit {
        ReadLimit {
            rows: batch,
            bytes: BATCH_BYTES,
        }
    }

    /// What may still join it.
    fn room(&self, batch: usize) -> ReadLimit {
        Batch::limit(batch).after(self.items.len(), self.items.iter().map(|i| i.stored).sum())
    }

    fn post(&self, content_type: &'static str) -> Post {
        let mut body = Vec::with_capacity(self.items.iter().map(|i| i.payload.len() + 1).sum());
        encode::json_array(self.items.iter().map(|i| &i.payload), &mut body);
        Post {
            body: Bytes::from(body),
            content_type,
            idempotency_key: answer::idempotency_key(
                self.items.iter().map(|i| i.id.as_str()),
                self.replay(),
            ),
        }
    }

    /// The halves of a refused batch, left first.
    fn split(mut self) -> (Batch, Batch) {
        let right = self.items.split_off(self.items.len() / 2);
        self.may_grow = false;
        self.paid = self.items.len();
        let right = Batch {
            paid: right.len(),
            items: right,
            priority: self.priority,
            may_grow: false,
        };
        (self, right)
    }
}

/// Where reading the backlog stands on this run: the highest seq read of each priority.
#[derive(Default)]
struct Cursors {
    normal: u64,
    high: u64,
}

impl HttpUpstream {
    fn url(&self) -> &str {
        &self.config.upstream.url
    }

    fn content_type(&self) -> &'static str {
        match self.config.upstream.format() {
            Format::CloudEvents => "application/cloudevents-batch+json",
            _ => "application/json",
        }
    }

    /// Runs until shutdown.
    pub async fn run(mut self) {
        let addr = match parse_http_url(self.url()) {
            Ok(addr) => addr,
            Err(e) => {
                // Validation refuses such a URL; say so and keep the agent's other stages up.
                let why = format!("upstream.url: {e}");
                tracing::error!("{why}");
                self.status.set_upstream(false, why);
                self.idle_until_shutdown().await;
                return;
            }
        };
        let mut client = Client::new(self.config.clone(), addr);
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut bucket = TokenBucket::new(self.limits.borrow_and_update().replay_rate);
        let mut jobs: VecDeque<ReplayJob> = VecDeque::new();
        let mut queue: VecDeque<Batch> = VecDeque::new();
        let mut cursors = Cursors::default();
        let mut committed = self.writer.committed();
        let mut beat = tokio::time::interval(HEARTBEAT);
        // With nothing to send, whether the endpoint can be reached is looked at this often
        // (at once first), so that status and /healthz tell the truth on a quiet night too.
        let mut probe = tokio::time::interval(self.config.upstream.keep_alive.0);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut up: Option<bool> = None;
        let mut last_why = String::new();
        loop {
            self.status.upstream_beat();
            if self.shutdown.is_cancelled() {
                return;
            }
            if self.limits.has_changed().unwrap_or(false) {
                bucket.set_rate(self.limits.borrow_and_update().replay_rate);
            }
            if queue.is_empty() {
                match self
                    .next_batch(&mut cursors, &mut committed, &mut jobs)
                    .await
                {
                    Ok(Some(batch)) => queue.push_back(batch),
                    Ok(None) => {
                        tokio::select! {
                            // Cancel-safe: a cancelled token stays cancelled.
                            _ = self.shutdown.cancelled() => return,
                            // Cancel-safe: watch::Receiver::changed only marks the value seen on return.
                            r = committed.changed() => if r.is_err() { return },
                            // Cancel-safe: mpsc::Receiver::recv loses nothing when dropped.
                            Some(req) = self.replays.recv() => jobs.push_back(ReplayJob::start(req)),
                            // Cancel-safe: interval ticks are not lost.
                            _ = beat.tick() => {}
                            // Cancel-safe: an interval tick that loses the race is taken next time.
                            _ = probe.tick() => {
                                let reached = tokio::select! {
                                    r = client.reach() => r,
                                    _ = self.shutdown.cancelled() => return,
                                };
                                match reached {
                                    Ok(()) if up != Some(true) => {
                                        tracing::info!("upstream {}: reachable", self.url());
                                        self.status.set_upstream(true, format!("connected to {}, nothing to send", self.url()));
                                        up = Some(true);
                                        last_why.clear();
                                    }
                                    Ok(()) => {}
                                    Err(why) => {
                                        let why = format!("upstream {}: {why}", self.url());
                                        if why != last_why {
                                            tracing::warn!("{why}; looking again in {}", humantime::format_duration(self.config.upstream.keep_alive.0));
                                            last_why = why.clone();
                                        }
                                        self.status.set_upstream(false, why);
                                        up = Some(false);
                                    }
                                }
                            }
                        }
                    }
                    Err(why) => {
                        tracing::warn!("upstream {}: {why}", self.url());
                        self.pause(Duration::from_secs(1), &mut beat).await;
                    }
                }
                continue;
            }
            let Some(batch) = queue.front_mut() else {
                continue;
            };
            if let Err(why) = self.top_up(batch, &mut cursors).await {
                tracing::warn!("upstream {}: {why}", self.url());
            }
            if !self.pay(batch, &mut bucket, &mut beat).await {
                return;
            }
            let post = batch.post(self.content_type());
            let send = client.send(&post);
            tokio::pin!(send);
            let sent = tokio::select! {
                r = &mut send => r,
                // At shutdown the answer to the request in flight is still awaited (bounded):
                // dropping it would only mean sending it again after the restart.
                _ = self.shutdown.cancelled() => {
                    match tokio::time::timeout(DRAIN_DEADLINE, &mut send).await {
                        Ok(r) => r,
                        Err(_) => return,
                    }
                }
            };
            // Whether the endpoint can have taken the batch (see `Batch::may_grow`).
            let (verdict, untaken) = match sent {
                Ok(a) => (
                    answer::judge(
                        a.status,
                        a.retry_after.as_deref(),
                        &a.body,
                        SystemTime::now(),
                    ),
                    !matches!(a.status, 500..=502 | 504..=599),
                ),
                Err(u) => (
                    Verdict::Retry {
                        why: u.why,
                        after: None,
                    },
                    !u.may_have_arrived,
                ),
            };
            match verdict {
                Verdict::Delivered => {
                    let Some(batch) = queue.pop_front() else {
                        continue;
                    };
                    backoff.up();
                    if up != Some(true) {
                        tracing::info!("upstream {}: delivering", self.url());
                        self.status
                            .set_upstream(true, format!("delivering to {}", self.url()));
                        up = Some(true);
                        last_why.clear();
                    }
                    if !batch.replay() {
                        self.status.add_delivered(batch.items.len() as u64);
                        let seqs = batch.items.iter().map(|i| i.seq).collect();
                        if self.writer.ack(seqs).await.is_err() {
                            return;
                        }
                    }
                }
                Verdict::Retry { why, after } => {
                    if let Some(batch) = queue.front_mut() {
                        batch.may_grow &= untaken;
                    }
                    let delay = backoff.next_delay().max(after.unwrap_or_default());
                    let why = match after {
                        Some(a) => format!(
                            "upstream {}: {why}; retrying in {} (Retry-After {}s)",
                            self.url(),
                            humantime::format_duration(round_ms(delay)),
                            a.as_secs()
                        ),
                        None => format!(
                            "upstream {}: {why}; retrying in {}",
                            self.url(),
                            humantime::format_duration(round_ms(delay))
                        ),
                    };
                    // The first words name the failure; the wait changes every time.
                    let gist = why
                        .split("; retrying")
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    if gist != last_why {
                        tracing::warn!("{why}; events stay buffered");
                        last_why = gist;
                    }
                    self.status.set_upstream(false, why);
                    up = Some(false);
                    if self.shutdown.is_cancelled() {
                        return;
                    }
                    self.pause(delay, &mut beat).await;
                }
                Verdict::Refused { why } => {
                    let Some(batch) = queue.pop_front() else {
                        continue;
                    };
                    if batch.items.len() > 1 {
                        tracing::info!(
                            "upstream {}: {why}, for a batch of {}; sending it in halves to find the refused event",
                            self.url(),
                            batch.items.len()
                        );
                        let (left, right) = batch.split();
                        queue.push_front(right);
                        queue.push_front(left);
                        continue;
                    }
                    let Some(item) = batch.items.first() else {
                        continue;
                    };
                    let why = format!("refused by {}: {why}", self.url());
                    if batch.replay() {
                        tracing::warn!(
                            "replay: event {} (buffer row {}) {why}; skipped",
                            item.id,
                            item.seq
                        );
                    } else {
                        self.status.add_rejected();
                        if self.writer.refused(item.seq, why).is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// The next batch: pending high-priority events, else normal ones, else the next part of
    /// the oldest replay; None when there is nothing to send.
    async fn next_batch(
        &self,
        cursors: &mut Cursors,
        committed: &mut watch::Receiver<u64>,
        jobs: &mut VecDeque<ReplayJob>,
    ) -> Result<Option<Batch>, String> {
        let allowed = self.config.upstream.batch_size();
        // Mark the committed seq seen before reading: a commit after this read wakes us. (The
        // writer moves the high-priority mark before this one.)
        committed.borrow_and_update();
        'read: loop {
            for priority in [Priority::High, Priority::Normal] {
                let cursor = match priority {
                    Priority::High => &mut cursors.high,
                    Priority::Normal => &mut cursors.normal,
                };
                let rows = self.read(priority, *cursor, Batch::limit(allowed)).await?;
                let Some(last) = rows.last() else { continue };
                *cursor = last.seq;
                let items = self.items(rows, false)?;
                if items.is_empty() {
                    // Every row read was unreadable (set aside): read on.
                    continue 'read;
                }
                return Ok(Some(Batch {
                    items,
                    priority: Some(priority),
                    may_grow: true,
                    paid: 0,
                }));
            }
            break;
        }
        let Some(job) = jobs.front_mut() else {
            return Ok(None);
        };
        let store = self.store.clone();
        let (from, since, until) = (job.next_seq, job.since_ms, job.until_ms);
        let (rows, next) = tokio::task::spawn_blocking(move || {
            store.delivered_in_window(from, since, until, Batch::limit(allowed), 50_000)
        })
        .await
        .map_err(|e| format!("reading the buffer: {e}"))?
        .map_err(|e| e.to_string())?;
        match next {
            Some(seq) => job.next_seq = seq,
            None => {
                jobs.pop_front();
                tracing::info!("replay finished");
            }
        }
        let items = self.items(rows, true)?;
        Ok((!items.is_empty()).then_some(Batch {
            items,
            priority: None,
            may_grow: false,
            paid: 0,
        }))
    }

    /// Adds to a batch that may grow the events pending after it, up to `upstream.batch` and
    /// `BATCH_BYTES`: it ends where one read of them all would have ended.
    async fn top_up(&self, batch: &mut Batch, cursors: &mut Cursors) -> Result<(), String> {
        let Some(priority) = batch.priority.filter(|_| batch.may_grow) else {
            return Ok(());
        };
        let room = batch.room(self.config.upstream.batch_size());
        if !room.takes_more(0, 0) {
            return Ok(());
        }
        // Nothing else was read meanwhile: the cursor is where this batch ends.
        let cursor = match priority {
            Priority::High => &mut cursors.high,
            Priority::Normal => &mut cursors.normal,
        };
        let rows = self.read(priority, *cursor, room).await?;
        if let Some(last) = rows.last() {
            *cursor = last.seq;
        }
        batch.items.extend(self.items(rows, false)?);
        Ok(())
    }

    /// Waits until the rate (`replay_rate`) allows every event of the batch not yet allowed;
    /// false at shutdown.
    async fn pay(
        &self,
        batch: &mut Batch,
        bucket: &mut TokenBucket,
        beat: &mut tokio::time::Interval,
    ) -> bool {
        loop {
            batch.paid += bucket.take(batch.items.len().saturating_sub(batch.paid));
            if batch.paid >= batch.items.len() {
                return true;
            }
            let Some(at) = bucket.wait() else { continue };
            self.status.upstream_beat();
            tokio::select! {
                // Cancel-safe: sleeping holds no state.
                _ = tokio::time::sleep_until(at) => {}
                // Cancel-safe: interval ticks are not lost.
                _ = beat.tick() => {}
                _ = self.shutdown.cancelled() => return false,
            }
        }
    }

    async fn read(
        &self,
        priority: Priority,
        after: u64,
        limit: ReadLimit,
    ) -> Result<Vec<PendingRow>, String> {
        if let Some(rows) = self.writer.take_committed(priority, after, limit) {
            return Ok(rows);
        }
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.pending_in(priority, after, limit)).await {
            Ok(Ok(rows)) => Ok(rows),
            // The buffer is being reopened after a write error (the writer reports it): look
            // again after the next commit.
            Ok(Err(e)) => {
                tracing::debug!("reading the buffer: {e}");
                Ok(Vec::new())
            }
            Err(e) => Err(format!("reading the buffer: {e}")),
        }
    }

    /// Rows encoded in the configured format. A row that cannot be read back is set aside
    /// (one unreadable row must not stop everything stored after it); a replayed one skipped.
    fn items(&self, rows: Vec<PendingRow>, replay: bool) -> Result<Vec<Item>, String> {
        let format = self.config.upstream.format();
        let mut items = Vec::with_capacity(rows.len());
        for mut row in rows {
            let mut env = match row.envelope() {
                Ok(env) => env,
                Err(e) if replay => {
                    tracing::warn!(
                        "replay: buffer row {} cannot be read back ({e}); skipped",
                        row.seq
                    );
                    continue;
                }
                Err(e) => {
                    self.writer
                        .set_aside(row.seq, e.to_string(), &row.cbor)
                        .map_err(|e| e.to_string())?;
                    continue;
                }
            };
            env.replayed = replay;
            items.push(Item {
                seq: row.seq,
                payload: encode::envelope(format, &env),
                id: env.id,
                stored: row.cbor.len(),
            });
        }
        Ok(items)
    }

    /// Waits `delay` (or until shutdown), proving liveness meanwhile.
    async fn pause(&self, delay: Duration, beat: &mut tokio::time::Interval) {
        let until = tokio::time::Instant::now() + delay;
        loop {
            self.status.upstream_beat();
            tokio::select! {
                // Cancel-safe: sleeping holds no state.
                _ = tokio::time::sleep_until(until) => return,
                // Cancel-safe: interval ticks are not lost.
                _ = beat.tick() => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    async fn idle_until_shutdown(&self) {
        let mut beat = tokio::time::interval(HEARTBEAT);
        loop {
            self.status.upstream_beat();
            tokio::select! {
                _ = beat.tick() => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }
}

/// A delay as a person reads it: to the millisecond.
fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}
