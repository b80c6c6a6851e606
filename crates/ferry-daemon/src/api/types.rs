//! What the API speaks: requests, replies and events, shared by the daemon and its clients.

use ferry_host::{RamBacking, RamBackingChoice};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a VM is in its life on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    /// Its process is starting.
    Starting,
    /// Running here.
    Running,
    /// Here but its vCPUs do not run (after a migration with an unclear outcome: see `detail`).
    Paused,
    /// Being migrated away.
    MigratingOut,
    /// Arriving by migration.
    Incoming,
    /// Its process ended (the guest exited, or the process died); `stop` removes it.
    Exited,
}

impl VmState {
    /// Whether the VM counts against this host's capacity.
    pub fn holds_resources(self) -> bool {
        !matches!(self, VmState::Exited)
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::MigratingOut => "migrating-out",
            VmState::Incoming => "incoming",
            VmState::Exited => "exited",
        })
    }
}

/// A VM on a host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmInfo {
    /// Its name, unique in the cluster.
    pub name: String,
    /// The host it is on.
    pub host: String,
    /// Where it is in its life.
    pub state: VmState,
    /// Guest RAM, bytes.
    pub memory: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// Its VM host process.
    pub pid: Option<u32>,
    /// Resident memory of that process, bytes.
    pub rss: Option<u64>,
    /// The kernel image it booted (absent for a VM that arrived by migration).
    pub kernel: Option<String>,
    /// Heartbeats the guest has written (a liveness sign for ferry guests).
    pub heartbeats: Option<u64>,
    /// What its guest RAM is made of (`hugetlb`, `memfd-thp`, `anon` or `memfd`), as its process
    /// last said.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "anon")]
    pub ram_backing: Option<RamBacking>,
    /// The migration in progress, if any.
    pub migration: Option<String>,
    /// Why it is paused or exited, when known.
    pub detail: Option<String>,
}

/// `POST /v1/vms`: boot a VM on this host.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CreateVm {
    /// Name (1-63 of a-z, 0-9, '-', '.'), unique in the cluster.
    pub name: String,
    /// A multiboot v1 kernel image on the daemon's host (e.g. from `ferry guest build`).
    pub kernel: String,
    /// Guest RAM, bytes (a multiple of 2 MiB).
    pub memory: u64,
    /// vCPUs.
    #[serde(default = "one")]
    pub vcpus: u8,
    /// What guest RAM is made of: `auto` (default: the fastest the host offers), `anon`, `memfd`
    /// or `hugetlb`, as `ferry vm run --ram-backing`.
    #[serde(default)]
    #[schema(value_type = String, example = "auto")]
    pub ram_backing: RamBackingChoice,
}

fn one() -> u8 {
    1
}

/// The host's limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CapacityInfo {
    /// VMs at most.
    pub max_vms: u32,
    /// Guest RAM offered, bytes.
    pub memory: u64,
    /// vCPUs offered.
    pub vcpus: u32,
    /// Incoming migrations at once.
    pub max_incoming: u32,
    /// Outgoing migrations at once.
    pub max_outgoing: u32,
}

/// The host's load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LoadInfo {
    /// Online CPUs.
    pub cpus: u32,
    /// Fraction of all CPUs busy over the last sample interval (0-1).
    pub cpu_usage: f64,
    /// Host RAM, bytes.
    pub memory_total: u64,
    /// Host RAM in use (total - available), bytes.
    pub memory_used: u64,
    /// VMs here (not counting exited ones).
    pub vms: u32,
    /// Their guest RAM, bytes.
    pub vm_memory: u64,
    /// Their vCPUs.
    pub vm_vcpus: u32,
    /// Resident memory of their processes, bytes.
    pub vm_rss: u64,
    /// Migrations in progress, in and out.
    pub migrations_in_flight: u32,
}

