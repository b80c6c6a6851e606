//! The daemon's tables (VMs, migrations) and the decisions on them, as plain data and functions:
//! admission against capacity and concurrency limits, load sums, snapshots for the API.

use std::collections::BTreeMap;
use std::process::Child;
use std::time::Instant;

use axum::http::StatusCode;
use ferry_host::RamBacking;

use crate::api::types::{LoadInfo, MigrationInfo, MigrationState, VmInfo, VmState};
use crate::config::Capacity;
use crate::rundir::VmMeta;

/// Why a request was refused or failed; each maps to an HTTP status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// Malformed or invalid input (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such VM, migration or host (404).
    #[error("{0}")]
    NotFound(String),
    /// Not possible in the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// Over a capacity or concurrency limit, or the host cannot do it (503).
    #[error("{0}")]
    Refused(String),
    /// Something failed on this host or a peer (500 / 502).
    #[error("{0}")]
    Internal(String),
    /// A peer daemon failed (502).
    #[error("{0}")]
    Peer(String),
}

impl Failure {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Failure::BadRequest(_) => StatusCode::BAD_REQUEST,
            Failure::NotFound(_) => StatusCode::NOT_FOUND,
            Failure::Conflict(_) => StatusCode::CONFLICT,
            Failure::Refused(_) => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Failure::Peer(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

/// A VM on this host.
pub struct VmEntry {
    /// What it is (as in its run directory).
    pub meta: VmMeta,
    /// Where it is in its life.
    pub state: VmState,
    /// Why it is paused or exited.
    pub detail: Option<String>,
    /// Its process, when this daemon started it (reaped here); adopted ones have none.
    pub child: Option<Child>,
    /// The migration it takes part in (outgoing, or incoming).
    pub migration: Option<String>,
    /// Heartbeats seen in the last probe.
    pub heartbeats: Option<u64>,
    /// What its RAM is made of, as the last probe said.
    pub ram_backing: Option<RamBacking>,
    /// Resident memory of its process.
    pub rss: Option<u64>,
    /// CPUs its process used over the last load sample (cores).
    pub cpu: Option<f64>,
    /// Its process's CPU time at the last sample, seconds.
    pub cpu_seconds: Option<f64>,
    /// Its process is stopped (SIGSTOP) because this host may no longer own it.
    pub frozen: bool,
    /// When it entered its state.
    pub since: Instant,
}

impl VmEntry {
    /// A new entry in `state`.
    pub fn new(meta: VmMeta, state: VmState) -> Self {
        VmEntry {
            meta,
            state,
            detail: None,
            child: None,
            migration: None,
            heartbeats: None,
            ram_backing: None,
            rss: None,
            cpu: None,
            cpu_seconds: None,
            frozen: false,
            since: Instant::now(),
        }
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id()).or(self.meta.pid)
    }

    /// Moves it to `state`.
    pub fn set_state(&mut self, state: VmState, detail: Option<String>) {
        if self.state != state {
            self.since = Instant::now();
        }
        self.state = state;
        self.detail = detail;
    }

    /// As the API shows it.
    pub fn info(&self, host: &str) -> VmInfo {
        VmInfo {
            name: self.meta.name.clone(),
            host: host.to_string(),
            state: self.state,
            memory: self.meta.memory,
            vcpus: self.meta.vcpus,
            pid: self.pid(),
            rss: self.rss,
            kernel: self
                .meta
                .kernel
                .as_ref()
                .map(|k| k.to_string_lossy().into_owned()),
            heartbeats: self.heartbeats,
            ram_backing: self.ram_backing,
            migration: self.migration.clone(),
            detail: self.detail.clone(),
        }
    }
}

/// Which way a migration goes, seen from this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// A VM of this host leaves.
    Out,
    /// A VM arrives here.
    In,
}

/// A migration this host takes part in.
pub struct MigrationEntry {
    /// As the API shows it.
    pub info: MigrationInfo,
    /// Which way.
    pub direction: Direction,
    /// When it started.
    pub started: Instant,
}

/// Ended migrations kept for `GET /v1/migrations/{id}`.
const KEEP_ENDED: usize = 256;

/// The tables.
pub struct State {
    host: String,
    /// VMs by name.
    pub vms: BTreeMap<String, VmEntry>,
    /// Migrations by id.
    pub migrations: BTreeMap<String, MigrationEntry>,
}

impl State {
    /// Empty tables of host `host`.
    pub fn new(host: &str) -> Self {
        State {
            host: host.to_string(),
            vms: BTreeMap::new(),
            migrations: BTreeMap::new(),
        }
    }

    /// VMs here.
    pub fn vm_count(&self) -> usize {
        self.vms.len()
    }

