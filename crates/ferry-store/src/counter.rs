//! Counts of the writes a store handle sent, for "store writes per operation".

use std::ops::Sub;
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes sent through one store (all clones of a handle share the counts).
///
/// A write is counted when it is sent, whether or not it changes anything: a compare-and-swap
/// that loses still costs etcd a Raft proposal. Keep-alives are counted apart because etcd
/// answers them on the leader without a Raft proposal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteCounts {
    /// Plain puts.
    pub puts: u64,
    /// Plain deletes (of a key or a prefix).
    pub deletes: u64,
    /// Transactions (compare-and-swap, create-if-absent, leader-guarded changes).
    pub txns: u64,
    /// Leases granted.
    pub lease_grants: u64,
    /// Leases revoked.
    pub lease_revokes: u64,
    /// Lease keep-alives.
    pub keep_alives: u64,
}

impl WriteCounts {
    /// Writes that etcd replicates through Raft: everything but keep-alives.
    pub fn replicated(&self) -> u64 {
        self.puts + self.deletes + self.txns + self.lease_grants + self.lease_revokes
    }
}

impl Sub for WriteCounts {
    type Output = WriteCounts;

    /// The writes between two snapshots (`after - before`).
    fn sub(self, before: WriteCounts) -> WriteCounts {
        WriteCounts {
            puts: self.puts - before.puts,
            deletes: self.deletes - before.deletes,
            txns: self.txns - before.txns,
            lease_grants: self.lease_grants - before.lease_grants,
            lease_revokes: self.lease_revokes - before.lease_revokes,
            keep_alives: self.keep_alives - before.keep_alives,
        }
    }
}

/// The kinds of write counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteKind {
    Put,
    Delete,
    Txn,
    LeaseGrant,
    LeaseRevoke,
    KeepAlive,
}

/// Shared atomic counters behind [`WriteCounts`].
#[derive(Debug, Default)]
pub(crate) struct WriteCounter {
    counts: [AtomicU64; 6],
}

impl WriteCounter {
    pub(crate) fn record(&self, kind: WriteKind) {
        self.counts[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> WriteCounts {
        let c = |k: WriteKind| self.counts[k as usize].load(Ordering::Relaxed);
        WriteCounts {
            puts: c(WriteKind::Put),
            deletes: c(WriteKind::Delete),
            txns: c(WriteKind::Txn),
            lease_grants: c(WriteKind::LeaseGrant),
            lease_revokes: c(WriteKind::LeaseRevoke),
            keep_alives: c(WriteKind::KeepAlive),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_kind_and_subtracts() {
        let c = WriteCounter::default();
        let before = c.snapshot();
        c.record(WriteKind::Txn);
        c.record(WriteKind::Txn);
        c.record(WriteKind::KeepAlive);
        c.record(WriteKind::Put);
        let d = c.snapshot() - before;
        assert_eq!(d.txns, 2);
        assert_eq!(d.keep_alives, 1);
        assert_eq!(d.puts, 1);
        assert_eq!(d.replicated(), 3);
    }
}
