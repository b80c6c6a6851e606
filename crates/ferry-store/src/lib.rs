//! Ferry's cluster state: where hosts, VM ownership and migrations in flight are recorded,
//! shared by every host's daemon and the planner.
//!
//! * [`Store`]: a revisioned key-value store with compare-and-swap transactions, leases and
//!   prefix watches (etcd's model). Two backends with the same semantics, checked by one
//!   conformance suite (`tests/conformance`): [`EmbeddedStore`] (one redb file: one host,
//!   tests) and [`EtcdStore`] (etcd 3.4+ for many hosts). [`AnyStore`] picks one from a
//!   [`StoreConfig`].
//! * [`LeaseKeeper`]: renews a lease and says when it may have expired.
//! * [`Election`]: leader election on a lease and create-if-absent; a [`Leadership`] makes
//!   changes conditional on still being leader.
//! * [`cluster::ClusterStore`]: typed, versioned records (hosts, membership by lease, VMs,
//!   migrations) and the compare-and-swap that moves a VM's ownership at switch-over.
//! * [`LocalEtcd`]: runs an etcd server on this machine (tests, `ferry cluster up`, or
//!   `cargo run -p ferry-store --example local-etcd -- DIR`).
//!
//! Every handle counts the writes it sends ([`Store::write_counts`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use ferry_store::cluster::{ClusterStore, HostName};
//! use ferry_store::{AnyStore, Election, LeaseKeeper, StoreConfig};
//!
//! let store = AnyStore::open(&StoreConfig::Etcd { endpoints: vec!["http://127.0.0.1:2379".into()] }).await?;
//! let cluster = ClusterStore::new(store.clone());
//! let lease = LeaseKeeper::grant(store.clone(), Duration::from_secs(5)).await?;
//! let election = Election::new(store, cluster.keys().planner_leader());
//! let leadership = election.campaign("host-a", lease.id()).await?;
//! // Every change the planner makes is conditional on still being leader:
//! let planner = cluster.guarded_by(leadership.condition());
//! planner.host_died(&HostName::new("host-b")?).await?;
//! # Ok(()) }
//! ```

mod any;
pub mod cluster;
mod counter;
mod election;
mod embedded;
mod error;
mod etcd;
mod lease;
mod store;
mod types;
mod watch;

pub use any::{AnyStore, StoreConfig};
pub use counter::WriteCounts;
pub use election::{Election, LeaderInfo, LeaderWatch, Leadership};
pub use embedded::{EmbeddedStore, HISTORY_EVENTS};
pub use error::StoreError;
pub use etcd::{EtcdStore, EtcdSupervisor, LocalEtcd, LocalEtcdConfig, LocalEtcdError};
pub use lease::{LeaseKeeper, LeaseStatus};
pub use store::Store;
pub use types::{
    CasOutcome, Condition, KeyValue, Lease, LeaseId, Listing, Op, Revision, Txn, TxnOutcome,
    WatchEvent,
};
pub use watch::Watch;