    /// The VM list.
    pub fn vm_infos(&self) -> Vec<VmInfo> {
        self.vms.values().map(|v| v.info(&self.host)).collect()
    }

    /// One VM.
    pub fn vm_info(&self, name: &str) -> Result<VmInfo, Failure> {
        self.vms
            .get(name)
            .map(|v| v.info(&self.host))
            .ok_or_else(|| Failure::NotFound(format!("no VM named '{name}' on host {}", self.host)))
    }

    /// Checks that a VM of `memory` bytes and `vcpus` fits next to the VMs here.
    pub fn admit(&self, cap: &Capacity, name: &str, memory: u64, vcpus: u8) -> Result<(), Failure> {
        if self.vms.contains_key(name) {
            return Err(Failure::Conflict(format!(
                "a VM named '{name}' is already on host {}",
                self.host
            )));
        }
        let holding = self.vms.values().filter(|v| v.state.holds_resources());
        let (mut n, mut mem, mut cpus) = (0u32, 0u64, 0u32);
        for v in holding {
            n += 1;
            mem += v.meta.memory;
            cpus += u32::from(v.meta.vcpus);
        }
        if n + 1 > cap.max_vms {
            return Err(Failure::Refused(format!(
                "host {} is full: {n} VMs, at most {}",
                self.host, cap.max_vms
            )));
        }
        if mem + memory > cap.memory {
            return Err(Failure::Refused(format!(
                "host {} lacks memory: {} MiB for VMs, {} MiB in use, {} MiB asked",
                self.host,
                cap.memory >> 20,
                mem >> 20,
                memory >> 20
            )));
        }
        if cpus + u32::from(vcpus) > cap.vcpus {
            return Err(Failure::Refused(format!(
                "host {} lacks vCPUs: {} offered, {cpus} in use, {vcpus} asked",
                self.host, cap.vcpus
            )));
        }
        Ok(())
    }

    /// Migrations in flight in `direction`.
    pub fn in_flight(&self, direction: Direction) -> u32 {
        self.migrations
            .values()
            .filter(|m| m.direction == direction && !m.info.state.is_final())
            .count() as u32
    }

    /// Adds the VM and migration counts to a load sample.
    pub fn fill_load(&self, l: &mut LoadInfo) {
        let holding: Vec<&VmEntry> = self
            .vms
            .values()
            .filter(|v| v.state.holds_resources())
            .collect();
        l.vms = holding.len() as u32;
        l.vm_memory = holding.iter().map(|v| v.meta.memory).sum();
        l.vm_vcpus = holding.iter().map(|v| u32::from(v.meta.vcpus)).sum();
        l.vm_rss = holding.iter().filter_map(|v| v.rss).sum();
        l.migrations_in_flight = self.in_flight(Direction::In) + self.in_flight(Direction::Out);
    }

    /// VM process ids by VM name.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.vms
            .iter()
            .filter_map(|(n, v)| v.pid().map(|p| (n.clone(), p)))
            .collect()
    }

    /// Records resident memory per VM.
    pub fn set_rss(&mut self, rss: Vec<(String, Option<u64>)>) {
        for (name, r) in rss {
            if let Some(v) = self.vms.get_mut(&name) {
                v.rss = r;
            }
        }
    }

    /// Records each VM process's CPU time now; its use since the last sample `dt` seconds ago.
    pub fn set_cpu(&mut self, cpu: Vec<(String, Option<f64>)>, dt: f64) {
        for (name, secs) in cpu {
            if let Some(v) = self.vms.get_mut(&name) {
                v.cpu = match (secs, v.cpu_seconds) {
                    (Some(now), Some(before)) if dt > 0.0 && now >= before => {
                        Some((now - before) / dt)
                    }
                    _ => None,
                };
                v.cpu_seconds = secs;
            }
        }
    }

    /// Adds a migration, dropping the oldest ended ones beyond what is kept.
    pub fn add_migration(&mut self, m: MigrationEntry) {
        self.migrations.insert(m.info.id.clone(), m);
        let ended = self
            .migrations
            .values()
            .filter(|m| m.info.state.is_final())
            .count();
        if ended > KEEP_ENDED {
            let mut old: Vec<(Instant, String)> = self
                .migrations
                .values()
                .filter(|m| m.info.state.is_final())
                .map(|m| (m.started, m.info.id.clone()))
                .collect();
            old.sort();
            for (_, id) in old.into_iter().take(ended - KEEP_ENDED) {
                self.migrations.remove(&id);
            }
        }
    }

    /// A migration as the API shows it (elapsed time up to now while it runs).
    pub fn migration_info(&self, id: &str) -> Result<MigrationInfo, Failure> {
        let m = self.migrations.get(id).ok_or_else(|| {
            Failure::NotFound(format!("no migration '{id}' on host {}", self.host))
        })?;
        Ok(snapshot(m))
    }

    /// Every migration: in flight first, then ended ones, newest first.
    pub fn migration_infos(&self, in_flight_only: bool) -> Vec<MigrationInfo> {
        let mut v: Vec<&MigrationEntry> = self
            .migrations
            .values()
            .filter(|m| !in_flight_only || !m.info.state.is_final())
            .collect();
        v.sort_by_key(|m| (m.info.state.is_final(), std::cmp::Reverse(m.started)));
        v.into_iter().map(snapshot).collect()
    }
}

