//! Telling a redelivery from a new message, so that a message is stored once.
//!
//! A broker that did not read our PUBACK before the connection ended (the agent crashed, was
//! restarted or lost the link between its commit and the broker reading the PUBACK) sends the
//! message again after we reconnect. For each stored message whose PUBACK the broker has not
//! confirmed reading, the buffer keeps a receipt (session, packet id, digest of topic and
//! payload), written in the commit that stores it (`buffer::receipts`). A message is taken for
//! a redelivery, acknowledged and not stored again, only when all of these hold:
//!
//! 1. Its DUP flag is set. MQTT 3.1.1 and 5 (3.3.1.1) set DUP=0 on the first delivery of every
//!    message, so a new message is always stored, even one equal to a stored one under the
//!    same packet id.
//! 2. A receipt with its packet id and digest exists. Receipts are removed once the broker
//!    confirmed reading the PUBACK (a PINGRESP after it: brokers answer packets in order), so a
//!    receipt exists only for a message the broker may still hold as unacknowledged.
//! 3. The broker allocates packet identifiers in sequence, as mosquitto does (each new id the
//!    one after the previous, 1 after 65,535), and the receipt's id lies within the 32,767 ids
//!    allocated before the newest one seen. This is what excludes a reuse: a message with DUP
//!    set is one sent before and not stored (otherwise it would have a receipt of its own);
//!    the only other message that could carry the receipt's id is one the broker allocated
//!    after reading our PUBACK, that is after 65,535 allocations since the receipt's (ids go
//!    round once) — at least 32,768 more than the newest we saw, all of them messages it would
//!    have sent us unacknowledged, which no broker keeps in flight (our Receive Maximum is far
//!    below that).
//!
//! Condition 3 is what MQTT leaves to the broker (a broker may give out the lowest free id,
//! and reuse one the moment it reads the PUBACK), so it is checked as it runs: every message's
//! id must follow the newest seen (a redelivery of one we never stored is a later id; of a
//! stored one, an earlier id). The first id that does not breaks the proof for this session:
//! from then on redeliveries are stored again (a crash can then store up to `receive_maximum`
//! readings twice, with new ids), logged once and shown in the source's status. The proof
//! starts over once no receipt is left that depended on the broken sequence.

use std::collections::HashMap;
use std::sync::Arc;

use crate::buffer::{Allocation, Digest, Forget, Receipt, StoredReceipts};

/// How far behind the newest allocated id a receipt may be and still be matched.
const REACH: u16 = 32_767;

/// The id allocated after `id` in sequence: 1 follows 65,535 (0 is not a packet id).
fn next(id: u16) -> u16 {
    if id == u16::MAX {
        1
    } else {
        id + 1
    }
}

/// Steps from `from` forward to `to` along the sequence of ids (0 when equal).
fn steps(from: u16, to: u16) -> u16 {
    let (a, b) = (u32::from(from.max(1)) - 1, u32::from(to.max(1)) - 1);
    ((b + 65_535 - a) % 65_535) as u16
}

/// The SHA-256 of a message's topic and payload, first 16 bytes.
pub fn digest(topic: &[u8], payload: &[u8]) -> Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&(topic.len() as u32).to_be_bytes());
    ctx.update(topic);
    ctx.update(payload);
    let full = ctx.finish();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full.as_ref()[..16]);
    out
}

/// What to do with an arriving QoS 1 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Store it (and keep its receipt).
    Store,
    /// A redelivery of a stored message: acknowledge, do not store.
    Redelivery,
}

/// The ids broke sequence: (the id expected, the id that came).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfSequence {
    pub expected: u16,
    pub got: u16,
}

impl OutOfSequence {
    /// The id is ahead of the expected one by a little: the broker allocated ids for messages
    /// it never sent us, which is what mosquitto does when it drops messages queued for a
    /// client beyond its `max_queued_messages`.
    pub fn skipped(&self) -> Option<u16> {
        let n = steps(self.expected, self.got);
        (1..=REACH).contains(&n).then_some(n)
    }
}

/// One session's receipts (mirroring the buffer's) and what its broker's ids have shown.
#[derive(Debug, Clone)]
pub struct Redeliveries {
    session: Arc<str>,
    receipts: HashMap<u16, Digest>,
    allocation: Option<Allocation>,
    /// Why redeliveries are stored again, once the ids broke sequence (for status).
    pub note: Option<String>,
    /// `note` changed and is not yet shown.
    pub noted: bool,
    /// How often the ids broke sequence since start (logged the first time only).
    pub breaks: u64,
}

