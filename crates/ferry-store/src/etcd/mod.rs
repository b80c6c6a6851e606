//! The etcd backend (etcd's v3 API through the `etcd-client` crate; works with Debian's
//! etcd 3.4), and [`LocalEtcd`], which runs an etcd server for one machine.
//!
//! Semantics that differ from the embedded store: etcd counts lease time to live in whole
//! seconds and raises short ones to its minimum (about 1.5 × its election timeout; see
//! [`LocalEtcdConfig`]), checks expiry every 500 ms, and renews every lease when it restarts
//! or elects a new leader. Watches work across processes and hosts.

mod local;

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, TxnOp,
    TxnOpResponse, WatchOptions,
};
use tokio::sync::mpsc;

pub use self::local::{EtcdSupervisor, LocalEtcd, LocalEtcdConfig, LocalEtcdError};
use crate::counter::{WriteCounter, WriteCounts, WriteKind};
use crate::error::StoreError;
use crate::store::Store;
use crate::types::{
    Condition, KeyValue, Lease, LeaseId, Listing, Op, Revision, Txn, TxnOutcome, WatchEvent,
};
use crate::watch::{Watch, WATCH_BUFFER};
use std::sync::Arc;

/// How long a request may take before it fails (watches and keep-alive streams are not cut).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A [`crate::Store`] backed by an etcd cluster. Clones share one connection.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Shared>,
}

struct Shared {
    client: Client,
    counts: WriteCounter,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").finish_non_exhaustive()
    }
}

fn rev(r: i64) -> Revision {
    Revision(u64::try_from(r).unwrap_or(0))
}

fn rev_i64(r: Revision) -> i64 {
    i64::try_from(r.0).unwrap_or(i64::MAX)
}

fn header_rev(h: Option<&etcd_client::ResponseHeader>) -> Revision {
    rev(h.map_or(0, |h| h.revision()))
}

fn convert(kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
    let key =
        std::str::from_utf8(kv.key()).map_err(|_| StoreError::NonUtf8Key(kv.key().to_vec()))?;
    Ok(KeyValue {
        key: key.to_string(),
        value: kv.value().to_vec(),
        create_revision: rev(kv.create_revision()),
        mod_revision: rev(kv.mod_revision()),
        version: u64::try_from(kv.version()).unwrap_or(0),
        lease: (kv.lease() != 0).then_some(LeaseId(kv.lease())),
    })
}

/// Maps etcd's "requested lease not found" to [`StoreError::LeaseNotFound`].
fn map_err(lease: Option<LeaseId>) -> impl Fn(etcd_client::Error) -> StoreError {
    move |e| match (&e, lease) {
        (etcd_client::Error::GRpcStatus(s), Some(l)) if s.message().contains("lease not found") => {
            StoreError::LeaseNotFound(l)
        }
        (etcd_client::Error::LeaseKeepAliveError(m), Some(l)) if m.contains("lease not found") => {
            StoreError::LeaseNotFound(l)
        }
        _ => StoreError::etcd(e),
    }
}

fn lease_of_ops(ops: &[Op]) -> Option<LeaseId> {
    ops.iter().find_map(|op| match op {
        Op::Put { lease, .. } => *lease,
        Op::Delete { .. } => None,
    })
}

impl EtcdStore {
    /// Connects to the etcd cluster at `endpoints` (`http://host:port`) and checks that it
    /// answers.
    pub async fn connect<E: AsRef<str>>(endpoints: &[E]) -> Result<Self, StoreError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
        let mut client = Client::connect(endpoints, Some(options))
            .await
            .map_err(StoreError::etcd)?;
        client.status().await.map_err(StoreError::etcd)?;
        Ok(Self {
            inner: Arc::new(Shared {
                client,
                counts: WriteCounter::default(),
            }),
        })
    }

    /// The underlying client, for what the [`Store`] trait does not cover.
    pub fn client(&self) -> Client {
        self.inner.client.clone()
    }
}

impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let resp = self
            .inner
            .client
            .clone()
            .get(key, None)
            .await
            .map_err(StoreError::etcd)?;
        resp.kvs().first().map(convert).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let resp = self
            .client()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(StoreError::etcd)?;
        Ok(Listing {
            revision: header_rev(resp.header()),
            kvs: resp.kvs().iter().map(convert).collect::<Result<_, _>>()?,
        })
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError> {
        self.inner.counts.record(WriteKind::Put);
        let opts = lease.map(|l| PutOptions::new().with_lease(l.0));
        let resp = self
            .client()
            .put(key, value, opts)
            .await
            .map_err(map_err(lease))?;
        Ok(header_rev(resp.header()))
    }

    async fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError> {
        self.inner.counts.record(WriteKind::Delete);
        let resp = self
            .inner
            .client
            .clone()
            .delete(key, None)
            .await
            .map_err(StoreError::etcd)?;
        Ok((resp.deleted() > 0).then(|| header_rev(resp.header())))
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        self.inner.counts.record(WriteKind::Delete);
        let resp = self
            .client()
            .delete(
                prefix,
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )
            .await
            .map_err(StoreError::etcd)?;
        Ok(u64::try_from(resp.deleted()).unwrap_or(0))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        txn.validate()?;
        self.inner.counts.record(WriteKind::Txn);
        let lease = lease_of_ops(&txn.ops);
        let compares: Vec<Compare> = txn
            .conditions
            .iter()
            .map(|c| match c {
                // etcd compares an absent key's modification revision as 0.
                Condition::ModRevision { key, expected } => Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    expected.map_or(0, rev_i64),
                ),
            })
            .collect();
        let then: Vec<TxnOp> = txn
            .ops
            .into_iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => {
                    TxnOp::put(key, value, lease.map(|l| PutOptions::new().with_lease(l.0)))
                }
                Op::Delete { key } => TxnOp::delete(key, None),
            })
            .collect();
        let otherwise: Vec<TxnOp> = txn
            .conditions
            .iter()
            .map(|c| TxnOp::get(c.key(), None))
            .collect();
        let request = etcd_client::Txn::new()
            .when(compares)
            .and_then(then)
            .or_else(otherwise);
        let resp = self
            .inner
            .client
            .clone()
            .txn(request)
            .await
            .map_err(map_err(lease))?;
        if resp.succeeded() {
            return Ok(TxnOutcome::Committed {
                revision: header_rev(resp.header()),
            });
        }
        let mut current = Vec::with_capacity(txn.conditions.len());
        for r in resp.op_responses() {
            match r {
                TxnOpResponse::Get(g) => current.push(g.kvs().first().map(convert).transpose()?),
                other => {
                    return Err(StoreError::etcd(etcd_client::Error::InvalidArgs(format!(
                        "unexpected response in a failed transaction: {other:?}"
                    ))))
                }
            }
        }
        Ok(TxnOutcome::Failed { current })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<Lease, StoreError> {
        if ttl.is_zero() {
            return Err(StoreError::ZeroTtl);
        }
        self.inner.counts.record(WriteKind::LeaseGrant);
        let secs = i64::try_from(ttl.as_millis().div_ceil(1000)).unwrap_or(i64::MAX);
        let resp = self
            .client()
            .lease_grant(secs, None)
            .await
            .map_err(StoreError::etcd)?;
        if !resp.error().is_empty() {
            return Err(StoreError::etcd(etcd_client::Error::InvalidArgs(
                resp.error().to_string(),
            )));
        }
        Ok(Lease {
            id: LeaseId(resp.id()),
            ttl: Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(0)),
        })
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.counts.record(WriteKind::KeepAlive);
        // `lease_keep_alive` sends one keep-alive and waits for its answer; dropping the
        // stream ends it.
        self.client()
            .lease_keep_alive(lease.0)
            .await
            .map(drop)
            .map_err(map_err(Some(lease)))
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.counts.record(WriteKind::LeaseRevoke);
        self.client()
            .lease_revoke(lease.0)
            .await
            .map(drop)
            .map_err(map_err(Some(lease)))
    }

    async fn watch_prefix(
        &self,
        prefix: &str,
        start: Option<Revision>,
    ) -> Result<Watch, StoreError> {
        let mut options = WatchOptions::new().with_prefix();
        if let Some(s) = start {
            options = options.with_start_revision(rev_i64(s.max(Revision(1))));
        }
        let mut stream = self
            .client()
            .watch(prefix, Some(options))
            .await
            .map_err(StoreError::etcd)?;
        // The first answer confirms the watch (or refuses a compacted start).
        match stream.message().await.map_err(StoreError::etcd)? {
            Some(r) if r.canceled() => {
                return Err(if r.compact_revision() > 0 {
                    StoreError::Compacted {
                        requested: start.unwrap_or(Revision(0)),
                        oldest: rev(r.compact_revision()),
                    }
                } else {
                    StoreError::etcd(etcd_client::Error::WatchError(
                        r.cancel_reason().to_string(),
                    ))
                });
            }
            Some(_) => {}
            None => {
                return Err(StoreError::etcd(etcd_client::Error::WatchError(
                    "etcd closed the watch stream before confirming it".into(),
                )))
            }
        }
        let (tx, out) = mpsc::channel(WATCH_BUFFER);
        let requested = start.unwrap_or(Revision(0));
        let task = tokio::spawn(async move {
            loop {
                let resp = match stream.message().await {
                    Ok(Some(r)) => r,
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(StoreError::etcd(e))).await;
                        return;
                    }
                };
                if resp.canceled() {
                    let err = if resp.compact_revision() > 0 {
                        StoreError::Compacted {
                            requested,
                            oldest: rev(resp.compact_revision()),
                        }
                    } else {
                        StoreError::etcd(etcd_client::Error::WatchError(
                            resp.cancel_reason().to_string(),
                        ))
                    };
                    let _ = tx.send(Err(err)).await;
                    return;
                }
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let item = match ev.event_type() {
                        EventType::Put => convert(kv).map(WatchEvent::Put),
                        EventType::Delete => convert(kv).map(|kv| WatchEvent::Delete {
                            key: kv.key,
                            revision: kv.mod_revision,
                        }),
                    };
                    let failed = item.is_err();
                    if tx.send(item).await.is_err() || failed {
                        return;
                    }
                }
            }
        });
        Ok(Watch::new(out, task))
    }

    fn write_counts(&self) -> WriteCounts {
        self.inner.counts.snapshot()
    }
}
