//! Initial placement, maintenance drains and failure evacuations.

use super::{EngineConfig, HostAt, Sim};
use crate::error::SimError;
use crate::report::OpOutcome;
use crate::setup::Scenario;
use ferry_cluster::overload::Detector;
use ferry_cluster::placement::PlacementIndex;
use ferry_cluster::state::Cluster;
use ferry_cluster::{drain, evacuate, HostId, VmId};

/// Places every VM at its full requested size, in VM order, checking CPU, RAM (unless
/// over-committing) and bandwidth like CloudSim's `Host.isSuitableForVm` for a VM being
/// instantiated. With `det` (a dynamic policy, no over-commit) this is CloudSim's
/// `PowerVmAllocationPolicyMigrationAbstract.findHostForVm`: least power increase from the
/// live allocation, hosts that already carry VMs skipped when `det` flags them (their VMs
/// request nothing yet, so only the new VM counts), and a VM that fits nowhere is not
/// created (returned). Otherwise PABFD over idle hosts (`pabfd`) or first
/// fit, and a VM that fits nowhere is an error.
pub(super) fn initial_placement(
    c: &mut Cluster,
    scn: &Scenario,
    pabfd: bool,
    det: Option<&Detector>,
) -> Result<Vec<VmId>, SimError> {
    let saved = (c.enforce_ram, c.enforce_bw);
    c.enforce_ram = saved.0 || !scn.overcommit;
    c.enforce_bw = true;
    let r = match det {
        Some(det) if !scn.overcommit => Ok(cloudsim_pabfd(c, det)),
        _ => simple_placement(c, scn, pabfd).map(|()| Vec::new()),
    };
    (c.enforce_ram, c.enforce_bw) = saved;
    r
}

fn cloudsim_pabfd(c: &mut Cluster, det: &Detector) -> Vec<VmId> {
    let mut idx = PlacementIndex::for_detector(c, det);
    let mut not_created = Vec::new();
    for v in 0..c.vms.len() {
        c.vms[v].demand_mips = c.vms[v].mips;
        match idx.find_host(c, det, v) {
            Some(h) => {
                idx.place(c, h, v);
                // Created VMs keep their full allocation but request nothing until their
                // cloudlets arrive (at 0.1 s): the overload check only sees the new VM.
                c.vms[v].demand_mips = 0.0;
                idx.touch(c, h);
            }
            None => not_created.push(v),
        }
    }
    not_created
}

fn simple_placement(c: &mut Cluster, scn: &Scenario, pabfd: bool) -> Result<(), SimError> {
    let n_h = c.hosts.len();
    let check_ram = c.enforce_ram;
    let min_mips = if scn.overcommit {
        0.0
    } else {
        c.vms.iter().map(|v| v.mips).fold(f64::MAX, f64::min)
    };
    let min_ram = c.vms.iter().map(|v| v.ram_mb).fold(f64::MAX, f64::min);
    let min_bw = scn
        .vm_types
        .iter()
        .map(|v| v.bw_mbps)
        .fold(f64::MAX, f64::min);
    // Groups of interchangeable hosts (same power model and capacity), in index order.
    let mut keys: Vec<(usize, u64, u64)> = Vec::new();
    let mut groups: Vec<Vec<HostId>> = Vec::new();
    if pabfd {
        for h in 0..n_h {
            let host = &c.hosts[h];
            let key = (
                host.power,
                host.total_mips.to_bits(),
                host.pe_mips.to_bits(),
            );
            match keys.iter().position(|k| *k == key) {
                Some(g) => groups[g].push(h),
                None => {
                    keys.push(key);
                    groups.push(vec![h]);
                }
            }
        }
    } else {
        groups.push((0..n_h).collect());
    }
    let mut ptr = vec![0usize; groups.len()];
    for v in 0..c.vms.len() {
        c.vms[v].demand_mips = if scn.overcommit {
            scn.trace.at(scn.vms[v].1, super::T0) * c.vms[v].mips
        } else {
            c.vms[v].mips
        };
        let mut best: Option<(f64, HostId)> = None;
        for (g, group) in groups.iter().enumerate() {
            let dead = |h: HostId, c: &Cluster| {
                let host = &c.hosts[h];
                host.avail_mips < min_mips
                    || (check_ram && host.ram_used + min_ram > host.ram_mb)
                    || host.bw_used + min_bw > host.bw_mbps
            };
            while ptr[g] < group.len() && dead(group[ptr[g]], c) {
                ptr[g] += 1;
            }
            let found = group[ptr[g]..]
                .iter()
                .copied()
                .find(|&h| c.is_suitable(h, v));
            if let Some(h) = found {
                let d = if pabfd {
                    ferry_cluster::placement::power_increase(c, h, c.vms[v].mips)
                } else {
                    h as f64
                };
                if best.is_none_or(|(bd, bh)| d < bd || (d == bd && h < bh)) {
                    best = Some((d, h));
                }
            }
        }
        let Some((_, h)) = best else {
            return Err(SimError::Config(format!(
                "VM {v} ({} MIPS, {} MB) fits on no host at start; add hosts (--hosts) or use fewer VMs (--vms)",
                c.vms[v].mips, c.vms[v].ram_mb
            )));
        };
        c.vm_create(h, v);
    }
    Ok(())
}

