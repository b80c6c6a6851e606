//! The planner's I/O: reads the cluster store, plans, and starts the admitted moves. Each
//! move begins in the store guarded by leadership (`begin_migration` on the leader's guarded
//! handle: a deposed leader's attempt changes nothing), and then the source's daemon is asked
//! to carry it out. Non-leaders forward `plan` requests to the leader.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_cost::learned::{Model, Sample};
use ferry_cost::{Cost, MigrationInput};
use ferry_store::cluster::{
    ClusterError, ClusterStore, HostName, HostState, MigrationId, MigrationSample, Timestamp, VmId,
    VmState as RecState,
};
use ferry_store::{AnyStore, Election};

use super::decide::{decide, HostIn, Options, VmIn};
use super::scheduler::{admit, shares, Flow, Limits};
use super::{Plan, PlannedMove};
use crate::api::types::{MigrationInfo, StartMigration};
use crate::daemon::{Daemon, Failure};
use crate::link::{describe, ClusterLink};

/// A planned migration whose source never heard of it is aborted after this long.
const STALE_MS: u64 = 60_000;

/// What the planner reads from the store.
pub(crate) struct Inputs {
    pub hosts: Vec<HostIn>,
    pub vms: Vec<VmIn>,
    pub in_flight: Vec<(String, Flow, u64)>,
    pub samples: Vec<MigrationSample>,
    pub addresses: BTreeMap<String, String>,
}

fn store_err(e: ClusterError) -> Failure {
    Failure::Refused(format!("cluster store: {}", describe(&e)))
}

/// The samples as the cost model reads them.
pub fn training_set(samples: &[MigrationSample]) -> Vec<Sample> {
    samples
        .iter()
        .filter(|s| s.completed && s.bandwidth > 0.0)
        .map(|s| Sample {
            input: MigrationInput {
                ram_bytes: s.ram_bytes as f64,
                dirty_rate: s.dirty_rate,
                working_set_bytes: s.working_set_bytes as f64,
                bandwidth: s.bandwidth,
                rtt_ms: s.rtt_ms,
                codec_ratio: s.codec_ratio,
            },
            strategy: s.strategy.clone(),
            cost: Cost {
                total_ms: s.total_ms,
                downtime_ms: s.downtime_ms,
                bytes: s.bytes as f64,
            },
        })
        .collect()
}

pub(crate) async fn read_inputs(link: &ClusterLink) -> Result<Inputs, ClusterError> {
    let hosts = link.store.hosts().await?;
    let members = link.store.members().await?;
    let vms = link.store.vms().await?;
    let migrations = link.store.migrations().await?;
    let samples = link.store.samples().await?;
    let mut vm_cpu: BTreeMap<String, f64> = BTreeMap::new();
    let mut hosts_in = Vec::new();
    let mut addresses = BTreeMap::new();
    for h in &hosts.items {
        let member = members.items.iter().find(|m| m.host == h.record.name);
        if let Some(m) = member {
            vm_cpu.extend(m.report.vm_cpu.clone());
        }
        addresses.insert(h.record.name.to_string(), h.record.address.to_string());
        hosts_in.push(HostIn {
            name: h.record.name.to_string(),
            alive: member.is_some(),
            active: h.record.state == HostState::Active,
            drain_deadline_ms: match h.record.state {
                HostState::Draining { deadline } => Some(deadline.0),
                _ => None,
            },
            failing: member.is_some_and(|m| !m.report.symptoms.is_empty()),
            cpus: h.record.capacity.cpus,
            memory: h.record.capacity.memory_bytes,
            features: h.record.cpu_features,
        });
    }
    let mut last_dirty: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let mut by_time: Vec<&MigrationSample> = samples.iter().collect();
    by_time.sort_by_key(|s| s.ended_at);
    for s in by_time {
        last_dirty.insert(s.vm.to_string(), (s.dirty_rate, s.working_set_bytes as f64));
    }
    let vms_in = vms
        .items
        .iter()
        .map(|v| {
            let name = v.record.id.to_string();
            VmIn {
                owner: v.record.owner.to_string(),
                running: v.record.state == RecState::Running,
                migrating: matches!(v.record.state, RecState::Migrating { .. }),
                vcpus: v.record.vcpus,
                memory: v.record.memory_bytes,
                cpu: vm_cpu.get(&name).copied(),
                features: v.record.cpu.map(|c| c.features),
                dirty: last_dirty.get(&name).copied(),
                name,
            }
        })
        .collect();
    let in_flight = migrations
        .items
        .iter()
        .map(|m| {
            (
                m.record.id.to_string(),
                Flow {
                    vm: m.record.vm.to_string(),
                    from: m.record.from.to_string(),
                    to: m.record.to.to_string(),
                },
                m.record.started_at.0,
            )
        })
        .collect();
    Ok(Inputs {
        hosts: hosts_in,
        vms: vms_in,
        in_flight,
        samples: samples.into_iter().collect(),
        addresses,
    })
}

