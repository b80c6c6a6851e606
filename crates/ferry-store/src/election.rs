//! Leader election on leases and create-if-absent.
//!
//! The leader is whoever created the election's key; the key is attached to the leader's
//! lease, so it vanishes when the leader resigns, crashes or stops renewing. A leadership
//! term is identified by the key's modification revision, which no later term can repeat:
//! every change the leader makes goes through [`Leadership::txn`], conditioned on that
//! revision, so a leader whose lease expired (or who was replaced) cannot change anything
//! even if it has not noticed yet. At most one leader's guarded transactions succeed at any
//! revision.

use crate::error::StoreError;
use crate::store::Store;
use crate::types::{Condition, KeyValue, LeaseId, Op, Revision, Txn, TxnOutcome, WatchEvent};
use crate::watch::Watch;

/// The current leader as everyone sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The leader's name (the value it campaigned with).
    pub candidate: String,
    /// Its term: the leader key's modification revision.
    pub revision: Revision,
    /// The lease its leadership hangs on.
    pub lease: Option<LeaseId>,
}

impl LeaderInfo {
    fn from_kv(kv: &KeyValue) -> Self {
        Self {
            candidate: String::from_utf8_lossy(&kv.value).into_owned(),
            revision: kv.mod_revision,
            lease: kv.lease,
        }
    }
}

/// One election (for example the planner's), identified by its key.
#[derive(Debug, Clone)]
pub struct Election<S> {
    store: S,
    key: String,
}

impl<S: Store> Election<S> {
    /// The election whose leader holds `key`.
    pub fn new(store: S, key: impl Into<String>) -> Self {
        Self {
            store,
            key: key.into(),
        }
    }

    /// The leader key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Becomes leader if there is none now; `None` if someone else leads.
    pub async fn try_campaign(
        &self,
        candidate: &str,
        lease: LeaseId,
    ) -> Result<Option<Leadership<S>>, StoreError> {
        Ok(self.attempt(candidate, lease).await?.ok())
    }

