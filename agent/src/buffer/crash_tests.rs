//! Crash consistency, the way redb tests it: a storage backend that "loses power" after a
//! chosen number of operations. What was written since the last fsync is kept only in part
//! (a random subset of those writes), then the file is reopened with a healthy backend. Every
//! commit that returned Ok must be there, and the buffer must go on working.
//!
//! And a model test: the store against a `BTreeMap` under appends, out-of-order acks, capacity
//! drops, pruning and reopening.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use redb::{backends::InMemoryBackend, Database, StorageBackend};

use super::store::{Capacity, NewRow, Store};
use crate::config::OnFull;

#[derive(Debug, Default)]
struct Disk {
    /// What survives a power cut for sure: the image at the last sync.
    durable: Vec<u8>,
    /// The image the running program sees.
    live: Vec<u8>,
    /// Writes since the last sync, in order.
    unsynced: Vec<(u64, Vec<u8>)>,
    /// Operations left before the power goes.
    ops_left: u64,
}

/// A backend over shared memory that fails every operation once `ops_left` runs out.
#[derive(Debug, Clone)]
struct PowerCut(Arc<Mutex<Disk>>);

fn io_err() -> std::io::Error {
    std::io::Error::other("power lost")
}

impl PowerCut {
    fn tick(d: &mut Disk) -> Result<(), std::io::Error> {
        if d.ops_left == 0 {
            return Err(io_err());
        }
        d.ops_left -= 1;
        Ok(())
    }

    /// The image after the power cut: durable plus some of the unsynced writes.
    fn after_cut(&self, keep: &[bool]) -> Vec<u8> {
        let d = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut img = d.durable.clone();
        for (i, (off, data)) in d.unsynced.iter().enumerate() {
            if keep.get(i).copied().unwrap_or(false) {
                let end = *off as usize + data.len();
                if img.len() < end {
                    img.resize(end, 0);
                }
                img[*off as usize..end].copy_from_slice(data);
            }
        }
        img
    }
}

