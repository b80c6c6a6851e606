//! VM placement: power-aware best-fit decreasing (PABFD) and first fit.
//!
//! PABFD puts each VM on the host whose power draw grows least, skipping hosts that the
//! overload detector would flag once the VM is there. Like CloudSim, the power increase is
//! computed from each host's *measured* utilisation.

use crate::overload::Detector;
use crate::state::Cluster;
use crate::{HostId, VmId};

/// Candidate hosts for one planning round: active hosts in index order, and idle hosts
/// grouped by hardware (idle hosts of one kind are interchangeable for PABFD, so only the
/// first one that fits needs looking at).
#[derive(Debug, Clone, Default)]
pub struct PlacementIndex {
    active: Vec<HostId>,
    idle_groups: Vec<Vec<HostId>>,
    base_power: Vec<f64>,
}

impl PlacementIndex {
    /// Builds the index from the hosts' measured utilisation.
    pub fn new(c: &Cluster) -> Self {
        let mut idx = PlacementIndex::default();
        let mut keys: Vec<(usize, u64, u64)> = Vec::new();
        idx.base_power = (0..c.hosts.len())
            .map(|h| c.power_at(h, c.measured_util(h)))
            .collect();
        for (h, host) in c.hosts.iter().enumerate() {
            if host.measured_mips != 0.0 {
                idx.active.push(h);
                continue;
            }
            let key = (
                host.power,
                host.total_mips.to_bits(),
                host.pe_mips.to_bits(),
            );
            match keys.iter().position(|k| *k == key) {
                Some(g) => idx.idle_groups[g].push(h),
                None => {
                    keys.push(key);
                    idx.idle_groups.push(vec![h]);
                }
            }
        }
        idx
    }
}

/// PABFD host choice for `vm`: least power increase, ties to the lowest host index; hosts
/// in `excluded` (indexed by host) are skipped. Returns `None` when nothing fits.
///
/// As in CloudSim 3.0.3, the utilisation *after* allocation starts from the host's live
/// allocation (VMs placed or removed earlier in this round count), while the power it is
/// compared with is the stale measured one; only hosts with a live allocation get the
/// overload check.
pub fn find_host(
    c: &Cluster,
    idx: &PlacementIndex,
    det: &Detector,
    vm: VmId,
    excluded: &[bool],
) -> Option<HostId> {
    let demand = c.vms[vm].demand_mips;
    let mut best: Option<(f64, HostId)> = None;
    let better = |d: f64, h: HostId, best: &Option<(f64, HostId)>| match best {
        None => true,
        Some((bd, bh)) => d < *bd || (d == *bd && h < *bh),
    };
    let consider = |h: HostId, best: &mut Option<(f64, HostId)>| {
        let live = c.live_mips(h);
        let d = idx.increase(c, h, live, demand);
        if better(d, h, best) && (live == 0.0 || !det.is_overloaded(c, h, Some(vm))) {
            *best = Some((d, h));
        }
    };
    for &h in &idx.active {
        if !excluded[h] && c.is_suitable(h, vm) {
            consider(h, &mut best);
        }
    }
    for group in &idx.idle_groups {
        // Untouched idle hosts of one kind all cost the same: only the first suitable one
        // matters. Idle hosts that received VMs this round are looked at one by one.
        let mut untouched_seen = false;
        for &h in group {
            if excluded[h] {
                continue;
            }
            let fresh = !c.hosts[h].vms.is_empty();
            if (!fresh && untouched_seen) || !c.is_suitable(h, vm) {
                continue;
            }
            untouched_seen |= !fresh;
            consider(h, &mut best);
        }
    }
    best.map(|(_, h)| h)
}

impl PlacementIndex {
    fn increase(&self, c: &Cluster, host: HostId, live: f64, demand: f64) -> f64 {
        let h = &c.hosts[host];
        let after = ((live + demand) / h.total_mips).min(1.0);
        c.power_at(host, after) - self.base_power[host]
    }
}

/// Watts added to `host` by `demand` MIPS, from its measured utilisation.
pub fn power_increase(c: &Cluster, host: HostId, demand: f64) -> f64 {
    let h = &c.hosts[host];
    let after = ((h.measured_mips + demand) / h.total_mips).min(1.0);
    c.power_at(host, after) - c.power_at(host, c.measured_util(host))
}

/// First host (by index) where `vm` fits, as CloudSim's `PowerVmAllocationPolicySimple`.
pub fn first_fit(c: &Cluster, vm: VmId, excluded: &[bool]) -> Option<HostId> {
    (0..c.hosts.len()).find(|&h| !excluded[h] && c.is_suitable(h, vm))
}

/// Places VMs in decreasing order of demand with PABFD, returning `(vm, host)` pairs for the
/// VMs that found a host (the allocation in `c` is updated).
pub fn place_all(
    c: &mut Cluster,
    det: &Detector,
    vms: &[VmId],
    excluded: &[bool],
) -> Vec<(VmId, HostId)> {
    let idx = PlacementIndex::new(c);
    let mut order = vms.to_vec();
    sort_by_demand_desc(c, &mut order);
    let mut out = Vec::new();
    for v in order {
        if let Some(h) = find_host(c, &idx, det, v, excluded) {
            c.vm_create(h, v);
            out.push((v, h));
        }
    }
    out
}

/// Stable sort of VMs by decreasing CPU demand (CloudSim's `sortByCpuUtilization`).
pub fn sort_by_demand_desc(c: &Cluster, vms: &mut [VmId]) {
    vms.sort_by(|&a, &b| c.vms[b].demand_mips.total_cmp(&c.vms[a].demand_mips));
}
