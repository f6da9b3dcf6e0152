//! The durable buffer: every reading is committed here before anything depends on it.
//!
//! # Design
//!
//! One redb file (`storage.path`), seven tables:
//!
//! - `events`: `u64` seq → `[observed_at ms: u64 big-endian][CBOR envelope]`. Every stored event,
//!   pending or delivered. The seq is assigned by the writer in commit order, so key order is
//!   the order readings were taken (per source, and across sources in arrival order).
//! - `pending` and `pending_high`: `u64` seq → `()`. The events not yet acknowledged by
//!   upstream (PUBACK), of normal and of high priority. The backlog is the sum of their
//!   lengths; the oldest pending event is the smaller of their first keys. The priority is
//!   decided when the reading is stored, by the first matching `[[routes]]` entry in effect
//!   then (the writer gets the routes from `WriterHandle::set_routes`, which `app` calls at
//!   start and after an applied push), and never changes afterwards. Upstream reads
//!   `pending_high` first whenever it has rows, each table in seq order with its own cursor:
//!   high events overtake normal ones, and order is kept per source within each priority.
//! - `meta`: `&str` → `u64`: `next_seq` (survives even when every event was pruned),
//!   `dropped` (events deleted or refused undelivered, for status) and `stored_bytes` (the sum
//!   of the `events` values, kept in the same transactions, so capacity needs no scan).
//! - `set_aside`: `u64` seq → `&str` why. Events that cannot be read back (a damaged row):
//!   taken out of `pending` so they do not block what was stored after them, kept in `events`
//!   (pruning skips them; only a full buffer deletes them, like delivered rows), listed by
//!   `edge-agent inspect`, counted in status, and reported to central as an `exception` that
//!   carries their first 4 KiB, committed in the same transaction.
//! - `mqtt_receipts` and `mqtt_allocation`: what identifies each stored MQTT message whose
//!   PUBACK the site broker has not confirmed reading (session, packet id, digest), written in
//!   the commit that stores it, so that a redelivery is acknowledged and not stored twice
//!   (see `receipts.rs`, and `sources::mqtt::redelivery` for why that never merges two
//!   readings).
//!
//! Capacity: the values may take half of `storage.max_bytes` (the rest is B-tree structure and
//! the free pages a copy-on-write commit needs). A commit that would go over first deletes the
//! oldest rows: delivered ones freely, undelivered ones only under `on_full = "drop_oldest"`
//! (each counted as dropped); under `reject_new` it refuses the newest readings instead.
//!
//! Invariants: a seq in `pending` or `pending_high` is always in `events`; a seq is in at most
//! one of `pending`, `pending_high` and `set_aside`. `next_seq` is above every key. Acks,
//! set-asides, drops for room, pruning, replay and `inspect` look at both pending tables.
//!
//! Rows are written by exactly one thread (the writer, see `writer.rs`): it takes every command
//! that queued up while the previous commit was in flight and commits them in one transaction
//! with `Durability::Immediate` (group commit: no timer, a lone reading commits at once).
//! An upstream acknowledgement removes the seq from its pending table; the `events` row stays for
//! `storage.retain_delivered` (for replay) and is pruned after that.
//!
//! Memory: readings waiting for their commit (queued, or in the group being committed or
//! retried) hold at most `writer::QUEUE_BYTES` (4 MiB) of raw bytes, each charged 512 bytes
//! more for its envelope; beyond that sources wait (back-pressure), whatever `max_frame` is.
//! A group is also at most `Capacity::max_group` readings.
//!
//! # What a power cut can lose
//!
//! redb's commit is atomic and fsync'd before `commit()` returns: a committed transaction
//! survives, an uncommitted one vanishes whole, the file is never half-written. Nothing is
//! acknowledged to a device (MQTT PUBACK) or published upstream before its commit returned, so
//! a crash loses only readings that were still in the writer's queue: for MQTT devices the site
//! broker redelivers those (persistent session, no PUBACK yet); for serial devices the lines
//! read from the port but not yet committed are lost, because a serial line has no
//! acknowledgement to withhold. While the disk works that is one group, typically well under
//! 10 ms of traffic. While commits fail (a full or failing disk) readings wait in memory: a
//! crash then loses the serial readings among them, at most `QUEUE_BYTES` (4 MiB: about 8,000
//! scans of ~30 bytes, each charged 512) per agent, and serial lines that arrive while that
//! budget is spent wait in the port (the kernel's tty buffer, 4 KiB) and are lost when it
//! overflows; status shows the storage error the whole time.
//! An upstream PUBACK that arrived but whose removal from `pending` was not yet committed means
//! the event is sent again after restart, with the same `id` (at least once).

#[cfg(test)]
mod crash_tests;
mod receipts;
mod store;
mod tail;
mod writer;

pub use receipts::{Allocation, Digest, Forget, Receipt, Stored as StoredReceipts};
pub use store::{
    inspect, BufferStats, Capacity, CommitOutcome, Inspection, NewRow, PendingRow, ReadLimit,
    Settlement, Store, StoreError,
};
pub use writer::{spawn_writer, Appended, Reading, WriterClosed, WriterHandle};
