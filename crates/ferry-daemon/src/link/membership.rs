//! Membership: join with a lease (waiting out a previous run's), publish this host's record and
//! load, freeze every VM when the lease may have expired, and reconcile the VMs here with their
//! ownership records after each join.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_store::cluster::{
    Capacity, ClusterError, HealthSymptom, HostRecord, HostReport, HostState, Load, Membership,
    Stored, Timestamp, VmId, VmRecord, VmState as RecState,
};
use ferry_store::AnyStore;
use tokio::sync::watch;

use super::{describe, ClusterLink};
use crate::api::types::VmState;
use crate::daemon::{Daemon, LOAD_PERIOD};

/// How a membership ended.
enum Ended {
    Shutdown,
    Lost,
}

/// What reconciliation found for one VM (logged, and counted by tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciled {
    /// Recorded now (it had no record).
    Recorded,
    /// Ours and running: nothing to do.
    Kept,
    /// Ours but lost or paused in the record, and its process is alive here: taken back.
    Recovered,
    /// The record names another owner: its process here is frozen, never resumed.
    NotOurs(String),
    /// Ours in the record, but no process here: marked lost.
    Lost,
}

impl Daemon {
    /// Joins the cluster and stays a member until shutdown: rejoins after losing the lease.
    pub(crate) async fn membership_loop(
        self: Arc<Self>,
        link: Arc<ClusterLink>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut waited = false;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let m = match link
                .store
                .join(&link.host, link.lease_ttl, &self.host_report(&link))
                .await
            {
                Ok(m) => m,
                Err(e) => {
                    if matches!(e, ClusterError::AlreadyExists { .. }) {
                        if !waited {
                            tracing::info!(host = %link.host, "an earlier membership of this host is still alive; waiting for its lease to expire");
                            waited = true;
                        }
                    } else {
                        tracing::warn!(error = %describe(&e), "cannot join the cluster; retrying");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            };
            waited = false;
            link.set_joined(true);
            if let Err(e) = self.publish_host(&link).await {
                tracing::warn!(error = %describe(&e), "cannot write this host's record");
            }
            let found = self.reconcile(&link).await;
            tracing::info!(host = %link.host, lease_ms = link.lease_ttl.as_millis() as u64, vms = ?found, "joined the cluster");
            let leader = self
                .cfg
                .cluster
                .planner
                .then(|| tokio::spawn(self.clone().lead(link.clone(), m.lease().id)));
            let ended = self.member(&link, &m, &mut shutdown).await;
            if let Some(t) = leader {
                t.abort();
            }
            link.set_joined(false);
            {
                let mut s = link.leader_state();
                s.leading = false;
                s.guard = None;
            }
            match ended {
                Ended::Shutdown => {
                    // Leaving lets the leader mark this host's VMs lost at once; the next
                    // daemon joins without waiting and takes them back (`reconcile`).
                    if let Err(e) = m.leave().await {
                        tracing::warn!(error = %describe(&e), "cannot leave the cluster; the lease will expire");
                    }
                    return;
                }
                Ended::Lost => {
                    let n = self.freeze_all("this host's cluster lease expired or may have");
                    tracing::error!(host = %link.host, frozen = n, "membership lost: every VM here is stopped until the host rejoins");
                }
            }
        }
    }

    async fn member(
        &self,
        link: &ClusterLink,
        m: &Membership<AnyStore>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Ended {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(LOAD_PERIOD) => {
                    if let Err(e) = m.report(&self.host_report(link)).await {
                        if !m.is_alive() {
                            return Ended::Lost;
                        }
                        tracing::warn!(error = %describe(&e), "cannot publish this host's load");
                    }
                }
                _ = m.lost() => return Ended::Lost,
                _ = shutdown.changed() => return Ended::Shutdown,
            }
        }
    }

    /// This host's report: load, symptoms, per-VM CPU.
    pub(crate) fn host_report(&self, link: &ClusterLink) -> HostReport {
        let l = self.load();
        let vm_cpu: BTreeMap<String, f64> = self
            .state()
            .vms
            .iter()
            .filter_map(|(n, v)| v.cpu.map(|c| (n.clone(), c)))
            .collect();
        HostReport {
            load: Load {
                cpu_used: l.cpu_usage * f64::from(l.cpus),
                memory_used_bytes: l.memory_used,
            },
            symptoms: link.symptoms(),
            reported_at: Timestamp::now(),
            vm_cpu,
        }
    }

    /// Writes this host's record (keeping its administrative state, except that a host
    /// marked failed that rejoins is active again).
    pub(crate) async fn publish_host(
        &self,
        link: &ClusterLink,
    ) -> Result<Stored<HostRecord>, ClusterError> {
        let address: SocketAddr = self
            .api_advertise()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let old = link.store.host(&link.host).await?;
        let state = match old.as_ref().map(|o| o.record.state) {
            None | Some(HostState::Failed) => HostState::Active,
            Some(s) => s,
        };
        let rec = HostRecord {
            name: link.host.clone(),
            address,
            capacity: Capacity {
                cpus: self.capacity.vcpus,
                memory_bytes: self.capacity.memory,
            },
            cpu_features: link.features,
            state,
        };
        match old {
            Some(o) => link.store.update_host(&o, rec).await,
            None => link.store.put_host(&rec).await,
        }
    }

    /// Stops (SIGSTOP) every VM process here: this host may not own them any more.
    pub(crate) fn freeze_all(&self, why: &str) -> usize {
        let mut st = self.state();
        let mut n = 0;
        for v in st.vms.values_mut() {
            if matches!(v.state, VmState::Exited | VmState::Incoming) || v.frozen {
                continue;
            }
            if let Some(pid) = v.pid() {
                freeze(pid, true);
                v.frozen = true;
                v.set_state(VmState::Paused, Some(format!("frozen: {why}")));
                n += 1;
            }
        }
        n
    }

