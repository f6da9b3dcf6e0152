//! Synchronous access to the redb file: the writer thread's transactions and the readers'
//! snapshots. Async code calls the read side through `tokio::task::spawn_blocking`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::receipts::{Forget, Receipt, Stored};
use crate::config::{OnFull, Priority};

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const PENDING: TableDefinition<u64, ()> = TableDefinition::new("pending");
/// Pending events of high priority (`[[routes]]`): a seq is in this table or in `PENDING`.
const PENDING_HIGH: TableDefinition<u64, ()> = TableDefinition::new("pending_high");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SET_ASIDE: TableDefinition<u64, &str> = TableDefinition::new("set_aside");

const NEXT_SEQ: &str = "next_seq";
const DROPPED: &str = "dropped";
const STORED_BYTES: &str = "stored_bytes";

/// One event to store.
#[derive(Debug, Clone)]
pub struct NewRow {
    pub seq: u64,
    pub observed_ms: u64,
    /// The CBOR envelope.
    pub cbor: Vec<u8>,
    /// Under reject_new, a refused row counts as dropped (a serial line: nobody else holds it),
    /// or not (an MQTT message: its broker keeps it, as it is not acknowledged).
    pub count_if_rejected: bool,
}

impl NewRow {
    /// Bytes the row takes in the `events` table's values.
    pub fn stored_len(&self) -> u64 {
        8 + self.cbor.len() as u64
    }
}

/// How much the buffer may hold and what gives way when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Bytes of stored values at most.
    pub budget: u64,
    pub on_full: OnFull,
}

impl Capacity {
    /// From `storage.max_bytes`: values may take half of the file; the rest is B-tree structure
    /// and the free pages a copy-on-write commit needs.
    pub fn from_max_bytes(max_bytes: u64, on_full: OnFull) -> Capacity {
        Capacity {
            budget: max_bytes / 2,
            on_full,
        }
    }

    /// Readings one commit may take: a commit's pages are new until it is durable, so a small
    /// buffer takes small groups (an eighth of its budget, at ~400 bytes a reading).
    pub fn max_group(&self) -> usize {
        ((self.budget / 8 / 400) as usize).clamp(16, 8192)
    }

    pub fn unlimited() -> Capacity {
        Capacity {
            budget: u64::MAX / 2,
            on_full: OnFull::DropOldest,
        }
    }
}

/// What a commit settles besides storing rows.
#[derive(Debug, Clone, Copy, Default)]
pub struct Settlement<'a> {
    /// Events upstream acknowledged.
    pub acked: &'a [u64],
    /// Events that cannot be read back, with why.
    pub set_aside: &'a [(u64, String)],
    /// MQTT receipts of rows of this commit, by index in `rows`.
    pub receipts: &'a [(usize, Receipt)],
    /// MQTT receipts no longer needed.
    pub forget: &'a [Forget],
    /// By index in `rows`: the row is of high priority (pending in `pending_high`); rows
    /// beyond its end are of normal priority.
    pub high: &'a [bool],
}

/// What a commit did besides storing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitOutcome {
    /// Leading rows of the group dropped because the group alone exceeds the buffer
    /// (drop_oldest); counted in `dropped`.
    pub skipped: usize,
    /// Rows of the group stored (after the skipped ones).
    pub stored: usize,
    /// Rows of the group refused (reject_new).
    pub rejected: usize,
    /// Undelivered events deleted or refused and counted as dropped.
    pub dropped: u64,
    /// The newest undelivered event deleted to make room, if any.
    pub dropped_last_seq: u64,
    /// Acknowledged events that had been counted as dropped (deleted while in flight).
    pub undropped: u64,
}

/// Why the buffer could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("buffer file {path}: cannot create its directory: {source}; check that the service user may write there (StateDirectory=)")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("buffer file {path}: {source}; if another edge-agent uses it, stop that one, else check the file's permissions")]
    Open {
        path: PathBuf,
        source: redb::DatabaseError,
    },
    #[error("buffer file: {0}; the disk may be full or failing, check `df` and the kernel log")]
    Storage(#[from] redb::StorageError),
    #[error("buffer file: {0}")]
    Table(#[from] redb::TableError),
    #[error("buffer file: {0}")]
    Transaction(#[from] redb::TransactionError),
    #[error("buffer file: commit failed: {0}; the disk may be full, check `df`")]
    Commit(#[from] redb::CommitError),
    #[error("buffer file is being reopened after a write error; try again")]
    Reopening,
    #[error("buffer row {seq} is damaged ({len} bytes); it is skipped")]
    Corrupt { seq: u64, len: usize },
}

impl StoreError {
    /// The error as an operator reads it in status: the cause (no space, EIO, read-only) with
    /// the file and what to do; other errors as they are.
    pub fn explain(&self, path: &Path) -> String {
        self.explain_cause(path).unwrap_or_else(|| self.to_string())
    }

    /// The operating system's error code under this one, if it shows.
    pub fn os_code(&self) -> Option<i32> {
        let mut os = None;
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                os = io.raw_os_error();
                break;
            }
            cur = e.source();
        }
        let text = self.to_string();
        // redb does not always expose the io::Error as a source: its text still has the code.
        os.or_else(|| {
            [28, 5, 30, 122]
                .into_iter()
                .find(|n| text.contains(&format!("(os error {n})")))
        })
    }

    /// [`StoreError::explain`] for the causes it knows (no space, quota, EIO, read-only).
    fn explain_cause(&self, path: &Path) -> Option<String> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Some(match self.os_code()? {
            28 => format!(
                "buffer file {}: no space left on device (ENOSPC); free space on that file system (df -h {}) or lower storage.max_bytes; readings wait in memory and are stored once there is room",
                path.display(),
                dir.display()
            ),
            122 => format!(
                "buffer file {}: disk quota exceeded (EDQUOT); raise the service user's quota or free space; readings wait in memory and are stored once there is room",
                path.display()
            ),
            5 => format!(
                "buffer file {}: I/O error (EIO); the disk may be failing: check the kernel log (journalctl -k) and the disk; readings wait in memory and writing is retried",
                path.display()
            ),
            30 => format!(
                "buffer file {}: the file system is read-only (EROFS); remount it read-write (after a disk error check the kernel log first); readings wait in memory",
                path.display()
            ),
            _ => return None,
        })
    }
}

