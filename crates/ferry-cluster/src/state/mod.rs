//! The planner's view of a cluster: hosts, VMs, current demand and utilisation history.
//!
//! The view mirrors what a real cluster manager measures (per-VM CPU demand sampled every
//! scheduling interval, per-host measured utilisation) and what CloudSim keeps, so that the
//! same decision functions can run against both.

use crate::placement::PlacementSearch;
use crate::power::PowerModel;
use crate::{HostId, VmId};

/// Number of utilisation samples kept per VM (CloudSim's `PowerVm.HISTORY_LENGTH`).
pub const HISTORY_LEN: usize = 30;

/// A physical host as the planner sees it.
#[derive(Debug, Clone)]
pub struct HostView {
    /// CPU capacity over all cores, in MIPS.
    pub total_mips: f64,
    /// Capacity of one core, in MIPS (a one-vCPU VM can never get more).
    pub pe_mips: f64,
    /// RAM, in MB.
    pub ram_mb: f64,
    /// Network bandwidth, in Mbit/s.
    pub bw_mbps: f64,
    /// Index into [`Cluster::power_models`].
    pub power: usize,
    /// VMs placed on the host, in arrival order (the order matters for tie-breaks).
    pub vms: Vec<VmId>,
    /// CPU used at the last measurement, in MIPS (CloudSim's `getUtilizationOfCpuMips`).
    pub measured_mips: f64,
    /// MIPS not yet promised to placed VMs (0 when over-subscribed).
    pub avail_mips: f64,
    /// RAM promised to placed VMs, in MB.
    pub ram_used: f64,
    /// Bandwidth promised to placed VMs, in Mbit/s.
    pub bw_used: f64,
    /// The host must not receive VMs (being drained, predicted to fail, in maintenance).
    pub closed: bool,
}

/// A VM as the planner sees it.
#[derive(Debug, Clone)]
pub struct VmView {
    /// Requested (maximum) CPU, in MIPS; one vCPU.
    pub mips: f64,
    /// RAM, in MB.
    pub ram_mb: f64,
    /// Network bandwidth the VM is promised, in Mbit/s.
    pub bw_mbps: f64,
    /// Current CPU demand, in MIPS.
    pub demand_mips: f64,
    /// Utilisation samples (fraction of `mips`), newest first, at most [`HISTORY_LEN`].
    pub history: Vec<f64>,
    /// A migration of this VM is in flight.
    pub in_migration: bool,
    /// Host the VM is placed on.
    pub host: Option<HostId>,
}

/// Hosts, VMs and power models: the input of every planning function.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Hosts, indexed by [`HostId`].
    pub hosts: Vec<HostView>,
    /// VMs, indexed by [`VmId`].
    pub vms: Vec<VmView>,
    /// Power models referenced by [`HostView::power`].
    pub power_models: Vec<PowerModel>,
    /// Scheduling interval, in seconds.
    pub interval_s: f64,
    /// Check RAM on every placement (CloudSim checks it only when a VM is created: its VMs
    /// request 0 MB once running).
    pub enforce_ram: bool,
    /// Check the VMs' promised bandwidth on every placement (CloudSim: only at creation).
    pub enforce_bw: bool,
    /// How PABFD searches for a host (the index, or the plain scan it must agree with).
    pub search: PlacementSearch,
    journal: Journal,
}

/// Sums over a host's VMs that the overload detectors need (see [`Cluster::host_load`]).
#[derive(Debug, Clone)]
pub struct HostLoad {
    /// Summed CPU demand, MIPS.
    pub demand_mips: f64,
    /// Summed utilisation history as a fraction of the host (newest first, not trimmed);
    /// only the first `depth` entries are summed.
    pub history: [f64; HISTORY_LEN],
    /// Entries of `history` summed.
    pub depth: usize,
    /// Whether the full history has non-zero entries beyond `depth`.
    pub longer: bool,
    /// Largest RAM of a VM on the host, MB (`f64::MIN` without VMs).
    pub max_ram_mb: f64,
}

impl HostLoad {
    /// Demanded utilisation (fraction), optionally with one more VM.
    pub fn demand_util(&self, c: &Cluster, host: HostId, extra: Option<VmId>) -> f64 {
        let mut total = self.demand_mips;
        if let Some(v) = extra {
            total += c.vms[v].demand_mips;
        }
        total / c.hosts[host].total_mips
    }

