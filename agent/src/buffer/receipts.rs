//! Receipts: what identifies each stored MQTT message whose PUBACK the site broker has not
//! confirmed reading, so that its redelivery is acknowledged without being stored again.
//!
//! Two tables, written in the same transactions as the readings:
//!
//! - `mqtt_receipts`: `(session, packet id)` → digest (16 bytes: SHA-256 of topic and payload,
//!   truncated). Inserted in the commit that stores the message; deleted once the broker
//!   confirmed reading its PUBACK (a PINGRESP after it), or all of a session's at once when the
//!   broker says it has no session for us (nothing of it will come again).
//! - `mqtt_allocation`: session → `[last id hi, last id lo, sequential]`: the newest packet
//!   identifier the broker allocated that the agent saw, and whether every identifier so far
//!   followed the one before (see `sources::mqtt::redelivery`, which decides what a match
//!   means). Written with the receipts.
//!
//! A session is named by `sources::mqtt::subscriptions::session_key` (broker URL and client id),
//! as the broker names it.

use std::collections::HashMap;
use std::sync::Arc;

use redb::{TableDefinition, WriteTransaction};

use super::StoreError;

pub(super) const RECEIPTS: TableDefinition<(&str, u16), &[u8]> =
    TableDefinition::new("mqtt_receipts");
pub(super) const ALLOCATION: TableDefinition<&str, &[u8]> = TableDefinition::new("mqtt_allocation");

/// SHA-256 of a message's topic and payload, first 16 bytes.
pub type Digest = [u8; 16];

/// How the broker has been allocating packet identifiers to this session, as far as seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    /// The newest identifier allocated (in the broker's order) that the agent saw.
    pub last: u16,
    /// Every identifier seen so far was the one after the previous (1 follows 65,535).
    pub sequential: bool,
}

impl Allocation {
    fn to_bytes(self) -> [u8; 3] {
        let [hi, lo] = self.last.to_be_bytes();
        [hi, lo, u8::from(self.sequential)]
    }

    fn from_bytes(b: &[u8]) -> Option<Allocation> {
        match b {
            [hi, lo, s] => Some(Allocation {
                last: u16::from_be_bytes([*hi, *lo]),
                sequential: *s == 1,
            }),
            _ => None,
        }
    }
}

/// A stored message's receipt, written in the commit that stores it.
#[derive(Debug, Clone)]
pub struct Receipt {
    pub session: Arc<str>,
    pub pkid: u16,
    pub digest: Digest,
    /// The session's allocation after this message.
    pub allocation: Allocation,
}

/// A receipt that is no longer needed.
#[derive(Debug, Clone)]
pub enum Forget {
    /// The broker confirmed reading this PUBACK: the message will not come again. Removed only
    /// while the digest is the same (a newer message under the same id keeps its receipt).
    One {
        session: Arc<str>,
        pkid: u16,
        digest: Digest,
    },
    /// The broker has no session for us: nothing of it comes again.
    Session(Arc<str>),
}

/// A session's receipts and allocation as stored.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    pub receipts: HashMap<u16, Digest>,
    pub allocation: Option<Allocation>,
}

/// Applies forgets, then the receipts of the rows that were stored, in one transaction.
pub(super) fn apply(
    txn: &WriteTransaction,
    remember: &[&Receipt],
    forget: &[Forget],
) -> Result<(), StoreError> {
    if remember.is_empty() && forget.is_empty() {
        return Ok(());
    }
    let mut receipts = txn.open_table(RECEIPTS)?;
    let mut allocation = txn.open_table(ALLOCATION)?;
    for f in forget {
        match f {
            Forget::One {
                session,
                pkid,
                digest,
            } => {
                // One lookup in the usual case: remove, and put back a receipt that is not
                // this message's (a newer message under the same id).
                let key = (session.as_ref(), *pkid);
                let other = receipts
                    .remove(key)?
                    .filter(|v| v.value() != digest.as_slice())
                    .map(|v| v.value().to_vec());
                if let Some(v) = other {
                    receipts.insert(key, v.as_slice())?;
                }
            }
            Forget::Session(session) => {
                let s = session.as_ref();
                receipts.retain_in((s, 0u16)..=(s, u16::MAX), |_, _| false)?;
                allocation.remove(s)?;
            }
        }
    }
    for r in remember {
        receipts.insert((r.session.as_ref(), r.pkid), r.digest.as_slice())?;
    }
    // The newest allocation per session (rows are in arrival order).
    let mut newest: HashMap<&str, Allocation> = HashMap::new();
    for r in remember {
        newest.insert(r.session.as_ref(), r.allocation);
    }
    for (s, a) in newest {
        allocation.insert(s, a.to_bytes().as_slice())?;
    }
    Ok(())
}

/// A session's stored receipts and allocation.
pub(super) fn load(txn: &redb::ReadTransaction, session: &str) -> Result<Stored, StoreError> {
    let mut out = Stored::default();
    let receipts = match txn.open_table(RECEIPTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for row in receipts.range((session, 0u16)..=(session, u16::MAX))? {
        let (k, v) = row?;
        if let Ok(digest) = Digest::try_from(v.value()) {
            out.receipts.insert(k.value().1, digest);
        }
    }
    let allocation = txn.open_table(ALLOCATION)?;
    out.allocation = allocation
        .get(session)?
        .and_then(|v| Allocation::from_bytes(v.value()));
    Ok(out)
}
