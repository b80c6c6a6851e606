//! The typed records ferry keeps in the store, and their versioned encoding.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::names::{HostName, MigrationId, VmId};
use super::ClusterError;

/// The record layout version written by this build; a record with another version is
/// refused with [`ClusterError::UnsupportedSchema`] rather than misread.
pub const SCHEMA: u32 = 1;

/// Wall-clock time in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Now.
    pub fn now() -> Self {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// What a host offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// Logical CPUs.
    pub cpus: u32,
    /// RAM, bytes.
    pub memory_bytes: u64,
}

/// What a host uses now.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// CPUs busy (0..=capacity.cpus).
    pub cpu_used: f64,
    /// RAM in use, bytes.
    pub memory_used_bytes: u64,
}

/// A host's CPUID feature set ([`ferry_model::cpu::CpuFeatures`]: what a guest on that host
/// gets from KVM); the cluster's baseline is their intersection.
pub use ferry_model::cpu::CpuFeatures;

/// A host's administrative state, set by operators and the planner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum HostState {
    /// Takes VMs.
    Active,
    /// Being emptied; must hold no VM by `deadline`; takes no new VMs.
    Draining {
        /// When it must be empty.
        deadline: Timestamp,
    },
    /// Idle and chosen by consolidation to be powered off; takes no new VMs.
    PowerOffCandidate,
    /// Its membership lease expired (or an operator said so); its VMs were marked lost.
    Failed,
}

/// A symptom of coming failure a host reports about itself (evacuation's trigger).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum HealthSymptom {
    /// Corrected memory errors (EDAC), per hour.
    MemoryErrors {
        /// Rate.
        corrected_per_hour: u32,
    },
    /// I/O errors on a disk.
    DiskErrors {
        /// The device.
        device: String,
    },
    /// A temperature near the limit.
    Overheating {
        /// The hottest sensor, °C.
        celsius: u32,
    },
    /// A power supply failed or is degraded.
    PowerSupply,
    /// Errors on a network interface.
    NetworkErrors {
        /// The interface.
        interface: String,
    },
    /// Anything else, described.
    Other {
        /// What.
        detail: String,
    },
}

/// A host's lasting description (`hosts/<name>`, no lease).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    /// Its name.
    pub name: HostName,
    /// Where its daemon listens.
    pub address: SocketAddr,
    /// What it offers.
    pub capacity: Capacity,
    /// Its CPUs' features.
    pub cpu_features: CpuFeatures,
    /// Its administrative state.
    pub state: HostState,
}

/// A live host's latest report (`members/<name>`, attached to the host's lease: it exists
/// exactly while the host is alive).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostReport {
    /// Current load.
    pub load: Load,
    /// Current symptoms (empty: healthy).
    pub symptoms: Vec<HealthSymptom>,
    /// When the host measured this.
    pub reported_at: Timestamp,
    /// CPUs each of its VMs used over the last sample (cores), by VM name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub vm_cpu: std::collections::BTreeMap<String, f64>,
}

/// Where a VM is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum VmState {
    /// Running on its owner.
    Running,
    /// Running on `from` (its owner) while being copied to `to`; only `to` may take it over,
    /// by the switch-over compare-and-swap.
    Migrating {
        /// The source, which owns it.
        from: HostName,
        /// The destination.
        to: HostName,
        /// The migration.
        migration: MigrationId,
    },
    /// Paused on its owner with its state intact (a migration failed after the pause, or the
    /// daemon restarted): may be resumed by its owner through `recover_vm`.
    PausedRecoverable,
    /// Its owner died; nobody runs it. Its owner may still hold it (a daemon that restarts
    /// and finds its VM process alive recovers it); otherwise it is gone.
    Lost,
}

/// A VM's ownership record (`vms/<id>`): the one fact that says which host may run it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    /// Its id.
    pub id: VmId,
    /// The only host allowed to run it.
    pub owner: HostName,
    /// Its state.
    pub state: VmState,
    /// Ownership generation: raised by every switch-over and recovery. A host acts on a VM
    /// only with the epoch it was given, so an owner that was replaced is fenced off.
    pub epoch: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Guest RAM, bytes.
    pub memory_bytes: u64,
    /// The CPU features the guest runs with (absent in records of older daemons).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<VmCpu>,
}

/// The CPU a VM was started with: a host may take the VM only if it has every one of these
/// features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmCpu {
    /// The features the guest can see.
    pub features: CpuFeatures,
    /// Whether KVM limited the guest to the cluster's baseline (`false`: the guest sees its
    /// first host's CPU, because that host's KVM cannot restrict CPUID).
    pub restricted: bool,
}

