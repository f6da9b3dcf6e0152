//! Pending rows of one priority for the MQTT upstream, in seq order after a cursor, a chunk at
//! a time.
//!
//! A caught-up upstream takes the newest commits from memory (the writer's tail). Behind (after
//! a start, a reconnect, or further behind than the tail holds) it reads the file on the
//! blocking pool.
//!
//! With `upstream.batch` above 1 the reader also works ahead: the envelopes are decoded on the
//! blocking pool, and a full chunk (more is waiting) has the next one read and decoded at once,
//! while upstream sends this one. Reading and decoding are then most of the work per event
//! (one PUBLISH carries many), and they run beside the sending on the other core instead of in
//! turn. One event per message is different: the upstream task's work per message (the packet,
//! its PUBACK, the wake-ups) is the larger part, the machine is already busy, and working ahead
//! measured slower (the backlog bench, FORMAT=json, one event per message: 94k events/s read
//! on demand, 88k read ahead, 84k also decoded ahead; with BATCH=100: 310k, 390k decoded ahead).
//!
//! The chunk read ahead is what the file held when it was read. That is what a read at the
//! time it is used would give too, apart from rows stored since and rows dropped for room
//! meanwhile (sent all the same, as a dropped row racing its PUBACK already may be). Rows
//! stored since are why such a chunk counts as full whenever a commit came after its read
//! began: upstream marks commits seen before it reads, so a short stale chunk taken for "caught
//! up" would leave those rows waiting for the next commit, which a quiet site may not make.

use edge_protocol::Envelope;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::buffer::{PendingRow, ReadLimit, Store, StoreError, WriterHandle};
use crate::config::Priority;