impl Redeliveries {
    pub fn new(session: Arc<str>, stored: StoredReceipts) -> Redeliveries {
        Redeliveries {
            session,
            receipts: stored.receipts,
            allocation: stored.allocation,
            note: None,
            noted: false,
            breaks: 0,
        }
    }

    pub fn session(&self) -> &Arc<str> {
        &self.session
    }

    /// Whether redeliveries are being recognised (the ids have kept in sequence).
    #[cfg(test)]
    pub fn proven(&self) -> bool {
        self.allocation.is_none_or(|a| a.sequential)
    }

    /// The broker has no session for us: nothing it held comes again.
    pub fn clean_session(&mut self) -> Forget {
        self.receipts.clear();
        self.allocation = None;
        Forget::Session(self.session.clone())
    }

    /// Looks at an arriving QoS 1 message: what to do with it, and whether its id broke the
    /// sequence (reported once by the caller).
    pub fn arrive(
        &mut self,
        pkid: u16,
        dup: bool,
        digest: &Digest,
    ) -> (Verdict, Option<OutOfSequence>) {
        let mut broke = None;
        let before = self.allocation;
        match before {
            None => {
                self.allocation = Some(Allocation {
                    last: pkid,
                    sequential: true,
                })
            }
            Some(a) => {
                let ahead = steps(a.last, pkid);
                // A new message has the next id; a redelivery, an earlier one (stored) or a
                // later one (sent before, never stored).
                let in_sequence = dup || pkid == next(a.last);
                // Nothing stored depends on the past: the proof may start over here.
                let sequential = (a.sequential || self.receipts.is_empty()) && in_sequence;
                if a.sequential && !in_sequence {
                    broke = Some(OutOfSequence {
                        expected: next(a.last),
                        got: pkid,
                    });
                }
                let last = if !dup || (1..=REACH).contains(&ahead) {
                    pkid
                } else {
                    a.last
                };
                self.allocation = Some(Allocation { last, sequential });
            }
        }
        let verdict = match (dup, before, self.receipts.get(&pkid)) {
            (true, Some(a), Some(d))
                if d == digest && a.sequential && steps(pkid, a.last) <= REACH =>
            {
                Verdict::Redelivery
            }
            _ => Verdict::Store,
        };
        (verdict, broke)
    }

    /// The receipt to commit with a message to be stored.
    pub fn receipt(&self, pkid: u16, digest: Digest) -> Option<Receipt> {
        Some(Receipt {
            session: self.session.clone(),
            pkid,
            digest,
            allocation: self.allocation?,
        })
    }

    /// The message was committed: its receipt is in the buffer.
    pub fn stored(&mut self, pkid: u16, digest: Digest) {
        self.receipts.insert(pkid, digest);
    }

    /// The broker confirmed reading this PUBACK: the receipt goes (if it is still this one).
    pub fn confirmed(&mut self, pkid: u16, digest: Digest) -> Option<Forget> {
        if self.receipts.get(&pkid) != Some(&digest) {
            return None;
        }
        self.receipts.remove(&pkid);
        Some(Forget::One {
            session: self.session.clone(),
            pkid,
            digest,
        })
    }

