//! The single writer: group commit of readings and upstream acknowledgements.

#[cfg(test)]
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_protocol::{Body, Envelope, Role};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::receipts::{Forget, Receipt};
use super::store::{Capacity, CommitOutcome, NewRow, PendingRow, ReadLimit, Settlement, Store};
use super::tail::Tail;
use crate::config::Priority;
use crate::status::StatusBoard;
use crate::time::{format_rfc3339_ms, now_ms};
use crate::upstream::routes::{Event, Routes};

/// Commands queued beyond this make senders wait (back-pressure on the sources).
const QUEUE: usize = 16_384;
/// Bytes of readings (raw bytes plus a fixed charge each) queued or in the group being
/// committed, at most; beyond this senders wait. A reading larger than the whole budget still
/// goes, alone. This bounds the writer's memory whatever `max_frame` is, and so what a crash
/// during a disk stall can lose of serial readings (see the design note in `mod.rs`).
pub const QUEUE_BYTES: usize = 4 << 20;
/// What a reading costs in the budget besides its raw bytes (envelope, body, bookkeeping).
const READING_CHARGE: usize = 512;
/// How often delivered events past `retain_delivered` are pruned, and how many per pass.
const PRUNE_EVERY: Duration = Duration::from_secs(10);
const PRUNE_LIMIT: usize = 10_000;

/// A decoded reading on its way into the buffer.
#[derive(Debug, Clone)]
pub struct Reading {
    pub source: Arc<str>,
    pub station: Option<Arc<str>>,
    pub role: Option<Role>,
    /// When the agent read it, ms since the Unix epoch.
    pub observed_ms: u64,
    pub body: Body,
    pub raw: Vec<u8>,
    /// An MQTT message's receipt, written in the same commit (see `receipts`).
    pub receipt: Option<Receipt>,
}

/// What became of a reading that asked for confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Committed with this seq.
    Committed(u64),
    /// Refused: the buffer is full and `on_full = "reject_new"`. Do not acknowledge it.
    Refused,
}

// Nearly every command is an Append, so boxing it would only add an allocation per reading.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// The permit holds the reading's share of `QUEUE_BYTES` until its commit returned.
    Append(
        Reading,
        Option<oneshot::Sender<Appended>>,
        tokio::sync::OwnedSemaphorePermit,
    ),
    Settle(Settle),
    /// Answered after the commit of its group: proves the writer is committing.
    Ping(oneshot::Sender<()>),
    /// Periodic: closes a drop episode, prunes, commits the agent's own events.
    Tick,
    /// Acknowledgements are waiting in their own channel.
    Wake,
}

/// What upstream learned about pending events.
enum Settle {
    /// Acknowledged by upstream (PUBACK).
    Acked(Vec<u64>),
    /// Cannot be read back: kept in the file, no longer pending, reported to central.
    SetAside { seq: u64, why: String, raw: Vec<u8> },
    /// Refused by central (an HTTP upstream's 4xx for this event alone): kept in the file, no
    /// longer pending; central knows already.
    Refused { seq: u64, why: String },
    /// MQTT receipts no longer needed (the site broker confirmed reading their PUBACKs).
    Forget(Vec<Forget>),
}

/// An unreadable row's bytes carried by its exception, at most.
const SET_ASIDE_RAW: usize = 4096;

/// An acknowledgement-only group waits up to this long for a reading to share its commit, and
/// commits as soon as one comes. (Longer, or spacing every commit out to share fsyncs, let a
/// crash send several times more events upstream again: acknowledged, not yet committed; the
/// kill -9 acceptance test saw 52-110 against 6-16.)
const ACK_LINGER: Duration = Duration::from_millis(2);
/// ... unless it settles this many events already.
const ACK_LINGER_MAX: usize = 4096;

/// How often the writer is ticked.
const TICK: Duration = Duration::from_secs(5);
/// While the buffer keeps dropping, central hears about it at least this often.
const DROP_REPORT_EVERY: Duration = Duration::from_secs(60);