/// `GET /v1/hosts/self`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HostInfo {
    /// The host's name.
    pub name: String,
    /// Its API address for other hosts (`host:port`), if it serves the network API.
    pub api: Option<String>,
    /// The host part sources dial for migrations.
    pub migration_host: String,
    /// Its limits.
    pub capacity: CapacityInfo,
    /// Its load now.
    pub load: LoadInfo,
    /// Whether it can send and receive migrations over the network (it has certificates).
    pub network_migrations: bool,
    /// ferry's version.
    pub version: String,
    /// Its state in the cluster store (`active`, `draining`, `power-off-candidate`, `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Whether it holds its membership lease (absent without a cluster store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alive: Option<bool>,
    /// Number of CPU feature bits it publishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_features: Option<u32>,
    /// Whether it leads the planner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<bool>,
}

/// A VM's ownership record as `GET /v1/cluster` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmRecordInfo {
    /// The VM.
    pub name: String,
    /// The one host allowed to run it.
    pub owner: String,
    /// `running`, `migrating`, `paused-recoverable`, `lost`.
    pub state: String,
    /// Ownership generation.
    pub epoch: u64,
    /// Guest RAM, bytes.
    pub memory: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Whether its CPU was limited to the cluster's baseline (`false`: its first host's CPU).
    pub cpu_restricted: Option<bool>,
}

/// `GET /v1/cluster`: the cluster store's view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterInfo {
    /// The planner's leader.
    pub leader: Option<String>,
    /// Every host with a record.
    pub hosts: Vec<HostInfo>,
    /// Every VM record.
    pub vms: Vec<VmRecordInfo>,
    /// Migrations in flight (`id: vm from -> to`).
    pub migrations: Vec<String>,
}

/// `POST /v1/migrations/{id}/bandwidth`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct BandwidthRequest {
    /// The new limit over all channels, bytes/s (0: none).
    pub bytes_per_sec: u64,
}

/// `POST /v1/migrations`: move a VM of this host to another host.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct StartMigration {
    /// The VM.
    pub vm: String,
    /// The destination host's name (its certificate must carry it).
    pub to: String,
    /// The destination's API address (`host:port`); default: from the cluster store.
    #[serde(default)]
    pub to_api: Option<String>,
    /// stop-and-copy, precopy, postcopy, hybrid or auto.
    #[serde(default = "auto")]
    pub strategy: String,
    /// Pause the guest may see at switch-over, ms.
    #[serde(default = "ten")]
    pub downtime_ms: u64,
    /// Bandwidth limit over all channels, bytes/s (0 = none).
    #[serde(default)]
    pub max_bandwidth: u64,
    /// Parallel channels (0: chosen from the link).
    #[serde(default)]
    pub channels: u16,
    /// off, lz4, zstd, zstd:N, adaptive.
    #[serde(default = "adaptive")]
    pub compression: String,
    /// Compare RAM digests after the switch-over.
    #[serde(default = "yes")]
    pub verify: bool,
    /// Live rounds at most before switching over anyway.
    #[serde(default = "thirty")]
    pub max_rounds: u32,
    /// A migration the planner already began in the cluster store (its id); default: this
    /// host begins one.
    #[serde(default)]
    pub migration: Option<String>,
}

fn auto() -> String {
    "auto".into()
}
fn ten() -> u64 {
    10
}
fn adaptive() -> String {
    "adaptive".into()
}
fn yes() -> bool {
    true
}
fn thirty() -> u32 {
    30
}

impl StartMigration {
    /// A migration of `vm` to host `to` with ferry's defaults.
    pub fn new(vm: impl Into<String>, to: impl Into<String>) -> Self {
        StartMigration {
            vm: vm.into(),
            to: to.into(),
            to_api: None,
            strategy: auto(),
            downtime_ms: ten(),
            max_bandwidth: 0,
            channels: 0,
            compression: adaptive(),
            verify: true,
            max_rounds: thirty(),
            migration: None,
        }
    }
}

/// Where a migration is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationState {
    /// Asking the destination to get ready.
    Preparing,
    /// Pages are moving.
    Running,
    /// The VM runs on the destination.
    Completed,
    /// It failed; `error` says why and where the VM is.
    Failed,
}

impl MigrationState {
    /// Whether it has ended.
    pub fn is_final(self) -> bool {
        matches!(self, MigrationState::Completed | MigrationState::Failed)
    }
}

