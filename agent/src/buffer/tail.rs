//! The newest committed rows, handed from the writer to upstream in memory.
//!
//! Live, upstream sends what the writer has just committed. Reading it back from the file and
//! decoding its CBOR again cost about a third of upstream's CPU per event. So after each
//! commit the writer also puts the stored rows, with their envelopes, here; upstream takes
//! them from here when it is caught up, and reads the file otherwise (after a start, a
//! reconnect, or when it fell further behind than the tail holds).
//!
//! One tail per priority. Each holds every committed row of its priority with a seq above
//! `from`, in seq order, without a gap: the writer appends in commit order, and drops the
//! oldest beyond `TAIL_ROWS`, moving `from` up. A reader whose cursor is at or past `from` can
//! take from it; one before `from` must read the file, and does so until its cursor passes
//! `from` (rows read from the file that are still in the tail are dropped from it). Nothing
//! here is durable and nothing depends on it: the file stays the record, the tail only saves
//! reading it back.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::store::{PendingRow, ReadLimit};
use crate::config::Priority;

/// Rows kept per priority, at most (about 1 KiB each with its envelope) ...
const TAIL_ROWS: usize = 2048;
/// ... and bytes (raw bytes twice, in the CBOR and the envelope, plus a fixed charge), so that
/// large frames (`max_frame` up to 1 MiB) cannot make the tail large.
const TAIL_BYTES: usize = 4 << 20;
const ROW_CHARGE: usize = 512;

#[derive(Default)]
struct Part {
    rows: VecDeque<PendingRow>,
    /// What `rows` cost, counted as in `cost`.
    bytes: usize,
    /// Every committed row of this priority above this seq is in `rows` (or was taken).
    from: u64,
}

impl Part {
    fn append(&mut self, row: PendingRow) {
        // A reader that read this row from the file already moved `from` past it.
        if row.seq <= self.from {
            return;
        }
        self.bytes += cost(&row);
        self.rows.push_back(row);
        while self.rows.len() > TAIL_ROWS || self.bytes > TAIL_BYTES {
            let Some(old) = self.rows.pop_front() else {
                break;
            };
            self.bytes -= cost(&old);
            self.from = old.seq;
        }
    }
}

/// What a row in the tail costs in `TAIL_BYTES`.
fn cost(row: &PendingRow) -> usize {
    row.cbor.len() + row.env.as_ref().map_or(0, |e| e.raw.len()) + ROW_CHARGE
}

/// See the module documentation.
pub struct Tail {
    normal: Mutex<Part>,
    high: Mutex<Part>,
}

impl Tail {
    /// An empty tail for a buffer whose next row gets `next_seq`.
    pub fn new(next_seq: u64) -> Tail {
        let part = || {
            Mutex::new(Part {
                rows: VecDeque::new(),
                bytes: 0,
                from: next_seq.saturating_sub(1),
            })
        };
        Tail {
            normal: part(),
            high: part(),
        }
    }

