//! The simulation driver: advances time, measures hosts, calls the planner, runs migrations.
//!
//! Time and accounting follow CloudSim 3.0.3's `PowerDatacenter` closely: scheduling events
//! at `0.1 + k·interval`; every host is re-measured at each event and at each migration
//! completion; a migrating VM gets 90 % of its CPU on the source while the target already
//! carries 10 % of it; energy is the trapezoid of power between measurements, 0 for a host
//! that starts a segment at 0 %.

mod accounting;
mod links;
mod measure;
mod ops;

use crate::error::SimError;
use crate::migration::MigrationModel;
use crate::report::{IntervalStats, OpOutcome, Report};
use crate::setup::Scenario;
use crate::trace::SampleCache;
use accounting::{HostAcc, VmAcc};
use ferry_cluster::consolidation;
use ferry_cluster::overload::Detector;
use ferry_cluster::placement::PlacementSearch;
use ferry_cluster::policy::PolicySpec;
use ferry_cluster::state::{Cluster, HostView, VmView};
use ferry_cluster::{HostId, Migration, VmId};
use rand::SeedableRng;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Offset of the first scheduling event (CloudSim submits cloudlets at 0.1 s).
const T0: f64 = 0.1;

/// A host with a time attached: a drain deadline or a failure time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostAt {
    /// Host index.
    pub host: HostId,
    /// Time, s.
    pub t: f64,
}

/// How to run a scenario.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Policy name (for the report).
    pub policy_name: String,
    /// The policy.
    pub policy: PolicySpec,
    /// Migration time model.
    pub migration: MigrationModel,
    /// Check host RAM when re-placing VMs (CloudSim does not).
    pub enforce_ram: bool,
    /// Check the VMs' promised bandwidth when re-placing them (CloudSim does not).
    pub enforce_bw: bool,
    /// How PABFD searches (the index, or the plain scan it must agree with).
    pub search: PlacementSearch,
    /// Seed for random selection.
    pub seed: u64,
    /// Hosts to drain by a deadline.
    pub drains: Vec<HostAt>,
    /// Hosts that fail at a time.
    pub failures: Vec<HostAt>,
    /// How long before a failure it is predicted, s.
    pub failure_warning_s: f64,
    /// Drop a VM for good once it requests 0 MIPS at a measurement (CloudSim's
    /// `PowerDatacenter` treats it as completed and deallocates it).
    pub drop_idle_vms: bool,
    /// Migrations a host's link carries at once, each at that share of the bandwidth (the
    /// slower of source and target); more wait in line, the VM reserved on its target.
    /// `None`: every migration runs at once at the target's full bandwidth (CloudSim).
    pub link_slots: Option<usize>,
}

