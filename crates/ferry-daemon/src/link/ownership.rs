//! VM ownership records as this host changes them: on create and stop, at each step of a
//! migration out, and at the destination's commit point (the gate the receiving VM process asks
//! before its VM first runs here).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_model::cpu::feature_list;
use ferry_store::cluster::{
    ClusterError, HostName, HostRecord, HostState, MigrationId, Stored, VmCpu, VmId, VmRecord,
    VmState as RecState,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::{describe, store_failure, ClusterLink};
use crate::api::types::VmState;
use crate::daemon::{Daemon, Failure};

/// What the gate answers a receiving VM process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GateAnswer {
    /// The VM is this host's now: run it.
    Go,
    /// Do not run it.
    Refuse(String),
}

/// Where a migration out goes, resolved from the destination's host record.
pub(crate) struct Destination {
    /// Its API address.
    pub api: String,
}

/// How long the gate keeps retrying the store when it errs (outcome unknown).
const GATE_RETRY: Duration = Duration::from_secs(10);

fn vm_id(name: &str) -> Result<VmId, Failure> {
    VmId::new(name).map_err(|e| Failure::BadRequest(e.to_string()))
}

fn host_name(name: &str) -> Result<HostName, Failure> {
    HostName::new(name).map_err(|e| Failure::BadRequest(e.to_string()))
}

/// Why a VM with CPU `vm` cannot go to `host`, if it cannot.
pub(crate) fn cpu_refusal(vm_name: &str, vm: &VmCpu, host: &HostRecord) -> Option<String> {
    let missing = vm.features.missing_on(&host.cpu_features);
    if missing.is_empty() {
        return None;
    }
    Some(format!(
        "host {} lacks CPU features VM '{vm_name}' uses: {} (the VM was started {}): \
         refused before any page moved",
        host.name,
        feature_list(&missing),
        if vm.restricted {
            "with the cluster's baseline"
        } else {
            "with its first host's full CPU, since that host's KVM cannot restrict CPUID"
        }
    ))
}

impl ClusterLink {
    /// Records a new VM owned by this host (before its process starts).
    pub(crate) async fn record_new_vm(
        &self,
        name: &str,
        memory: u64,
        vcpus: u32,
    ) -> Result<Stored<VmRecord>, Failure> {
        if !self.joined() {
            return Err(Failure::Refused(format!(
                "host {} is not a cluster member now (its lease is being renewed or waited \
                 for): no VM is started",
                self.host
            )));
        }
        let rec = VmRecord {
            id: vm_id(name)?,
            owner: self.host.clone(),
            state: RecState::Running,
            epoch: 1,
            vcpus,
            memory_bytes: memory,
            // This host's KVM answers guest CPUID from the real CPU whatever table is set
            // (ferry-vmm's restrict_cpu refuses): the guest sees this host's CPU, recorded so.
            cpu: Some(VmCpu {
                features: self.features,
                restricted: false,
            }),
        };
        match self.store.create_vm(&rec).await {
            Ok(s) => Ok(s),
            Err(ClusterError::AlreadyExists { .. }) => {
                let owner = self
                    .store
                    .vm(&rec.id)
                    .await
                    .ok()
                    .flatten()
                    .map(|s| s.record.owner.to_string())
                    .unwrap_or_else(|| "another host".into());
                Err(Failure::Conflict(format!(
                    "a VM named '{name}' already exists in the cluster (owned by {owner})"
                )))
            }
            Err(e) => Err(store_failure(e)),
        }
    }

