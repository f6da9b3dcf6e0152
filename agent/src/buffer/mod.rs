//! The durable buffer: every reading is committed here before anything depends on it.
//!
//! # Design
//!
//! One redb file (`storage.path`), three tables:
//!
//! - `events`: `u64` seq → `[observed_at ms: u64 big-endian][CBOR envelope]`. Every stored event,
//!   pending or delivered. The seq is assigned by the writer in commit order, so key order is
//!   the order readings were taken (per source, and across sources in arrival order).
//! - `pending`: `u64` seq → `()`. The events not yet acknowledged by upstream (PUBACK). The
//!   backlog is this table's length; the oldest pending event is its first key.
//! - `meta`: `&str` → `u64`: `next_seq` (survives even when every event was pruned),
//!   `dropped` (events deleted or refused undelivered, for status) and `stored_bytes` (the sum
//!   of the `events` values, kept in the same transactions, so capacity needs no scan).
//!
//! Capacity: the values may take half of `storage.max_bytes` (the rest is B-tree structure and
//! the free pages a copy-on-write commit needs). A commit that would go over first deletes the
//! oldest rows: delivered ones freely, undelivered ones only under `on_full = "drop_oldest"`
//! (each counted as dropped); under `reject_new` it refuses the newest readings instead.
//!
//! Invariants: a seq in `pending` is always in `events`. `next_seq` is above every key.
//!
//! Rows are written by exactly one thread (the writer, see `writer.rs`): it takes every command
//! that queued up while the previous commit was in flight and commits them in one transaction
//! with `Durability::Immediate` (group commit: no timer, a lone reading commits at once).
//! An upstream acknowledgement removes the seq from `pending`; the `events` row stays for
//! `storage.retain_delivered` (for replay) and is pruned after that.
//!
//! # What a power cut can lose
//!
//! redb's commit is atomic and fsync'd before `commit()` returns: a committed transaction
//! survives, an uncommitted one vanishes whole, the file is never half-written. Nothing is
//! acknowledged to a device (MQTT PUBACK) or published upstream before its commit returned, so
//! a crash loses only readings that were still in the writer's queue: for MQTT devices the site
//! broker redelivers those (persistent session, no PUBACK yet); for serial devices the lines
//! read from the port but not yet committed (at most one group, typically well under 10 ms of
//! traffic) are lost, because a serial line has no acknowledgement to withhold.
//! An upstream PUBACK that arrived but whose removal from `pending` was not yet committed means
//! the event is sent again after restart, with the same `id` (at least once).

#[cfg(test)]
mod crash_tests;
mod store;
mod writer;

pub use store::{
    inspect, BufferStats, Capacity, CommitOutcome, Inspection, NewRow, PendingRow, Store,
    StoreError,
};
pub use writer::{spawn_writer, Appended, Reading, WriterClosed, WriterHandle};
