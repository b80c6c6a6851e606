//! The VMs this host runs: create, stop, adopt after a restart, and watch.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_host::protocol::HostState;
use tokio::sync::watch;

use super::state::{unix_ms, Failure, VmEntry};
use super::{Daemon, MONITOR_PERIOD};
use crate::api::types::{CreateVm, DaemonEvent, MigrationState, VmInfo, VmState};
use crate::config::valid_name;
use crate::rundir::{Role, VmMeta};
use crate::vm_process::{self, Probe};

/// How long a new VM process may take to answer on its control socket.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a stopped VM process may take to exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

impl Daemon {
    /// `POST /v1/vms`: boots a VM here.
    pub async fn create_vm(self: &Arc<Self>, req: CreateVm) -> Result<VmInfo, Failure> {
        if !valid_name(&req.name) {
            return Err(Failure::BadRequest(format!(
                "'{}' is not a VM name: 1-63 characters of a-z, 0-9, '-' and '.'",
                req.name
            )));
        }
        if req.memory == 0 || !req.memory.is_multiple_of(2 << 20) {
            return Err(Failure::BadRequest(format!(
                "memory must be a positive multiple of 2 MiB (got {} bytes)",
                req.memory
            )));
        }
        if req.vcpus == 0 {
            return Err(Failure::BadRequest("a VM needs at least one vCPU".into()));
        }
        let kernel = PathBuf::from(&req.kernel);
        if !kernel.is_absolute() || !kernel.is_file() {
            return Err(Failure::BadRequest(format!(
                "kernel image {} is not a file on host {} (give an absolute path on the daemon's host)",
                req.kernel,
                self.name()
            )));
        }
        if let Some(link) = &self.cluster {
            // Checked here first so the record is not written for a VM refused locally.
            let checked = self
                .state()
                .admit(&self.capacity, &req.name, req.memory, req.vcpus);
            checked?;
            link.record_new_vm(&req.name, req.memory, u32::from(req.vcpus))
                .await?;
        }
        let meta = VmMeta {
            name: req.name.clone(),
            role: Role::Run,
            memory: req.memory,
            vcpus: req.vcpus,
            kernel: Some(kernel),
            ram_backing: req.ram_backing,
            pid: None,
            created_unix_ms: unix_ms(),
        };
        let admitted = {
            let mut st = self.state();
            let r = st
                .admit(&self.capacity, &req.name, req.memory, req.vcpus)
                .and_then(|_| {
                    self.launcher.run.create(&meta).map_err(|e| {
                        Failure::Conflict(format!(
                            "cannot create the directory of VM '{}' ({e}); is another VM of that name here?",
                            req.name
                        ))
                    })
                });
            if r.is_ok() {
                st.vms.insert(
                    req.name.clone(),
                    VmEntry::new(meta.clone(), VmState::Starting),
                );
            }
            r
        };
        if let Err(e) = admitted {
            if let Some(link) = &self.cluster {
                link.forget_vm(&req.name).await;
            }
            return Err(e);
        }
        self.publish(vm_event(&req.name, Some(VmState::Starting), None));
        let d = self.clone();
        let m = meta.clone();
        let started = tokio::task::spawn_blocking(move || d.launcher.run(&m, START_TIMEOUT))
            .await
            .map_err(|e| Failure::Internal(e.to_string()))?;
        match started {
            Ok(s) => {
                let mut meta = meta;
                meta.pid = Some(s.child.id());
                if let Err(e) = self.launcher.run.write(&meta) {
                    tracing::warn!(vm = %meta.name, error = %e, "cannot record the VM's pid");
                }
                let info = {
                    let mut st = self.state();
                    let Some(v) = st.vms.get_mut(&req.name) else {
                        return Err(Failure::Conflict(
                            "the VM was removed while starting".into(),
                        ));
                    };
                    v.meta = meta;
                    v.child = Some(s.child);
                    v.heartbeats = s.status.vm.as_ref().map(|v| v.heartbeats_seen);
                    v.ram_backing = s.status.vm.as_ref().and_then(|v| v.ram_backing);
                    v.set_state(VmState::Running, None);
                    v.info(self.name())
                };
                tracing::info!(vm = %req.name, pid = ?info.pid, memory = req.memory, "VM started");
                self.publish(vm_event(&req.name, Some(VmState::Running), None));
                Ok(info)
            }
            Err(e) => {
                self.state().vms.remove(&req.name);
                let _ = self.launcher.run.remove(&req.name);
                if let Some(link) = &self.cluster {
                    link.forget_vm(&req.name).await;
                }
                self.publish(vm_event(&req.name, None, Some(e.to_string())));
                Err(Failure::Internal(format!(
                    "VM '{}' did not start: {e}",
                    req.name
                )))
            }
        }
    }

