//! The `Store` trait: what ferry needs from its cluster-state database.

use std::future::Future;
use std::time::Duration;

use crate::counter::WriteCounts;
use crate::error::StoreError;
use crate::types::{
    CasOutcome, Condition, KeyValue, Lease, LeaseId, Listing, Op, Revision, Txn, TxnOutcome,
};
use crate::watch::Watch;

/// A revisioned key-value store with leases and watches: etcd's data model, which both
/// backends ([`crate::EmbeddedStore`], [`crate::EtcdStore`]) implement with the same
/// semantics (checked by one conformance suite).
///
/// The methods are `async` through return-position `impl Future + Send`, so generic callers
/// can `tokio::spawn` them; handles are cheap to clone and every clone is the same store.
/// The trait is not object-safe on purpose: [`crate::AnyStore`] picks a backend at run time
/// with static dispatch, and nothing needs `dyn Store`.
pub trait Store: Clone + Send + Sync + 'static {
    /// The key's current value and stamps, or `None` when it does not exist.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<KeyValue>, StoreError>> + Send;

    /// Every key starting with `prefix`, in byte order, and the revision they were read at.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Listing, StoreError>> + Send;

    /// Writes `value` at `key` (attached to `lease`, or detached from any) and returns the
    /// write's revision. Fails with [`StoreError::LeaseNotFound`] for a dead lease.
    fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> impl Future<Output = Result<Revision, StoreError>> + Send;

    /// Deletes `key`; returns the deletion's revision, or `None` if there was no such key.
    fn delete(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<Revision>, StoreError>> + Send;

    /// Deletes every key under `prefix` at one revision; returns how many there were.
    fn delete_prefix(&self, prefix: &str) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Applies `txn` atomically if all its conditions hold.
    fn txn(&self, txn: Txn) -> impl Future<Output = Result<TxnOutcome, StoreError>> + Send;

    /// Grants a lease that expires `ttl` from now unless kept alive.
    fn grant_lease(&self, ttl: Duration) -> impl Future<Output = Result<Lease, StoreError>> + Send;

    /// Restarts the lease's time to live from now. [`StoreError::LeaseNotFound`] means it has
    /// expired and its keys are gone: the holder has lost whatever the lease stood for.
    fn keep_alive(&self, lease: LeaseId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Revokes the lease now, deleting its keys.
    fn revoke_lease(&self, lease: LeaseId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Watches the keys under `prefix`: every change with a revision at or after `start`
    /// (`None`: after the current revision). The usual pattern is `list` then
    /// `watch_prefix(prefix, Some(listing.revision.next()))`, which misses nothing.
    fn watch_prefix(
        &self,
        prefix: &str,
        start: Option<Revision>,
    ) -> impl Future<Output = Result<Watch, StoreError>> + Send;

    /// The writes sent through this store so far (all clones together).
    fn write_counts(&self) -> WriteCounts;

    /// Writes `value` at `key` if the key's modification revision is `expected` (`None`:
    /// only if the key does not exist).
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<Revision>,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> impl Future<Output = Result<CasOutcome, StoreError>> + Send {
        let txn = Txn::new()
            .when(Condition::ModRevision {
                key: key.to_string(),
                expected,
            })
            .then(Op::Put {
                key: key.to_string(),
                value,
                lease,
            });
        async move {
            Ok(match self.txn(txn).await? {
                TxnOutcome::Committed { revision } => CasOutcome::Swapped(revision),
                TxnOutcome::Failed { mut current } => CasOutcome::Conflict(current.pop().flatten()),
            })
        }
    }

    /// Creates `key` only if it does not exist.
    fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> impl Future<Output = Result<CasOutcome, StoreError>> + Send {
        self.compare_and_swap(key, None, value, lease)
    }
}