/// One event waiting for upstream.
#[derive(Debug, Clone)]
pub struct PendingRow {
    pub seq: u64,
    pub observed_ms: u64,
    /// The CBOR envelope.
    pub cbor: Vec<u8>,
    /// The same envelope decoded, when the writer handed it on in memory (`tail`); `None`
    /// when read from the file.
    pub env: Option<Box<edge_protocol::Envelope>>,
}

impl PendingRow {
    /// The row's envelope: the one handed on in memory (taken), else decoded from its CBOR.
    pub fn envelope(
        &mut self,
    ) -> Result<edge_protocol::Envelope, edge_protocol::event::DecodeError> {
        match self.env.take() {
            Some(env) => Ok(*env),
            None => edge_protocol::Envelope::from_cbor(&self.cbor),
        }
    }
}

/// How much one read of stored events takes, at most: `rows` rows, and no more once their
/// CBOR reaches `bytes` (the row that reaches it is the last, so a row larger than `bytes`
/// comes alone and nothing is ever stuck behind it). The one rule for every read of events
/// on their way upstream (the file, the writer's tail, replays), so that what a read holds in
/// memory does not grow with `max_frame`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimit {
    pub rows: usize,
    pub bytes: usize,
}

impl ReadLimit {
    /// Whether a read that holds `rows` rows of `bytes` bytes may take one more.
    pub fn takes_more(&self, rows: usize, bytes: usize) -> bool {
        rows < self.rows && bytes < self.bytes
    }

    /// Whether a read stopped at this limit, so that more rows may follow `rows`.
    pub fn reached_by(&self, rows: &[PendingRow]) -> bool {
        !self.takes_more(rows.len(), rows.iter().map(|r| r.cbor.len()).sum())
    }

    /// What is left of this limit after `rows` rows of `bytes` bytes (a read that goes on
    /// where they end keeps to the same rule as one that read them too).
    pub fn after(&self, rows: usize, bytes: usize) -> ReadLimit {
        ReadLimit {
            rows: self.rows.saturating_sub(rows),
            bytes: self.bytes.saturating_sub(bytes),
        }
    }
}

/// Counts for status and `inspect`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BufferStats {
    /// Events not yet acknowledged by upstream.
    pub backlog: u64,
    /// Events stored in all (pending and delivered kept for replay).
    pub stored: u64,
    /// observed_at of the oldest pending event, ms since the Unix epoch.
    pub oldest_pending_ms: Option<u64>,
    /// seq of the oldest and newest stored events.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Events deleted before delivery, ever.
    pub dropped: u64,
    /// Size of the buffer file in bytes.
    pub file_bytes: u64,
    /// Events set aside: kept in the file, no longer pending (they cannot be read back).
    pub set_aside: u64,
}

/// The open buffer file. Cloning shares it.
#[derive(Clone)]
pub struct Store {
    /// None while it is being reopened after an I/O error.
    db: Arc<std::sync::RwLock<Option<Arc<Database>>>>,
    /// A file (not a test backend): can be reopened.
    reopenable: bool,
    /// The last figures `stats` read, and when (ms since the epoch): status shows them while
    /// the file cannot be read.
    last_stats: Arc<std::sync::Mutex<Option<(BufferStats, u64)>>>,
    path: PathBuf,
}

/// redb's page cache, at most. Its default (1 GiB) would let a large backlog's drain grow the
/// agent to hundreds of MiB; reads here are sequential, so a small cache costs little.
const CACHE_BYTES: usize = 16 << 20;

fn open_file(path: &Path) -> Result<Database, redb::DatabaseError> {
    Database::builder().set_cache_size(CACHE_BYTES).create(path)
}

/// Splits a stored value into its observed_at and CBOR parts.
fn split_value(seq: u64, v: &[u8]) -> Result<(u64, &[u8]), StoreError> {
    if v.len() < 8 {
        return Err(StoreError::Corrupt { seq, len: v.len() });
    }
    let (ts, cbor) = v.split_at(8);
    let mut b = [0u8; 8];
    b.copy_from_slice(ts);
    Ok((u64::from_be_bytes(b), cbor))
}