impl Daemon {
    fn limits(&self) -> Limits {
        Limits {
            per_host: self.cfg.cluster.max_per_host,
            per_link: self.cfg.cluster.max_per_link,
            bandwidth: self.cfg.cluster.bandwidth,
        }
    }

    /// One planning round on the leader: plan, and start the admitted moves (only automatic
    /// ones — evacuation and drain — unless `apply_all`).
    pub(crate) async fn plan_round(
        self: Arc<Self>,
        link: &Arc<ClusterLink>,
        guarded: &ClusterStore<AnyStore>,
        apply_all: bool,
    ) -> Result<Plan, Failure> {
        let inputs = read_inputs(link).await.map_err(store_err)?;
        let now = Timestamp::now().0;
        let model = self.refit(link, &inputs.samples);
        let (recent, started_before) = {
            let s = link.leader_state();
            (s.planner.recent.clone(), s.planner.started.len())
        };
        let t = Instant::now();
        let opts = Options {
            now_ms: now,
            ..Options::default()
        };
        let mut plan = decide(&inputs.hosts, &inputs.vms, &recent, &opts, model.as_ref());
        plan.decision_ms = t.elapsed().as_secs_f64() * 1e3;
        plan.leader = link.host.to_string();
        plan.in_flight = inputs
            .in_flight
            .iter()
            .map(|(id, f, _)| format!("{id}: {} {} -> {}", f.vm, f.from, f.to))
            .collect();
        self.clean_stale(link, guarded, &inputs, now).await;

        let queue: Vec<&PlannedMove> = plan
            .moves
            .iter()
            .filter(|m| apply_all || m.reason.automatic())
            .collect();
        let flows: Vec<Flow> = queue
            .iter()
            .map(|m| Flow {
                vm: m.vm.clone(),
                from: m.from.clone(),
                to: m.to.clone(),
            })
            .collect();
        let running: Vec<Flow> = inputs.in_flight.iter().map(|(_, f, _)| f.clone()).collect();
        let limits = self.limits();
        let admitted = admit(&flows, &running, &limits);
        let mut all: Vec<Flow> = running.clone();
        all.extend(admitted.iter().map(|&i| flows[i].clone()));
        let bw = shares(&all, &limits);
        for (k, &i) in admitted.iter().enumerate() {
            let mv = queue[i];
            let share = bw[running.len() + k];
            match self
                .start_planned(link, guarded, mv, share, &inputs.addresses)
                .await
            {
                Ok(id) => {
                    plan.started
                        .push(format!("{id}: {} {} -> {}", mv.vm, mv.from, mv.to));
                    let mut s = link.leader_state();
                    s.planner
                        .recent
                        .insert(mv.vm.clone(), (mv.from.clone(), now));
                    s.planner.started.push((id, mv.vm.clone()));
                }
                Err(e @ Failure::Refused(_)) if e.to_string().contains("not the leader") => {
                    plan.problems.push(e.to_string());
                    break;
                }
                Err(e) => plan.problems.push(format!("{} not started: {e}", mv.vm)),
            }
        }
        if apply_all {
            for h in &plan.power_off {
                if let Ok(name) = HostName::new(h) {
                    if let Err(e) = guarded
                        .set_host_state(&name, HostState::PowerOffCandidate)
                        .await
                    {
                        plan.problems
                            .push(format!("cannot mark {h} for power-off: {}", describe(&e)));
                    }
                }
            }
        }
        // Started again this round: the slow drain of stale reservations would double them.
        let _ = started_before;
        // Re-share the budget among what runs now (a runtime bandwidth change on each source).
        if limits.bandwidth.is_some() {
            for (k, f) in running.iter().enumerate() {
                if let (Some(b), Some((id, ..))) = (bw[k], inputs.in_flight.get(k)) {
                    let _ = self
                        .set_remote_bandwidth(link, &f.from, id, b, &inputs.addresses)
                        .await;
                }
            }
        }
        link.leader_state().planner.last = Some(plan.clone());
        Ok(plan)
    }