impl Sim<'_> {
    fn migration_time(&self, v: VmId, to_bw: f64) -> f64 {
        let vm = &self.c.vms[v];
        self.cfg
            .migration
            .cost(vm.ram_mb, vm.demand_mips / vm.mips, to_bw)
            .duration_s
    }

    /// Records, for every started operation, the moment its host became empty.
    pub(super) fn note_emptied(&mut self, t: f64) {
        for op in &mut self.ops {
            if op.emptied_at_s.is_none()
                && op.problem.is_none()
                && self.c.hosts[op.host].closed
                && self.c.hosts[op.host].vms.is_empty()
            {
                op.emptied_at_s = Some(t);
            }
        }
    }

    /// At a scheduling event: starts drains whose deadline approaches.
    pub(super) fn operations(&mut self, t: f64) -> Result<(), SimError> {
        self.note_emptied(t);
        let det = self.detector();
        for i in 0..self.cfg.drains.len() {
            let (host, deadline) = (self.ops[i].host, self.ops[i].deadline_s);
            if self.c.hosts[host].closed {
                continue;
            }
            let bw = self.c.hosts[host].bw_mbps;
            let est: f64 = self.c.hosts[host]
                .vms
                .iter()
                .map(|&v| self.migration_time(v, bw))
                .sum();
            if t + est + 2.0 * self.scn.interval_s >= deadline {
                let times: Vec<f64> = (0..self.c.vms.len())
                    .map(|v| self.migration_time(v, bw))
                    .collect();
                match drain::plan(&mut self.c, &det, host, t, deadline, |v| times[v]) {
                    Ok(p) => self.start(t, &p.migrations),
                    Err(e) => self.ops[i].problem = Some(e.to_string()),
                }
                self.note_emptied(t);
            }
        }
        Ok(())
    }

    /// A failure warning (evacuate now) or a failure (the host dies now), at `t`.
    pub(super) fn host_event(&mut self, t: f64, ev: HostEvent) {
        match ev {
            HostEvent::Warning(i) => {
                let (host, fails_at) = (self.ops[i].host, self.ops[i].deadline_s);
                if self.failed[host] {
                    return;
                }
                let det = self.detector();
                let bw = self.c.hosts[host].bw_mbps;
                let times: Vec<f64> = (0..self.c.vms.len())
                    .map(|v| self.migration_time(v, bw))
                    .collect();
                let p = evacuate::plan(&mut self.c, &det, host, fails_at - t, |v| times[v]);
                if !p.stranded.is_empty() {
                    self.ops[i].problem = Some(format!(
                        "{} VM(s) cannot leave host {host} before it fails",
                        p.stranded.len()
                    ));
                }
                self.start(t, &p.migrations);
                self.note_emptied(t);
            }
            HostEvent::Failure(i) => {
                let host = self.ops[i].host;
                if !self.failed[host] {
                    self.fail_host(host, t);
                }
            }
        }
    }

    /// The host dies: VMs still on it are lost and cold-restarted elsewhere.
    fn fail_host(&mut self, host: HostId, t: f64) {
        self.failed[host] = true;
        self.c.hosts[host].closed = true;
        let stranded: Vec<VmId> = self.c.hosts[host]
            .vms
            .iter()
            .copied()
            .filter(|&v| self.c.vms[v].host == Some(host))
            .collect();
        let incoming = std::mem::take(&mut self.mig_in[host]);
        for v in incoming {
            self.c.vm_destroy(host, v);
            self.c.vms[v].in_migration = false;
        }
        for v in stranded {
            self.vms_lost += 1;
            self.c.vm_destroy(host, v);
            self.c.vms[v].in_migration = false;
            let excluded = vec![false; self.c.hosts.len()];
            let target = ferry_cluster::placement::first_fit(&self.c, v, &excluded)
                .or_else(|| (0..self.c.hosts.len()).find(|&h| !self.failed[h]));
            if let Some(h) = target {
                self.c.vm_create(h, v);
                self.measure(h, t);
            }
        }
        self.measure(host, t);
    }
}

/// Something that happens to a host between scheduling events (the index of its operation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HostEvent {
    /// The host is predicted to fail: evacuate it.
    Warning(usize),
    /// The host fails.
    Failure(usize),
}

/// The outcomes to fill in: drains first, then evacuations, in the order given.
pub(super) fn outcomes(cfg: &EngineConfig) -> Vec<OpOutcome> {
    let drains = cfg.drains.iter().map(|d| outcome("drain", *d));
    drains
        .chain(cfg.failures.iter().map(|f| outcome("evacuate", *f)))
        .collect()
}

/// Warnings and failures with their times, latest first (a warning before its failure when
/// both fall at the same time).
pub(super) fn host_events(cfg: &EngineConfig) -> Vec<(f64, HostEvent)> {
    let first = cfg.drains.len();
    let mut events: Vec<(f64, HostEvent)> = cfg
        .failures
        .iter()
        .enumerate()
        .flat_map(|(i, f)| {
            [
                (f.t - cfg.failure_warning_s, HostEvent::Warning(first + i)),
                (f.t, HostEvent::Failure(first + i)),
            ]
        })
        .collect();
    let rank = |e: &HostEvent| matches!(e, HostEvent::Failure(_));
    events.sort_by(|a, b| b.0.total_cmp(&a.0).then(rank(&b.1).cmp(&rank(&a.1))));
    events
}

fn outcome(kind: &str, at: HostAt) -> OpOutcome {
    OpOutcome {
        kind: kind.to_string(),
        host: at.host,
        deadline_s: at.t,
        emptied_at_s: None,
        met: false,
        problem: None,
    }
}
