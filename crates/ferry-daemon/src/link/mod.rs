//! The daemon's link to the cluster store: membership with a lease, this host's record, the
//! ownership records of its VMs, and (on the leader) the planner.
//!
//! - [`ClusterLink`]: the store handle and what this host publishes (capacity, load, CPU).
//! - `membership`: join (waiting out a previous run's lease), report load, freeze every VM
//!   when the lease may have expired, reconcile local VMs with their records after joining.
//! - `ownership`: VM records on create, stop and migration (begin, abort, the destination's
//!   commit gate that moves ownership with a compare-and-swap before the VM first runs here).
//! - `leader`: leader election; the leader turns host deaths into lost VMs and runs the planner.

mod leader;
mod membership;
mod ownership;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use ferry_store::cluster::{ClusterError, ClusterStore, CpuFeatures, HostName};
use ferry_store::{AnyStore, StoreConfig};

pub use leader::LeaderState;

use crate::config::{DaemonConfig, StoreSection};

/// Why the cluster store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The host name is not a valid record name.
    #[error("host name {0:?} cannot name a cluster record")]
    Name(String),
    /// The store cannot be opened.
    #[error("cannot open the cluster store")]
    Open(#[source] ferry_store::StoreError),
}

/// This host's handle on the cluster store.
pub struct ClusterLink {
    /// Typed records.
    pub store: ClusterStore<AnyStore>,
    /// This host.
    pub host: HostName,
    /// This host's CPU features (what a guest here gets from KVM).
    pub features: CpuFeatures,
    /// Whether KVM could report the features (`false`: an empty set is published).
    pub features_known: bool,
    /// Membership lease time to live.
    pub lease_ttl: Duration,
    joined: AtomicBool,
    /// What the leader knows (who leads; on the leader, its planner).
    pub leader: Mutex<LeaderState>,
    /// Failure symptoms this host reports (evacuation's trigger).
    pub symptoms: Mutex<Vec<ferry_store::cluster::HealthSymptom>>,
}

impl ClusterLink {
    /// Opens the store `cfg` names (`None` without a `[store]` section).
    pub async fn open(cfg: &DaemonConfig) -> Result<Option<ClusterLink>, LinkError> {
        let Some(section) = &cfg.store else {
            return Ok(None);
        };
        let host = HostName::new(&cfg.name).map_err(|_| LinkError::Name(cfg.name.clone()))?;
        let config = match section {
            StoreSection::Embedded { path } => StoreConfig::Embedded {
                path: path
                    .clone()
                    .unwrap_or_else(|| cfg.data_dir.join("state.redb")),
            },
            StoreSection::Etcd { endpoints } => StoreConfig::Etcd {
                endpoints: endpoints.clone(),
            },
        };
        let store = AnyStore::open(&config).await.map_err(LinkError::Open)?;
        Ok(Some(Self::with_store(
            ClusterStore::new(store),
            host,
            Duration::from_secs(cfg.cluster.lease_secs),
        )))
    }

    /// A link over an open store (tests share one embedded store between daemons).
    pub fn with_store(
        store: ClusterStore<AnyStore>,
        host: HostName,
        lease_ttl: Duration,
    ) -> ClusterLink {
        let (features, features_known) = match ferry_vmm::host_cpu_features() {
            Ok(f) => (f, true),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read this host's CPU features from KVM; publishing none");
                (CpuFeatures::default(), false)
            }
        };
        ClusterLink {
            store,
            host,
            features,
            features_known,
            lease_ttl,
            joined: AtomicBool::new(false),
            leader: Mutex::new(LeaderState::default()),
            symptoms: Mutex::new(Vec::new()),
        }
    }

    /// Whether this host is a member now (its lease is alive as far as it knows).
    pub fn joined(&self) -> bool {
        self.joined.load(Ordering::SeqCst)
    }

    pub(crate) fn set_joined(&self, v: bool) {
        self.joined.store(v, Ordering::SeqCst);
    }

    /// The leader state, poison-tolerant.
    pub fn leader_state(&self) -> std::sync::MutexGuard<'_, LeaderState> {
        self.leader.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A store error as an API failure.
pub(crate) fn store_failure(e: ClusterError) -> crate::daemon::Failure {
    use crate::daemon::Failure;
    match e {
        ClusterError::Conflict { .. } | ClusterError::AlreadyExists { .. } => {
            Failure::Conflict(describe(&e))
        }
        ClusterError::NotFound { .. } => Failure::NotFound(describe(&e)),
        ClusterError::Transition(_) => Failure::Conflict(describe(&e)),
        _ => Failure::Refused(format!("cluster store: {}", describe(&e))),
    }
}

