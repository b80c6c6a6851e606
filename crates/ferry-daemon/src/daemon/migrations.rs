//! Migrations: out (a VM of this host moves to another daemon's host) and in.
//!
//! Out: the source daemon asks the destination daemon (`POST /v1/incoming`, mTLS) to start a
//! receiving process; the destination answers with the address it listens on; the source asks
//! its VM's host process to migrate there and relays the engine's events. In: the destination's
//! monitor sees the receiving process report a running VM, and the VM is then this host's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_host::protocol::{HostEvent, MigrateRequest, VmLocation};
use ferry_host::transport::Endpoint;
use ferry_migrate::{Event, Strategy};

use super::state::{new_migration, unix_ms, Direction, Failure, MigrationEntry, VmEntry};
use super::vms::vm_event;
use super::Daemon;
use crate::api::types::{
    DaemonEvent, IncomingReady, IncomingRequest, MigrationFailure, MigrationInfo, MigrationState,
    StartMigration, VmState, VmWhere,
};
use crate::config::valid_name;
use crate::link::{describe, sample_of, ClusterLink};
use crate::rundir::{Role, VmMeta};
use crate::vm_process::{self, Probe};
use ferry_store::cluster::{HostName, MigrationId, VmId};

/// How long a receiving process may take to start listening.
const RECEIVER_START: Duration = Duration::from_secs(20);