/// What a read gave besides rows.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file cannot be read now (it is being reopened after a write error, which the
    /// writer reports): look again after the next commit.
    #[error("reading the buffer: {0}")]
    Store(#[from] StoreError),
    /// The blocking read itself failed (a panic, or the runtime shutting down).
    #[error("reading the buffer: {0}")]
    Task(#[from] tokio::task::JoinError),
}

type Chunk = Result<Vec<PendingRow>, StoreError>;

/// The CBOR a chunk (from the file or the writer's tail) holds at most, plus its last row (the
/// one that reaches it): 1024 rows of 1 MiB frames would otherwise be 1 GiB in memory, twice over while reading
/// ahead.
pub const CHUNK_BYTES: usize = 4 << 20;

pub struct Reader {
    store: Store,
    writer: WriterHandle,
    priority: Priority,
    /// Rows per read, and at most [`CHUNK_BYTES`].
    limit: ReadLimit,
    /// Decode on the blocking pool and read the next chunk ahead (see the module note).
    ahead: bool,
    /// This priority's highest committed seq (the writer's signal).
    committed: watch::Receiver<u64>,
    /// The chunk after this seq, being read from the file since `committed` was at `.1`.
    next: Option<(u64, u64, JoinHandle<Chunk>)>,
}

impl Reader {
    pub fn new(
        store: Store,
        writer: WriterHandle,
        priority: Priority,
        chunk: usize,
        ahead: bool,
    ) -> Reader {
        let committed = match priority {
            Priority::High => writer.committed_high(),
            Priority::Normal => writer.committed(),
        };
        Reader {
            store,
            writer,
            priority,
            limit: ReadLimit {
                rows: chunk,
                bytes: CHUNK_BYTES,
            },
            ahead,
            committed,
            next: None,
        }
    }

    /// Up to a chunk of pending rows after `after`, and whether it is full (more may follow;
    /// not full: that is all there is for now).
    pub async fn read(&mut self, after: u64) -> Result<(Vec<PendingRow>, bool), ReadError> {
        // Read ahead for another cursor (none moves backwards on one connection today) is
        // dropped; its blocking read finishes on its own.
        if let Some((_, mark, read)) = self.next.take().filter(|(from, ..)| *from == after) {
            let rows = read.await??;
            let stale = *self.committed.borrow() != mark;
            // Nothing then but something committed since: read again now.
            if !(rows.is_empty() && stale) {
                let full = stale || self.limit.reached_by(&rows);
                self.read_on(&rows, full);
                return Ok((rows, full));
            }
        }
        if let Some(rows) = self.writer.take_committed(self.priority, after, self.limit) {
            let full = self.limit.reached_by(&rows);
            return Ok((rows, full));
        }
        let rows = self.spawn(after).await??;
        let full = self.limit.reached_by(&rows);
        self.read_on(&rows, full);
        Ok((rows, full))
    }

    /// Working ahead, after a full chunk: starts reading the next one.
    fn read_on(&mut self, rows: &[PendingRow], full: bool) {
        if let (true, true, Some(last)) = (self.ahead, full, rows.last()) {
            let mark = *self.committed.borrow();
            self.next = Some((last.seq, mark, self.spawn(last.seq)));
        }
    }

    /// Reads the chunk after `after` on the blocking pool, and working ahead decodes its
    /// envelopes there (a row that does not decode is left for upstream to decode again and
    /// set aside).
    fn spawn(&self, after: u64) -> JoinHandle<Chunk> {
        let (store, priority, limit, decode) =
            (self.store.clone(), self.priority, self.limit, self.ahead);
        tokio::task::spawn_blocking(move || {
            let mut rows = store.pending_in(priority, after, limit)?;
            if decode {
                for row in &mut rows {
                    row.env = Envelope::from_cbor(&row.cbor).ok().map(Box::new);
                }
            }
            Ok(rows)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::buffer::{spawn_writer, Appended, Capacity, NewRow, Reading};
    use crate::status::StatusBoard;

    /// The chunk read ahead of a commit is short, yet not "caught up": the row committed after
    /// its read began comes with the next read (the review of 6f4a000 found it waiting for a
    /// commit that a quiet site may never make).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_short_chunk_read_ahead_of_a_commit_counts_as_full() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&dir.path().join("buffer.redb")).unwrap_or_else(|e| panic!("{e}"));
        let rows: Vec<NewRow> = (1..=2050)
            .map(|seq| NewRow {
                seq,
                observed_ms: seq,
                cbor: vec![0xa0],
                count_if_rejected: true,
            })
            .collect();
        store
            .commit(&rows, &[], 2051, Capacity::unlimited())
            .unwrap_or_else(|e| panic!("{e}"));
        let cancel = CancellationToken::new();
        let _stop = cancel.clone().drop_guard();
        let (writer, _join) = spawn_writer(
            store.clone(),
            "site".into(),
            Duration::from_secs(60),
            Capacity::unlimited(),
            Arc::new(StatusBoard::default()),
            cancel,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut reader = Reader::new(store, writer.clone(), Priority::Normal, 2048, true);

        let (rows, full) = reader.read(0).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((rows.len(), full), (2048, true));
        // The next chunk (2049 and 2050) has been read before the commit below.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !reader.next.as_ref().is_some_and(|(.., h)| h.is_finished()) {
            assert!(
                Instant::now() < deadline,
                "the chunk read ahead never finished"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let confirmed = writer
            .append_confirmed(Reading {
                source: "scanner".into(),
                station: None,
                role: None,
                observed_ms: 1,
                body: edge_protocol::event::Body::exception(
                    edge_protocol::event::ExceptionReason::Undecodable,
                    "late",
                ),
                raw: b"late".to_vec(),
                receipt: None,
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(confirmed.await.ok(), Some(Appended::Committed(2051)));
        // The confirmation goes out before `committed` moves; a ping is answered after.
        let _ = writer.ping().await;
        assert_eq!(*writer.committed().borrow(), 2051);

        let (rows, full) = reader.read(2048).await.unwrap_or_else(|e| panic!("{e}"));
        let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![2049, 2050]);
        assert!(full, "a commit came after the read began: not caught up");
        let (rows, full) = reader.read(2050).await.unwrap_or_else(|e| panic!("{e}"));
        let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
        assert_eq!((seqs, full), (vec![2051], false));
    }
}
