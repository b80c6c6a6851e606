//! Host membership: one lease per host, and a key on it that exists while the host lives.

use std::time::Duration;

use super::keys::Keys;
use super::names::HostName;
use super::records::{self, HostReport};
use super::ClusterError;
use crate::lease::LeaseKeeper;
use crate::store::Store;
use crate::types::{Condition, Lease, LeaseId, Op, Revision, Txn, TxnOutcome, WatchEvent};
use crate::watch::Watch;

/// A live host as the cluster sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// The host.
    pub host: HostName,
    /// Its latest report.
    pub report: HostReport,
    /// Its lease.
    pub lease: Option<LeaseId>,
    /// The report's revision.
    pub revision: Revision,
}

/// A change in membership.
#[derive(Debug, Clone, PartialEq)]
pub enum MemberEvent {
    /// A host joined or reported.
    Up(Member),
    /// A host left, or its lease expired: it is dead.
    Down {
        /// The host.
        host: HostName,
        /// The revision at which it went.
        revision: Revision,
    },
}

/// This host's membership: its lease, renewed in the background, and its report key.
///
/// When [`Membership::lost`] completes, the cluster considers this host dead and the leader
/// will mark its VMs lost: the daemon must stop (pause) its VMs and not resume them unless
/// it rejoins and recovers them (`ClusterStore::recover_vm`).
#[derive(Debug)]
pub struct Membership<S> {
    store: S,
    host: HostName,
    key: String,
    keeper: LeaseKeeper<S>,
}

pub(super) async fn join<S: Store>(
    store: &S,
    keys: &Keys,
    host: &HostName,
    ttl: Duration,
    report: &HostReport,
) -> Result<Membership<S>, ClusterError> {
    let key = keys.member(host);
    let keeper = LeaseKeeper::grant(store.clone(), ttl).await?;
    let txn = Txn::new()
        .when(Condition::absent(&key))
        .then(Op::put_with_lease(
            &key,
            records::encode(report),
            keeper.id(),
        ));
    match store.txn(txn).await {
        Ok(TxnOutcome::Committed { .. }) => Ok(Membership {
            store: store.clone(),
            host: host.clone(),
            key,
            keeper,
        }),
        Ok(TxnOutcome::Failed { .. }) => {
            let _ = keeper.revoke().await;
            Err(ClusterError::AlreadyExists { key })
        }
        Err(e) => {
            let _ = keeper.revoke().await;
            Err(e.into())
        }
    }
}

impl<S: Store> Membership<S> {
    /// The host.
    pub fn host(&self) -> &HostName {
        &self.host
    }

    /// The membership lease.
    pub fn lease(&self) -> Lease {
        self.keeper.lease()
    }

    /// Whether the lease is certainly alive now.
    pub fn is_alive(&self) -> bool {
        self.keeper.is_alive()
    }

    /// Completes when the lease is lost or may have expired.
    pub async fn lost(&self) {
        self.keeper.lost().await
    }

    /// Publishes a new report. [`crate::StoreError::LeaseNotFound`] (inside
    /// [`ClusterError::Store`]) means the host was declared dead: rejoin.
    pub async fn report(&self, report: &HostReport) -> Result<Revision, ClusterError> {
        // A put on the lease: once the lease is gone this fails instead of recreating the key.
        Ok(self
            .store
            .put(&self.key, records::encode(report), Some(self.keeper.id()))
            .await?)
    }

    /// Leaves the cluster now: revokes the lease, deleting the membership key.
    pub async fn leave(self) -> Result<(), ClusterError> {
        Ok(self.keeper.revoke().await?)
    }

    /// Stops renewing the lease without revoking it: to everyone else this host dies when
    /// the lease expires (what a crash looks like; for tests and fault injection).
    pub fn abandon(self) {
        self.keeper.abandon()
    }
}

/// Membership changes, from [`super::ClusterStore::watch_members`].
#[derive(Debug)]
pub struct MemberWatch {
    pub(super) prefix: String,
    pub(super) watch: Watch,
}

impl MemberWatch {
    /// The next change; `None` when the store goes away.
    pub async fn next(&mut self) -> Option<Result<MemberEvent, ClusterError>> {
        let ev = match self.watch.next().await? {
            Ok(ev) => ev,
            Err(e) => return Some(Err(e.into())),
        };
        Some(member_event(&self.prefix, ev))
    }
}

pub(super) fn host_of(prefix: &str, key: &str) -> Result<HostName, ClusterError> {
    key.strip_prefix(prefix)
        .and_then(|n| HostName::new(n).ok())
        .ok_or_else(|| ClusterError::BadKey {
            key: key.to_string(),
        })
}

pub(super) fn member(prefix: &str, kv: &crate::types::KeyValue) -> Result<Member, ClusterError> {
    Ok(Member {
        host: host_of(prefix, &kv.key)?,
        report: records::decode(&kv.key, &kv.value)?,
        lease: kv.lease,
        revision: kv.mod_revision,
    })
}

fn member_event(prefix: &str, ev: WatchEvent) -> Result<MemberEvent, ClusterError> {
    match ev {
        WatchEvent::Put(kv) => member(prefix, &kv).map(MemberEvent::Up),
        WatchEvent::Delete { key, revision } => Ok(MemberEvent::Down {
            host: host_of(prefix, &key)?,
            revision,
        }),
    }
}