    /// The learned model, refitted when the history grew.
    fn refit(&self, link: &ClusterLink, samples: &[MigrationSample]) -> Option<Model> {
        let train = training_set(samples);
        let mut s = link.leader_state();
        let fitted = s.planner.model.as_ref().map_or(0, Model::samples);
        if fitted != train.len() {
            s.planner.model = Model::fit(&train).ok();
        }
        s.planner.model.clone()
    }

    /// Begins the move in the store (guarded by leadership), then asks its source to run it.
    async fn start_planned(
        self: &Arc<Self>,
        link: &ClusterLink,
        guarded: &ClusterStore<AnyStore>,
        mv: &PlannedMove,
        bandwidth: Option<u64>,
        addresses: &BTreeMap<String, String>,
    ) -> Result<String, Failure> {
        let vm = VmId::new(&mv.vm).map_err(|e| Failure::BadRequest(e.to_string()))?;
        let to = HostName::new(&mv.to).map_err(|e| Failure::BadRequest(e.to_string()))?;
        let rec = link
            .store
            .vm(&vm)
            .await
            .map_err(store_err)?
            .ok_or_else(|| Failure::NotFound(format!("VM {} has no record", mv.vm)))?;
        if rec.record.owner.as_str() != mv.from || rec.record.state != RecState::Running {
            return Err(Failure::Conflict(format!(
                "VM {} changed since the plan (owner {}, {:?})",
                mv.vm, rec.record.owner, rec.record.state
            )));
        }
        let id = format!("p-{:016x}", rand::random::<u64>());
        let mid = MigrationId::new(&id).map_err(|e| Failure::Internal(e.to_string()))?;
        let begun = match guarded.begin_migration(&rec, &to, &mid).await {
            Ok((s, _)) => s,
            Err(ClusterError::NotLeader { .. }) => {
                return Err(Failure::Refused(
                    "not the leader any more: nothing started".into(),
                ))
            }
            Err(e) => return Err(store_err(e)),
        };
        let mut req = StartMigration::new(&mv.vm, &mv.to);
        req.migration = Some(id.clone());
        req.max_bandwidth = bandwidth.unwrap_or(0);
        let started = if mv.from == self.cfg.name {
            self.start_migration(req).await.map(|_| ())
        } else {
            match addresses.get(&mv.from) {
                Some(addr) => match self.peer_client(addr, &mv.from) {
                    Ok(c) => c
                        .post::<_, MigrationInfo>("/v1/migrations", &req)
                        .await
                        .map(|_| ())
                        .map_err(|e| Failure::Peer(format!("source {} refused: {e}", mv.from))),
                    Err(e) => Err(e),
                },
                None => Err(Failure::NotFound(format!(
                    "no address for host {}",
                    mv.from
                ))),
            }
        };
        if let Err(e) = started {
            // Nothing moved: the VM stays where it is, its record back to running.
            if let Err(a) = guarded.abort_migration(&begun).await {
                tracing::warn!(vm = %mv.vm, error = %describe(&a), "cannot abort a planned migration that did not start");
            }
            return Err(e);
        }
        tracing::info!(migration = %id, vm = %mv.vm, from = %mv.from, to = %mv.to, reason = ?mv.reason, bandwidth = ?bandwidth, "planned migration started");
        Ok(id)
    }

    /// Aborts planned migrations that their source does not know (a leader died between
    /// beginning one and asking its source): otherwise they would be lost.
    async fn clean_stale(
        self: &Arc<Self>,
        link: &ClusterLink,
        guarded: &ClusterStore<AnyStore>,
        inputs: &Inputs,
        now: u64,
    ) {
        for (id, f, started) in &inputs.in_flight {
            if now.saturating_sub(*started) < STALE_MS {
                continue;
            }
            let known = if f.from == self.cfg.name {
                self.state().migrations.contains_key(id)
            } else {
                let Some(addr) = inputs.addresses.get(&f.from) else {
                    continue;
                };
                let Ok(c) = self.peer_client(addr, &f.from) else {
                    continue;
                };
                match c
                    .get::<MigrationInfo>(&format!("/v1/migrations/{id}"))
                    .await
                {
                    Ok(_) => true,
                    Err(e)
                        if e.to_string().contains("404")
                            || e.to_string().contains("no migration") =>
                    {
                        false
                    }
                    Err(_) => continue,
                }
            };
            if known {
                continue;
            }
            let Ok(vm) = VmId::new(&f.vm) else { continue };
            if let Ok(Some(rec)) = link.store.vm(&vm).await {
                match guarded.abort_migration(&rec).await {
                    Ok(_) => {
                        tracing::warn!(migration = %id, vm = %f.vm, "planned migration never reached its source: aborted (the VM stays on {})", f.from)
                    }
                    Err(e) => {
                        tracing::info!(migration = %id, error = %describe(&e), "stale migration not aborted")
                    }
                }
            }
        }
    }

