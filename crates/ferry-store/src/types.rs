//! The store's vocabulary: revisions, leases, key-values, transactions, watch events.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// A point in the store's history.
///
/// The store keeps one revision counter. Every change (a put, a delete that removed a key, a
/// transaction that changed something, a lease expiry or revoke that deleted keys) advances it
/// by one and stamps every key it touched with it; reads and failed compare-and-swaps do not.
/// Revisions are never reused, also across restarts, so a revision identifies one version of
/// a key for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Revision(pub u64);

impl Revision {
    /// The revision after this one.
    pub fn next(self) -> Revision {
        Revision(self.0 + 1)
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A lease's identity (never 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseId(pub i64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// A granted lease: keys attached to it are deleted when it expires or is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Its identity.
    pub id: LeaseId,
    /// The time to live the store granted (etcd rounds up to whole seconds and to its minimum).
    pub ttl: Duration,
}

/// One key with its value and history stamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// The revision that created the key (since its last deletion).
    pub create_revision: Revision,
    /// The revision of the key's last change: what a compare-and-swap compares.
    pub mod_revision: Revision,
    /// How many times the key was written since it was created (1 after creation).
    pub version: u64,
    /// The lease the key is attached to.
    pub lease: Option<LeaseId>,
}

/// The keys under a prefix and the store revision they were read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The store's revision when the list was read: watch from `revision.next()` to see every
    /// later change and none twice.
    pub revision: Revision,
    /// The keys, in byte order.
    pub kvs: Vec<KeyValue>,
}

/// A condition a transaction checks before it changes anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The key's modification revision is `expected`, or the key is absent when `None`.
    ModRevision {
        /// The key compared.
        key: String,
        /// Its expected modification revision; `None` means "the key does not exist".
        expected: Option<Revision>,
    },
}

impl Condition {
    /// The key does not exist (create-if-absent).
    pub fn absent(key: impl Into<String>) -> Self {
        Condition::ModRevision {
            key: key.into(),
            expected: None,
        }
    }

    /// The key exists and was last changed at `revision` (compare-and-swap).
    pub fn mod_revision(key: impl Into<String>, revision: Revision) -> Self {
        Condition::ModRevision {
            key: key.into(),
            expected: Some(revision),
        }
    }

    /// The key the condition reads.
    pub fn key(&self) -> &str {
        match self {
            Condition::ModRevision { key, .. } => key,
        }
    }

    /// Whether the condition holds for the key's current modification revision.
    pub fn holds(&self, current: Option<Revision>) -> bool {
        match self {
            Condition::ModRevision { expected, .. } => *expected == current,
        }
    }
}

/// A change a transaction makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Write `value` at `key`, attached to `lease` (or to none).
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: Vec<u8>,
        /// The lease the key is attached to from now on.
        lease: Option<LeaseId>,
    },
    /// Delete `key` if it exists.
    Delete {
        /// The key.
        key: String,
    },
}

impl Op {
    /// A put without lease.
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }

    /// A put attached to a lease.
    pub fn put_with_lease(
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
        lease: LeaseId,
    ) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: Some(lease),
        }
    }

    /// A delete.
    pub fn delete(key: impl Into<String>) -> Self {
        Op::Delete { key: key.into() }
    }

    /// The key the operation changes.
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

/// An atomic transaction: if every condition holds, apply every operation, at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// Conditions, all of which must hold.
    pub conditions: Vec<Condition>,
    /// Operations applied when they do; each key at most once.
    pub ops: Vec<Op>,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a condition.
    pub fn when(mut self, condition: Condition) -> Self {
        self.conditions.push(condition);
        self
    }

    /// Adds an operation.
    pub fn then(mut self, op: Op) -> Self {
        self.ops.push(op);
        self
    }

    /// Rejects a transaction that changes one key twice (etcd refuses those too).
    pub fn validate(&self) -> Result<(), StoreError> {
        let mut keys: Vec<&str> = self.ops.iter().map(Op::key).collect();
        keys.sort_unstable();
        match keys.windows(2).find(|w| w[0] == w[1]) {
            Some(w) => Err(StoreError::DuplicateKey(w[0].to_string())),
            None => Ok(()),
        }
    }
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Every condition held and the operations were applied. `revision` is the revision they
    /// were stamped with (the store's current revision when they changed nothing).
    Committed {
        /// The transaction's revision.
        revision: Revision,
    },
    /// A condition failed; nothing was changed. `current` holds, for each condition in order,
    /// the compared key as it is now, so the caller can retry without another read.
    Failed {
        /// The compared keys' current state, one per condition.
        current: Vec<Option<KeyValue>>,
    },
}

impl TxnOutcome {
    /// Whether the transaction was applied.
    pub fn committed(&self) -> bool {
        matches!(self, TxnOutcome::Committed { .. })
    }
}

/// What a compare-and-swap did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// The value was written at this revision.
    Swapped(Revision),
    /// The key had changed (or existed, for create-if-absent); here it is as it is now.
    Conflict(Option<KeyValue>),
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was written; `mod_revision` is the write's revision.
    Put(KeyValue),
    /// A key was deleted (by a delete, a transaction, or its lease's expiry or revoke).
    Delete {
        /// The deleted key.
        key: String,
        /// The deletion's revision.
        revision: Revision,
    },
}

impl WatchEvent {
    /// The key changed.
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    /// The change's revision.
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }
}