/// One finished migration as measured (`history/<id>`): what the cost model learns from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationSample {
    /// The migration.
    pub id: MigrationId,
    /// The VM.
    pub vm: VmId,
    /// Source and destination.
    pub from: HostName,
    /// The destination.
    pub to: HostName,
    /// When it ended.
    pub ended_at: Timestamp,
    /// Guest RAM, bytes.
    pub ram_bytes: u64,
    /// Dirty rate seen in the first live round, bytes/s.
    pub dirty_rate: f64,
    /// Working set: pages dirtied in the last live round, bytes.
    pub working_set_bytes: u64,
    /// Link bandwidth measured during the first round, bytes/s.
    pub bandwidth: f64,
    /// Round-trip time of the link, ms (0: not measured).
    pub rtt_ms: f64,
    /// Bytes on the wire / raw page bytes (1: no compression gain).
    pub codec_ratio: f64,
    /// The strategy the engine used.
    pub strategy: String,
    /// Whether it ended with the VM on the destination.
    pub completed: bool,
    /// Total time, ms.
    pub total_ms: f64,
    /// Downtime, ms.
    pub downtime_ms: f64,
    /// Bytes on the wire.
    pub bytes: u64,
}

/// A migration in flight (`migrations/<id>`), deleted at switch-over or abort.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationRecord {
    /// Its id.
    pub id: MigrationId,
    /// The VM moved.
    pub vm: VmId,
    /// The source.
    pub from: HostName,
    /// The destination.
    pub to: HostName,
    /// When it began.
    pub started_at: Timestamp,
    /// The VM's epoch when it began.
    pub vm_epoch: u64,
}

#[derive(Serialize)]
struct Out<'a, T> {
    schema: u32,
    #[serde(flatten)]
    record: &'a T,
}

#[derive(Deserialize)]
struct Version {
    schema: u32,
}

#[derive(Deserialize)]
struct In<T> {
    #[serde(flatten)]
    record: T,
}

/// A record as stored: JSON with a `schema` field next to the record's own fields.
pub(crate) fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(&Out {
        schema: SCHEMA,
        record,
    })
    .expect("records serialise to JSON")
}

/// Decodes what [`encode`] wrote at `key`, refusing other schema versions.
pub(crate) fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, ClusterError> {
    let decode_err = |source| ClusterError::Decode {
        key: key.to_string(),
        source,
    };
    let v: Version = serde_json::from_slice(bytes).map_err(decode_err)?;
    if v.schema != SCHEMA {
        return Err(ClusterError::UnsupportedSchema {
            key: key.to_string(),
            found: v.schema,
        });
    }
    let r: In<T> = serde_json::from_slice(bytes).map_err(decode_err)?;
    Ok(r.record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> HostName {
        HostName::new(s).unwrap()
    }

    #[test]
    fn records_round_trip_with_schema_and_refuse_other_versions() {
        let vm = VmRecord {
            id: VmId::new("vm-1").unwrap(),
            owner: name("a"),
            state: VmState::Migrating {
                from: name("a"),
                to: name("b"),
                migration: MigrationId::new("m1").unwrap(),
            },
            epoch: 3,
            vcpus: 2,
            memory_bytes: 1 << 30,
            cpu: None,
        };
        let bytes = encode(&vm);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.contains("\"schema\":1"), "{text}");
        assert_eq!(decode::<VmRecord>("k", &bytes).unwrap(), vm);
        let future = text.replace("\"schema\":1", "\"schema\":2");
        assert!(matches!(
            decode::<VmRecord>("k", future.as_bytes()),
            Err(ClusterError::UnsupportedSchema { found: 2, .. })
        ));
        assert!(matches!(
            decode::<VmRecord>("k", b"{\"schema\":1}"),
            Err(ClusterError::Decode { .. })
        ));

        let host = HostRecord {
            name: name("a"),
            address: "127.0.0.1:7000".parse().unwrap(),
            capacity: Capacity {
                cpus: 8,
                memory_bytes: 32 << 30,
            },
            cpu_features: CpuFeatures::from_cpuid(&[(1, 0, [0, 0, 1 << 20, 0])]),
            state: HostState::Draining {
                deadline: Timestamp(5),
            },
        };
        assert_eq!(decode::<HostRecord>("k", &encode(&host)).unwrap(), host);
        let report = HostReport {
            load: Load {
                cpu_used: 1.5,
                memory_used_bytes: 7,
            },
            symptoms: vec![
                HealthSymptom::Overheating { celsius: 92 },
                HealthSymptom::PowerSupply,
            ],
            reported_at: Timestamp(9),
            vm_cpu: [("vm-1".to_string(), 0.5)].into(),
        };
        assert_eq!(decode::<HostReport>("k", &encode(&report)).unwrap(), report);
    }
}