    /// Utilisation history (newest first, trailing zeros trimmed), optionally with one more
    /// VM; returns the length written into `out`. With a partial load (`depth` below
    /// [`HISTORY_LEN`]) only the first `depth` entries are written, and a history longer
    /// than that reports [`HISTORY_LEN`]: callers use at most `depth` entries.
    pub fn history(
        &self,
        c: &Cluster,
        host: HostId,
        extra: Option<VmId>,
        out: &mut [f64; HISTORY_LEN],
    ) -> usize {
        *out = self.history;
        let mut longer = self.longer;
        if let Some(v) = extra {
            let vm = &c.vms[v];
            add_history(out, vm, c.hosts[host].total_mips, self.depth);
            longer |=
                self.depth < HISTORY_LEN && crate::stats::non_zero_len(&vm.history) > self.depth;
        }
        if longer {
            HISTORY_LEN
        } else {
            crate::stats::non_zero_len(out)
        }
    }

    /// Longest migration time off the host at half its bandwidth, counting one more VM, s.
    pub fn max_migration_time(&self, c: &Cluster, host: HostId, extra: Option<VmId>) -> f64 {
        let per_mb = c.hosts[host].bw_mbps / 16.0;
        let mig = self.max_ram_mb / per_mb;
        match extra {
            Some(v) => mig.max(c.vms[v].ram_mb / per_mb),
            None => mig,
        }
    }
}

fn add_history(out: &mut [f64; HISTORY_LEN], vm: &VmView, host_mips: f64, depth: usize) {
    for (i, u) in vm.history.iter().take(depth).enumerate() {
        out[i] += u * vm.mips / host_mips;
    }
}

/// A saved allocation, restored after a planning round (see [`Cluster::checkpoint`]).
#[derive(Debug)]
#[must_use = "an allocation saved for planning must be restored"]
pub struct Checkpoint {
    generation: u32,
}

/// What a planning round changed, saved before the first change of each host and VM.
#[derive(Debug, Clone, Default)]
struct Journal {
    /// The checkpoint being recorded (0: none).
    generation: u32,
    /// The latest generation handed out.
    last: u32,
    /// Generation in which each host's / VM's old state was saved.
    host_saved: Vec<u32>,
    vm_saved: Vec<u32>,
    hosts: Vec<(HostId, Vec<VmId>, f64, f64, f64)>,
    vms: Vec<(VmId, Option<HostId>)>,
}

impl HostView {
    /// A host with no VMs.
    pub fn new(total_mips: f64, pe_mips: f64, ram_mb: f64, bw_mbps: f64, power: usize) -> Self {
        Self {
            total_mips,
            pe_mips,
            ram_mb,
            bw_mbps,
            power,
            vms: Vec::new(),
            measured_mips: 0.0,
            avail_mips: total_mips,
            ram_used: 0.0,
            bw_used: 0.0,
            closed: false,
        }
    }
}

impl VmView {
    /// A VM requesting `mips` and `ram_mb`, not yet placed, with no history.
    pub fn new(mips: f64, ram_mb: f64) -> Self {
        Self {
            mips,
            ram_mb,
            bw_mbps: 0.0,
            demand_mips: mips,
            history: Vec::new(),
            in_migration: false,
            host: None,
        }
    }

    /// Pushes a utilisation sample (fraction of `mips`), keeping the newest [`HISTORY_LEN`].
    pub fn push_history(&mut self, u: f64) {
        self.history.insert(0, u);
        self.history.truncate(HISTORY_LEN);
    }
}

impl Cluster {
    /// A cluster of `hosts` and `vms` (placed nowhere yet unless their hosts list them),
    /// with RAM and bandwidth checked on every placement and the automatic PABFD search.
    pub fn new(
        hosts: Vec<HostView>,
        vms: Vec<VmView>,
        power_models: Vec<PowerModel>,
        interval_s: f64,
    ) -> Self {
        Self {
            hosts,
            vms,
            power_models,
            interval_s,
            enforce_ram: true,
            enforce_bw: true,
            search: PlacementSearch::Auto,
            journal: Journal::default(),
        }
    }

    /// Saves what `host` holds before a change, once per checkpoint.
    fn save_host(&mut self, host: HostId) {
        let j = &mut self.journal;
        if j.generation != 0 && j.host_saved[host] != j.generation {
            j.host_saved[host] = j.generation;
            let h = &self.hosts[host];
            j.hosts
                .push((host, h.vms.clone(), h.avail_mips, h.ram_used, h.bw_used));
        }
    }