impl Store {
    /// Opens (or creates) the buffer file and its tables.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let db = open_file(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let mut store = Store::from_database(db, path)?;
        store.reopenable = true;
        Ok(store)
    }

    fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(StoreError::Reopening)
    }

    /// After an I/O error redb refuses further transactions until the file is reopened
    /// (which also repairs it). Readers hold the database only for one call, so the old one is
    /// gone once they finish; if one is still busy, this fails and the caller retries.
    pub fn reopen(&self) -> Result<(), StoreError> {
        if !self.reopenable {
            return Ok(());
        }
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        *slot = None;
        let db = open_file(&self.path).map_err(|source| StoreError::Open {
            path: self.path.clone(),
            source,
        })?;
        *slot = Some(Arc::new(db));
        Ok(())
    }

    /// Wraps an open database (any backend) and makes sure the tables exist.
    pub fn from_database(db: Database, path: &Path) -> Result<Store, StoreError> {
        let txn = db.begin_write()?;
        {
            txn.open_table(EVENTS)?;
            txn.open_table(PENDING)?;
            txn.open_table(PENDING_HIGH)?;
            txn.open_table(META)?;
            txn.open_table(SET_ASIDE)?;
            txn.open_table(super::receipts::RECEIPTS)?;
            txn.open_table(super::receipts::ALLOCATION)?;
        }
        txn.commit()?;
        Ok(Store {
            db: Arc::new(std::sync::RwLock::new(Some(Arc::new(db)))),
            reopenable: false,
            last_stats: Default::default(),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The seq the next stored event gets.
    pub fn next_seq(&self) -> Result<u64, StoreError> {
        let txn = self.db()?.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(NEXT_SEQ)?.map(|g| g.value()).unwrap_or(1))
    }

    /// Commits appended rows and upstream acknowledgements in one durable transaction, keeping
    /// the stored payload within `cap` (see `Capacity`).
    pub fn commit(
        &self,
        rows: &[NewRow],
        acked: &[u64],
        next_seq: u64,
        cap: Capacity,
    ) -> Result<CommitOutcome, StoreError> {
        let settle = Settlement {
            acked,
            ..Settlement::default()
        };
        self.commit_with(rows, &settle, next_seq, cap)
    }

    /// [`Store::commit`] with everything else a commit may settle: events set aside (each
    /// leaves `pending` and is kept in `events`, not pruned, with its reason in `set_aside`),
    /// and MQTT receipts (see `receipts`): those of the stored rows are written, forgotten ones
    /// removed.
    pub fn commit_with(
        &self,
        rows: &[NewRow],
        settle: &Settlement<'_>,
        next_seq: u64,
        cap: Capacity,
    ) -> Result<CommitOutcome, StoreError> {
        let Settlement {
            acked,
            set_aside,
            receipts,
            forget,
            high,
        } = *settle;
        let txn = self.db()?.begin_write()?;
        let mut out = CommitOutcome::default();
        {
            let mut ev = txn.open_table(EVENTS)?;
            let mut pending = txn.open_table(PENDING)?;
            let mut pending_high = txn.open_table(PENDING_HIGH)?;
            let mut meta = txn.open_table(META)?;
            let mut aside = txn.open_table(SET_ASIDE)?;
            for (seq, why) in set_aside {
                if pending.remove(*seq)?.is_some() | pending_high.remove(*seq)?.is_some() {
                    aside.insert(*seq, why.as_str())?;
                }
            }
            for seq in acked {
                // Gone from every table: it was dropped for room while its PUBACK was on the
                // way. It was delivered after all, so it no longer counts as dropped.
                let was_pending =
                    pending.remove(*seq)?.is_some() | pending_high.remove(*seq)?.is_some();
                if !was_pending && ev.get(*seq)?.is_none() {
                    out.undropped += 1;
                }
            }
            let mut bytes = meta.get(STORED_BYTES)?.map(|g| g.value()).unwrap_or(0);
            // A group larger than the whole buffer: under drop_oldest its own oldest rows go.
            let mut need: u64 = rows.iter().map(NewRow::stored_len).sum();
            if cap.on_full == OnFull::DropOldest {
                while need > cap.budget && out.skipped < rows.len() {
                    need -= rows[out.skipped].stored_len();
                    out.skipped += 1;
                    out.dropped += 1;
                }
            }
            // Make room, oldest first: delivered rows go freely; undelivered ones only under
            // drop_oldest, and each is counted as dropped.
            while bytes + need > cap.budget {
                let Some((seq, len)) = ev
                    .first()?
                    .map(|(k, v)| (k.value(), v.value().len() as u64))
                else {
                    break;
                };
                let undelivered = pending.get(seq)?.is_some() || pending_high.get(seq)?.is_some();
                if undelivered && cap.on_full == OnFull::RejectNew {
                    break;
                }
                ev.remove(seq)?;
                // A set-aside row gives way like a delivered one.
                aside.remove(seq)?;
                bytes = bytes.saturating_sub(len);
                if undelivered {
                    pending.remove(seq)?;
                    pending_high.remove(seq)?;
                    out.dropped += 1;
                    out.dropped_last_seq = seq;
                }
            }
            let mut value = Vec::new();
            for (i, row) in rows.iter().enumerate().skip(out.skipped) {
                if bytes + row.stored_len() > cap.budget && cap.on_full == OnFull::RejectNew {
                    // This and every later row of the group are refused (order is kept).
                    out.rejected = rows.len() - out.stored;
                    out.dropped += rows[out.stored..]
                        .iter()
                        .filter(|r| r.count_if_rejected)
                        .count() as u64;
                    break;
                }
                value.clear();
                value.extend_from_slice(&row.observed_ms.to_be_bytes());
                value.extend_from_slice(&row.cbor);
                ev.insert(row.seq, value.as_slice())?;
                if high.get(i).copied().unwrap_or(false) {
                    pending_high.insert(row.seq, ())?;
                } else {
                    pending.insert(row.seq, ())?;
                }
                bytes += row.stored_len();
                out.stored += 1;
            }
            meta.insert(STORED_BYTES, bytes)?;
            if !rows.is_empty() {
                meta.insert(NEXT_SEQ, next_seq)?;
            }
            if out.dropped > 0 || out.undropped > 0 {
                let total = (meta.get(DROPPED)?.map(|g| g.value()).unwrap_or(0) + out.dropped)
                    .saturating_sub(out.undropped);
                meta.insert(DROPPED, total)?;
            }
        }
        // Receipts of the rows stored (not of skipped or refused ones: their messages are
        // acknowledged as dropped, or not at all and sent again).
        let stored = out.skipped..out.skipped + out.stored;
        let remember: Vec<&Receipt> = receipts
            .iter()
            .filter(|(i, _)| stored.contains(i))
            .map(|(_, r)| r)
            .collect();
        super::receipts::apply(&txn, &remember, forget)?;
        txn.commit()?;
        Ok(out)
    }

    /// The stored receipts and packet id allocation of one MQTT session.
    pub fn receipts(&self, session: &str) -> Result<Stored, StoreError> {
        let txn = self.db()?.begin_read()?;
        super::receipts::load(&txn, session)
    }

    /// Deletes delivered events observed before `cutoff_ms`, at most `limit` of them, oldest
    /// first. Returns how many were deleted.
    pub fn prune_delivered(&self, cutoff_ms: u64, limit: usize) -> Result<usize, StoreError> {
        let txn = self.db()?.begin_write()?;
        let mut deleted = 0;
        {
            let mut ev = txn.open_table(EVENTS)?;
            let pending = txn.open_table(PENDING)?;
            let pending_high = txn.open_table(PENDING_HIGH)?;
            let aside = txn.open_table(SET_ASIDE)?;
            let mut doomed = Vec::new();
            for row in ev.range::<u64>(..)? {
                let (k, v) = row?;
                let seq = k.value();
                let observed = split_value(seq, v.value()).map(|(t, _)| t).unwrap_or(0);
                if observed >= cutoff_ms || doomed.len() >= limit {
                    break;
                }
                if pending.get(seq)?.is_none()
                    && pending_high.get(seq)?.is_none()
                    && aside.get(seq)?.is_none()
                {
                    doomed.push(seq);
                }
            }
            let mut freed = 0u64;
            for seq in doomed {
                if let Some(v) = ev.remove(seq)? {
                    freed += v.value().len() as u64;
                }
                deleted += 1;
            }
            if freed > 0 {
                let mut meta = txn.open_table(META)?;
                let bytes = meta.get(STORED_BYTES)?.map(|g| g.value()).unwrap_or(0);
                meta.insert(STORED_BYTES, bytes.saturating_sub(freed))?;
            }
        }
        txn.commit()?;
        Ok(deleted)
    }

    /// Up to `limit` pending events of either priority with seq above `after`, in seq order.
    pub fn pending_after(&self, after: u64, limit: usize) -> Result<Vec<PendingRow>, StoreError> {
        let each = ReadLimit {
            rows: limit,
            bytes: usize::MAX,
        };
        let mut rows = self.pending_in(Priority::High, after, each)?;
        rows.extend(self.pending_in(Priority::Normal, after, each)?);
        rows.sort_by_key(|r| r.seq);
        rows.truncate(limit);
        Ok(rows)
    }

    /// Pending events of one priority with seq above `after`, in seq order, within `limit`.
    /// [`ReadLimit::reached_by`] tells whether more may follow.
    pub fn pending_in(
        &self,
        priority: Priority,
        after: u64,
        limit: ReadLimit,
    ) -> Result<Vec<PendingRow>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let pending = txn.open_table(match priority {
            Priority::High => PENDING_HIGH,
            Priority::Normal => PENDING,
        })?;
        let ev = txn.open_table(EVENTS)?;
        let mut out = Vec::with_capacity(limit.rows.min(1024));
        let mut bytes = 0usize;
        for row in pending.range((after + 1)..)? {
            if !limit.takes_more(out.len(), bytes) {
                break;
            }
            let seq = row?.0.value();
            let Some(v) = ev.get(seq)? else { continue };
            // A value too short to split is handed on whole: it does not read back as an
            // envelope, so upstream sets it aside instead of skipping it silently.
            let (observed_ms, cbor) = split_value(seq, v.value()).unwrap_or((0, v.value()));
            bytes = bytes.saturating_add(cbor.len());
            out.push(PendingRow {
                seq,
                observed_ms,
                cbor: cbor.to_vec(),
                env: None,
            });
        }
        Ok(out)
    }

    /// Counts for status; cheap (no scan).
    pub fn stats(&self) -> Result<BufferStats, StoreError> {
        let stats = stats_of(self.db()?.as_ref(), &self.path)?;
        *self.last_stats.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((stats.clone(), crate::time::now_ms()));
        Ok(stats)
    }

    /// The figures the last successful [`Store::stats`] read, and when (ms since the epoch).
    pub fn last_stats(&self) -> Option<(BufferStats, u64)> {
        self.last_stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Delivered events observed in `[since_ms, until_ms]`, in seq order from seq `from`, within
    /// `limit`, looking at no more than `scan` rows. Returns them and the seq to go on
    /// from (None when the table is exhausted).
    pub fn delivered_in_window(
        &self,
        from: u64,
        since_ms: u64,
        until_ms: u64,
        limit: ReadLimit,
        scan: usize,
    ) -> Result<(Vec<PendingRow>, Option<u64>), StoreError> {
        let txn = self.db()?.begin_read()?;
        let ev = txn.open_table(EVENTS)?;
        let pending = txn.open_table(PENDING)?;
        let pending_high = txn.open_table(PENDING_HIGH)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut next = None;
        for (looked, row) in ev.range(from..)?.enumerate() {
            let (k, v) = row?;
            let seq = k.value();
            if !limit.takes_more(out.len(), bytes) || looked >= scan {
                next = Some(seq);
                break;
            }
            let Ok((observed_ms, cbor)) = split_value(seq, v.value()) else {
                continue;
            };
            if observed_ms < since_ms
                || observed_ms > until_ms
                || pending.get(seq)?.is_some()
                || pending_high.get(seq)?.is_some()
            {
                continue;
            }
            bytes = bytes.saturating_add(cbor.len());
            out.push(PendingRow {
                seq,
                observed_ms,
                cbor: cbor.to_vec(),
                env: None,
            });
        }
        Ok((out, next))
    }

    /// How many delivered events were observed in `[since_ms, until_ms]` (a full scan).
    pub fn count_delivered_in_window(
        &self,
        since_ms: u64,
        until_ms: u64,
    ) -> Result<u64, StoreError> {
        let txn = self.db()?.begin_read()?;
        let ev = txn.open_table(EVENTS)?;
        let pending = txn.open_table(PENDING)?;
        let pending_high = txn.open_table(PENDING_HIGH)?;
        let mut n = 0;
        for row in ev.range::<u64>(..)? {
            let (k, v) = row?;
            let Ok((observed_ms, _)) = split_value(k.value(), v.value()) else {
                continue;
            };
            if observed_ms >= since_ms
                && observed_ms <= until_ms
                && pending.get(k.value())?.is_none()
                && pending_high.get(k.value())?.is_none()
            {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Up to `limit` stored events (pending or not) in seq order, from seq `from`.
    pub fn events_from(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, u64, Vec<u8>)>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let ev = txn.open_table(EVENTS)?;
        let mut out = Vec::new();
        for row in ev.range(from..)? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = row?;
            let seq = k.value();
            if let Ok((t, cbor)) = split_value(seq, v.value()) {
                out.push((seq, t, cbor.to_vec()));
            }
        }
        Ok(out)
    }
}

/// The `pending_high` table, None in a file written before it existed (read-only inspection).
fn open_high(
    txn: &redb::ReadTransaction,
) -> Result<Option<redb::ReadOnlyTable<u64, ()>>, StoreError> {
    match txn.open_table(PENDING_HIGH) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn stats_of(db: &impl ReadableDatabase, path: &Path) -> Result<BufferStats, StoreError> {
    let txn = db.begin_read()?;
    let pending = txn.open_table(PENDING)?;
    let high = open_high(&txn)?;
    let ev = txn.open_table(EVENTS)?;
    let meta = txn.open_table(META)?;
    let first_high = match &high {
        Some(h) => h.first()?.map(|(k, _)| k.value()),
        None => None,
    };
    let first_normal = pending.first()?.map(|(k, _)| k.value());
    // Both tables are in seq order: the oldest pending event is the smaller of their firsts.
    let oldest = match (first_high, first_normal) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let oldest_pending_ms = match oldest {
        Some(seq) => ev
            .get(seq)?
            .and_then(|v| split_value(seq, v.value()).ok().map(|(t, _)| t)),
        None => None,
    };
    let backlog_high = match &high {
        Some(h) => h.len()?,
        None => 0,
    };
    let first_seq = ev.first()?.map(|(k, _)| k.value());
    let last_seq = ev.last()?.map(|(k, _)| k.value());
    let dropped = meta.get(DROPPED)?.map(|g| g.value()).unwrap_or(0);
    // A file written before the table existed has none set aside.
    let set_aside = match txn.open_table(SET_ASIDE) {
        Ok(t) => t.len()?,
        Err(redb::TableError::TableDoesNotExist(_)) => 0,
        Err(e) => return Err(e.into()),
    };
    Ok(BufferStats {
        set_aside,
        backlog: pending.len()? + backlog_high,
        stored: ev.len()?,
        oldest_pending_ms,
        first_seq,
        last_seq,
        dropped,
        file_bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
    })
}

/// What `edge-agent inspect` shows of a stopped agent's buffer file.
pub struct Inspection {
    pub stats: BufferStats,
    /// The oldest and newest few stored events: (seq, pending, CBOR envelope).
    pub sample: Vec<(u64, bool, Vec<u8>)>,
    /// The file was not closed cleanly; a repaired copy was inspected.
    pub repaired_copy: bool,
    /// Events set aside (the first ones): (seq, why).
    pub set_aside: Vec<(u64, String)>,
}

/// Opens a buffer file read-only (the agent must be stopped) and reads counts and a sample.
///
/// A file left by a killed agent (or a power cut) needs redb's repair, which a read-only open
/// cannot do: then a copy is repaired and inspected, and the original is left untouched (the
/// agent repairs it when it starts).
pub fn inspect(path: &Path, sample: usize) -> Result<Inspection, StoreError> {
    match redb::ReadOnlyDatabase::open(path) {
        Ok(db) => inspect_db(&db, path, sample),
        Err(redb::DatabaseError::RepairAborted) => {
            let copy = std::env::temp_dir()
                .join(format!("edge-agent-inspect-{}.redb", std::process::id()));
            std::fs::copy(path, &copy).map_err(|source| StoreError::CreateDir {
                path: copy.clone(),
                source,
            })?;
            let result = Database::create(&copy)
                .map_err(|source| StoreError::Open {
                    path: path.to_path_buf(),
                    source,
                })
                .and_then(|db| inspect_db(&db, path, sample));
            let _ = std::fs::remove_file(&copy);
            result.map(|mut i| {
                i.repaired_copy = true;
                i
            })
        }
        Err(source) => Err(StoreError::Open {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn inspect_db(
    db: &impl ReadableDatabase,
    path: &Path,
    sample: usize,
) -> Result<Inspection, StoreError> {
    let stats = stats_of(db, path)?;
    let txn = db.begin_read()?;
    let ev = txn.open_table(EVENTS)?;
    let pending = txn.open_table(PENDING)?;
    let high = open_high(&txn)?;
    let mut out = Vec::new();
    let mut push = |seq: u64, v: &[u8]| -> Result<(), StoreError> {
        if let Ok((_, cbor)) = split_value(seq, v) {
            let is_high = match &high {
                Some(h) => h.get(seq)?.is_some(),
                None => false,
            };
            out.push((seq, is_high || pending.get(seq)?.is_some(), cbor.to_vec()));
        }
        Ok(())
    };
    let half = sample.div_ceil(2);
    let mut seen = std::collections::BTreeSet::new();
    for row in ev.range::<u64>(..)?.take(half) {
        let (k, v) = row?;
        seen.insert(k.value());
        push(k.value(), v.value())?;
    }
    let mut tail = Vec::new();
    for row in ev.range::<u64>(..)?.rev().take(sample - half) {
        let (k, v) = row?;
        if !seen.contains(&k.value()) {
            tail.push((k.value(), v.value().to_vec()));
        }
    }
    for (seq, v) in tail.into_iter().rev() {
        push(seq, &v)?;
    }
    let mut set_aside = Vec::new();
    match txn.open_table(SET_ASIDE) {
        Ok(t) => {
            for row in t.range::<u64>(..)?.take(20) {
                let (k, v) = row?;
                set_aside.push((k.value(), v.value().to_string()));
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Inspection {
        stats,
        sample: out,
        repaired_copy: false,
        set_aside,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: u64, observed_ms: u64, cbor: Vec<u8>) -> NewRow {
        NewRow {
            seq,
            observed_ms,
            cbor,
            count_if_rejected: true,
        }
    }

    #[test]
    fn drop_oldest_deletes_delivered_rows_first_then_counts_undelivered_ones() {
        let (_dir, s) = store();
        // Each row takes 8 + 92 = 100 bytes; room for 5.
        let cap = Capacity {
            budget: 500,
            on_full: OnFull::DropOldest,
        };
        let rows: Vec<_> = (1..=5).map(|i| row(i, i, vec![0; 92])).collect();
        assert_eq!(
            s.commit(&rows, &[], 6, cap).map(|o| o.dropped).ok(),
            Some(0)
        );
        s.commit(&[], &[1], 6, cap)
            .unwrap_or_else(|e| panic!("{e}"));
        let more: Vec<_> = (6..=7).map(|i| row(i, i, vec![0; 92])).collect();
        let out = s
            .commit(&more, &[], 8, cap)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((out.stored, out.dropped, out.dropped_last_seq), (2, 1, 2));
        let seqs: Vec<u64> = s
            .events_from(0, 10)
            .unwrap_or_default()
            .iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(seqs, vec![3, 4, 5, 6, 7]);
        assert_eq!(s.stats().map(|st| st.dropped).ok(), Some(1));
    }

    #[test]
    fn reject_new_keeps_what_is_stored_and_refuses_the_rest_in_order() {
        let (_dir, s) = store();
        let cap = Capacity {
            budget: 300,
            on_full: OnFull::RejectNew,
        };
        let mut rows: Vec<_> = (1..=4).map(|i| row(i, i, vec![0; 92])).collect();
        rows[3].count_if_rejected = false;
        let out = s
            .commit(&rows, &[], 5, cap)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((out.stored, out.rejected, out.dropped), (3, 1, 0));
        // Delivered rows make room again: the oldest delivered one (1) goes, 2 stays for replay.
        s.commit(&[], &[1, 2], 5, cap)
            .unwrap_or_else(|e| panic!("{e}"));
        let out = s
            .commit(&[row(5, 5, vec![0; 92])], &[], 6, cap)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((out.stored, out.rejected), (1, 0));
        assert_eq!(
            s.stats().map(|st| (st.backlog, st.stored)).ok(),
            Some((2, 3))
        );
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = Store::open(&dir.path().join("sub/buffer.redb")).unwrap_or_else(|e| panic!("{e}"));
        (dir, s)
    }

    #[test]
    fn a_receipt_is_forgotten_only_with_its_own_digest() {
        use super::super::receipts::{Allocation, Forget, Receipt};
        let (_dir, s) = store();
        let session: Arc<str> = "site-scanner".into();
        let receipt = |pkid, d: u8| Receipt {
            session: session.clone(),
            pkid,
            digest: [d; 16],
            allocation: Allocation {
                last: pkid,
                sequential: true,
            },
        };
        let commit = |rows: &[NewRow], receipts: &[(usize, Receipt)], forget: &[Forget]| {
            let settle = Settlement {
                acked: &[],
                set_aside: &[],
                receipts,
                forget,
                high: &[],
            };
            s.commit_with(rows, &settle, 10, Capacity::unlimited())
                .unwrap_or_else(|e| panic!("{e}"));
        };
        commit(
            &[row(1, 1, vec![1]), row(2, 2, vec![2])],
            &[(0, receipt(7, 0xa)), (1, receipt(8, 0xb))],
            &[],
        );
        // 7's forget carries another message's digest (an older one under the same id): the
        // receipt stays; 8's is its own: gone.
        let forget = |pkid, d: u8| Forget::One {
            session: session.clone(),
            pkid,
            digest: [d; 16],
        };
        commit(&[], &[], &[forget(7, 0xc), forget(8, 0xb)]);
        let stored = s.receipts(&session).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(stored.receipts.get(&7), Some(&[0xa; 16]));
        assert_eq!(stored.receipts.get(&8), None);
        assert_eq!(stored.receipts.len(), 1);
    }

    #[test]
    fn a_row_set_aside_leaves_the_backlog_but_stays_in_the_file_through_pruning() {
        let (dir, s) = store();
        let rows: Vec<_> = (1..=3).map(|i| row(i, i, vec![0; 10])).collect();
        s.commit(&rows, &[], 4, Capacity::unlimited())
            .unwrap_or_else(|e| panic!("{e}"));
        s.commit_with(
            &[],
            &Settlement {
                acked: &[1, 3],
                set_aside: &[(2, "not CBOR".into())],
                ..Settlement::default()
            },
            4,
            Capacity::unlimited(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let st = s.stats().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((st.backlog, st.stored, st.set_aside), (0, 3, 1));
        // Delivered rows past retention are pruned; the set-aside one is kept.
        assert_eq!(s.prune_delivered(u64::MAX, 100).ok(), Some(2));
        let seqs: Vec<u64> = s
            .events_from(0, 10)
            .unwrap_or_default()
            .iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(seqs, vec![2]);
        drop(s);
        let i = inspect(&dir.path().join("sub/buffer.redb"), 4).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(i.set_aside, vec![(2, "not CBOR".to_string())]);
    }

    /// Rows of 100 bytes read with a 250-byte budget: three (the third reaches it), then a
    /// 1,000-byte row alone; `reached_by` says more may follow exactly when a bound was reached,
    /// and a read that goes on after a part with what is left of the limit ends where one read
    /// would have.
    #[test]
    fn a_read_stops_once_its_rows_reach_the_byte_budget() {
        let (_dir, s) = store();
        let mut rows: Vec<NewRow> = (1..=5).map(|i| row(i, i, vec![0; 100])).collect();
        rows.push(row(6, 6, vec![0; 1000]));
        rows.push(row(7, 7, vec![0; 100]));
        s.commit(&rows, &[], 8, Capacity::unlimited())
            .unwrap_or_else(|e| panic!("{e}"));
        let limit = |rows, bytes| ReadLimit { rows, bytes };
        let read = |after, rows, bytes| -> Vec<u64> {
            let rows = s
                .pending_in(Priority::Normal, after, limit(rows, bytes))
                .unwrap_or_else(|e| panic!("{e}"));
            rows.iter().map(|r| r.seq).collect()
        };
        assert_eq!(read(0, 10, 250), vec![1, 2, 3]);
        assert_eq!(read(5, 10, 250), vec![6]);
        assert_eq!(read(0, 2, 250), vec![1, 2]);
        assert_eq!(read(0, 10, usize::MAX), vec![1, 2, 3, 4, 5, 6, 7]);
        let full = |after, rows, bytes| {
            let read = s
                .pending_in(Priority::Normal, after, limit(rows, bytes))
                .unwrap_or_else(|e| panic!("{e}"));
            limit(rows, bytes).reached_by(&read)
        };
        assert!(full(0, 10, 250), "stopped at the budget");
        assert!(full(0, 2, 10_000), "stopped at the limit");
        assert!(!full(0, 10, 10_000), "all of it: 1,600 bytes in 7 rows");
        assert!(!full(6, 10, 250), "the last row alone");
        // Two rows (200 bytes) first, then the rest of a 250-byte limit: row 3, as one read.
        let rest = limit(10, 250).after(2, 200);
        let more = s
            .pending_in(Priority::Normal, 2, rest)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(more.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3]);
        assert!(rest.reached_by(&more));
    }

    /// A replay keeps to the same rule: delivered rows of 100 bytes read with a 250-byte limit
    /// come three at a time, and the next read goes on at the first row not taken.
    #[test]
    fn a_replay_read_stops_at_the_byte_limit_and_goes_on_where_it_stopped() {
        let (_dir, s) = store();
        let rows: Vec<NewRow> = (1..=5).map(|i| row(i, i, vec![0; 100])).collect();
        s.commit(&rows, &[], 6, Capacity::unlimited())
            .unwrap_or_else(|e| panic!("{e}"));
        s.commit(&[], &[1, 2, 3, 4, 5], 6, Capacity::unlimited())
            .unwrap_or_else(|e| panic!("{e}"));
        let limit = ReadLimit {
            rows: 10,
            bytes: 250,
        };
        let read = |from| {
            let (rows, next) = s
                .delivered_in_window(from, 0, u64::MAX, limit, 100)
                .unwrap_or_else(|e| panic!("{e}"));
            (rows.iter().map(|r| r.seq).collect::<Vec<_>>(), next)
        };
        assert_eq!(read(1), (vec![1, 2, 3], Some(4)));
        assert_eq!(read(4), (vec![4, 5], None));
    }

    #[test]
    fn a_value_too_short_to_split_is_handed_to_upstream_whole() {
        let (_dir, s) = store();
        s.commit(&[row(1, 1, vec![1, 2, 3])], &[], 2, Capacity::unlimited())
            .unwrap_or_else(|e| panic!("{e}"));
        let txn = s
            .db()
            .and_then(|db| Ok(db.begin_write()?))
            .unwrap_or_else(|e| panic!("{e}"));
        {
            let mut ev = txn.open_table(EVENTS).unwrap_or_else(|e| panic!("{e}"));
            ev.insert(1, [9u8, 9].as_slice())
                .unwrap_or_else(|e| panic!("{e}"));
        }
        txn.commit().unwrap_or_else(|e| panic!("{e}"));
        let rows = s.pending_after(0, 10).unwrap_or_default();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].cbor, vec![9, 9]);
    }

    #[test]
    fn appended_events_are_pending_until_acked_and_survive_reopen() {
        let (dir, s) = store();
        let rows: Vec<_> = (1..=5)
            .map(|i| row(i, 1000 + i, vec![i as u8; 3]))
            .collect();
        s.commit(&rows, &[], 6, Capacity::unlimited())
            .unwrap_or_else(|e| panic!("{e}"));
        s.commit(&[], &[1, 3], 6, Capacity::unlimited())
            .unwrap_or_else(|e| panic!("{e}"));
        let got: Vec<u64> = s
            .pending_after(0, 10)
            .unwrap_or_default()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(got, vec![2, 4, 5]);
        drop(s);
        let s = Store::open(&dir.path().join("sub/buffer.redb")).unwrap_or_else(|e| panic!("{e}"));
        let st = s.stats().unwrap_or_default();
        assert_eq!(
            (st.backlog, st.stored, st.oldest_pending_ms),
            (3, 5, Some(1002))
        );
        assert_eq!(s.next_seq().ok(), Some(6));
        assert_eq!(
            s.pending_after(2, 1).unwrap_or_default()[0].cbor,
            vec![4, 4, 4]
        );
    }

    #[test]
    fn high_priority_rows_are_pending_apart_and_every_settlement_sees_both_tables() {
        let (dir, s) = store();
        let rows: Vec<_> = (1..=6)
            .map(|i| row(i, 100 + i, vec![i as u8; 92]))
            .collect();
        let high = [false, true, false, true, true, false];
        fn settle<'a>(
            acked: &'a [u64],
            set_aside: &'a [(u64, String)],
            high: &'a [bool],
        ) -> Settlement<'a> {
            Settlement {
                acked,
                set_aside,
                high,
                ..Settlement::default()
            }
        }
        s.commit_with(&rows, &settle(&[], &[], &high), 7, Capacity::unlimited())
            .unwrap_or_else(|e| panic!("{e}"));
        let seqs = |p| -> Vec<u64> {
            s.pending_in(
                p,
                0,
                ReadLimit {
                    rows: 10,
                    bytes: usize::MAX,
                },
            )
            .unwrap_or_default()
            .iter()
            .map(|r| r.seq)
            .collect()
        };
        assert_eq!(seqs(Priority::High), vec![2, 4, 5]);
        assert_eq!(seqs(Priority::Normal), vec![1, 3, 6]);
        let st = s.stats().unwrap_or_default();
        assert_eq!((st.backlog, st.oldest_pending_ms), (6, Some(101)));
        // Acks and set-asides find a seq in either table; the oldest pending is then a high one.
        let damaged = [(5, "damaged".to_string())];
        s.commit_with(
            &[],
            &settle(&[1, 4], &damaged, &[]),
            7,
            Capacity::unlimited(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(seqs(Priority::High), vec![2]);
        assert_eq!(seqs(Priority::Normal), vec![3, 6]);
        let st = s.stats().unwrap_or_default();
        assert_eq!(
            (st.backlog, st.oldest_pending_ms, st.set_aside),
            (3, Some(102), 1)
        );
        let all: Vec<u64> = s
            .pending_after(0, 10)
            .unwrap_or_default()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(all, vec![2, 3, 6]);
        // Delivered (1, 4) are in neither table; a replay window finds them, not pending ones.
        let (delivered, _) = s
            .delivered_in_window(
                0,
                0,
                u64::MAX,
                ReadLimit {
                    rows: 10,
                    bytes: usize::MAX,
                },
                100,
            )
            .unwrap_or_default();
        let delivered: Vec<u64> = delivered.iter().map(|r| r.seq).collect();
        assert!(
            delivered.starts_with(&[1, 4]) && !delivered.iter().any(|q| [2, 3, 6].contains(q)),
            "{delivered:?}"
        );
        // A full buffer drops the oldest undelivered rows whichever table holds them.
        let cap = Capacity {
            budget: 300,
            on_full: OnFull::DropOldest,
        };
        let out = s
            .commit_with(
                &[row(7, 107, vec![0; 92])],
                &settle(&[], &[], &[true]),
                8,
                cap,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        // 1 and 4 (delivered) go freely; 2 (high) and 3 (normal) are dropped.
        assert_eq!((out.dropped, out.dropped_last_seq), (2, 3), "{out:?}");
        assert_eq!(seqs(Priority::High), vec![7]);
        assert_eq!(seqs(Priority::Normal), vec![6]);
        drop(s);
        let i = inspect(&dir.path().join("sub/buffer.redb"), 10).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(i.stats.backlog, 2);
        let pending: Vec<u64> = i.sample.iter().filter(|r| r.1).map(|r| r.0).collect();
        assert_eq!(pending, vec![6, 7]);
    }

    #[test]
    fn pruning_deletes_only_old_delivered_events() {
        let (_dir, s) = store();
        let rows: Vec<_> = (1..=4).map(|i| row(i, i * 10, vec![0])).collect();
        s.commit(&rows, &[], 5, Capacity::unlimited())
            .unwrap_or_else(|e| panic!("{e}"));
        s.commit(&[], &[1, 2, 4], 5, Capacity::unlimited())
            .unwrap_or_else(|e| panic!("{e}"));
        // 1 and 2 delivered and old; 3 pending; 4 delivered but newer than the cutoff.
        assert_eq!(s.prune_delivered(35, 100).ok(), Some(2));
        let seqs: Vec<u64> = s
            .events_from(0, 10)
            .unwrap_or_default()
            .iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(seqs, vec![3, 4]);
    }
}