impl Daemon {
    /// `POST /v1/migrations`: starts moving a VM of this host to host `req.to`.
    pub async fn start_migration(
        self: &Arc<Self>,
        req: StartMigration,
    ) -> Result<MigrationInfo, Failure> {
        let strategy: Strategy = req.strategy.parse().map_err(Failure::BadRequest)?;
        let compression = req
            .compression
            .parse()
            .map_err(|e| Failure::BadRequest(format!("compression: {e}")))?;
        if req.to == self.cfg.name {
            return Err(Failure::BadRequest(format!(
                "VM '{}' is already on host {}",
                req.vm, req.to
            )));
        }
        let id = req
            .migration
            .clone()
            .unwrap_or_else(|| format!("m-{:016x}", rand::random::<u64>()));
        let planned = req.migration.is_some();
        let to_api = match (&self.cluster, &req.to_api) {
            (Some(link), _) => {
                {
                    // Refuse what this host would refuse anyway before touching the store.
                    let st = self.state();
                    match st.vms.get(&req.vm) {
                        None => {
                            return Err(Failure::NotFound(format!(
                                "no VM named '{}' on host {}",
                                req.vm, self.cfg.name
                            )))
                        }
                        Some(v) if v.state != VmState::Running => {
                            return Err(Failure::Conflict(format!(
                                "VM '{}' is {} on host {}: only a running VM can be migrated",
                                req.vm, v.state, self.cfg.name
                            )))
                        }
                        _ => {}
                    }
                }
                link.prepare_out(&req.vm, &req.to, &id, planned).await?.api
            }
            (None, Some(a)) => a.clone(),
            (None, None) => {
                return Err(Failure::BadRequest(format!(
                "no API address for host '{}': give to_api (the cluster store is not configured)",
                req.to
            )))
            }
        };
        let undo = |d: &Arc<Self>, vm: &str, id: &str| {
            let (d, vm, id) = (d.clone(), vm.to_string(), id.to_string());
            async move {
                if let Some(link) = &d.cluster {
                    if let Err(e) = link.abort_out(&vm, &id).await {
                        tracing::warn!(vm = %vm, migration = %id, error = %e, "cannot end the migration's record");
                    }
                }
            }
        };
        let peer = match self.peer_client(&to_api, &req.to) {
            Ok(p) => p,
            Err(e) => {
                undo(self, &req.vm, &id).await;
                return Err(e);
            }
        };
        let checked = (|| {
            let mut st = self.state();
            let out = st.in_flight(Direction::Out);
            let v = st.vms.get(&req.vm).ok_or_else(|| {
                Failure::NotFound(format!(
                    "no VM named '{}' on host {}",
                    req.vm, self.cfg.name
                ))
            })?;
            if v.state != VmState::Running {
                return Err(Failure::Conflict(format!(
                    "VM '{}' is {} on host {}: only a running VM can be migrated",
                    req.vm, v.state, self.cfg.name
                )));
            }
            if out >= self.cfg.migration.max_outgoing {
                return Err(Failure::Refused(format!(
                    "host {} is busy: {out} outgoing migrations in progress (max_outgoing {})",
                    self.cfg.name, self.cfg.migration.max_outgoing
                )));
            }
            let (memory, vcpus) = (v.meta.memory, v.meta.vcpus);
            let info = new_migration(&id, &req.vm, &self.cfg.name, &req.to, &strategy.to_string());
            st.add_migration(MigrationEntry {
                info: info.clone(),
                direction: Direction::Out,
                started: Instant::now(),
            });
            if let Some(v) = st.vms.get_mut(&req.vm) {
                v.set_state(VmState::MigratingOut, None);
                v.migration = Some(id.clone());
            }
            Ok::<_, Failure>((memory, vcpus, info))
        })();
        let (memory, vcpus, info) = match checked {
            Ok(x) => x,
            Err(e) => {
                undo(self, &req.vm, &id).await;
                return Err(e);
            }
        };
        self.metrics.started(&info.strategy);
        tracing::info!(migration = %id, vm = %req.vm, to = %req.to, strategy = %strategy, "migration started");
        self.publish(vm_event(&req.vm, Some(VmState::MigratingOut), None));
        self.publish(DaemonEvent::Migration {
            migration: Box::new(info.clone()),
        });
        let d = self.clone();
        tokio::spawn(async move {
            let (settle_id, settle_vm) = (id.clone(), req.vm.clone());
            let inner = async {
                let incoming = IncomingRequest {
                    vm: req.vm.clone(),
                    memory,
                    vcpus,
                    migration: id.clone(),
                    from: d.cfg.name.clone(),
                };
                let ready: Result<IncomingReady, Failure> = peer
                    .post("/v1/incoming", &incoming)
                    .await
                    .map_err(|e| Failure::Peer(format!("destination {} refused: {e}", req.to)));
                let ready = match ready {
                    Ok(r) => r,
                    Err(e) => {
                        d.finish_failed(
                            &id,
                            &req.vm,
                            "destination-refused",
                            VmWhere::Source,
                            e.to_string(),
                        );
                        return;
                    }
                };
                let Ok(to) = ready.address.parse::<Endpoint>() else {
                    d.finish_failed(
                        &id,
                        &req.vm,
                        "destination-refused",
                        VmWhere::Source,
                        format!(
                            "destination {} answered a bad address '{}'",
                            req.to, ready.address
                        ),
                    );
                    return;
                };
                let mut m = MigrateRequest::new(to);
                m.strategy = strategy;
                m.downtime_ms = req.downtime_ms;
                m.channels = req.channels;
                m.compression = compression;
                m.verify = req.verify;
                m.max_rounds = req.max_rounds;
                m.max_bandwidth = req.max_bandwidth;
                m.tls_name = Some(ready.tls_name.clone());
                d.set_migration(&id, |i| i.state = MigrationState::Running);
                let d2 = d.clone();
                let (id2, vm2) = (id.clone(), req.vm.clone());
                let control = d.launcher.run.control(&req.vm);
                let result = tokio::task::spawn_blocking(move || {
                    ferry_host::ControlClient::new(&control).migrate(m, &mut |e| {
                        if let HostEvent::Migration(ev) = e {
                            d2.on_progress(&id2, &vm2, ev);
                        }
                    })
                })
                .await;
                match result {
                    Ok(Ok(report)) => {
                        let d2 = d.clone();
                        let _ = tokio::task::spawn_blocking(move || {
                            d2.finish_completed(&id, &req.vm, report)
                        })
                        .await;
                    }
                    Ok(Err(ferry_host::ClientError::Host(e))) => {
                        let at = match e.vm {
                            Some(VmLocation::Source) | None => VmWhere::Source,
                            Some(VmLocation::Destination) => VmWhere::Destination,
                            Some(VmLocation::PausedRecoverable) => VmWhere::PausedRecoverable,
                            Some(VmLocation::Unknown) => VmWhere::Unknown,
                        };
                        if at == VmWhere::Source {
                            // Let the destination drop its receiver now rather than at its timeout.
                            let _ = peer
                                .delete::<serde_json::Value>(&format!("/v1/incoming/{}", req.vm))
                                .await;
                        }
                        d.finish_failed(&id, &req.vm, &e.cause.to_string(), at, e.message.clone());
                    }
                    Ok(Err(e)) => d.finish_failed(
                        &id,
                        &req.vm,
                        "vm-host",
                        VmWhere::Unknown,
                        format!("lost contact with the VM's host process: {e}"),
                    ),
                    Err(e) => {
                        d.finish_failed(&id, &req.vm, "internal", VmWhere::Unknown, e.to_string())
                    }
                }
            };
            inner.await;
            if let Some(link) = d.cluster.clone() {
                d.settle_out(&link, &settle_id, &settle_vm).await;
            }
        });
        Ok(info)
    }