/// Where the VM is after a failed migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum VmWhere {
    /// Still running on the source, unchanged.
    Source,
    /// Running on the destination.
    Destination,
    /// Paused; the rest of the migration can be finished (`ferry migrate --recover`).
    PausedRecoverable,
    /// Not known: the source keeps its copy paused; check both hosts.
    Unknown,
}

/// Why a migration failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MigrationFailure {
    /// A short kind (timeout, not-allowed, unreachable, destination-busy, ...).
    pub cause: String,
    /// Where the VM is.
    pub vm: VmWhere,
    /// What happened.
    pub message: String,
}

/// A migration, in flight or ended.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MigrationInfo {
    /// Its id.
    pub id: String,
    /// The VM.
    pub vm: String,
    /// Source host.
    pub from: String,
    /// Destination host.
    pub to: String,
    /// Strategy asked for.
    pub strategy: String,
    /// Where it is.
    pub state: MigrationState,
    /// The engine's phase (handshake, live-copy, switch-over, postcopy, verify, done).
    pub phase: Option<String>,
    /// Current round.
    pub round: u32,
    /// Pages of the round done.
    pub done: u64,
    /// Pages in the round.
    pub total: u64,
    /// Bytes sent so far.
    pub bytes: u64,
    /// Start, ms since the Unix epoch.
    pub started_unix_ms: u64,
    /// Time since it started (or its whole duration once ended), ms.
    pub elapsed_ms: u64,
    /// The engine's report, once completed.
    #[schema(value_type = Option<Object>)]
    pub report: Option<ferry_migrate::Report>,
    /// Why it failed.
    pub error: Option<MigrationFailure>,
}

/// `POST /v1/incoming` (daemon to daemon): get ready to receive a VM.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct IncomingRequest {
    /// The VM's name.
    pub vm: String,
    /// Its RAM, bytes.
    pub memory: u64,
    /// Its vCPUs.
    pub vcpus: u8,
    /// The migration's id at the source.
    pub migration: String,
    /// The source host's name.
    pub from: String,
}

/// Answer to [`IncomingRequest`]: where to send the VM.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct IncomingReady {
    /// Address to migrate to (`host:port`).
    pub address: String,
    /// Name the destination's certificate carries.
    pub tls_name: String,
}

/// `POST /v1/hosts/{name}/drain`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DrainRequest {
    /// Seconds by which the host must be empty.
    pub by_secs: u64,
}

/// Something that happened, as sent on `/v1/events`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum DaemonEvent {
    /// A migration's progress (the engine's own event).
    MigrationProgress {
        /// The migration.
        id: String,
        /// The VM.
        vm: String,
        /// The engine's event: phase, progress, round, adapt.
        #[schema(value_type = Object)]
        event: ferry_migrate::Event,
    },
    /// A migration started, changed state or ended.
    Migration {
        /// Its state now.
        migration: Box<MigrationInfo>,
    },
    /// A VM changed state here.
    Vm {
        /// The VM.
        vm: String,
        /// Its new state (`None`: it left this host, by migration or stop).
        state: Option<VmState>,
        /// Why, when it matters.
        detail: Option<String>,
    },
}

impl DaemonEvent {
    /// The SSE event name.
    pub fn kind(&self) -> &'static str {
        match self {
            DaemonEvent::MigrationProgress { .. } => "migration-progress",
            DaemonEvent::Migration { .. } => "migration",
            DaemonEvent::Vm { .. } => "vm",
        }
    }

    /// The migration it concerns.
    pub fn migration_id(&self) -> Option<&str> {
        match self {
            DaemonEvent::MigrationProgress { id, .. } => Some(id),
            DaemonEvent::Migration { migration } => Some(&migration.id),
            DaemonEvent::Vm { .. } => None,
        }
    }

    /// The VM it concerns.
    pub fn vm(&self) -> &str {
        match self {
            DaemonEvent::MigrationProgress { vm, .. } | DaemonEvent::Vm { vm, .. } => vm,
            DaemonEvent::Migration { migration } => &migration.vm,
        }
    }
}

/// An error answer.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    /// What went wrong.
    pub error: String,
}