/// A stretch of time during which the full buffer dropped or refused readings.
struct Episode {
    started: Instant,
    last_report: Instant,
    /// Dropped since the last report.
    count: u64,
    /// Dropped in the whole episode.
    total: u64,
    /// Whether the last commit or tick dropped anything.
    active: bool,
}

/// The writer has stopped (shutdown); nothing more can be stored.
#[derive(Debug, thiserror::Error)]
#[error("the buffer writer has stopped")]
pub struct WriterClosed;

/// Sends work to the writer thread. Cloning is cheap.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Command>,
    /// Upstream acknowledgements bypass the queue of readings: a PUBACK must not wait behind
    /// thousands of readings (and be dropped meanwhile as if undelivered).
    acks: mpsc::UnboundedSender<Settle>,
    committed: watch::Receiver<u64>,
    /// The highest committed seq of high priority (see `routes`).
    committed_high: watch::Receiver<u64>,
    /// The routes that decide each stored reading's priority (and upstream's topics): set at
    /// start and by an applied push.
    routes: Arc<watch::Sender<Arc<Routes>>>,
    /// `QUEUE_BYTES`, as permits of one byte.
    bytes: Arc<tokio::sync::Semaphore>,
    liveness: Arc<Liveness>,
    /// For reading what sources need back (MQTT receipts).
    store: Store,
    tail: Arc<Tail>,
}

/// Whether the writer thread is alive while commits fail: the watchdog's view of a stage that
/// is retrying (alive) as against one stuck in a storage call (not).
#[derive(Default)]
pub struct Liveness {
    /// Commits are failing and being retried.
    retrying: std::sync::atomic::AtomicBool,
    /// When the storage call in progress started (ms since the epoch); 0: none.
    in_call_since_ms: std::sync::atomic::AtomicU64,
}

impl Liveness {
    fn enter(&self) {
        self.in_call_since_ms
            .store(now_ms().max(1), std::sync::atomic::Ordering::Relaxed);
    }

    fn leave(&self) {
        self.in_call_since_ms
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }
}