impl StorageBackend for PowerCut {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.0.lock().unwrap_or_else(|p| p.into_inner()).live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let d = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let end = offset as usize + out.len();
        if end > d.live.len() {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        out.copy_from_slice(&d.live[offset as usize..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let mut d = self.0.lock().unwrap_or_else(|p| p.into_inner());
        PowerCut::tick(&mut d)?;
        d.live.resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let mut d = self.0.lock().unwrap_or_else(|p| p.into_inner());
        PowerCut::tick(&mut d)?;
        d.durable = d.live.clone();
        d.unsynced.clear();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut d = self.0.lock().unwrap_or_else(|p| p.into_inner());
        PowerCut::tick(&mut d)?;
        let end = offset as usize + data.len();
        if d.live.len() < end {
            d.live.resize(end, 0);
        }
        d.live[offset as usize..end].copy_from_slice(data);
        d.unsynced.push((offset, data.to_vec()));
        Ok(())
    }
}

fn row(seq: u64) -> NewRow {
    NewRow {
        seq,
        observed_ms: 1_000 + seq,
        cbor: vec![(seq % 251) as u8; 40 + (seq % 7) as usize],
        count_if_rejected: true,
    }
}

fn open(backend: impl StorageBackend) -> Option<Store> {
    let db = Database::builder().create_with_backend(backend).ok()?;
    Store::from_database(db, Path::new("memory")).ok()
}

/// Commits groups until the power goes; returns the seqs whose commit returned Ok, and which
/// of them were acknowledged (removed from pending) by an Ok commit.
fn run_until_cut(store: &Store) -> (Vec<u64>, Vec<u64>) {
    let mut committed = Vec::new();
    let mut acked = Vec::new();
    let mut seq = 1;
    for group in 0..200u64 {
        let rows: Vec<NewRow> = (0..1 + group % 5).map(|i| row(seq + i)).collect();
        let ack: Vec<u64> = committed
            .iter()
            .copied()
            .filter(|s| s % 3 == 0 && !acked.contains(s))
            .take(2)
            .collect();
        let next = seq + rows.len() as u64;
        match store.commit(&rows, &ack, next, Capacity::unlimited()) {
            Ok(_) => {
                committed.extend(rows.iter().map(|r| r.seq));
                acked.extend(ack);
                seq = next;
            }
            Err(_) => break,
        }
    }
    (committed, acked)
}

#[test]
fn every_commit_that_returned_survives_a_power_cut_at_any_point() {
    let mut cuts = 0;
    for ops in (10..1500).step_by(37) {
        let disk = PowerCut(Arc::new(Mutex::new(Disk {
            ops_left: ops,
            ..Disk::default()
        })));
        let Some(store) = open(disk.clone()) else {
            continue;
        };
        let (committed, acked) = run_until_cut(&store);
        drop(store);
        let unsynced = disk.0.lock().map(|d| d.unsynced.len()).unwrap_or(0);
        // Keep every other unsynced write, and (another run) none of them.
        for pattern in [0usize, 1] {
            let keep: Vec<bool> = (0..unsynced).map(|i| pattern == 1 && i % 2 == 0).collect();
            let image = disk.after_cut(&keep);
            let healthy = InMemoryBackend::new();
            if !image.is_empty() {
                let _ = healthy.set_len(image.len() as u64);
                let _ = healthy.write(0, &image);
            }
            let Some(reopened) = open(healthy) else {
                assert!(
                    committed.is_empty(),
                    "cut after {ops} ops: committed data but the file does not open"
                );
                continue;
            };
            cuts += 1;
            let stored: Vec<u64> = reopened
                .events_from(0, usize::MAX)
                .unwrap_or_default()
                .iter()
                .map(|r| r.0)
                .collect();
            for seq in &committed {
                assert!(
                    stored.contains(seq),
                    "cut after {ops} ops: committed seq {seq} lost"
                );
            }
            let pending: Vec<u64> = reopened
                .pending_after(0, usize::MAX)
                .unwrap_or_default()
                .iter()
                .map(|r| r.seq)
                .collect();
            for seq in &acked {
                assert!(
                    !pending.contains(seq),
                    "cut after {ops} ops: acked seq {seq} pending again"
                );
            }
            // And it goes on working.
            let next = reopened.next_seq().unwrap_or(1);
            assert!(
                committed.iter().all(|s| *s < next),
                "next_seq {next} reuses a committed seq"
            );
            assert!(reopened
                .commit(&[row(next)], &[], next + 1, Capacity::unlimited())
                .is_ok());
        }
    }
    assert!(cuts > 20, "only {cuts} power cuts exercised");
}

#[derive(Debug, Clone)]
enum Op {
    Append(u8),
    Ack(Vec<prop::sample::Index>),
    Prune(u8),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..20).prop_map(Op::Append),
        3 => prop::collection::vec(any::<prop::sample::Index>(), 0..6).prop_map(Op::Ack),
        1 => (0u8..100).prop_map(Op::Prune),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn the_store_behaves_like_a_map_of_pending_flags(
        ops in prop::collection::vec(op(), 1..40),
        budget_rows in 5u64..60,
        drop_oldest in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let path = dir.path().join("buffer.redb");
        let mut store = Store::open(&path).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let on_full = if drop_oldest { OnFull::DropOldest } else { OnFull::RejectNew };
        // Every row takes 8 + 52 bytes.
        let cap = Capacity { budget: budget_rows * 60, on_full };
        // seq -> (observed_ms, pending)
        let mut model: BTreeMap<u64, (u64, bool)> = BTreeMap::new();
        let mut dropped = 0u64;
        let mut next = 1u64;
        for op in ops {
            match op {
                Op::Append(n) => {
                    let rows: Vec<NewRow> = (0..u64::from(n)).map(|i| NewRow {
                        seq: next + i,
                        observed_ms: next + i,
                        cbor: vec![7; 52],
                        count_if_rejected: true,
                    }).collect();
                    let end = next + u64::from(n);
                    let out = store.commit(&rows, &[], end, cap).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    // The model: make room oldest first, as documented.
                    let mut bytes = model.len() as u64 * 60;
                    let mut skip = 0;
                    if on_full == OnFull::DropOldest {
                        while (rows.len() - skip) as u64 * 60 > cap.budget {
                            skip += 1;
                            dropped += 1;
                        }
                    }
                    let rows = &rows[skip..];
                    let need = rows.len() as u64 * 60;
                    while bytes + need > cap.budget {
                        let Some((&seq, &(_, pending))) = model.iter().next() else { break };
                        if pending && on_full == OnFull::RejectNew { break; }
                        model.remove(&seq);
                        bytes -= 60;
                        if pending { dropped += 1; }
                    }
                    let mut stored = 0;
                    for r in rows {
                        if bytes + 60 > cap.budget && on_full == OnFull::RejectNew {
                            dropped += (rows.len() - stored) as u64;
                            break;
                        }
                        model.insert(r.seq, (r.observed_ms, true));
                        bytes += 60;
                        stored += 1;
                    }
                    prop_assert_eq!((out.skipped, out.stored), (skip, stored));
                    next = end;
                }
                Op::Ack(picks) => {
                    let pending: Vec<u64> = model.iter().filter(|(_, v)| v.1).map(|(k, _)| *k).collect();
                    if pending.is_empty() { continue; }
                    let mut acks: Vec<u64> = picks.iter().map(|i| pending[i.index(pending.len())]).collect();
                    acks.sort_unstable();
                    acks.dedup();
                    store.commit(&[], &acks, next, cap).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    for a in acks {
                        if let Some(v) = model.get_mut(&a) { v.1 = false; }
                    }
                }
                Op::Prune(cutoff) => {
                    store.prune_delivered(u64::from(cutoff), usize::MAX).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    // Oldest first, stopping at the first row at or after the cutoff.
                    let doomed: Vec<u64> = model.iter()
                        .take_while(|(_, v)| v.0 < u64::from(cutoff))
                        .filter(|(_, v)| !v.1)
                        .map(|(k, _)| *k)
                        .collect();
                    for k in doomed { model.remove(&k); }
                }
                Op::Reopen => {
                    drop(store);
                    store = Store::open(&path).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(store.next_seq().ok(), Some(next.max(1)));
                }
            }
            let pending: Vec<u64> = store.pending_after(0, usize::MAX).unwrap_or_default().iter().map(|r| r.seq).collect();
            let want: Vec<u64> = model.iter().filter(|(_, v)| v.1).map(|(k, _)| *k).collect();
            prop_assert_eq!(&pending, &want);
            let stats = store.stats().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(stats.stored, model.len() as u64);
            prop_assert_eq!(stats.backlog, want.len() as u64);
            prop_assert_eq!(stats.dropped, dropped);
        }
    }
}