    fn part(&self, priority: Priority) -> std::sync::MutexGuard<'_, Part> {
        match priority {
            Priority::High => &self.high,
            Priority::Normal => &self.normal,
        }
        .lock()
        .unwrap_or_else(|p| p.into_inner())
    }

    /// The writer: these rows are committed, each of its priority (in seq order). Each
    /// priority's lock is taken once per commit, not per row.
    pub(super) fn push(&self, rows: impl IntoIterator<Item = (Priority, PendingRow)>) {
        let (mut normal, mut high) = (self.part(Priority::Normal), self.part(Priority::High));
        for (priority, row) in rows {
            let part = match priority {
                Priority::High => &mut high,
                Priority::Normal => &mut normal,
            };
            part.append(row);
        }
    }

    /// The pending rows of `priority` after seq `after` within `limit` (as a read of the
    /// file would give them), if the tail has all of them (`None`: read the file). `Some`
    /// that does not reach `limit`: that is all committed.
    pub fn take(
        &self,
        priority: Priority,
        after: u64,
        limit: ReadLimit,
    ) -> Option<Vec<PendingRow>> {
        let mut part = self.part(priority);
        if after < part.from {
            return None;
        }
        while part.rows.front().is_some_and(|r| r.seq <= after) {
            if let Some(old) = part.rows.pop_front() {
                part.bytes -= cost(&old);
            }
        }
        part.from = after;
        let (mut n, mut bytes) = (0, 0);
        while let Some(r) = part.rows.get(n).filter(|_| limit.takes_more(n, bytes)) {
            bytes += r.cbor.len();
            n += 1;
        }
        let rows: Vec<PendingRow> = part.rows.drain(..n).collect();
        part.bytes -= rows.iter().map(cost).sum::<usize>();
        if let Some(last) = rows.last() {
            part.from = last.seq;
        }
        Some(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: u64) -> PendingRow {
        PendingRow {
            seq,
            observed_ms: seq,
            cbor: vec![seq as u8],
            env: None,
        }
    }

    fn rows(n: usize) -> ReadLimit {
        ReadLimit {
            rows: n,
            bytes: usize::MAX,
        }
    }

    fn seqs(rows: Option<Vec<PendingRow>>) -> Option<Vec<u64>> {
        rows.map(|r| r.iter().map(|r| r.seq).collect())
    }

    #[test]
    fn a_reader_at_the_tail_takes_in_order_and_one_behind_it_reads_the_file() {
        let t = Tail::new(11); // rows 1..=10 are in the file from before
        for s in 11..=14 {
            t.push([(Priority::Normal, row(s))]);
        }
        assert_eq!(
            seqs(t.take(Priority::Normal, 0, rows(100))),
            None,
            "behind: the file"
        );
        assert_eq!(
            seqs(t.take(Priority::Normal, 10, rows(2))),
            Some(vec![11, 12])
        );
        assert_eq!(
            seqs(t.take(Priority::Normal, 12, rows(100))),
            Some(vec![13, 14])
        );
        assert_eq!(seqs(t.take(Priority::Normal, 14, rows(100))), Some(vec![]));
        assert_eq!(
            seqs(t.take(Priority::High, 10, rows(100))),
            Some(vec![]),
            "apart"
        );
        // A reconnect starts over from the file.
        assert_eq!(seqs(t.take(Priority::Normal, 0, rows(100))), None);
    }

    #[test]
    fn a_reader_that_read_past_the_tail_in_the_file_skips_what_it_has() {
        let t = Tail::new(1);
        for s in 1..=5 {
            t.push([(Priority::Normal, row(s))]);
        }
        // The reader read 1..=3 from the file: those leave the tail.
        assert_eq!(
            seqs(t.take(Priority::Normal, 3, rows(100))),
            Some(vec![4, 5])
        );
        // A row the reader read from the file before the writer put it here is not kept.
        let t = Tail::new(1);
        assert_eq!(seqs(t.take(Priority::Normal, 7, rows(100))), Some(vec![]));
        for s in 1..=8 {
            t.push([(Priority::Normal, row(s))]);
        }
        assert_eq!(seqs(t.take(Priority::Normal, 7, rows(100))), Some(vec![8]));
    }

    #[test]
    fn a_full_tail_drops_its_oldest_and_a_reader_behind_them_reads_the_file() {
        let t = Tail::new(1);
        for s in 1..=(TAIL_ROWS as u64 + 3) {
            t.push([(Priority::Normal, row(s))]);
        }
        assert_eq!(
            seqs(t.take(Priority::Normal, 2, rows(1))),
            None,
            "row 3 is gone"
        );
        assert_eq!(seqs(t.take(Priority::Normal, 3, rows(1))), Some(vec![4]));
    }

    #[test]
    fn large_rows_are_kept_to_a_byte_budget() {
        let t = Tail::new(1);
        let big = |seq| PendingRow {
            cbor: vec![0; 1 << 20],
            ..row(seq)
        };
        for s in 1..=10 {
            t.push([(Priority::Normal, big(s))]);
        }
        let part = t.part(Priority::Normal);
        assert!(part.bytes <= TAIL_BYTES, "{} bytes", part.bytes);
        assert_eq!(
            part.rows.len(),
            3,
            "three 1 MiB rows fit in 4 MiB with their charge"
        );
        assert_eq!(part.from, 7);
        drop(part);
        assert_eq!(
            seqs(t.take(Priority::Normal, 7, rows(10))),
            Some(vec![8, 9, 10])
        );
        assert_eq!(
            t.part(Priority::Normal).bytes,
            0,
            "taking gives the bytes back"
        );
    }

    /// Rows of 100 bytes taken with a 250-byte limit: three (the third reaches it), as the
    /// file gives them; a row larger than the limit comes alone.
    #[test]
    fn a_take_stops_once_its_rows_reach_the_byte_limit_as_a_read_of_the_file_does() {
        let t = Tail::new(1);
        for s in 1..=5 {
            t.push([(
                Priority::Normal,
                PendingRow {
                    cbor: vec![0; if s == 4 { 1000 } else { 100 }],
                    ..row(s)
                },
            )]);
        }
        let limit = ReadLimit {
            rows: 10,
            bytes: 250,
        };
        assert_eq!(
            seqs(t.take(Priority::Normal, 0, limit)),
            Some(vec![1, 2, 3])
        );
        assert_eq!(seqs(t.take(Priority::Normal, 3, limit)), Some(vec![4]));
        assert_eq!(seqs(t.take(Priority::Normal, 4, limit)), Some(vec![5]));
    }
}