/// An error and its causes on one line.
pub(crate) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// What the cost model learns from a completed migration's report.
pub fn sample_of(
    id: &ferry_store::cluster::MigrationId,
    vm: &ferry_store::cluster::VmId,
    from: &HostName,
    to: &HostName,
    report: &ferry_migrate::Report,
) -> ferry_store::cluster::MigrationSample {
    const PAGE: f64 = 4096.0;
    let first = report.rounds.first();
    let raw = report.pages_sent as f64 * PAGE;
    ferry_store::cluster::MigrationSample {
        id: id.clone(),
        vm: vm.clone(),
        from: from.clone(),
        to: to.clone(),
        ended_at: ferry_store::cluster::Timestamp::now(),
        ram_bytes: report.ram_bytes,
        dirty_rate: first.map_or(0.0, |r| r.dirty_rate() * PAGE),
        working_set_bytes: report
            .rounds
            .last()
            .map_or(0, |r| r.dirtied.saturating_mul(PAGE as u64)),
        bandwidth: first.map_or(0.0, |r| r.bandwidth()),
        rtt_ms: report.rtt_ms,
        codec_ratio: if raw > 0.0 {
            (report.bytes_sent as f64 / raw).min(1.5)
        } else {
            1.0
        },
        strategy: report.strategy_used.clone(),
        completed: true,
        total_ms: report.total_ms,
        downtime_ms: report.downtime_ms,
        bytes: report.bytes_sent,
    }
}

impl crate::daemon::Daemon {
    /// `GET /v1/cluster`: hosts (records, membership, load), VM records, migrations in flight.
    pub async fn cluster_info(
        &self,
    ) -> Result<crate::api::types::ClusterInfo, crate::daemon::Failure> {
        use crate::api::types::{CapacityInfo, ClusterInfo, HostInfo, LoadInfo, VmRecordInfo};
        use ferry_store::cluster::{HostState, VmState};
        let Some(link) = &self.cluster else {
            return Err(crate::daemon::Failure::Refused(
                "this daemon has no cluster store ([store])".into(),
            ));
        };
        let s = &link.store;
        let hosts = s.hosts().await.map_err(store_failure)?;
        let members = s.members().await.map_err(store_failure)?;
        let vms = s.vms().await.map_err(store_failure)?;
        let migrations = s.migrations().await.map_err(store_failure)?;
        let election = ferry_store::Election::new(s.store().clone(), s.keys().planner_leader());
        let leader = election.leader().await.ok().flatten().map(|l| l.candidate);
        let hosts = hosts
            .items
            .iter()
            .map(|h| {
                let r = &h.record;
                let m = members.items.iter().find(|m| m.host == r.name);
                let vms_here: Vec<_> = vms
                    .items
                    .iter()
                    .filter(|v| v.record.owner == r.name)
                    .collect();
                HostInfo {
                    name: r.name.to_string(),
                    api: (r.address.port() != 0).then(|| r.address.to_string()),
                    migration_host: r.address.ip().to_string(),
                    capacity: CapacityInfo {
                        max_vms: 0,
                        memory: r.capacity.memory_bytes,
                        vcpus: r.capacity.cpus,
                        max_incoming: 0,
                        max_outgoing: 0,
                    },
                    load: LoadInfo {
                        cpus: r.capacity.cpus,
                        cpu_usage: m.map_or(0.0, |m| {
                            m.report.load.cpu_used / f64::from(r.capacity.cpus.max(1))
                        }),
                        memory_total: 0,
                        memory_used: m.map_or(0, |m| m.report.load.memory_used_bytes),
                        vms: vms_here.len() as u32,
                        vm_memory: vms_here.iter().map(|v| v.record.memory_bytes).sum(),
                        vm_vcpus: vms_here.iter().map(|v| v.record.vcpus).sum(),
                        vm_rss: 0,
                        migrations_in_flight: migrations
                            .items
                            .iter()
                            .filter(|x| x.record.from == r.name || x.record.to == r.name)
                            .count() as u32,
                    },
                    network_migrations: r.address.port() != 0,
                    version: String::new(),
                    state: Some(
                        match r.state {
                            HostState::Active => "active",
                            HostState::Draining { .. } => "draining",
                            HostState::PowerOffCandidate => "power-off-candidate",
                            HostState::Failed => "failed",
                        }
                        .into(),
                    ),
                    alive: Some(m.is_some()),
                    cpu_features: Some(r.cpu_features.count()),
                    leader: Some(leader.as_deref() == Some(r.name.as_str())),
                }
            })
            .collect();
        let vms = vms
            .items
            .iter()
            .map(|v| {
                let r = &v.record;
                VmRecordInfo {
                    name: r.id.to_string(),
                    owner: r.owner.to_string(),
                    state: match &r.state {
                        VmState::Running => "running".into(),
                        VmState::Migrating { to, .. } => format!("migrating to {to}"),
                        VmState::PausedRecoverable => "paused-recoverable".into(),
                        VmState::Lost => "lost".into(),
                    },
                    epoch: r.epoch,
                    memory: r.memory_bytes,
                    vcpus: r.vcpus,
                    cpu_restricted: r.cpu.map(|c| c.restricted),
                }
            })
            .collect();
        let migrations = migrations
            .items
            .iter()
            .map(|m| {
                format!(
                    "{}: {} {} -> {}",
                    m.record.id, m.record.vm, m.record.from, m.record.to
                )
            })
            .collect();
        Ok(ClusterInfo {
            leader,
            hosts,
            vms,
            migrations,
        })
    }
}