    /// After a migration out ended: the cluster record follows the outcome, and a completed
    /// migration's measurements go to the history the cost model learns from.
    async fn settle_out(self: &Arc<Self>, link: &Arc<ClusterLink>, id: &str, vm: &str) {
        let Some(info) = self.state().migrations.get(id).map(|m| m.info.clone()) else {
            return;
        };
        match (info.state, info.error.as_ref().map(|e| e.vm)) {
            (MigrationState::Completed, _) => {
                let (Some(report), Ok(mid), Ok(vm_id), Ok(from), Ok(to)) = (
                    info.report.as_ref(),
                    MigrationId::new(id),
                    VmId::new(vm),
                    HostName::new(&info.from),
                    HostName::new(&info.to),
                ) else {
                    return;
                };
                let sample = sample_of(&mid, &vm_id, &from, &to, report);
                if let Err(e) = link.store.record_sample(&sample).await {
                    tracing::warn!(migration = %id, error = %describe(&e), "cannot record the migration's measurements");
                }
            }
            (_, Some(VmWhere::Source)) => {
                if let Err(why) = link.abort_out(vm, id).await {
                    // Never resume a VM whose record is not ours.
                    self.freeze_vm(vm, &format!("after a failed migration: {why}"));
                }
            }
            (_, Some(VmWhere::PausedRecoverable | VmWhere::Unknown)) => {
                match link.settle_unknown(vm, id).await {
                    Ok(true) => {
                        tracing::info!(vm = %vm, migration = %id, "the destination owns the VM: the paused copy here is stopped");
                        let d = self.clone();
                        let name = vm.to_string();
                        let _ = tokio::task::spawn_blocking(move || d.drop_stale_copy(&name)).await;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(vm = %vm, migration = %id, error = %e, "cannot settle the record of an unclear migration")
                    }
                }
            }
            _ => {}
        }
    }

    /// Stops the local copy of a VM another host owns, and forgets it.
    fn drop_stale_copy(&self, vm: &str) {
        let (pid, child) = {
            let mut st = self.state();
            match st.vms.get_mut(vm) {
                Some(v) => (v.pid(), v.child.take()),
                None => return,
            }
        };
        let mut child = child;
        vm_process::stop(
            &self.launcher.run.control(vm),
            pid,
            child.as_mut(),
            Duration::from_secs(5),
        );
        self.state().vms.remove(vm);
        let _ = self.launcher.run.remove(vm);
        self.publish(vm_event(vm, None, Some("its destination owns it".into())));
    }

    /// `POST /v1/migrations/{id}/bandwidth`: changes a running migration's bandwidth limit.
    pub async fn set_migration_bandwidth(
        self: &Arc<Self>,
        id: &str,
        bytes_per_sec: u64,
    ) -> Result<u64, Failure> {
        let vm = {
            let st = self.state();
            let m = st
                .migrations
                .get(id)
                .ok_or_else(|| Failure::NotFound(format!("no migration {id} here")))?;
            if m.direction != Direction::Out || m.info.state != MigrationState::Running {
                return Err(Failure::Conflict(format!(
                    "migration {id} is not running out of this host"
                )));
            }
            m.info.vm.clone()
        };
        let control = self.launcher.run.control(&vm);
        tokio::task::spawn_blocking(move || {
            ferry_host::ControlClient::new(&control).set_bandwidth(bytes_per_sec)
        })
        .await
        .map_err(|e| Failure::Internal(e.to_string()))?
        .map_err(|e| Failure::Conflict(format!("the VM's host process refused: {e}")))
    }