fn snapshot(m: &MigrationEntry) -> MigrationInfo {
    let mut info = m.info.clone();
    if !info.state.is_final() {
        info.elapsed_ms = m.started.elapsed().as_millis() as u64;
    }
    info
}

/// A new migration record.
pub fn new_migration(id: &str, vm: &str, from: &str, to: &str, strategy: &str) -> MigrationInfo {
    MigrationInfo {
        id: id.to_string(),
        vm: vm.to_string(),
        from: from.to_string(),
        to: to.to_string(),
        strategy: strategy.to_string(),
        state: MigrationState::Preparing,
        phase: None,
        round: 0,
        done: 0,
        total: 0,
        bytes: 0,
        started_unix_ms: unix_ms(),
        elapsed_ms: 0,
        report: None,
        error: None,
    }
}

/// Now, ms since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rundir::Role;

    fn meta(name: &str, mib: u64, vcpus: u8) -> VmMeta {
        VmMeta {
            name: name.into(),
            role: Role::Run,
            memory: mib << 20,
            vcpus,
            kernel: None,
            ram_backing: ferry_host::RamBackingChoice::Auto,
            pid: None,
            created_unix_ms: 0,
        }
    }

    const CAP: Capacity = Capacity {
        max_vms: 3,
        memory: 1 << 30,
        vcpus: 4,
    };

    #[test]
    fn admission_counts_every_vm_holding_resources() {
        let mut s = State::new("h");
        assert!(s.admit(&CAP, "a", 512 << 20, 2).is_ok());
        s.vms.insert(
            "a".into(),
            VmEntry::new(meta("a", 512, 2), VmState::Running),
        );
        s.vms.insert(
            "b".into(),
            VmEntry::new(meta("b", 256, 1), VmState::Incoming),
        );
        assert!(matches!(
            s.admit(&CAP, "a", 1 << 20, 1),
            Err(Failure::Conflict(_))
        ));
        let e = s.admit(&CAP, "c", 512 << 20, 1).unwrap_err();
        assert!(e.to_string().contains("lacks memory"), "{e}");
        let e = s.admit(&CAP, "c", 128 << 20, 2).unwrap_err();
        assert!(e.to_string().contains("lacks vCPUs"), "{e}");
        assert!(s.admit(&CAP, "c", 256 << 20, 1).is_ok());
        s.vms
            .insert("c".into(), VmEntry::new(meta("c", 64, 1), VmState::Exited));
        // An exited VM holds nothing.
        assert!(s.admit(&CAP, "d", 256 << 20, 1).is_ok());
        s.vms.insert(
            "d".into(),
            VmEntry::new(meta("d", 64, 0), VmState::Starting),
        );
        let e = s.admit(&CAP, "e", 1, 0).unwrap_err();
        assert!(e.to_string().contains("full"), "{e}");
        let mut l = LoadInfo::default();
        s.fill_load(&mut l);
        assert_eq!(
            (l.vms, l.vm_memory, l.vm_vcpus),
            (3, (512 + 256 + 64) << 20, 3)
        );
        assert_eq!(
            Failure::Refused(String::new()).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn ended_migrations_are_pruned_oldest_first() {
        let mut s = State::new("h");
        for i in 0..KEEP_ENDED + 5 {
            let mut info = new_migration(&format!("m{i}"), "vm", "h", "g", "auto");
            info.state = MigrationState::Completed;
            s.add_migration(MigrationEntry {
                info,
                direction: Direction::Out,
                started: Instant::now(),
            });
        }
        let live = new_migration("live", "vm", "h", "g", "auto");
        s.add_migration(MigrationEntry {
            info: live,
            direction: Direction::Out,
            started: Instant::now(),
        });
        assert_eq!(s.migrations.len(), KEEP_ENDED + 1);
        assert!(!s.migrations.contains_key("m0"));
        assert_eq!(s.in_flight(Direction::Out), 1);
        assert_eq!(s.migration_infos(true).len(), 1);
        assert_eq!(s.migration_infos(false)[0].id, "live");
    }
}