    /// Waits until this candidate is the leader. `lease` is the candidate's (typically its
    /// host membership lease, so a dead host also loses leadership); fails with
    /// [`StoreError::LeaseNotFound`] once that lease is gone. Cancel by dropping the future.
    pub async fn campaign(
        &self,
        candidate: &str,
        lease: LeaseId,
    ) -> Result<Leadership<S>, StoreError> {
        loop {
            let holder = match self.attempt(candidate, lease).await? {
                Ok(l) => return Ok(l),
                Err(None) => continue,
                Err(Some(kv)) => kv,
            };
            let mut watch = match self
                .store
                .watch_prefix(&self.key, Some(holder.mod_revision.next()))
                .await
            {
                Ok(w) => w,
                // The history since the holder's write is gone (etcd compacted it, or the
                // embedded store was reopened since): watch from now if it still holds.
                Err(StoreError::Compacted { .. }) => {
                    let listing = self.store.list(&self.key).await?;
                    let current = listing.kvs.iter().find(|kv| kv.key == self.key);
                    if current.map(|kv| kv.mod_revision) != Some(holder.mod_revision) {
                        continue;
                    }
                    self.store
                        .watch_prefix(&self.key, Some(listing.revision.next()))
                        .await?
                }
                Err(e) => return Err(e),
            };
            match next_change(&mut watch, &self.key).await {
                Ok(_) | Err(StoreError::Compacted { .. } | StoreError::WatchLagged) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// One create-if-absent; `Err(holder)` when the key exists (`None` if it vanished).
    async fn attempt(
        &self,
        candidate: &str,
        lease: LeaseId,
    ) -> Result<Result<Leadership<S>, Option<KeyValue>>, StoreError> {
        let txn = Txn::new()
            .when(Condition::absent(&self.key))
            .then(Op::put_with_lease(&self.key, candidate, lease));
        match self.store.txn(txn).await? {
            TxnOutcome::Committed { revision } => {
                Ok(Ok(self.leadership(candidate, lease, revision)))
            }
            TxnOutcome::Failed { current } => {
                let holder = current.into_iter().next().flatten();
                match holder {
                    // Our own key from an earlier campaign on the same lease: still ours.
                    Some(kv) if kv.lease == Some(lease) && kv.value == candidate.as_bytes() => {
                        Ok(Ok(self.leadership(candidate, lease, kv.mod_revision)))
                    }
                    other => Ok(Err(other)),
                }
            }
        }
    }

    fn leadership(&self, candidate: &str, lease: LeaseId, revision: Revision) -> Leadership<S> {
        Leadership {
            store: self.store.clone(),
            key: self.key.clone(),
            candidate: candidate.to_string(),
            lease,
            revision,
        }
    }

    /// The current leader, if any.
    pub async fn leader(&self) -> Result<Option<LeaderInfo>, StoreError> {
        Ok(self
            .store
            .get(&self.key)
            .await?
            .as_ref()
            .map(LeaderInfo::from_kv))
    }

    /// The leader now, then each change of leader.
    pub async fn observe(&self) -> Result<LeaderWatch, StoreError> {
        let listing = self.store.list(&self.key).await?;
        let current = listing
            .kvs
            .iter()
            .find(|kv| kv.key == self.key)
            .map(LeaderInfo::from_kv);
        let watch = self
            .store
            .watch_prefix(&self.key, Some(listing.revision.next()))
            .await?;
        Ok(LeaderWatch {
            key: self.key.clone(),
            first: Some(current),
            watch,
        })
    }
}

/// Waits for the next change of exactly `key` in `watch`.
async fn next_change(watch: &mut Watch, key: &str) -> Result<WatchEvent, StoreError> {
    loop {
        match watch.next().await {
            Some(Ok(ev)) if ev.key() == key => return Ok(ev),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e),
            None => return Err(StoreError::WatchEnded),
        }
    }
}

/// The leader and its changes, from [`Election::observe`].
#[derive(Debug)]
pub struct LeaderWatch {
    key: String,
    first: Option<Option<LeaderInfo>>,
    watch: Watch,
}

impl LeaderWatch {
    /// The leader now (first call), then the leader after each change (`None`: no leader).
    pub async fn next(&mut self) -> Result<Option<LeaderInfo>, StoreError> {
        if let Some(first) = self.first.take() {
            return Ok(first);
        }
        Ok(match next_change(&mut self.watch, &self.key).await? {
            WatchEvent::Put(kv) => Some(LeaderInfo::from_kv(&kv)),
            WatchEvent::Delete { .. } => None,
        })
    }
}

/// This candidate's term as leader.
#[derive(Debug, Clone)]
pub struct Leadership<S> {
    store: S,
    key: String,
    candidate: String,
    lease: LeaseId,
    revision: Revision,
}

impl<S: Store> Leadership<S> {
    /// The term: the leader key's modification revision when this candidate won.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The candidate's name.
    pub fn candidate(&self) -> &str {
        &self.candidate
    }

    /// The lease the leadership hangs on.
    pub fn lease(&self) -> LeaseId {
        self.lease
    }

    /// The condition "this term is still current", to add to any transaction.
    pub fn condition(&self) -> Condition {
        Condition::mod_revision(&self.key, self.revision)
    }

    /// Whether this term is still current (a read; use [`Leadership::txn`] to act).
    pub async fn is_leader(&self) -> Result<bool, StoreError> {
        Ok(self.store.get(&self.key).await?.map(|kv| kv.mod_revision) == Some(self.revision))
    }

    /// Applies `txn` only while this term is current: [`StoreError::NotLeader`] if it is over,
    /// otherwise the outcome of `txn`'s own conditions (`Failed::current` lists only those).
    pub async fn txn(&self, mut txn: Txn) -> Result<TxnOutcome, StoreError> {
        txn.conditions.insert(0, self.condition());
        match self.store.txn(txn).await? {
            TxnOutcome::Committed { revision } => Ok(TxnOutcome::Committed { revision }),
            TxnOutcome::Failed { mut current } => {
                let leader = current.remove(0);
                if leader.map(|kv| kv.mod_revision) != Some(self.revision) {
                    return Err(StoreError::NotLeader {
                        key: self.key.clone(),
                    });
                }
                Ok(TxnOutcome::Failed { current })
            }
        }
    }

    /// Completes when this term ends (the key is deleted, expires or is replaced).
    pub async fn lost(&self) -> Result<(), StoreError> {
        let mut from = self.revision.next();
        loop {
            match self.store.watch_prefix(&self.key, Some(from)).await {
                Ok(mut w) => match next_change(&mut w, &self.key).await {
                    Ok(_) => return Ok(()),
                    Err(StoreError::Compacted { .. } | StoreError::WatchLagged) => {}
                    Err(e) => return Err(e),
                },
                Err(StoreError::Compacted { .. }) => {}
                Err(e) => return Err(e),
            }
            // History was unavailable: look at the key directly, then watch from there.
            let listing = self.store.list(&self.key).await?;
            let current = listing.kvs.iter().find(|kv| kv.key == self.key);
            if current.map(|kv| kv.mod_revision) != Some(self.revision) {
                return Ok(());
            }
            from = listing.revision.next();
        }
    }

    /// Ends the term now (if it is still current); true if it was.
    pub async fn resign(self) -> Result<bool, StoreError> {
        let txn = Txn::new()
            .when(self.condition())
            .then(Op::delete(&self.key));
        Ok(self.store.txn(txn).await?.committed())
    }
}