impl EngineConfig {
    /// CloudSim-compatible configuration for a policy.
    pub fn new(policy_name: &str, policy: PolicySpec) -> Self {
        Self {
            policy_name: policy_name.to_string(),
            policy,
            migration: MigrationModel::CloudSim,
            enforce_ram: false,
            enforce_bw: false,
            search: PlacementSearch::Auto,
            seed: 1,
            drains: Vec::new(),
            failures: Vec::new(),
            failure_warning_s: 1800.0,
            drop_idle_vms: true,
            link_slots: None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Completion {
    t: f64,
    seq: u64,
    vm: VmId,
    /// The source whose link the migration used (if it holds a link slot).
    from: Option<HostId>,
    to: HostId,
}

impl PartialEq for Completion {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Completion {}
impl PartialOrd for Completion {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Completion {
    fn cmp(&self, o: &Self) -> Ordering {
        o.t.total_cmp(&self.t).then(o.seq.cmp(&self.seq))
    }
}

/// The simulator's mutable state.
pub(crate) struct Sim<'a> {
    scn: &'a Scenario,
    cfg: &'a EngineConfig,
    pub(crate) c: Cluster,
    row: Vec<usize>,
    samples: Vec<SampleCache>,
    mig_in: Vec<Vec<VmId>>,
    prev_mips: Vec<f64>,
    last_t: Vec<f64>,
    host_acc: Vec<HostAcc>,
    vm_acc: Vec<VmAcc>,
    /// Scheduler shares of the last [`Sim::measure_all`], per host.
    shares: Vec<measure::Shares>,
    energy_j: f64,
    migrations: u64,
    moved_mb: f64,
    downtime_s: f64,
    vms_lost: u64,
    events: BinaryHeap<Completion>,
    seq: u64,
    full_updates: bool,
    failed: Vec<bool>,
    gone: Vec<bool>,
    vms_dropped: u64,
    vms_not_created: u64,
    pub(crate) ops: Vec<OpOutcome>,
    links: links::Links,
}

/// Rejects drains and failures of hosts that do not exist among `hosts`.
pub fn check_hosts(cfg: &EngineConfig, hosts: usize) -> Result<(), SimError> {
    for op in cfg.drains.iter().chain(&cfg.failures) {
        if op.host >= hosts {
            return Err(SimError::Config(format!(
                "host {} does not exist (there are {hosts} hosts)",
                op.host
            )));
        }
    }
    Ok(())
}

/// Runs `scn` under `cfg`; returns the metrics and per-interval statistics.
pub fn run(scn: &Scenario, cfg: &EngineConfig) -> Result<(Report, Vec<IntervalStats>), SimError> {
    let started = std::time::Instant::now();
    check_hosts(cfg, scn.hosts.len())?;
    let mut sim = Sim::new(scn, cfg)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let mut series = Vec::new();
    let mut t = T0;
    let npa = matches!(cfg.policy, PolicySpec::Npa);
    sim.ops = ops::outcomes(cfg);
    // Failure warnings and failures, latest first: handled the moment they happen.
    let mut host_events = ops::host_events(cfg);
    loop {
        let next = t + scn.interval_s;
        if next > scn.end_s {
            break;
        }
        while let Some(&(at, ev)) = host_events.last() {
            if at > next {
                break;
            }
            host_events.pop();
            // One before the first measurement happens at the first one.
            let at = at.max(t);
            sim.complete_until(at);
            sim.update_all(at, false);
            sim.host_event(at, ev);
        }
        sim.complete_until(next);
        let dt = next - t;
        t = next;
        if npa {
            sim.energy_j += (0..sim.c.hosts.len())
                .map(|h| sim.scn.host_types[sim.scn.hosts[h]].power.max_power())
                .sum::<f64>()
                * dt;
        }
        sim.update_all(t, true);
        let before = sim.migrations;
        sim.operations(t)?;
        let plan = sim.plan(&mut rng);
        sim.start(t, &plan);
        series.push(sim.interval_stats(t, (sim.migrations - before) as usize));
    }
    sim.complete_until(scn.end_s + 1e-9);
    Ok((sim.finish(started.elapsed().as_secs_f64()), series))
}

impl<'a> Sim<'a> {
    fn new(scn: &'a Scenario, cfg: &'a EngineConfig) -> Result<Self, SimError> {
        let hosts: Vec<HostView> = scn
            .hosts
            .iter()
            .map(|&t| {
                let ht = &scn.host_types[t];
                HostView::new(
                    ht.pe_mips * ht.pes as f64,
                    ht.pe_mips,
                    ht.ram_mb,
                    ht.bw_mbps,
                    t,
                )
            })
            .collect();
        let vms: Vec<VmView> = scn
            .vms
            .iter()
            .map(|&(t, _)| {
                let mut v = VmView::new(scn.vm_types[t].mips, scn.vm_types[t].ram_mb);
                v.bw_mbps = scn.vm_types[t].bw_mbps;
                v
            })
            .collect();
        let n_h = hosts.len();
        let n_v = vms.len();
        let mut sim = Sim {
            scn,
            cfg,
            c: {
                let mut c = Cluster::new(
                    hosts,
                    vms,
                    scn.host_types.iter().map(|h| h.power.clone()).collect(),
                    scn.interval_s,
                );
                c.enforce_ram = cfg.enforce_ram;
                c.enforce_bw = cfg.enforce_bw;
                c.search = cfg.search;
                c
            },
            row: scn.vms.iter().map(|&(_, r)| r).collect(),
            samples: vec![SampleCache::default(); n_v],
            mig_in: vec![Vec::new(); n_h],
            prev_mips: vec![0.0; n_h],
            last_t: vec![T0; n_h],
            host_acc: vec![HostAcc::default(); n_h],
            vm_acc: vec![VmAcc::default(); n_v],
            shares: Vec::new(),
            energy_j: 0.0,
            migrations: 0,
            moved_mb: 0.0,
            downtime_s: 0.0,
            vms_lost: 0,
            events: BinaryHeap::new(),
            seq: 0,
            full_updates: matches!(cfg.migration, MigrationModel::CloudSim),
            failed: vec![false; n_h],
            gone: vec![false; n_v],
            vms_dropped: 0,
            vms_not_created: 0,
            ops: Vec::new(),
            links: links::Links::new(n_h, cfg.link_slots),
        };
        let pabfd = matches!(
            cfg.policy,
            PolicySpec::Dynamic { .. } | PolicySpec::Balance { .. }
        );
        let det = match &cfg.policy {
            PolicySpec::Dynamic { detector, .. } => Some(detector),
            _ => None,
        };
        for v in ops::initial_placement(&mut sim.c, scn, pabfd, det)? {
            sim.gone[v] = true;
            sim.vms_not_created += 1;
        }
        sim.c.enforce_ram = cfg.enforce_ram;
        sim.c.enforce_bw = cfg.enforce_bw;
        Ok(sim)
    }

    fn util(&mut self, vm: VmId, t: f64) -> f64 {
        self.scn
            .trace
            .at_cached(self.row[vm], t, &mut self.samples[vm])
    }

    /// Re-measures every host at `t` (and records VM history at scheduling events).
    /// Returns the hosts that lost VMs found idle after their measurement.
    fn update_all(&mut self, t: f64, scheduling: bool) -> Vec<HostId> {
        for v in 0..self.c.vms.len() {
            if self.gone[v] {
                continue;
            }
            let u = self.util(v, t);
            let vm = &mut self.c.vms[v];
            vm.demand_mips = u * vm.mips;
            if scheduling && vm.host.is_some() {
                vm.push_history(u);
            }
        }
        self.measure_all(t);
        let mut emptied = Vec::new();
        if self.cfg.drop_idle_vms {
            for v in 0..self.c.vms.len() {
                emptied.extend(self.drop_if_idle(v));
            }
        }
        emptied
    }

    /// CloudSim's completed-VM rule: a VM on a host that requests nothing and is not
    /// migrating is deallocated for good. Returns its host.
    fn drop_if_idle(&mut self, v: VmId) -> Option<HostId> {
        let vm = &self.c.vms[v];
        if vm.demand_mips == 0.0 && !vm.in_migration {
            if let Some(h) = vm.host {
                self.c.vm_destroy(h, v);
                self.gone[v] = true;
                self.vms_dropped += 1;
                return Some(h);
            }
        }
        None
    }

    /// Processes migration completions strictly before `until`.
    fn complete_until(&mut self, until: f64) {
        while let Some(&e) = self.events.peek() {
            if e.t >= until {
                break;
            }
            let t = e.t;
            let mut batch = Vec::new();
            while let Some(&e2) = self.events.peek() {
                if e2.t != t {
                    break;
                }
                batch.push(e2);
                self.events.pop();
            }
            let mut touched = Vec::new();
            if self.full_updates {
                touched = self.update_all(t, false);
            }
            for e in &batch {
                if let Some(from) = e.from {
                    self.links.release(from, e.to);
                }
                // A migration to a host that failed meanwhile was cancelled.
                if !self.failed[e.to] {
                    touched.extend(self.finish_migration(e.vm, e.to));
                }
            }
            self.launch_waiting(t);
            // Hosts nothing happened to since they were measured at `t` would measure the
            // same again: only the touched ones are re-measured.
            touched.sort_unstable();
            touched.dedup();
            for h in touched {
                self.measure(h, t);
            }
            self.note_emptied(t);
            if self.full_updates && self.cfg.drop_idle_vms {
                // A VM that just arrived may now count as completed (it was migrating).
                let mut arrived: Vec<VmId> = batch.iter().map(|e| e.vm).collect();
                arrived.sort_unstable();
                arrived.dedup();
                for v in arrived {
                    self.drop_if_idle(v);
                }
            }
        }
    }

    fn finish_migration(&mut self, v: VmId, to: HostId) -> Vec<HostId> {
        let mut touched = vec![to];
        if let Some(from) = self.c.vms[v].host {
            self.c.vm_destroy(from, v);
            touched.push(from);
        }
        if let Some(p) = self.mig_in[to].iter().position(|&x| x == v) {
            self.mig_in[to].remove(p);
            if let Some(q) = self.c.hosts[to].vms.iter().position(|&x| x == v) {
                self.c.hosts[to].vms.remove(q);
                self.c.hosts[to].ram_used -= self.c.vms[v].ram_mb;
                self.c.hosts[to].bw_used -= self.c.vms[v].bw_mbps;
            }
        }
        self.c.vm_create(to, v);
        self.c.vms[v].in_migration = false;
        touched
    }

    /// Starts the planned migrations at `t`.
    pub(crate) fn start(&mut self, t: f64, plan: &[Migration]) {
        if plan.is_empty() {
            return;
        }
        let mut touched = Vec::new();
        for m in plan {
            let v = m.vm;
            if self.c.vms[v].host == Some(m.to) || self.failed[m.to] {
                continue;
            }
            self.c.vms[v].in_migration = true;
            if !self.mig_in[m.to].contains(&v) {
                self.c.hosts[m.to].vms.push(v);
                self.c.hosts[m.to].ram_used += self.c.vms[v].ram_mb;
                self.c.hosts[m.to].bw_used += self.c.vms[v].bw_mbps;
                self.mig_in[m.to].push(v);
            }
            self.migrations += 1;
            match self.c.vms[v].host {
                Some(from) if self.links.limited() => self.launch_or_wait(t, v, from, m.to),
                _ => self.launch(t, v, None, m.to),
            }
            touched.push(m.to);
            if let Some(h) = self.c.vms[v].host {
                touched.push(h);
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for h in touched {
            self.measure(h, t);
        }
    }

    fn plan(&mut self, rng: &mut rand::rngs::StdRng) -> Vec<Migration> {
        match &self.cfg.policy {
            PolicySpec::Npa | PolicySpec::Dvfs => Vec::new(),
            PolicySpec::Dynamic {
                detector,
                selector,
                options,
            } => consolidation::optimize(&mut self.c, detector, *selector, options, rng),
            PolicySpec::Balance {
                max_moves,
                min_gain,
            } => ferry_cluster::balance::plan(&mut self.c, *max_moves, *min_gain),
        }
    }

    fn detector(&self) -> Detector {
        match &self.cfg.policy {
            PolicySpec::Dynamic { detector, .. } => detector.clone(),
            _ => Detector::Thr(0.9),
        }
    }

    fn interval_stats(&self, t: f64, migrations: usize) -> IntervalStats {
        let active: Vec<f64> = (0..self.c.hosts.len())
            .filter(|&h| self.c.hosts[h].measured_mips > 0.0)
            .map(|h| self.c.measured_util(h))
            .collect();
        let mean = if active.is_empty() {
            0.0
        } else {
            active.iter().sum::<f64>() / active.len() as f64
        };
        IntervalStats {
            t,
            active_hosts: active.len(),
            mean_util: mean,
            migrations,
        }
    }

    fn finish(mut self, wall_s: f64) -> Report {
        for a in &mut self.host_acc {
            a.close();
        }
        let active: f64 = self.host_acc.iter().map(|a| a.active_s).sum();
        let viol: f64 = self.host_acc.iter().map(|a| a.violation_s).sum();
        let req: f64 = self.vm_acc.iter().map(|a| a.requested).sum();
        let lost: f64 = self.vm_acc.iter().map(|a| a.lost_migrating).sum();
        let slatah = if active > 0.0 { viol / active } else { 0.0 };
        let pdm = if req > 0.0 { lost / req } else { 0.0 };
        let energy_kwh = self.energy_j / 3.6e6;
        Report {
            policy: self.cfg.policy_name.clone(),
            trace: self.scn.trace.name(),
            hosts: self.c.hosts.len(),
            vms: self.c.vms.len(),
            simulated_s: self.scn.end_s,
            energy_kwh,
            migrations: self.migrations,
            slatah,
            pdm,
            slav: slatah * pdm,
            esv: energy_kwh * slatah * pdm,
            host_shutdowns: self.host_acc.iter().map(|a| a.shutdowns).sum(),
            moved_gb: self.moved_mb / 1024.0,
            downtime_s: self.downtime_s,
            vms_lost: self.vms_lost,
            vms_not_created: self.vms_not_created,
            vms_dropped: self.vms_dropped,
            operations: self
                .ops
                .into_iter()
                .map(|mut o| {
                    o.met = o.emptied_at_s.is_some_and(|e| e <= o.deadline_s);
                    o
                })
                .collect(),
            wall_s,
            raw: [active, viol, req, lost],
        }
    }
}

#[cfg(test)]
mod tests;