    async fn set_remote_bandwidth(
        self: &Arc<Self>,
        _link: &ClusterLink,
        host: &str,
        id: &str,
        bytes_per_sec: u64,
        addresses: &BTreeMap<String, String>,
    ) -> Result<(), Failure> {
        let body = serde_json::json!({ "bytes_per_sec": bytes_per_sec });
        if host == self.cfg.name {
            return self
                .set_migration_bandwidth(id, bytes_per_sec)
                .await
                .map(|_| ());
        }
        let addr = addresses
            .get(host)
            .ok_or_else(|| Failure::NotFound(host.to_string()))?;
        self.peer_client(addr, host)?
            .post::<_, serde_json::Value>(&format!("/v1/migrations/{id}/bandwidth"), &body)
            .await
            .map(|_| ())
            .map_err(|e| Failure::Peer(e.to_string()))
    }

    /// `GET /v1/plan` (`apply` false) and `POST /v1/plan/apply`: on the leader, plans (and
    /// applies); elsewhere, asks the leader.
    pub async fn plan_request(self: &Arc<Self>, apply: bool) -> Result<Plan, Failure> {
        let Some(link) = self.cluster.clone() else {
            return Err(Failure::Refused(
                "no planner running: this daemon has no cluster store ([store])".into(),
            ));
        };
        let guard = link.leader_state().guard.clone();
        if let Some(g) = guard {
            let guarded = link.store.guarded_by(g);
            if apply {
                return self.clone().plan_round(&link, &guarded, true).await;
            }
            // Show, do not act.
            let inputs = read_inputs(&link).await.map_err(store_err)?;
            let model = self.refit(&link, &inputs.samples);
            let recent = link.leader_state().planner.recent.clone();
            let t = Instant::now();
            let opts = Options {
                now_ms: Timestamp::now().0,
                ..Options::default()
            };
            let mut plan = decide(&inputs.hosts, &inputs.vms, &recent, &opts, model.as_ref());
            plan.decision_ms = t.elapsed().as_secs_f64() * 1e3;
            plan.leader = link.host.to_string();
            plan.in_flight = inputs
                .in_flight
                .iter()
                .map(|(id, f, _)| format!("{id}: {} {} -> {}", f.vm, f.from, f.to))
                .collect();
            return Ok(plan);
        }
        let election = Election::new(
            link.store.store().clone(),
            link.store.keys().planner_leader(),
        );
        let leader = election
            .leader()
            .await
            .map_err(|e| Failure::Refused(format!("cluster store: {e}")))?
            .ok_or_else(|| Failure::Refused("no planner running: no host leads now".into()))?;
        let host =
            HostName::new(&leader.candidate).map_err(|e| Failure::Internal(e.to_string()))?;
        let rec = link
            .store
            .host(&host)
            .await
            .map_err(store_err)?
            .ok_or_else(|| Failure::Refused(format!("the leader {host} has no host record")))?;
        let c = self.peer_client(&rec.record.address.to_string(), host.as_str())?;
        let r = if apply {
            c.post::<_, Plan>("/v1/plan/apply", &serde_json::json!({}))
                .await
        } else {
            c.get::<Plan>("/v1/plan").await
        };
        r.map_err(|e| Failure::Peer(format!("the leader {host}: {e}")))
    }

    /// `POST /v1/hosts/{name}/drain`: the host takes no new VMs and must be empty by the
    /// deadline; the leader's planner moves its VMs.
    pub async fn drain_host(self: &Arc<Self>, name: &str, by: Duration) -> Result<(), Failure> {
        let Some(link) = self.cluster.clone() else {
            return Err(Failure::Refused(
                "no planner running: this daemon has no cluster store ([store])".into(),
            ));
        };
        let host = HostName::new(name).map_err(|e| Failure::BadRequest(e.to_string()))?;
        let deadline = Timestamp(Timestamp::now().0 + by.as_millis() as u64);
        link.store
            .set_host_state(&host, HostState::Draining { deadline })
            .await
            .map_err(|e| match e {
                ClusterError::NotFound { .. } => {
                    Failure::NotFound(format!("no host named '{name}' in the cluster"))
                }
                e => store_err(e),
            })?;
        tracing::info!(host = %name, by_secs = by.as_secs(), "drain requested");
        Ok(())
    }
}
