//! The single writer: group commit of readings and upstream acknowledgements.

use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_protocol::{Body, Envelope, Role};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::store::Store;
use crate::status::StatusBoard;
use crate::time::{format_rfc3339_ms, now_ms};

/// Commands queued beyond this make senders wait (back-pressure on the sources).
const QUEUE: usize = 16_384;
/// One commit takes at most this many commands.
const MAX_GROUP: usize = 8_192;
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
}

/// Confirms that a reading is committed, with its seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
}

// Nearly every command is an Append, so boxing it would only add an allocation per reading.
#[allow(clippy::large_enum_variant)]
enum Command {
    Append(Reading, Option<oneshot::Sender<Appended>>),
    Ack(Vec<u64>),
    /// Answered after the commit of its group: proves the writer is committing.
    Ping(oneshot::Sender<()>),
}

/// The writer has stopped (shutdown); nothing more can be stored.
#[derive(Debug, thiserror::Error)]
#[error("the buffer writer has stopped")]
pub struct WriterClosed;

/// Sends work to the writer thread. Cloning is cheap.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Command>,
    committed: watch::Receiver<u64>,
}

impl WriterHandle {
    /// Queues a reading; returns once it is queued (not yet committed).
    pub async fn append(&self, r: Reading) -> Result<(), WriterClosed> {
        self.tx
            .send(Command::Append(r, None))
            .await
            .map_err(|_| WriterClosed)
    }

    /// Queues a reading; the receiver resolves once it is committed.
    pub async fn append_confirmed(
        &self,
        r: Reading,
    ) -> Result<oneshot::Receiver<Appended>, WriterClosed> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Append(r, Some(tx)))
            .await
            .map_err(|_| WriterClosed)?;
        Ok(rx)
    }

    /// Marks events delivered (upstream PUBACK).
    pub async fn ack(&self, seqs: Vec<u64>) -> Result<(), WriterClosed> {
        self.tx
            .send(Command::Ack(seqs))
            .await
            .map_err(|_| WriterClosed)
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
}

/// Starts the writer on a blocking thread. It runs until every `WriterHandle` is dropped and
/// the queue is drained; `cancel` only stops retrying a commit that keeps failing.
pub fn spawn_writer(
    store: Store,
    site: Arc<str>,
    retain: Duration,
    status: Arc<StatusBoard>,
    cancel: CancellationToken,
) -> Result<(WriterHandle, tokio::task::JoinHandle<()>), super::StoreError> {
    let next_seq = store.next_seq()?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let (committed_tx, committed_rx) = watch::channel(next_seq.saturating_sub(1));
    let writer = Writer {
        store,
        site,
        next_seq,
        retain,
        status,
        cancel,
        committed: committed_tx,
        last_prune: Instant::now(),
    };
    let join = tokio::task::spawn_blocking(move || writer.run(rx));
    Ok((
        WriterHandle {
            tx,
            committed: committed_rx,
        },
        join,
    ))
}

struct Writer {
    store: Store,
    site: Arc<str>,
    next_seq: u64,
    retain: Duration,
    status: Arc<StatusBoard>,
    cancel: CancellationToken,
    committed: watch::Sender<u64>,
    last_prune: Instant,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        while let Some(first) = rx.blocking_recv() {
            group.push(first);
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(c) => group.push(c),
                    Err(_) => break,
                }
            }
            self.commit_group(&mut group);
            group.clear();
            if self.last_prune.elapsed() >= PRUNE_EVERY {
                self.prune();
            }
        }
        tracing::debug!("buffer writer stopped; every queued reading was committed");
    }

    fn commit_group(&mut self, group: &mut Vec<Command>) {
        let mut rows = Vec::new();
        let mut acks = Vec::new();
        let mut confirms = Vec::new();
        let mut pings = Vec::new();
        let mut seq = self.next_seq;
        for cmd in group.drain(..) {
            match cmd {
                Command::Append(r, confirm) => {
                    let observed_ms = r.observed_ms;
                    let cbor = self.envelope(seq, r).to_cbor();
                    rows.push((seq, observed_ms, cbor));
                    if let Some(c) = confirm {
                        confirms.push((c, seq));
                    }
                    seq += 1;
                }
                Command::Ack(seqs) => acks.extend(seqs),
                Command::Ping(p) => pings.push(p),
            }
        }
        let mut backoff = Duration::from_millis(50);
        let mut failing = false;
        loop {
            match self.store.commit(&rows, &acks, seq) {
                Ok(()) => {
                    if failing {
                        tracing::info!(
                            "buffer file {}: writing again",
                            self.store.path().display()
                        );
                        self.status.set_storage_error(None);
                    }
                    break;
                }
                Err(e) => {
                    if !failing {
                        tracing::error!(
                            "buffer file {}: {e}; {} readings are held in memory and retried",
                            self.store.path().display(),
                            rows.len()
                        );
                        self.status.set_storage_error(Some(e.to_string()));
                        failing = true;
                    }
                    if self.cancel.is_cancelled() {
                        tracing::error!(
                            "shutting down while the buffer cannot be written: {} readings were not stored",
                            rows.len()
                        );
                        return;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.next_seq = seq;
        for (c, seq) in confirms {
            // A source that stopped waiting no longer needs the confirmation.
            let _ = c.send(Appended { seq });
        }
        if !rows.is_empty() {
            self.committed.send_replace(seq - 1);
        }
        for p in pings {
            let _ = p.send(());
        }
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