    /// `POST /v1/vms/{name}/stop`: stops the VM (or forgets an exited one) and removes it.
    pub async fn stop_vm(self: &Arc<Self>, name: &str) -> Result<(), Failure> {
        let (control, pid, child) = {
            let mut st = self.state();
            let host = self.name();
            let e = st
                .vms
                .get_mut(name)
                .ok_or_else(|| Failure::NotFound(format!("no VM named '{name}' on host {host}")))?;
            match e.state {
                VmState::MigratingOut => {
                    return Err(Failure::Conflict(format!(
                        "VM '{name}' is migrating (migration {}): wait for it or cancel it first",
                        e.migration.clone().unwrap_or_default()
                    )))
                }
                VmState::Incoming => {
                    return Err(Failure::Conflict(format!(
                        "VM '{name}' is arriving by migration: stop it at its source"
                    )))
                }
                VmState::Paused => {
                    // A paused VM after an unclear migration may be the only copy of its pages.
                    return Err(Failure::Conflict(format!(
                        "VM '{name}' is paused after a migration whose outcome is unclear ({}): \
                         finish or resolve the migration first",
                        e.detail.clone().unwrap_or_default()
                    )));
                }
                _ => {}
            }
            e.set_state(VmState::Exited, Some("stopping".into()));
            (self.launcher.run.control(name), e.pid(), e.child.take())
        };
        let n = name.to_string();
        let d = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut child = child;
            vm_process::stop(&control, pid, child.as_mut(), STOP_TIMEOUT);
            let _ = d.launcher.run.remove(&n);
        })
        .await
        .map_err(|e| Failure::Internal(e.to_string()))?;
        self.state().vms.remove(name);
        if let Some(link) = &self.cluster {
            link.forget_vm(name).await;
        }
        tracing::info!(vm = %name, "VM stopped");
        self.publish(vm_event(name, None, Some("stopped".into())));
        Ok(())
    }

    /// Finds the VM processes of an earlier daemon in the run directory and takes them over.
    pub(crate) fn adopt(&self) {
        let (found, bad) = match self.launcher.run.scan() {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "cannot scan the run directory");
                return;
            }
        };
        for (name, why) in bad {
            tracing::warn!(dir = %name, reason = %why, "run directory entry is not a VM; left alone");
        }
        for meta in found {
            let control = self.launcher.run.control(&meta.name);
            let (state, detail) = match vm_process::probe(&control, meta.pid) {
                Probe::Status(s) => match s.state {
                    Some(HostState::Running) => {
                        let paused = s.vm.as_ref().is_some_and(|v| !v.running);
                        if paused {
                            (VmState::Paused, Some(paused_detail(&s)))
                        } else {
                            (VmState::Running, None)
                        }
                    }
                    Some(HostState::Waiting) => {
                        // Waiting for a VM whose source has lost track of us: nothing has
                        // arrived, so the source still runs it. Let this receiver go.
                        tracing::info!(vm = %meta.name, "dropping an incoming migration left by the previous daemon");
                        vm_process::stop(&control, meta.pid, None, STOP_TIMEOUT);
                        let _ = self.launcher.run.remove(&meta.name);
                        continue;
                    }
                    Some(HostState::Migrating) | Some(HostState::Receiving) => (
                        VmState::Paused,
                        Some("a migration was in progress when the daemon restarted".into()),
                    ),
                    Some(HostState::Ended) | None => (
                        VmState::Exited,
                        Some(format!(
                            "its process is ending: {}",
                            self.launcher.run.log_tail(&meta.name, 2)
                        )),
                    ),
                },
                Probe::Silent(why) => (
                    VmState::Paused,
                    Some(format!("its process does not answer: {why}")),
                ),
                Probe::Gone => (
                    VmState::Exited,
                    Some(format!(
                        "its process ended while the daemon was away: {}",
                        self.launcher.run.log_tail(&meta.name, 2)
                    )),
                ),
            };
            tracing::info!(vm = %meta.name, pid = ?meta.pid, state = %state, "adopted VM");
            let mut e = VmEntry::new(meta.clone(), state);
            e.detail = detail;
            self.state().vms.insert(meta.name.clone(), e);
        }
    }

    /// Watches the VM processes: starts, exits, arrivals, until shutdown.
    pub(crate) async fn monitor(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(MONITOR_PERIOD) => {}
                _ = shutdown.changed() => return,
            }
            let d = self.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || d.check_vms()).await {
                tracing::error!(error = %e, "VM monitor failed");
            }
        }
    }

    /// One round of the monitor.
    fn check_vms(self: &Arc<Self>) {
        // What to look at, without holding the lock during the probes.
        let targets: Vec<(String, VmState, Option<u32>)> = {
            let mut st = self.state();
            st.vms
                .iter_mut()
                .filter(|(_, v)| {
                    !matches!(
                        v.state,
                        VmState::MigratingOut | VmState::Starting | VmState::Exited
                    )
                })
                .map(|(n, v)| {
                    // Reap our own children as soon as they exit.
                    let exited = v
                        .child
                        .as_mut()
                        .is_some_and(|c| c.try_wait().map(|s| s.is_some()).unwrap_or(true));
                    let pid = if exited { Some(0) } else { v.pid() };
                    (n.clone(), v.state, pid)
                })
                .collect()
        };
        for (name, was, pid) in targets {
            let control = self.launcher.run.control(&name);
            let probe = if pid == Some(0) {
                Probe::Gone
            } else {
                vm_process::probe(&control, pid)
            };
            self.apply_probe(&name, was, probe);
        }
        self.expire_incoming();
    }

    fn apply_probe(self: &Arc<Self>, name: &str, was: VmState, probe: Probe) {
        let (now, detail) = match (&probe, was) {
            (Probe::Gone, VmState::Incoming) => {
                // The receiver gave up (or was told to): nothing arrived here.
                self.incoming_failed(name, "the receiving process ended before the VM arrived");
                return;
            }
            (Probe::Gone, _) => (
                VmState::Exited,
                Some(format!(
                    "its process ended: {}",
                    self.launcher.run.log_tail(name, 2)
                )),
            ),
            (Probe::Silent(_), _) => return,
            (Probe::Status(s), _) => match s.state {
                Some(HostState::Waiting) | Some(HostState::Receiving) => {
                    if let Some(v) = self.state().vms.get_mut(name) {
                        v.heartbeats = None;
                    }
                    return;
                }
                Some(HostState::Running) => {
                    if let Some(v) = self.state().vms.get_mut(name) {
                        v.heartbeats = s.vm.as_ref().map(|v| v.heartbeats_seen);
                        v.ram_backing = s.vm.as_ref().and_then(|v| v.ram_backing);
                    }
                    match s.vm.as_ref() {
                        Some(v) if !v.running => (VmState::Paused, Some(paused_detail(s))),
                        _ => (VmState::Running, None),
                    }
                }
                Some(HostState::Migrating) => return,
                Some(HostState::Ended) | None => (
                    VmState::Exited,
                    Some(format!(
                        "the guest stopped: {}",
                        self.launcher.run.log_tail(name, 2)
                    )),
                ),
            },
        };
        if was == VmState::Incoming && now == VmState::Running {
            self.incoming_arrived(name);
            return;
        }
        if was == now {
            return;
        }
        {
            let mut st = self.state();
            let Some(v) = st.vms.get_mut(name) else {
                return;
            };
            if v.state != was {
                return;
            }
            v.set_state(now, detail.clone());
        }
        tracing::info!(vm = %name, from = %was, to = %now, detail = ?detail, "VM state changed");
        self.publish(vm_event(name, Some(now), detail));
    }

    fn incoming_arrived(self: &Arc<Self>, name: &str) {
        let mig = {
            let mut st = self.state();
            let Some(v) = st.vms.get_mut(name) else {
                return;
            };
            v.set_state(VmState::Running, None);
            let id = v.migration.take();
            id.and_then(|id| {
                let m = st.migrations.get_mut(&id)?;
                m.info.state = MigrationState::Completed;
                m.info.elapsed_ms = m.started.elapsed().as_millis() as u64;
                Some(m.info.clone())
            })
        };
        self.metrics.received();
        tracing::info!(vm = %name, "VM arrived by migration");
        self.publish(vm_event(
            name,
            Some(VmState::Running),
            Some("arrived by migration".into()),
        ));
        if let Some(m) = mig {
            self.publish(DaemonEvent::Migration {
                migration: Box::new(m),
            });
        }
    }
}

/// Why a VM that answers is paused.
fn paused_detail(s: &ferry_host::protocol::HostStatus) -> String {
    match s.vm.as_ref() {
        Some(v) if v.postcopy_interrupted => {
            "post-copy was interrupted: finish it with `ferry migrate --recover`".into()
        }
        Some(v) if v.outcome_unknown => {
            "an earlier migration ended without a clear outcome: check the destination".into()
        }
        _ => "its vCPUs are not running".into(),
    }
}

/// A VM state event.
pub(crate) fn vm_event(name: &str, state: Option<VmState>, detail: Option<String>) -> DaemonEvent {
    DaemonEvent::Vm {
        vm: name.to_string(),
        state,
        detail,
    }
}
