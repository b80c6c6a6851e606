//! Keeping a lease alive in the background, and knowing locally when it may have expired.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::StoreError;
use crate::store::Store;
use crate::types::{Lease, LeaseId};

/// What the keeper knows about its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStatus {
    /// Certainly alive until `until`: the store renewed it after a request sent at
    /// `until - ttl` by this clock, so it cannot expire earlier.
    Alive {
        /// The instant before which the lease cannot have expired.
        until: Instant,
    },
    /// Expired or revoked (the store said so), or not renewed in time: act as if it is gone.
    Lost,
}

/// Renews a lease every third of its time to live.
///
/// The holder of a lease-backed role (a host's membership, the planner's leadership) asks
/// [`LeaseKeeper::is_alive`] before acting and awaits [`LeaseKeeper::lost`] to stop: once the
/// keeper cannot prove the lease is alive it reports [`LeaseStatus::Lost`] and stops renewing,
/// even if the store would still have accepted a renewal. Store-side guards (a transaction
/// conditioned on a lease-backed key) remain the authority; this is the early warning.
#[derive(Debug)]
pub struct LeaseKeeper<S> {
    store: S,
    lease: Lease,
    status: watch::Receiver<LeaseStatus>,
    task: JoinHandle<()>,
}

impl<S: Store> LeaseKeeper<S> {
    /// Grants a lease of `ttl` and keeps it alive.
    pub async fn grant(store: S, ttl: Duration) -> Result<Self, StoreError> {
        let sent = Instant::now();
        let lease = store.grant_lease(ttl).await?;
        Ok(Self::spawn(store, lease, sent + lease.ttl))
    }

    /// Keeps an existing lease alive (renewing it once first; fails if it is gone).
    pub async fn adopt(store: S, lease: Lease) -> Result<Self, StoreError> {
        let sent = Instant::now();
        store.keep_alive(lease.id).await?;
        Ok(Self::spawn(store, lease, sent + lease.ttl))
    }

    fn spawn(store: S, lease: Lease, until: Instant) -> Self {
        let (tx, status) = watch::channel(LeaseStatus::Alive { until });
        let task = tokio::spawn(renew(store.clone(), lease, until, tx));
        Self {
            store,
            lease,
            status,
            task,
        }
    }

    /// The lease.
    pub fn lease(&self) -> Lease {
        self.lease
    }

    /// The lease's id.
    pub fn id(&self) -> LeaseId {
        self.lease.id
    }

    /// The latest status.
    pub fn status(&self) -> LeaseStatus {
        *self.status.borrow()
    }

    /// Whether the lease is certainly alive now.
    pub fn is_alive(&self) -> bool {
        matches!(self.status(), LeaseStatus::Alive { until } if until > Instant::now())
    }

    /// Completes when the lease is lost or may have expired.
    pub async fn lost(&self) {
        let mut rx = self.status.clone();
        loop {
            let status = *rx.borrow_and_update();
            let LeaseStatus::Alive { until } = status else {
                return;
            };
            if until <= Instant::now() {
                return;
            }
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        // The renewer stopped: nothing will extend `until`.
                        tokio::time::sleep_until(until).await;
                        return;
                    }
                }
                _ = tokio::time::sleep_until(until) => return,
            }
        }
    }

    /// Stops renewing without revoking: the lease expires after its time to live (what a
    /// crashed holder looks like to everyone else).
    pub fn abandon(self) {
        self.task.abort();
    }

    /// Stops renewing and revokes the lease, deleting its keys now.
    pub async fn revoke(self) -> Result<(), StoreError> {
        self.task.abort();
        self.store.revoke_lease(self.lease.id).await
    }
}

impl<S> Drop for LeaseKeeper<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn renew<S: Store>(
    store: S,
    lease: Lease,
    mut until: Instant,
    tx: watch::Sender<LeaseStatus>,
) {
    let period = lease.ttl / 3;
    let retry = (lease.ttl / 10).max(Duration::from_millis(50));
    let mut next = Instant::now() + period;
    loop {
        tokio::time::sleep_until(next).await;
        let sent = Instant::now();
        let left = until.saturating_duration_since(sent);
        match tokio::time::timeout(left, store.keep_alive(lease.id)).await {
            Ok(Ok(())) => {
                until = sent + lease.ttl;
                let _ = tx.send(LeaseStatus::Alive { until });
                next = sent + period;
            }
            Ok(Err(StoreError::LeaseNotFound(_))) | Err(_) => {
                tracing::warn!(lease = %lease.id, "lease lost");
                let _ = tx.send(LeaseStatus::Lost);
                return;
            }
            Ok(Err(e)) => {
                if Instant::now() >= until {
                    tracing::warn!(lease = %lease.id, error = %e, "lease not renewed in time");
                    let _ = tx.send(LeaseStatus::Lost);
                    return;
                }
                tracing::debug!(lease = %lease.id, error = %e, "lease renewal failed; retrying");
                next = Instant::now() + retry;
            }
        }
    }
}
