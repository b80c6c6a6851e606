//! The store's error type.

use crate::types::{LeaseId, Revision};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The lease does not exist: it expired, was revoked or never existed.
    #[error("lease {0} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    /// A lease's time to live must be positive.
    #[error("a lease's time to live must be positive")]
    ZeroTtl,
    /// A watch asked for history the store no longer keeps.
    #[error(
        "watch from revision {requested} is not possible: history starts at revision {oldest}"
    )]
    Compacted {
        /// The start revision asked for.
        requested: Revision,
        /// The oldest revision still available.
        oldest: Revision,
    },
    /// A watcher fell so far behind that events were dropped; re-list and watch again.
    #[error("watch fell behind and lost events; re-list and watch again")]
    WatchLagged,
    /// A watch the operation relied on ended (the store closed or the connection dropped).
    #[error("the watch ended (store closed or connection lost)")]
    WatchEnded,
    /// A transaction names the same key in two operations.
    #[error("transaction changes key {0:?} twice")]
    DuplicateKey(String),
    /// The caller is no longer the leader (its leader key was deleted or replaced).
    #[error("not the leader any more: leader key {key:?} changed")]
    NotLeader {
        /// The election's leader key.
        key: String,
    },
    /// A key read from the store is not UTF-8 (written by something other than ferry).
    #[error("key {0:?} is not UTF-8")]
    NonUtf8Key(Vec<u8>),
    /// The embedded store's file holds data this version cannot read.
    #[error("embedded store is corrupt: {0}")]
    Corrupt(String),
    /// The embedded database failed.
    #[error("embedded database error")]
    Database(#[source] Box<redb::Error>),
    /// A request to etcd failed.
    #[error("etcd request failed")]
    Etcd(#[source] Box<etcd_client::Error>),
    /// The store's background task for this request died.
    #[error("store worker failed")]
    Worker(#[source] tokio::task::JoinError),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Database(Box::new(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl StoreError {
    /// Wraps an etcd client error.
    pub(crate) fn etcd(e: etcd_client::Error) -> Self {
        StoreError::Etcd(Box::new(e))
    }
}