    /// Saves where `vm` is placed before a change, once per checkpoint.
    fn save_vm(&mut self, vm: VmId) {
        let j = &mut self.journal;
        if j.generation != 0 && j.vm_saved[vm] != j.generation {
            j.vm_saved[vm] = j.generation;
            j.vms.push((vm, self.vms[vm].host));
        }
    }

    /// Demand of `vm` as the host's scheduler grants it: capped at one core.
    pub fn capped_demand(&self, host: HostId, vm: VmId) -> f64 {
        self.vms[vm].demand_mips.min(self.hosts[host].pe_mips)
    }

    /// Places `vm` on `host` (planning or real), like CloudSim's `Host.vmCreate`.
    pub fn vm_create(&mut self, host: HostId, vm: VmId) {
        self.save_host(host);
        self.save_vm(vm);
        let c = self.capped_demand(host, vm);
        let h = &mut self.hosts[host];
        h.vms.push(vm);
        h.avail_mips = if h.avail_mips >= c {
            h.avail_mips - c
        } else {
            0.0
        };
        h.ram_used += self.vms[vm].ram_mb;
        h.bw_used += self.vms[vm].bw_mbps;
        self.vms[vm].host = Some(host);
    }

    /// Removes `vm` from `host`, like CloudSim's `Host.vmDestroy`.
    pub fn vm_destroy(&mut self, host: HostId, vm: VmId) {
        if let Some(pos) = self.hosts[host].vms.iter().position(|&v| v == vm) {
            self.save_host(host);
            self.save_vm(vm);
            self.hosts[host].vms.remove(pos);
            self.hosts[host].ram_used -= self.vms[vm].ram_mb;
            self.hosts[host].bw_used -= self.vms[vm].bw_mbps;
            self.recompute_avail(host);
            if self.vms[vm].host == Some(host) {
                self.vms[vm].host = None;
            }
        }
    }

    /// Recomputes a host's available MIPS from its VMs' current demand.
    pub fn recompute_avail(&mut self, host: HostId) {
        self.save_host(host);
        let mut avail = self.hosts[host].total_mips;
        for &v in &self.hosts[host].vms {
            let c = self.capped_demand(host, v);
            avail = if avail >= c { avail - c } else { 0.0 };
        }
        self.hosts[host].avail_mips = avail;
    }

    /// MIPS allocated on a host by its scheduler right now, including VMs placed or removed
    /// while planning (CloudSim's `PowerVmAllocationPolicyMigrationAbstract
    /// .getUtilizationOfCpuMips`); floors of an over-subscribed host are ignored.
    pub fn live_mips(&self, host: HostId) -> f64 {
        let h = &self.hosts[host];
        if h.vms.is_empty() {
            0.0
        } else {
            h.total_mips - h.avail_mips
        }
    }

    /// Measured utilisation of a host (fraction), CloudSim's `getUtilizationOfCpu`.
    pub fn measured_util(&self, host: HostId) -> f64 {
        let u = self.hosts[host].measured_mips / self.hosts[host].total_mips;
        if u > 1.0 && u < 1.01 {
            1.0
        } else {
            u
        }
    }

    /// Demanded utilisation of a host (fraction), optionally with one more VM.
    pub fn demand_util(&self, host: HostId, extra: Option<VmId>) -> f64 {
        let h = &self.hosts[host];
        let mut total: f64 = 0.0;
        for &v in &h.vms {
            total += self.vms[v].demand_mips;
        }
        if let Some(v) = extra {
            total += self.vms[v].demand_mips;
        }
        total / h.total_mips
    }

    /// Host utilisation history (newest first, trailing zeros trimmed) built from its VMs'
    /// histories, optionally with one more VM; returns the length written into `out`.
    pub fn host_history(
        &self,
        host: HostId,
        extra: Option<VmId>,
        out: &mut [f64; HISTORY_LEN],
    ) -> usize {
        self.host_load(host).history(self, host, extra, out)
    }

    /// The newest `n` entries of [`HostLoad::history`] (the same values, summed in the same
    /// order), and whether the full summed history has at least `n` non-zero entries.
    pub fn recent_history(&self, host: HostId, n: usize, out: &mut [f64; HISTORY_LEN]) -> bool {
        let h = &self.hosts[host];
        let n = n.min(HISTORY_LEN);
        *out = [0.0; HISTORY_LEN];
        let mut long = false;
        for &v in &h.vms {
            let vm = &self.vms[v];
            for (i, u) in vm.history.iter().take(n).enumerate() {
                out[i] += u * vm.mips / h.total_mips;
            }
            // Samples are never negative, so the sum is non-zero wherever one VM's is.
            long |= crate::stats::non_zero_len(&vm.history) >= n;
        }
        long
    }