    fn set_migration(&self, id: &str, f: impl FnOnce(&mut MigrationInfo)) -> Option<MigrationInfo> {
        let mut st = self.state();
        let m = st.migrations.get_mut(id)?;
        f(&mut m.info);
        Some(m.info.clone())
    }

    fn on_progress(&self, id: &str, vm: &str, ev: &Event) {
        match ev {
            Event::Phase { phase } => {
                let name = serde_json::to_value(phase)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string));
                self.set_migration(id, |i| i.phase = name);
            }
            Event::Progress {
                round,
                done,
                total,
                bytes,
            } => {
                self.set_migration(id, |i| {
                    i.round = *round;
                    i.done = *done;
                    i.total = *total;
                    i.bytes = *bytes;
                });
            }
            Event::Round(r) => self.metrics.round(r),
            Event::Adapt { .. } => {}
        }
        self.publish(DaemonEvent::MigrationProgress {
            id: id.to_string(),
            vm: vm.to_string(),
            event: ev.clone(),
        });
    }

    fn finish_completed(&self, id: &str, vm: &str, report: ferry_migrate::Report) {
        let (info, entry) = {
            let mut st = self.state();
            let entry = st.vms.remove(vm);
            let info = st.migrations.get_mut(id).map(|m| {
                m.info.state = MigrationState::Completed;
                m.info.elapsed_ms = m.started.elapsed().as_millis() as u64;
                m.info.bytes = report.bytes_sent;
                m.info.report = Some(report.clone());
                m.info.clone()
            });
            (info, entry)
        };
        if let Some(i) = &info {
            self.metrics.completed(&i.strategy, &report);
        }
        // The VM's source process exits by itself once the VM runs on the destination.
        let control = self.launcher.run.control(vm);
        if let Some(mut e) = entry {
            let pid = e.pid();
            vm_process::wait_gone(&control, pid, e.child.as_mut(), Duration::from_secs(10));
        }
        let _ = self.launcher.run.remove(vm);
        tracing::info!(migration = %id, vm = %vm, total_ms = report.total_ms, downtime_ms = report.downtime_ms, "migration completed");
        self.publish(vm_event(
            vm,
            None,
            info.as_ref().map(|i| format!("migrated to {}", i.to)),
        ));
        if let Some(i) = info {
            self.publish(DaemonEvent::Migration {
                migration: Box::new(i),
            });
        }
    }

    fn finish_failed(&self, id: &str, vm: &str, cause: &str, at: VmWhere, message: String) {
        let (info, vm_state) = {
            let mut st = self.state();
            let info = st.migrations.get_mut(id).map(|m| {
                m.info.state = MigrationState::Failed;
                m.info.elapsed_ms = m.started.elapsed().as_millis() as u64;
                m.info.error = Some(MigrationFailure {
                    cause: cause.to_string(),
                    vm: at,
                    message: message.clone(),
                });
                m.info.clone()
            });
            let vm_state = st.vms.get_mut(vm).map(|v| {
                v.migration = None;
                let (s, d) = match at {
                    VmWhere::Source => (VmState::Running, None),
                    VmWhere::Destination => (
                        VmState::Exited,
                        Some("the VM runs on the destination".into()),
                    ),
                    VmWhere::PausedRecoverable | VmWhere::Unknown => {
                        (VmState::Paused, Some(message.clone()))
                    }
                };
                v.set_state(s, d.clone());
                (s, d)
            });
            (info, vm_state)
        };
        if let Some(i) = &info {
            self.metrics.failed(&i.strategy);
        }
        tracing::warn!(migration = %id, vm = %vm, cause = %cause, vm_at = ?at, error = %message, "migration failed");
        if let Some((s, d)) = vm_state {
            self.publish(vm_event(vm, Some(s), d));
        }
        if let Some(i) = info {
            self.publish(DaemonEvent::Migration {
                migration: Box::new(i),
            });
        }
    }

    /// `POST /v1/incoming`: starts a receiving process for a VM a peer daemon will send.
    pub async fn prepare_incoming(
        self: &Arc<Self>,
        req: IncomingRequest,
    ) -> Result<IncomingReady, Failure> {
        if self.tls.is_none() {
            return Err(Failure::Refused(format!(
                "host {} has no certificates: it cannot receive migrations over the network",
                self.cfg.name
            )));
        }
        if !valid_name(&req.vm) || !valid_name(&req.from) {
            return Err(Failure::BadRequest("bad VM or host name".into()));
        }
        if let Some(link) = &self.cluster {
            link.check_incoming(&req.vm, &req.from, &req.migration)
                .await?;
        }
        let meta = VmMeta {
            name: req.vm.clone(),
            role: Role::Receive,
            memory: req.memory,
            vcpus: req.vcpus,
            kernel: None,
            ram_backing: ferry_host::RamBackingChoice::Auto,
            pid: None,
            created_unix_ms: unix_ms(),
        };
        {
            let mut st = self.state();
            let incoming = st.in_flight(Direction::In);
            if incoming >= self.cfg.migration.max_incoming {
                return Err(Failure::Refused(format!(
                    "host {} is busy: {incoming} incoming migrations in progress (max_incoming {})",
                    self.cfg.name, self.cfg.migration.max_incoming
                )));
            }
            st.admit(&self.capacity, &req.vm, req.memory, req.vcpus)?;
            self.launcher.run.create(&meta).map_err(|e| {
                Failure::Conflict(format!(
                    "cannot create the directory of VM '{}': {e}",
                    req.vm
                ))
            })?;
            let mut e = VmEntry::new(meta.clone(), VmState::Incoming);
            e.migration = Some(req.migration.clone());
            st.vms.insert(req.vm.clone(), e);
            let mut info = new_migration(&req.migration, &req.vm, &req.from, &self.cfg.name, "");
            info.state = MigrationState::Running;
            st.add_migration(MigrationEntry {
                info,
                direction: Direction::In,
                started: Instant::now(),
            });
        }
        // With a cluster store, the VM runs here only once its record says so: the receiving
        // process asks this gate before it first resumes the VM.
        let gate = match &self.cluster {
            Some(link) => {
                let path = self.launcher.run.vm_dir(&req.vm).join("commit.sock");
                let _ = std::fs::remove_file(&path);
                match tokio::net::UnixListener::bind(&path) {
                    Ok(l) => {
                        tokio::spawn(self.clone().serve_gate(
                            link.clone(),
                            l,
                            req.vm.clone(),
                            req.migration.clone(),
                        ));
                        Some(path)
                    }
                    Err(e) => {
                        self.incoming_failed(&req.vm, &format!("cannot open the commit gate: {e}"));
                        return Err(Failure::Internal(format!(
                            "cannot open the commit gate of VM '{}': {e}",
                            req.vm
                        )));
                    }
                }
            }
            None => None,
        };
        let d = self.clone();
        let m = meta.clone();
        let allow = self.cfg.migration.allow.clone();
        let listen = self.cfg.migration.listen_host.clone();
        let started = tokio::task::spawn_blocking(move || {
            d.launcher
                .receive(&m, &listen, allow, gate.as_deref(), RECEIVER_START)
        })
        .await
        .map_err(|e| Failure::Internal(e.to_string()))?;
        let s = match started {
            Ok(s) => s,
            Err(e) => {
                self.incoming_failed(&req.vm, &e.to_string());
                return Err(Failure::Internal(format!(
                    "cannot start receiving VM '{}': {e}",
                    req.vm
                )));
            }
        };
        let port = s
            .status
            .listen
            .as_deref()
            .and_then(|l| l.rsplit_once(':'))
            .and_then(|(_, p)| p.parse::<u16>().ok());
        let mut meta = meta;
        meta.pid = Some(s.child.id());
        let _ = self.launcher.run.write(&meta);
        if let Some(v) = self.state().vms.get_mut(&req.vm) {
            v.meta = meta;
            v.child = Some(s.child);
        }
        let Some(port) = port else {
            let (d, vm) = (self.clone(), req.vm.clone());
            let _ = tokio::task::spawn_blocking(move || d.cancel_incoming_now(&vm)).await;
            return Err(Failure::Internal(
                "the receiving process reported no port".into(),
            ));
        };
        let host = self.cfg.migration_advertise_host();
        let address = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        tracing::info!(vm = %req.vm, from = %req.from, migration = %req.migration, %address, "waiting for an incoming VM");
        self.publish(vm_event(
            &req.vm,
            Some(VmState::Incoming),
            Some(format!("from {}", req.from)),
        ));
        Ok(IncomingReady {
            address,
            tls_name: self.cfg.name.clone(),
        })
    }

    /// `DELETE /v1/incoming/{vm}`: the source gave up before anything arrived.
    pub async fn cancel_incoming(self: &Arc<Self>, vm: &str) -> Result<(), Failure> {
        {
            let st = self.state();
            let v = st.vms.get(vm).ok_or_else(|| {
                Failure::NotFound(format!("no VM named '{vm}' on host {}", self.cfg.name))
            })?;
            if v.state != VmState::Incoming {
                return Err(Failure::Conflict(format!(
                    "VM '{vm}' is {} here, not arriving",
                    v.state
                )));
            }
        }
        let control = self.launcher.run.control(vm);
        let pid = self.state().vms.get(vm).and_then(|v| v.pid());
        let waiting = tokio::task::spawn_blocking(move || {
            matches!(vm_process::probe(&control, pid), Probe::Status(s) if s.state == Some(ferry_host::protocol::HostState::Waiting))
        })
        .await
        .unwrap_or(false);
        if !waiting {
            return Err(Failure::Conflict(format!(
                "VM '{vm}' has started arriving: it is not dropped"
            )));
        }
        let d = self.clone();
        let name = vm.to_string();
        tokio::task::spawn_blocking(move || d.cancel_incoming_now(&name))
            .await
            .map_err(|e| Failure::Internal(e.to_string()))?;
        Ok(())
    }

    /// Stops a receiving process and forgets the VM (nothing arrived).
    fn cancel_incoming_now(self: &Arc<Self>, vm: &str) {
        let (pid, child) = {
            let mut st = self.state();
            match st.vms.get_mut(vm) {
                Some(v) if v.state == VmState::Incoming => (v.pid(), v.child.take()),
                _ => return,
            }
        };
        let mut child = child;
        vm_process::stop(
            &self.launcher.run.control(vm),
            pid,
            child.as_mut(),
            Duration::from_secs(5),
        );
        self.incoming_failed(vm, "cancelled by the source");
    }

    /// Forgets an incoming VM that never arrived.
    pub(crate) fn incoming_failed(self: &Arc<Self>, vm: &str, why: &str) {
        let mig = {
            let mut st = self.state();
            let Some(v) = st.vms.remove(vm) else { return };
            let mut child = v.child;
            if let Some(c) = child.as_mut() {
                let _ = c.try_wait();
            }
            v.migration.and_then(|id| {
                let m = st.migrations.get_mut(&id)?;
                m.info.state = MigrationState::Failed;
                m.info.elapsed_ms = m.started.elapsed().as_millis() as u64;
                m.info.error = Some(MigrationFailure {
                    cause: "not-arrived".into(),
                    vm: VmWhere::Source,
                    message: why.to_string(),
                });
                Some(m.info.clone())
            })
        };
        let _ = self.launcher.run.remove(vm);
        tracing::info!(vm = %vm, reason = %why, "incoming VM did not arrive");
        self.publish(vm_event(vm, None, Some(why.to_string())));
        if let Some(m) = mig {
            self.publish(DaemonEvent::Migration {
                migration: Box::new(m),
            });
        }
    }

    /// Drops receivers whose source never connected within the configured time.
    pub(crate) fn expire_incoming(self: &Arc<Self>) {
        let limit = Duration::from_secs(self.cfg.migration.incoming_timeout_secs);
        let stale: Vec<(String, Option<u32>)> = self
            .state()
            .vms
            .iter()
            .filter(|(_, v)| v.state == VmState::Incoming && v.since.elapsed() > limit)
            .map(|(n, v)| (n.clone(), v.pid()))
            .collect();
        for (name, pid) in stale {
            let control = self.launcher.run.control(&name);
            if matches!(vm_process::probe(&control, pid), Probe::Status(s) if s.state == Some(ferry_host::protocol::HostState::Waiting))
            {
                tracing::warn!(vm = %name, "incoming migration never started; dropping its receiver");
                self.cancel_incoming_now(&name);
            }
        }
    }
}