impl WriterHandle {
    /// Takes a reading's share of the queue's byte budget, waiting while the budget is spent.
    async fn charge(&self, r: &Reading) -> Result<tokio::sync::OwnedSemaphorePermit, WriterClosed> {
        let n = (r.raw.len() + READING_CHARGE).min(QUEUE_BYTES) as u32;
        self.bytes
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| WriterClosed)
    }

    /// Queues a reading; returns once it is queued (not yet committed).
    pub async fn append(&self, r: Reading) -> Result<(), WriterClosed> {
        let permit = self.charge(&r).await?;
        self.tx
            .send(Command::Append(r, None, permit))
            .await
            .map_err(|_| WriterClosed)
    }

    /// The writer is retrying failed commits and is not stuck in one storage call for longer
    /// than `max`: alive, though nothing is being stored.
    pub fn retrying_not_stuck(&self, max: Duration) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let since = self.liveness.in_call_since_ms.load(Relaxed);
        // A writer thread that ended (a panic) is not retrying, whatever it last said.
        !self.tx.is_closed()
            && self.liveness.retrying.load(Relaxed)
            && (since == 0 || now_ms().saturating_sub(since) < max.as_millis() as u64)
    }

    /// Queues a reading; the receiver resolves once it is committed.
    pub async fn append_confirmed(
        &self,
        r: Reading,
    ) -> Result<oneshot::Receiver<Appended>, WriterClosed> {
        let (tx, rx) = oneshot::channel();
        let permit = self.charge(&r).await?;
        self.tx
            .send(Command::Append(r, Some(tx), permit))
            .await
            .map_err(|_| WriterClosed)?;
        Ok(rx)
    }

    /// Marks events delivered (upstream PUBACK). Bounded by upstream's in-flight window.
    pub async fn ack(&self, seqs: Vec<u64>) -> Result<(), WriterClosed> {
        self.settle(Settle::Acked(seqs))
    }

    /// Sets a pending event aside because it cannot be read back (`why`, for a person): it is
    /// kept in the buffer file but no longer blocks delivery, counted in status, listed by
    /// `edge-agent inspect`, and central gets an `exception` carrying its first bytes.
    pub fn set_aside(&self, seq: u64, why: String, raw: &[u8]) -> Result<(), WriterClosed> {
        let raw = raw[..raw.len().min(SET_ASIDE_RAW)].to_vec();
        self.settle(Settle::SetAside { seq, why, raw })
    }

    /// Sets a pending event aside because central refused it (`why`: its answer): kept in the
    /// buffer file, no longer blocking delivery, listed by `edge-agent inspect`.
    pub fn refused(&self, seq: u64, why: String) -> Result<(), WriterClosed> {
        self.settle(Settle::Refused { seq, why })
    }

    /// The stored receipts of one MQTT session (read off the async workers).
    pub async fn receipts(
        &self,
        session: &str,
    ) -> Result<super::receipts::Stored, super::StoreError> {
        let (store, session) = (self.store.clone(), session.to_string());
        tokio::task::spawn_blocking(move || store.receipts(&session))
            .await
            .unwrap_or(Err(super::StoreError::Reopening))
    }

    /// Removes MQTT receipts that are no longer needed, in a coming commit.
    pub fn forget(&self, f: Vec<Forget>) -> Result<(), WriterClosed> {
        if f.is_empty() {
            return Ok(());
        }
        self.settle(Settle::Forget(f))
    }

    fn settle(&self, s: Settle) -> Result<(), WriterClosed> {
        self.acks.send(s).map_err(|_| WriterClosed)?;
        // Wake the writer if it is idle; if its queue is full it is busy and drains acks first.
        let _ = self.tx.try_send(Command::Wake);
        Ok(())
    }

    /// Resolves once the writer has committed everything queued before it.
    pub async fn ping(&self) -> Result<(), WriterClosed> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Ping(tx))
            .await
            .map_err(|_| WriterClosed)?;
        rx.await.map_err(|_| WriterClosed)
    }

    /// The highest committed seq; changes after every commit that stored events.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }

    /// The highest committed seq of high priority; changes after every commit that stored
    /// high-priority events.
    pub fn committed_high(&self) -> watch::Receiver<u64> {
        self.committed_high.clone()
    }

    /// Routes readings committed from now on by `routes` (their priority), and tells upstream
    /// (their topics, see [`WriterHandle::routes`]).
    pub fn set_routes(&self, routes: Routes) {
        self.routes.send_replace(Arc::new(routes));
    }

    /// The pending rows of `priority` after seq `after` within `limit` from memory, if the newest
    /// commits hold all of them (`None`: read them from the file). See `tail`.
    pub fn take_committed(
        &self,
        priority: Priority,
        after: u64,
        limit: ReadLimit,
    ) -> Option<Vec<PendingRow>> {
        self.tail.take(priority, after, limit)
    }

    /// The routes in effect, updated by [`WriterHandle::set_routes`].
    pub fn routes(&self) -> watch::Receiver<Arc<Routes>> {
        self.routes.subscribe()
    }
}