    fn thaw(&self, name: &str) {
        let mut st = self.state();
        if let Some(v) = st.vms.get_mut(name) {
            if let Some(pid) = v.pid() {
                freeze(pid, false);
            }
            let silent = v
                .detail
                .as_deref()
                .is_some_and(|d| d.starts_with("its process does not answer"));
            if v.frozen || (v.state == VmState::Paused && silent) {
                v.frozen = false;
                // The monitor's next probe tells whether its vCPUs run.
                v.set_state(VmState::Running, None);
            }
        }
    }

    /// Brings the VMs here and their records into agreement (after each join).
    pub(crate) async fn reconcile(&self, link: &ClusterLink) -> Vec<(String, Reconciled)> {
        let records: BTreeMap<String, Stored<VmRecord>> = match link.store.vms().await {
            Ok(l) => l
                .items
                .into_iter()
                .map(|s| (s.record.id.to_string(), s))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %describe(&e), "cannot read VM records to reconcile");
                return Vec::new();
            }
        };
        let local: Vec<(String, VmState, u64, u8)> = self
            .state()
            .vms
            .iter()
            .map(|(n, v)| (n.clone(), v.state, v.meta.memory, v.meta.vcpus))
            .collect();
        let mut out = Vec::new();
        for (name, state, memory, vcpus) in &local {
            if matches!(
                state,
                VmState::Incoming | VmState::Exited | VmState::Starting
            ) {
                continue;
            }
            let r = match records.get(name) {
                None => match link.record_new_vm(name, *memory, u32::from(*vcpus)).await {
                    Ok(_) => Reconciled::Recorded,
                    Err(e) => {
                        tracing::warn!(vm = %name, error = %e, "cannot record an adopted VM");
                        continue;
                    }
                },
                Some(rec) if rec.record.owner != link.host => {
                    let owner = rec.record.owner.to_string();
                    self.freeze_vm(name, &format!("the cluster record says {owner} owns it"));
                    Reconciled::NotOurs(owner)
                }
                Some(rec) => match &rec.record.state {
                    RecState::Running => {
                        self.thaw(name);
                        Reconciled::Kept
                    }
                    RecState::Lost | RecState::PausedRecoverable => {
                        match link.store.recover_vm(rec, &link.host).await {
                            Ok(_) => {
                                self.thaw(name);
                                Reconciled::Recovered
                            }
                            Err(e) => {
                                tracing::warn!(vm = %name, error = %describe(&e), "cannot recover the VM's record");
                                continue;
                            }
                        }
                    }
                    RecState::Migrating { migration, .. } => {
                        // A migration out was in flight when this daemon stopped. Ending it
                        // here also closes the destination's gate.
                        match link.store.pause_vm(rec, &link.host).await {
                            Ok(p) => match link.store.recover_vm(&p, &link.host).await {
                                Ok(_) => {
                                    tracing::info!(vm = %name, migration = %migration, "migration interrupted by a daemon restart: the VM stays here");
                                    self.thaw(name);
                                    Reconciled::Recovered
                                }
                                Err(e) => {
                                    tracing::warn!(vm = %name, error = %describe(&e), "cannot recover the VM's record");
                                    continue;
                                }
                            },
                            Err(_) => {
                                // The destination committed first: it is not ours.
                                self.freeze_vm(name, "its migration's destination owns it");
                                Reconciled::NotOurs("the destination".into())
                            }
                        }
                    }
                },
            };
            out.push((name.clone(), r));
        }
        // Ours in the store, but nowhere here.
        for (name, rec) in &records {
            if rec.record.owner != link.host || local.iter().any(|(n, ..)| n == name) {
                continue;
            }
            if matches!(rec.record.state, RecState::Lost) {
                continue;
            }
            let lost = VmRecord {
                state: RecState::Lost,
                ..rec.record.clone()
            };
            match link.store.update_vm(rec, lost).await {
                Ok(_) => out.push((name.clone(), Reconciled::Lost)),
                Err(e) => {
                    tracing::warn!(vm = %name, error = %describe(&e), "cannot mark a vanished VM lost")
                }
            }
        }
        out
    }

    pub(crate) fn freeze_vm(&self, name: &str, why: &str) {
        let mut st = self.state();
        if let Some(v) = st.vms.get_mut(name) {
            if let Some(pid) = v.pid() {
                freeze(pid, true);
            }
            v.frozen = true;
            v.set_state(VmState::Paused, Some(format!("frozen: {why}")));
        }
        tracing::warn!(vm = %name, reason = %why, "VM frozen: not this host's");
    }
}

impl ClusterLink {
    /// Health symptoms this host reports (set through the API by a monitoring agent).
    pub fn symptoms(&self) -> Vec<HealthSymptom> {
        self.symptoms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// VM id of a name, if valid.
    pub fn vm_id(name: &str) -> Option<VmId> {
        VmId::new(name).ok()
    }
}

/// SIGSTOP (`stop`) or SIGCONT a VM process: a stopped process runs no vCPU and answers
/// nothing, whatever it was doing.
fn freeze(pid: u32, stop: bool) {
    let Ok(pid) = i32::try_from(pid) else { return };
    let sig = if stop { libc::SIGSTOP } else { libc::SIGCONT };
    // SAFETY: kill(2) with a pid this daemon started or adopted (checked to serve the VM's
    // control socket) and a constant signal; no memory is shared.
    unsafe {
        libc::kill(pid, sig);
    }
}