    /// Receipts held (for tests and status).
    pub fn len(&self) -> usize {
        self.receipts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> Redeliveries {
        Redeliveries::new("s".into(), StoredReceipts::default())
    }

    #[test]
    fn ids_follow_one_another_round_the_whole_range() {
        assert_eq!(next(1), 2);
        assert_eq!(next(65_535), 1);
        assert_eq!(steps(65_535, 1), 1);
        assert_eq!(steps(1, 65_535), 65_534);
        assert_eq!(steps(7, 7), 0);
        assert_eq!(steps(10, 3), 65_528);
    }

    #[test]
    fn a_redelivery_of_a_stored_message_is_recognised() {
        let mut r = fresh();
        let d = digest(b"t", b"]C1001234");
        assert_eq!(r.arrive(5, false, &d).0, Verdict::Store);
        r.stored(5, d);
        assert_eq!(r.arrive(6, false, &digest(b"t", b"x")).0, Verdict::Store);
        r.stored(6, digest(b"t", b"x"));
        // Reconnected: the broker sends 5 again, DUP set.
        assert_eq!(r.arrive(5, true, &d), (Verdict::Redelivery, None));
        assert!(r.proven());
    }

    #[test]
    fn an_equal_new_message_is_stored_whatever_its_id() {
        let mut r = fresh();
        let d = digest(b"t", b"]C1001234");
        r.arrive(5, false, &d);
        r.stored(5, d);
        // The same scan again, as a new message (DUP clear): two readings.
        assert_eq!(r.arrive(6, false, &d).0, Verdict::Store);
    }

    #[test]
    fn a_redelivered_message_that_was_never_stored_is_stored() {
        let mut r = fresh();
        let d = digest(b"t", b"a");
        r.arrive(5, false, &d);
        r.stored(5, d);
        // 6 was sent but not stored before the connection dropped: it comes with DUP.
        assert_eq!(r.arrive(6, true, &d).0, Verdict::Store);
        // And a different message under a stored id is stored too.
        assert_eq!(r.arrive(5, true, &digest(b"t", b"b")).0, Verdict::Store);
    }

    #[test]
    fn a_broker_that_reuses_ids_breaks_the_proof_and_redeliveries_are_stored_again() {
        let mut r = fresh();
        let d = digest(b"t", b"a");
        r.arrive(1, false, &d);
        r.stored(1, d);
        let (_, broke) = r.arrive(1, false, &d);
        assert_eq!(
            broke,
            Some(OutOfSequence {
                expected: 2,
                got: 1
            })
        );
        r.stored(1, d);
        assert!(!r.proven());
        assert_eq!(r.arrive(1, true, &d).0, Verdict::Store, "not provable");
        // Reported once.
        assert_eq!(r.arrive(9, false, &d).1, None);
    }

    #[test]
    fn ids_skipped_forward_are_told_apart_from_an_id_reused() {
        let skip = OutOfSequence {
            expected: 10,
            got: 14,
        };
        assert_eq!(skip.skipped(), Some(4), "10..13 allocated and never sent");
        let round = OutOfSequence {
            expected: 65_535,
            got: 2,
        };
        assert_eq!(
            round.skipped(),
            Some(2),
            "65,535 and 1 skipped, across the wrap"
        );
        let reuse = OutOfSequence {
            expected: 2,
            got: 1,
        };
        assert_eq!(reuse.skipped(), None, "an earlier id: reused, not skipped");
    }

    #[test]
    fn the_proof_starts_over_once_no_receipt_depends_on_the_past() {
        let mut r = fresh();
        let d = digest(b"t", b"a");
        r.arrive(1, false, &d);
        r.arrive(1, false, &d);
        assert!(!r.proven());
        // Nothing stored: the next id in sequence starts a proof again.
        r.arrive(2, false, &d);
        assert!(r.proven());
        r.stored(2, d);
        assert_eq!(r.arrive(2, true, &d).0, Verdict::Redelivery);
    }

    #[test]
    fn a_receipt_too_far_behind_the_newest_id_is_not_matched() {
        let mut r = fresh();
        let d = digest(b"t", b"a");
        r.arrive(100, false, &d);
        r.stored(100, d);
        // Ids kept in sequence up to 100 + 40,000 (receipts of those confirmed meanwhile).
        for id in 101..=40_100u16 {
            r.arrive(id, false, &digest(b"t", b"other"));
        }
        assert!(r.proven());
        assert_eq!(r.arrive(100, true, &d).0, Verdict::Store);
    }

    #[test]
    fn a_confirmed_receipt_is_forgotten_only_while_it_is_the_same_message() {
        let mut r = fresh();
        let (a, b) = (digest(b"t", b"a"), digest(b"t", b"b"));
        r.arrive(3, false, &a);
        r.stored(3, a);
        assert!(r.confirmed(3, b).is_none());
        assert!(matches!(
            r.confirmed(3, a),
            Some(Forget::One { pkid: 3, .. })
        ));
        assert_eq!(r.len(), 0);
        assert_eq!(r.arrive(3, true, &a).0, Verdict::Store);
    }

    #[test]
    fn the_digest_tells_topic_from_payload() {
        assert_ne!(digest(b"ab", b"c"), digest(b"a", b"bc"));
    }
}