    /// Deletes this host's record of a VM it stopped (or that never started).
    pub(crate) async fn forget_vm(&self, name: &str) {
        let Ok(id) = VmId::new(name) else { return };
        match self.store.vm(&id).await {
            Ok(Some(s)) if s.record.owner == self.host => {
                if let Err(e) = self.store.delete_vm(&s).await {
                    tracing::warn!(vm = %name, error = %describe(&e), "cannot delete the VM's record");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(vm = %name, error = %describe(&e), "cannot read the VM's record")
            }
        }
    }

    /// Before a migration out: the destination's record (alive, taking VMs, with every CPU
    /// feature the VM uses), then `begin_migration` — or, when the planner began it already
    /// (`planned`), a check that the record says exactly that.
    pub(crate) async fn prepare_out(
        &self,
        vm: &str,
        to: &str,
        id: &str,
        planned: bool,
    ) -> Result<Destination, Failure> {
        let vm_id = vm_id(vm)?;
        let to_host = host_name(to)?;
        let mid = MigrationId::new(id).map_err(|e| Failure::BadRequest(e.to_string()))?;
        let dest = self
            .store
            .host(&to_host)
            .await
            .map_err(store_failure)?
            .ok_or_else(|| Failure::NotFound(format!("no host named '{to}' in the cluster")))?
            .record;
        let alive = self
            .store
            .members()
            .await
            .map_err(store_failure)?
            .items
            .iter()
            .any(|m| m.host == to_host);
        if !alive {
            return Err(Failure::Refused(format!(
                "host {to} is not alive (no membership lease): nothing sent"
            )));
        }
        match dest.state {
            HostState::Active => {}
            s => {
                return Err(Failure::Refused(format!(
                    "host {to} takes no VMs now ({}): nothing sent",
                    host_state_text(&s)
                )))
            }
        }
        let record = self
            .store
            .vm(&vm_id)
            .await
            .map_err(store_failure)?
            .ok_or_else(|| Failure::NotFound(format!("VM '{vm}' has no cluster record")))?;
        if record.record.owner != self.host {
            return Err(Failure::Conflict(format!(
                "VM '{vm}' is owned by {} in the cluster record, not by {}",
                record.record.owner, self.host
            )));
        }
        if let Some(cpu) = &record.record.cpu {
            if let Some(why) = cpu_refusal(vm, cpu, &dest) {
                if planned {
                    let _ = self.store.abort_migration(&record).await;
                }
                return Err(Failure::Refused(why));
            }
        }
        let record = if planned {
            match &record.record.state {
                RecState::Migrating {
                    to: t, migration, ..
                } if t == &to_host && migration == &mid => record,
                s => {
                    return Err(Failure::Conflict(format!(
                        "VM '{vm}' is not in planned migration {id} to {to} (its record says {s:?})"
                    )))
                }
            }
        } else {
            self.store
                .begin_migration(&record, &to_host, &mid)
                .await
                .map_err(store_failure)?
                .0
        };
        if dest.address.port() == 0 {
            let _ = self.store.abort_migration(&record).await;
            return Err(Failure::Refused(format!(
                "host {to} publishes no API address: it cannot receive migrations"
            )));
        }
        Ok(Destination {
            api: dest.address.to_string(),
        })
    }

    /// At the destination, before anything is received: the VM's record must be migrating
    /// here from `from` in migration `id`, and this host must have every CPU feature it uses.
    pub(crate) async fn check_incoming(
        &self,
        vm: &str,
        from: &str,
        id: &str,
    ) -> Result<(), Failure> {
        let rec = self
            .store
            .vm(&vm_id(vm)?)
            .await
            .map_err(store_failure)?
            .ok_or_else(|| Failure::Conflict(format!("VM '{vm}' has no cluster record")))?;
        match &rec.record.state {
            RecState::Migrating {
                from: f,
                to,
                migration,
            } if f.as_str() == from && to == &self.host && migration.as_str() == id => {}
            s => {
                return Err(Failure::Conflict(format!(
                    "VM '{vm}' is not migrating from {from} to {} in {id} (its record says {s:?})",
                    self.host
                )))
            }
        }
        if let Some(cpu) = &rec.record.cpu {
            let me = HostRecord {
                name: self.host.clone(),
                address: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                capacity: ferry_store::cluster::Capacity {
                    cpus: 0,
                    memory_bytes: 0,
                },
                cpu_features: self.features,
                state: HostState::Active,
            };
            if let Some(why) = cpu_refusal(vm, cpu, &me) {
                return Err(Failure::Refused(why));
            }
        }
        Ok(())
    }

    /// After a migration out failed with the VM still here (or never sent): back to running
    /// on this host. If the record moved on (another writer won), says who owns it now.
    pub(crate) async fn abort_out(&self, vm: &str, id: &str) -> Result<(), String> {
        let Ok(vm_id) = VmId::new(vm) else {
            return Ok(());
        };
        for _ in 0..16 {
            let rec = match self.store.vm(&vm_id).await {
                Ok(Some(r)) => r,
                Ok(None) => return Err("the VM's record is gone".into()),
                Err(e) => return Err(describe(&e)),
            };
            match &rec.record.state {
                RecState::Migrating { migration, .. } if migration.as_str() == id => {
                    match self.store.abort_migration(&rec).await {
                        Ok(_) => return Ok(()),
                        Err(ClusterError::Conflict { .. }) => continue,
                        Err(e) => return Err(describe(&e)),
                    }
                }
                _ if rec.record.owner == self.host => return Ok(()),
                _ => return Err(format!("the record says {} owns it", rec.record.owner)),
            }
        }
        Err("the VM's record keeps changing".into())
    }

    /// After a migration whose outcome the engine could not tell (the VM is paused here):
    /// if the destination committed, the copy here is stale (`Ok(true)`); otherwise the record
    /// becomes paused-recoverable here, which also closes the destination's gate (`Ok(false)`).
    pub(crate) async fn settle_unknown(&self, vm: &str, id: &str) -> Result<bool, String> {
        let vm_id = VmId::new(vm).map_err(|e| e.to_string())?;
        for _ in 0..16 {
            let rec = match self.store.vm(&vm_id).await {
                Ok(Some(r)) => r,
                Ok(None) => return Err("the VM's record is gone".into()),
                Err(e) => return Err(describe(&e)),
            };
            if rec.record.owner != self.host {
                return Ok(true);
            }
            match &rec.record.state {
                RecState::Migrating { migration, .. } if migration.as_str() == id => {
                    match self.store.pause_vm(&rec, &self.host).await {
                        Ok(_) => return Ok(false),
                        Err(ClusterError::Conflict { .. }) => continue,
                        Err(e) => return Err(describe(&e)),
                    }
                }
                _ => return Ok(false),
            }
        }
        Err("the VM's record keeps changing".into())
    }

    /// The destination's commit point: the VM's record must be migrating here in migration
    /// `id`; one compare-and-swap makes this host the owner. A store error leaves the outcome
    /// unknown: re-read until it is known (or refuse after [`GATE_RETRY`]: then the record was
    /// not changed by us, or we cannot tell — either way the VM does not run here).
    pub(crate) async fn commit_incoming(&self, vm: &str, id: &str) -> GateAnswer {
        let Ok(vm_id) = VmId::new(vm) else {
            return GateAnswer::Refuse(format!("bad VM name '{vm}'"));
        };
        if !self.joined() {
            return GateAnswer::Refuse(format!("host {} is not a cluster member now", self.host));
        }
        let deadline = Instant::now() + GATE_RETRY;
        let mut epoch_before: Option<u64> = None;
        loop {
            let rec = match self.store.vm(&vm_id).await {
                Ok(Some(r)) => r,
                Ok(None) => return GateAnswer::Refuse(format!("VM '{vm}' has no record")),
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!(vm = %vm, error = %describe(&e), "commit gate: store error, retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(e) => return GateAnswer::Refuse(describe(&e)),
            };
            match &rec.record.state {
                RecState::Migrating { to, migration, .. }
                    if to == &self.host && migration.as_str() == id =>
                {
                    epoch_before = Some(rec.record.epoch);
                    match self.store.switch_over(&rec).await {
                        Ok(_) => return GateAnswer::Go,
                        Err(ClusterError::Store(e)) if Instant::now() < deadline => {
                            tracing::warn!(vm = %vm, error = %e, "switch-over outcome unknown; re-reading");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => return GateAnswer::Refuse(describe(&e)),
                    }
                }
                // An earlier attempt of ours committed although its answer was lost.
                RecState::Running
                    if rec.record.owner == self.host
                        && epoch_before.is_some_and(|e| rec.record.epoch == e + 1) =>
                {
                    return GateAnswer::Go
                }
                s => {
                    return GateAnswer::Refuse(format!(
                        "the record of VM '{vm}' is not migrating here in {id} (owner {}, {s:?})",
                        rec.record.owner
                    ))
                }
            }
        }
    }
}

/// A host state for messages.
pub(crate) fn host_state_text(s: &HostState) -> String {
    match s {
        HostState::Active => "active".into(),
        HostState::Draining { deadline } => format!("draining, deadline {} ms", deadline.0),
        HostState::PowerOffCandidate => "marked for power-off".into(),
        HostState::Failed => "failed".into(),
    }
}

impl Daemon {
    /// Serves the commit gate of incoming VM `vm` (migration `id`) at `path` until it answered
    /// `go` once, or the VM is no longer arriving here.
    pub(crate) async fn serve_gate(
        self: Arc<Self>,
        link: Arc<ClusterLink>,
        listener: tokio::net::UnixListener,
        vm: String,
        id: String,
    ) {
        loop {
            let accepted =
                tokio::time::timeout(Duration::from_millis(500), listener.accept()).await;
            let stream = match accepted {
                Ok(Ok((s, _))) => s,
                Ok(Err(e)) => {
                    tracing::warn!(vm = %vm, error = %e, "commit gate: accept failed");
                    return;
                }
                Err(_) => {
                    let arriving = self
                        .state()
                        .vms
                        .get(&vm)
                        .is_some_and(|v| v.state == VmState::Incoming);
                    if !arriving {
                        return;
                    }
                    continue;
                }
            };
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let read = tokio::time::timeout(
                Duration::from_secs(5),
                BufReader::new(r).read_line(&mut line),
            )
            .await;
            if !matches!(read, Ok(Ok(_))) || line.trim_end() != "commit" {
                let _ = w.write_all(b"refuse: expected 'commit'\n").await;
                continue;
            }
            let t = Instant::now();
            let answer = link.commit_incoming(&vm, &id).await;
            let text = match &answer {
                GateAnswer::Go => "go\n".to_string(),
                GateAnswer::Refuse(why) => format!("refuse: {}\n", why.replace('\n', " ")),
            };
            tracing::info!(vm = %vm, migration = %id, answer = %text.trim_end(), store_ms = t.elapsed().as_secs_f64() * 1e3, "commit gate");
            let _ = w.write_all(text.as_bytes()).await;
            if answer == GateAnswer::Go {
                return;
            }
        }
    }
}
