//! A store whose backend is chosen at run time (by the daemon's configuration file).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::counter::WriteCounts;
use crate::embedded::EmbeddedStore;
use crate::error::StoreError;
use crate::etcd::EtcdStore;
use crate::store::Store;
use crate::types::{KeyValue, Lease, LeaseId, Listing, Revision, Txn, TxnOutcome};
use crate::watch::Watch;

/// Where cluster state lives, as written in a configuration file:
///
/// ```toml
/// [store]
/// backend = "etcd"
/// endpoints = ["http://127.0.0.1:2379"]
/// ```
/// or `backend = "embedded"` with `path = "/var/lib/ferry/state.redb"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "kebab-case")]
pub enum StoreConfig {
    /// One redb file (one host).
    Embedded {
        /// The file.
        path: PathBuf,
    },
    /// An etcd cluster.
    Etcd {
        /// Client URLs.
        endpoints: Vec<String>,
    },
}

/// Either backend, behind one concrete type: generic code takes `S: Store`; code that picks
/// the backend from configuration holds an `AnyStore`. An enum instead of `dyn Store` keeps
/// static dispatch and `Send` futures without boxing each call.
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// The embedded redb store.
    Embedded(EmbeddedStore),
    /// etcd.
    Etcd(EtcdStore),
}

impl AnyStore {
    /// Opens the store `config` describes.
    pub async fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        Ok(match config {
            StoreConfig::Embedded { path } => {
                let path = path.clone();
                let s = tokio::task::spawn_blocking(move || EmbeddedStore::open(path))
                    .await
                    .map_err(StoreError::Worker)??;
                AnyStore::Embedded(s)
            }
            StoreConfig::Etcd { endpoints } => AnyStore::Etcd(EtcdStore::connect(endpoints).await?),
        })
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Embedded($s) => $e,
            AnyStore::Etcd($s) => $e,
        }
    };
}

impl Store for AnyStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        each!(self, s => s.get(key).await)
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        each!(self, s => s.list(prefix).await)
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError> {
        each!(self, s => s.put(key, value, lease).await)
    }

    async fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError> {
        each!(self, s => s.delete(key).await)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        each!(self, s => s.delete_prefix(prefix).await)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        each!(self, s => s.txn(txn).await)
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<Lease, StoreError> {
        each!(self, s => s.grant_lease(ttl).await)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        each!(self, s => s.keep_alive(lease).await)
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        each!(self, s => s.revoke_lease(lease).await)
    }

    async fn watch_prefix(
        &self,
        prefix: &str,
        start: Option<Revision>,
    ) -> Result<Watch, StoreError> {
        each!(self, s => s.watch_prefix(prefix, start).await)
    }

    fn write_counts(&self) -> WriteCounts {
        each!(self, s => s.write_counts())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_both_backends() {
        let e: StoreConfig =
            serde_json::from_str(r#"{"backend":"etcd","endpoints":["http://127.0.0.1:2379"]}"#)
                .unwrap();
        assert_eq!(
            e,
            StoreConfig::Etcd {
                endpoints: vec!["http://127.0.0.1:2379".into()]
            }
        );
        let m: StoreConfig =
            serde_json::from_str(r#"{"backend":"embedded","path":"/tmp/x.redb"}"#).unwrap();
        assert_eq!(
            m,
            StoreConfig::Embedded {
                path: "/tmp/x.redb".into()
            }
        );
        assert!(serde_json::from_str::<StoreConfig>(r#"{"backend":"zookeeper"}"#).is_err());
    }
}