/// Starts the writer on a blocking thread. It runs until every `WriterHandle` is dropped and
/// the queue is drained; `cancel` only stops retrying a commit that keeps failing. The join
/// handle yields how many readings were given up that way (0: everything queued was stored).
pub fn spawn_writer(
    store: Store,
    site: Arc<str>,
    retain: Duration,
    capacity: Capacity,
    status: Arc<StatusBoard>,
    cancel: CancellationToken,
) -> Result<(WriterHandle, tokio::task::JoinHandle<u64>), super::StoreError> {
    let next_seq = store.next_seq()?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let (acks_tx, acks_rx) = mpsc::unbounded_channel();
    // The ticker holds only a weak sender, so the writer still stops when every handle is gone.
    let weak = tx.downgrade();
    tokio::spawn(async move {
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + TICK, TICK);
        loop {
            every.tick().await;
            let Some(tx) = weak.upgrade() else { return };
            if tx.send(Command::Tick).await.is_err() {
                return;
            }
        }
    });
    let (committed_tx, committed_rx) = watch::channel(next_seq.saturating_sub(1));
    let (committed_high_tx, committed_high_rx) = watch::channel(next_seq.saturating_sub(1));
    let (routes_tx, routes_rx) = watch::channel(Arc::new(Routes::default()));
    let liveness = Arc::new(Liveness::default());
    let reader = store.clone();
    let tail = Arc::new(Tail::new(next_seq));
    let writer = Writer {
        liveness: liveness.clone(),
        tail: tail.clone(),
        store,
        site,
        next_seq,
        retain,
        capacity,
        status,
        cancel,
        committed: committed_tx,
        committed_high: committed_high_tx,
        routes: routes_rx,
        last_prune: Instant::now(),
        episode: None,
        own: Vec::new(),
        set_aside_asked: Default::default(),
        abandoned: 0,
    };
    let join = tokio::task::spawn_blocking(move || writer.run(rx, acks_rx));
    Ok((
        WriterHandle {
            tx,
            acks: acks_tx,
            committed: committed_rx,
            committed_high: committed_high_rx,
            routes: Arc::new(routes_tx),
            bytes: Arc::new(tokio::sync::Semaphore::new(QUEUE_BYTES)),
            liveness,
            store: reader,
            tail,
        },
        join,
    ))
}

struct Writer {
    liveness: Arc<Liveness>,
    /// The rows of each commit, handed to upstream in memory.
    tail: Arc<Tail>,
    store: Store,
    site: Arc<str>,
    next_seq: u64,
    retain: Duration,
    capacity: Capacity,
    status: Arc<StatusBoard>,
    cancel: CancellationToken,
    committed: watch::Sender<u64>,
    committed_high: watch::Sender<u64>,
    routes: watch::Receiver<Arc<Routes>>,
    last_prune: Instant,
    episode: Option<Episode>,
    /// The agent's own events (drop reports) for the next commit.
    own: Vec<Reading>,
    /// Readings given up because `cancel` came while their commit kept failing.
    abandoned: u64,
    /// Rows upstream asked to set aside since start (rare: damaged rows).
    set_aside_asked: std::collections::HashSet<u64>,
}

/// Adds to `group` what is queued now: commands up to `max_group`, and every settlement.
fn gather(
    group: &mut Vec<Command>,
    rx: &mut mpsc::Receiver<Command>,
    acks: &mut mpsc::UnboundedReceiver<Settle>,
    max_group: usize,
) {
    while group.len() < max_group {
        match rx.try_recv() {
            Ok(c) => group.push(c),
            Err(_) => break,
        }
    }
    while let Ok(s) = acks.try_recv() {
        group.push(Command::Settle(s));
    }
}

/// Gathers into an acknowledgement-only `group` what queues for up to `ACK_LINGER`, and stops
/// as soon as a command that is not a settlement (a reading) joins it.
fn linger(
    group: &mut Vec<Command>,
    rx: &mut mpsc::Receiver<Command>,
    acks: &mut mpsc::UnboundedReceiver<Settle>,
    max_group: usize,
) {
    // The writer runs on a blocking thread of the runtime (`spawn_blocking`): it may wait on
    // the runtime's timer here.
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        std::thread::sleep(ACK_LINGER);
        gather(group, rx, acks, max_group);
        return;
    };
    let deadline = tokio::time::Instant::now() + ACK_LINGER;
    while group.len() < max_group {
        match rt.block_on(tokio::time::timeout_at(deadline, rx.recv())) {
            Ok(Some(cmd)) => {
                group.push(cmd);
                gather(group, rx, acks, max_group);
                if settles_only(group) == usize::MAX {
                    return;
                }
            }
            // Closed (shutdown: what is queued is in the group) or the linger is over.
            Ok(None) | Err(_) => break,
        }
    }
    gather(group, rx, acks, max_group);
}

