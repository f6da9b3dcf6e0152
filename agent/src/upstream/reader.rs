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
//! time it is used would give too, apart from rows stored since (a shorter chunk: upstream
//! looks again after the next commit) and rows dropped for room meanwhile (sent all the same,
//! as a dropped row racing its PUBACK already may be).

use edge_protocol::Envelope;
use tokio::task::JoinHandle;

use crate::buffer::{read_full, PendingRow, Store, StoreError, WriterHandle};
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

/// The CBOR a chunk read from the file holds at most (past its first row): 2048 rows of 1 MiB
/// frames would otherwise be 2 GiB in memory, twice over while reading ahead.
pub const CHUNK_BYTES: usize = 4 << 20;

pub struct Reader {
    store: Store,
    writer: WriterHandle,
    priority: Priority,
    /// Rows per read (and at most [`CHUNK_BYTES`]).
    chunk: usize,
    /// Decode on the blocking pool and read the next chunk ahead (see the module note).
    ahead: bool,
    /// The chunk after this seq, being read from the file.
    next: Option<(u64, JoinHandle<Chunk>)>,
}

impl Reader {
    pub fn new(
        store: Store,
        writer: WriterHandle,
        priority: Priority,
        chunk: usize,
        ahead: bool,
    ) -> Reader {
        Reader {
            store,
            writer,
            priority,
            chunk,
            ahead,
            next: None,
        }
    }

    /// Up to a chunk of pending rows after `after`, and whether it is full (more may follow;
    /// not full: that is all there is for now).
    pub async fn read(&mut self, after: u64) -> Result<(Vec<PendingRow>, bool), ReadError> {
        let rows = match self.next.take() {
            Some((from, read)) if from == after => read.await??,
            // Read ahead for another cursor (none moves backwards on one connection today):
            // the blocking read finishes on its own and is dropped.
            _ => match self.writer.take_committed(self.priority, after, self.chunk) {
                Some(rows) => {
                    let full = rows.len() >= self.chunk;
                    return Ok((rows, full));
                }
                None => self.spawn(after).await??,
            },
        };
        let full = read_full(&rows, self.chunk, CHUNK_BYTES);
        if self.ahead && full {
            if let Some(last) = rows.last() {
                self.next = Some((last.seq, self.spawn(last.seq)));
            }
        }
        Ok((rows, full))
    }

    /// Reads the chunk after `after` on the blocking pool, and working ahead decodes its
    /// envelopes there (a row that does not decode is left for upstream to decode again and
    /// set aside).
    fn spawn(&self, after: u64) -> JoinHandle<Chunk> {
        let (store, priority, chunk, decode) =
            (self.store.clone(), self.priority, self.chunk, self.ahead);
        tokio::task::spawn_blocking(move || {
            let mut rows = store.pending_in(priority, after, chunk, CHUNK_BYTES)?;
            if decode {
                for row in &mut rows {
                    row.env = Envelope::from_cbor(&row.cbor).ok().map(Box::new);
                }
            }
            Ok(rows)
        })
    }
}