    /// What the overload detectors read off a host's VMs: summed demand, summed history and
    /// largest RAM, each summed in the host's VM order (so that adding one more VM to it gives
    /// the same bits as summing over all of them).
    pub fn host_load(&self, host: HostId) -> HostLoad {
        self.host_load_to(host, HISTORY_LEN)
    }

    /// [`Cluster::host_load`] with only the newest `depth` history entries summed (enough for
    /// a detector that fits that many samples).
    pub fn host_load_to(&self, host: HostId, depth: usize) -> HostLoad {
        let h = &self.hosts[host];
        let depth = depth.min(HISTORY_LEN);
        let mut load = HostLoad {
            demand_mips: 0.0,
            history: [0.0; HISTORY_LEN],
            depth,
            longer: false,
            max_ram_mb: f64::MIN,
        };
        for &v in &h.vms {
            let vm = &self.vms[v];
            load.demand_mips += vm.demand_mips;
            add_history(&mut load.history, vm, h.total_mips, depth);
            load.longer |= depth < HISTORY_LEN && crate::stats::non_zero_len(&vm.history) > depth;
            load.max_ram_mb = load.max_ram_mb.max(vm.ram_mb);
        }
        load
    }

    /// Whether `vm` fits on `host` now (CloudSim's `isSuitableForVm`, plus RAM and
    /// bandwidth if enforced and the host being open).
    pub fn is_suitable(&self, host: HostId, vm: VmId) -> bool {
        let h = &self.hosts[host];
        let v = &self.vms[vm];
        !h.closed
            && h.pe_mips >= v.demand_mips
            && h.avail_mips >= v.demand_mips
            && (!self.enforce_ram || h.ram_used + v.ram_mb <= h.ram_mb + 1e-9)
            && (!self.enforce_bw || h.bw_used + v.bw_mbps <= h.bw_mbps + 1e-9)
    }

    /// Longest migration time off `host` at half its bandwidth (CloudSim's estimate), s.
    pub fn max_migration_time(&self, host: HostId) -> f64 {
        let h = &self.hosts[host];
        let max_ram = h
            .vms
            .iter()
            .map(|&v| self.vms[v].ram_mb)
            .fold(f64::MIN, f64::max);
        max_ram / (h.bw_mbps / 16.0)
    }

    /// Saves the allocation so that planning can move VMs around and undo it. Until
    /// [`Cluster::restore`], [`Cluster::vm_create`], [`Cluster::vm_destroy`] and
    /// [`Cluster::recompute_avail`] record the state of each host and VM they change first
    /// (the allocation must change only through them), so saving and restoring cost what
    /// the round changed, not the size of the cluster.
    ///
    /// # Panics
    /// If a checkpoint is already open.
    pub fn checkpoint(&mut self) -> Checkpoint {
        let j = &mut self.journal;
        assert_eq!(j.generation, 0, "a checkpoint is already open");
        j.host_saved.resize(self.hosts.len(), 0);
        j.vm_saved.resize(self.vms.len(), 0);
        // Generations count from 1 and never repeat while the flags live.
        j.last = match j.last.checked_add(1) {
            Some(g) => g,
            None => {
                j.host_saved.fill(0);
                j.vm_saved.fill(0);
                1
            }
        };
        j.generation = j.last;
        Checkpoint {
            generation: j.generation,
        }
    }

    /// Restores the allocation saved by [`Cluster::checkpoint`].
    pub fn restore(&mut self, cp: Checkpoint) {
        let j = &mut self.journal;
        assert_eq!(j.generation, cp.generation, "restoring a stale checkpoint");
        for (h, vms, avail, ram, bw) in j.hosts.drain(..) {
            let host = &mut self.hosts[h];
            host.vms = vms;
            host.avail_mips = avail;
            host.ram_used = ram;
            host.bw_used = bw;
        }
        for (v, host) in j.vms.drain(..) {
            self.vms[v].host = host;
        }
        j.generation = 0;
    }

    /// Power of `host` at utilisation `u`.
    pub fn power_at(&self, host: HostId, u: f64) -> f64 {
        self.power_models[self.hosts[host].power].power(u)
    }
}

#[cfg(test)]
mod tests;