/// The events a group acknowledges or forgets, if that is all it does (0: it only wakes the
/// writer); `usize::MAX` if it does anything else (stores a reading, sets aside, answers a
/// ping, ticks).
fn settles_only(group: &[Command]) -> usize {
    let mut n = 0;
    for cmd in group {
        match cmd {
            Command::Wake => {}
            Command::Settle(Settle::Acked(seqs)) => n += seqs.len(),
            Command::Settle(Settle::Forget(f)) => n += f.len(),
            _ => return usize::MAX,
        }
    }
    n
}

impl Writer {
    fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut acks: mpsc::UnboundedReceiver<Settle>,
    ) -> u64 {
        let max_group = self.capacity.max_group();
        let mut group = Vec::with_capacity(max_group);
        while let Some(first) = rx.blocking_recv() {
            group.push(first);
            gather(&mut group, &mut rx, &mut acks, max_group);
            let settles = settles_only(&group);
            if settles == 0 {
                // Only wake-ups whose settlements an earlier group took: nothing to commit.
                group.clear();
                continue;
            }
            if settles < ACK_LINGER_MAX {
                // Only acknowledgements (and receipts to forget): they need no hurry (one lost
                // in a crash means a resend), and a reading that arrives meanwhile shares the
                // commit, so one fsync serves both. It does not wait for the rest of the linger.
                linger(&mut group, &mut rx, &mut acks, max_group);
            }
            self.commit_group(&mut group);
            group.clear();
            if !self.own.is_empty() {
                // The agent's own report goes out without waiting for device traffic.
                self.commit_group(&mut group);
            }
            if self.last_prune.elapsed() >= PRUNE_EVERY {
                self.prune();
            }
        }
        if self.abandoned == 0 {
            tracing::debug!("buffer writer stopped; every queued reading was committed");
        }
        self.abandoned
    }

    fn commit_group(&mut self, group: &mut Vec<Command>) {
        let mut rows = Vec::new();
        let mut acks = Vec::new();
        let mut aside = Vec::new();
        let mut confirms = Vec::new();
        let mut held = Vec::new();
        let mut pings = Vec::new();
        let mut forget = Vec::new();
        let mut receipts = Vec::new();
        let mut high = Vec::new();
        let mut envs = Vec::new();
        let mut ticked = false;
        let mut seq = self.next_seq;
        for cmd in group.iter_mut() {
            if let Command::Settle(Settle::Refused { seq, why }) = cmd {
                if self.set_aside_asked.insert(*seq) {
                    tracing::error!(
                        "buffer row {seq}: {why}; it is set aside in {} (edge-agent inspect lists it) and the next events are sent",
                        self.store.path().display()
                    );
                    aside.push((*seq, std::mem::take(why)));
                }
                continue;
            }
            if let Command::Settle(Settle::SetAside { seq, why, raw }) = cmd {
                // Upstream may ask twice (it reconnected before the first was committed): one
                // row, one report.
                if !self.set_aside_asked.insert(*seq) {
                    continue;
                }
                let detail = format!(
                    "buffer row {seq} cannot be read back ({why}); it is set aside in {} (edge-agent inspect lists it) and the next events are sent; its first {} bytes are in raw",
                    self.store.path().display(),
                    raw.len()
                );
                tracing::error!("{detail}");
                aside.push((*seq, why.clone()));
                self.own.push(Reading {
                    source: "edge-agent".into(),
                    station: None,
                    role: None,
                    observed_ms: now_ms(),
                    body: Body::exception(
                        edge_protocol::event::ExceptionReason::Undecodable,
                        detail,
                    ),
                    raw: std::mem::take(raw),
                    receipt: None,
                });
            }
        }
        let own = std::mem::take(&mut self.own);
        let appends = own
            .into_iter()
            .map(|r| (r, None))
            .chain(group.drain(..).filter_map(|cmd| match cmd {
                Command::Append(r, confirm, permit) => {
                    held.push(permit);
                    Some((r, confirm))
                }
                Command::Settle(Settle::Acked(seqs)) => {
                    acks.extend(seqs);
                    None
                }
                Command::Settle(Settle::SetAside { .. } | Settle::Refused { .. }) => None,
                Command::Settle(Settle::Forget(f)) => {
                    forget.extend(f);
                    None
                }
                Command::Ping(p) => {
                    pings.push(p);
                    None
                }
                Command::Tick => {
                    ticked = true;
                    None
                }
                Command::Wake => None,
            }))
            .collect::<Vec<_>>();
        // Once per group: the priority of a reading is decided by the routes in effect when
        // it is stored.
        let routes = self.routes.borrow().clone();
        for (mut r, confirm) in appends {
            let ev = Event::of_body(&r.body, &r.source, r.station.as_deref(), r.role);
            high.push(routes.priority(&ev) == Priority::High);
            let observed_ms = r.observed_ms;
            if let Some(receipt) = r.receipt.take() {
                receipts.push((rows.len(), receipt));
            }
            let env = self.envelope(seq, r);
            let cbor = env.to_cbor();
            envs.push(env);
            rows.push(NewRow {
                seq,
                observed_ms,
                cbor,
                count_if_rejected: confirm.is_none(),
            });
            confirms.push(confirm);
            seq += 1;
        }
        let mut backoff = Duration::from_millis(50);
        let mut failing = false;
        let outcome = loop {
            self.liveness.enter();
            let started = Instant::now();
            let settle = Settlement {
                acked: &acks,
                set_aside: &aside,
                receipts: &receipts,
                forget: &forget,
                high: &high,
            };
            let result = self.store.commit_with(&rows, &settle, seq, self.capacity);
            self.liveness.leave();
            self.status.commit_took(started.elapsed());
            match result {
                Ok(outcome) => {
                    self.liveness
                        .retrying
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    if failing {
                        tracing::info!(
                            "buffer file {}: writing again",
                            self.store.path().display()
                        );
                        self.status.set_storage_error(None);
                    }
                    break outcome;
                }
                Err(e) => {
                    let why = e.explain(self.store.path());
                    // After the first failure redb says only "previous I/O error" until the
                    // file is reopened: that must not replace the cause an operator needs.
                    let news = !failing || e.os_code().is_some();
                    if news && self.status.storage_error().as_deref() != Some(why.as_str()) {
                        tracing::error!(
                            "{why} ({} readings of this commit are held in memory and retried)",
                            rows.len()
                        );
                        self.status.set_storage_error(Some(why));
                    }
                    failing = true;
                    self.liveness
                        .retrying
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    if self.cancel.is_cancelled() {
                        tracing::error!(
                            "shutting down while the buffer cannot be written: {} readings were not stored",
                            rows.len()
                        );
                        self.abandoned += rows.len() as u64;
                        return;
                    }
                    // In slices, so that a cancel is seen within 50 ms, not after up to 5 s.
                    let until = Instant::now() + backoff;
                    while !self.cancel.is_cancelled() && Instant::now() < until {
                        let left = until.saturating_duration_since(Instant::now());
                        std::thread::sleep(left.min(Duration::from_millis(50)));
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    // redb takes no more transactions after an I/O error until reopened.
                    self.liveness.enter();
                    let reopened = self.store.reopen();
                    self.liveness.leave();
                    if let Err(e) = reopened {
                        tracing::debug!("reopening the buffer file: {e}");
                    }
                }
            }
        };
        self.next_seq = seq;
        for (i, (c, row)) in confirms.into_iter().zip(&rows).enumerate() {
            if let Some(c) = c {
                // Skipped rows (drop_oldest, a group larger than the buffer) are accounted as
                // dropped, so their messages are acknowledged like stored ones.
                let answer = if i < outcome.skipped + outcome.stored {
                    Appended::Committed(row.seq)
                } else {
                    Appended::Refused
                };
                // A source that stopped waiting no longer needs the answer.
                let _ = c.send(answer);
            }
        }
        if outcome.stored > 0 {
            let stored = outcome.skipped..outcome.skipped + outcome.stored;
            // Before `committed`: upstream, woken by it, finds them in memory.
            self.tail.push(
                rows.iter_mut()
                    .zip(envs)
                    .zip(&high)
                    .skip(stored.start)
                    .take(stored.len())
                    .map(|((row, env), high)| {
                        let priority = if *high {
                            Priority::High
                        } else {
                            Priority::Normal
                        };
                        let row = PendingRow {
                            seq: row.seq,
                            observed_ms: row.observed_ms,
                            cbor: std::mem::take(&mut row.cbor),
                            env: Some(Box::new(env)),
                        };
                        (priority, row)
                    }),
            );
            // Before `committed`: upstream, woken by it, then sees the high rows too.
            if let Some(i) = stored.clone().rev().find(|i| high[*i]) {
                self.committed_high.send_replace(rows[i].seq);
            }
            if let Some(last) = rows.get(stored.end - 1) {
                self.committed.send_replace(last.seq);
            }
        }
        for p in pings {
            let _ = p.send(());
        }
        // The group's readings are committed (or refused): their bytes may queue again.
        drop(held);
        if outcome.undropped > 0 {
            if let Some(ep) = &mut self.episode {
                ep.count = ep.count.saturating_sub(outcome.undropped);
                ep.total = ep.total.saturating_sub(outcome.undropped);
            }
        }
        self.track_drops(&outcome, !rows.is_empty(), ticked);
    }

    /// Logs a drop episode once, and reports it to central as one `exception` (reason
    /// `dropped`, with `count`) when it ends, or every `DROP_REPORT_EVERY` while it lasts.
    fn track_drops(&mut self, outcome: &CommitOutcome, had_rows: bool, ticked: bool) {
        let now = Instant::now();
        if outcome.dropped > 0 {
            let ep = self.episode.get_or_insert_with(|| {
                tracing::warn!(
                    "buffer full (storage.max_bytes {} bytes, on_full = {:?}): dropping readings; every drop is counted and reported",
                    self.capacity.budget / 6 * 10,
                    self.capacity.on_full
                );
                Episode {
                    started: now,
                    last_report: now,
                    count: 0,
                    total: 0,
                    active: true,
                }
            });
            ep.count += outcome.dropped;
            ep.total += outcome.dropped;
            ep.active = true;
        } else if had_rows || ticked {
            if let Some(ep) = &mut self.episode {
                // A tick with no drop since the previous one, or a commit that needed none.
                if had_rows || !ep.active {
                    let ep = self.episode.take();
                    if let Some(ep) = ep {
                        tracing::info!(
                            "buffer no longer full: {} readings dropped in {:?}",
                            ep.total,
                            now - ep.started
                        );
                        self.report_drops(ep.count, now - ep.last_report, true);
                    }
                    return;
                }
                ep.active = false;
            }
        }
        if let Some(ep) = &mut self.episode {
            if now - ep.last_report >= DROP_REPORT_EVERY && ep.count > 0 {
                let (count, since) = (ep.count, now - ep.last_report);
                ep.count = 0;
                ep.last_report = now;
                self.report_drops(count, since, false);
            }
        }
    }

    fn report_drops(&mut self, count: u64, over: Duration, ended: bool) {
        if count == 0 {
            return;
        }
        let detail = format!(
            "buffer full (storage.max_bytes, on_full = {}): {count} undelivered readings dropped in the last {}s{}",
            match self.capacity.on_full {
                crate::config::OnFull::DropOldest => "drop_oldest: the oldest were deleted",
                crate::config::OnFull::RejectNew => "reject_new: new serial readings were refused",
            },
            over.as_secs(),
            if ended { "; the buffer has room again" } else { "; still full" }
        );
        self.own.push(Reading {
            source: "edge-agent".into(),
            station: None,
            role: None,
            observed_ms: now_ms(),
            body: Body::Exception(edge_protocol::event::Exception {
                reason: edge_protocol::event::ExceptionReason::Dropped,
                detail,
                count: Some(count),
            }),
            raw: Vec::new(),
            receipt: None,
        });
    }

    fn envelope(&self, seq: u64, r: Reading) -> Envelope {
        Envelope {
            id: uuid::Uuid::now_v7().to_string(),
            site: self.site.to_string(),
            seq,
            source: r.source.to_string(),
            station: r.station.map(|s| s.to_string()),
            role: r.role,
            observed_at: format_rfc3339_ms(r.observed_ms),
            body: r.body,
            raw: r.raw,
            replayed: false,
        }
    }

    fn prune(&mut self) {
        self.last_prune = Instant::now();
        let cutoff = now_ms().saturating_sub(self.retain.as_millis() as u64);
        match self.store.prune_delivered(cutoff, PRUNE_LIMIT) {
            Ok(0) => {}
            Ok(n) => tracing::debug!("pruned {n} delivered events past retain_delivered"),
            Err(e) => tracing::warn!("pruning delivered events: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use redb::backends::InMemoryBackend;
    use redb::{Database, StorageBackend};

    use super::*;

    /// An in-memory disk whose writes fail while `full` is set.
    #[derive(Debug)]
    struct Disk {
        inner: InMemoryBackend,
        full: Arc<AtomicBool>,
    }

    impl Disk {
        fn check(&self) -> Result<(), std::io::Error> {
            if self.full.load(Ordering::Relaxed) {
                return Err(std::io::Error::from_raw_os_error(28));
            }
            Ok(())
        }
    }

    impl StorageBackend for Disk {
        fn len(&self) -> Result<u64, std::io::Error> {
            self.inner.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
            self.inner.read(offset, out)
        }
        fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
            self.check()?;
            self.inner.set_len(len)
        }
        fn sync_data(&self) -> Result<(), std::io::Error> {
            self.check()?;
            self.inner.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
            self.check()?;
            self.inner.write(offset, data)
        }
    }

    fn reading(raw: Vec<u8>) -> Reading {
        Reading {
            source: "scanner".into(),
            station: None,
            role: None,
            observed_ms: now_ms(),
            body: Body::exception(edge_protocol::event::ExceptionReason::Undecodable, "large"),
            raw,
            receipt: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn while_commits_fail_queued_readings_are_bounded_in_bytes_not_count() {
        let full = Arc::new(AtomicBool::new(false));
        let disk = Disk {
            inner: InMemoryBackend::new(),
            full: full.clone(),
        };
        let db = Database::builder()
            .create_with_backend(disk)
            .unwrap_or_else(|e| panic!("{e}"));
        let store =
            Store::from_database(db, Path::new("mem.redb")).unwrap_or_else(|e| panic!("{e}"));
        full.store(true, Ordering::Relaxed);
        let status = Arc::new(StatusBoard::default());
        let cancel = CancellationToken::new();
        // A failed assertion must stop the writer's retrying too, or the runtime waits for it.
        let _stop = cancel.clone().drop_guard();
        let (writer, join) = spawn_writer(
            store,
            "site".into(),
            Duration::from_secs(60),
            Capacity::unlimited(),
            status.clone(),
            cancel.clone(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // 1 MiB readings (the largest max_frame) while the disk is full: before the budget,
        // 16,384 of them could queue (16 GiB).
        let mut queued = 0;
        for _ in 0..64 {
            match tokio::time::timeout(
                Duration::from_millis(500),
                writer.append(reading(vec![7; 1 << 20])),
            )
            .await
            {
                Ok(Ok(())) => queued += 1,
                _ => break,
            }
        }
        // Far below the 64 tried (all of which a count bound would take), and within the budget.
        let bound = (QUEUE_BYTES / (1 << 20) + 1).min(16);
        assert!(
            (1..=bound).contains(&queued),
            "{queued} readings of 1 MiB queued (at most {bound})"
        );
        assert!(
            status
                .storage_error()
                .is_some_and(|e| e.contains("no space left")),
            "{:?}",
            status.storage_error()
        );
        assert!(writer.retrying_not_stuck(Duration::from_secs(5)));
        cancel.cancel();
        drop(writer);
        // Cancelled while the disk is still full: the writer says how many it gave up.
        let abandoned = tokio::time::timeout(Duration::from_secs(10), join).await;
        assert!(
            matches!(abandoned, Ok(Ok(n)) if n == queued as u64),
            "{abandoned:?}, {queued} queued"
        );
    }
}
