//! One dynamic-consolidation round, as CloudSim's
//! `PowerVmAllocationPolicyMigrationAbstract.optimizeAllocation`:
//!
//! 1. find overloaded hosts; 2. pick VMs off each until it is no longer overloaded;
//! 3. place them with PABFD away from overloaded hosts; 4. repeatedly take the least
//!    utilised remaining host and try to move all its VMs to other active hosts (all or
//!    nothing); 5. restore the allocation and return the migration list.

use crate::overload::Detector;
use crate::placement::{sort_by_demand_desc, PlacementIndex};
use crate::selection::Selector;
use crate::state::Cluster;
use crate::{HostId, Migration, VmId};
use rand::Rng;

/// Knobs of a consolidation round; [`RoundOptions::cloudsim`] reproduces CloudSim 3.0.3.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundOptions {
    /// Run underload consolidation after overload relief.
    pub consolidate: bool,
    /// Only hosts below this measured utilisation are emptied (CloudSim: 1.0, i.e. any).
    pub underload_below: f64,
    /// Hosts that just received VMs from overloaded hosts may not be emptied in the same
    /// round (CloudSim forgets to exclude them and may move a VM twice).
    pub exclude_new_targets: bool,
    /// Stop planning after this many migrations.
    pub max_migrations: usize,
}

impl RoundOptions {
    /// CloudSim 3.0.3's behaviour, quirks included.
    pub fn cloudsim() -> Self {
        Self {
            consolidate: true,
            underload_below: 1.0,
            exclude_new_targets: false,
            max_migrations: usize::MAX,
        }
    }
}

/// Plans one round; the allocation in `c` is unchanged on return.
pub fn optimize(
    c: &mut Cluster,
    det: &Detector,
    sel: Selector,
    opts: &RoundOptions,
    rng: &mut impl Rng,
) -> Vec<Migration> {
    let n = c.hosts.len();
    let mut idx = PlacementIndex::for_detector(c, det);
    let overloaded: Vec<HostId> = (0..n).filter(|&h| idx.is_overloaded(c, det, h)).collect();
    let cp = c.checkpoint();
    let origin: Vec<Option<HostId>> = c.vms.iter().map(|v| v.host).collect();
    let mut plan: Vec<(VmId, HostId)> = Vec::new();

    for &h in &overloaded {
        idx.exclude(h);
    }
    let mut to_move: Vec<VmId> = Vec::new();
    for &h in &overloaded {
        while let Some(v) = sel.select(c, h, rng) {
            to_move.push(v);
            idx.unplace(c, h, v);
            if !idx.is_overloaded(c, det, h) {
                break;
            }
        }
    }
    sort_by_demand_desc(c, &mut to_move);
    for v in to_move {
        if plan.len() >= opts.max_migrations {
            break;
        }
        if let Some(h) = idx.find_host(c, det, v) {
            idx.place(c, h, v);
            plan.push((v, h));
        }
    }

    if opts.consolidate {
        consolidate(c, &mut idx, det, opts, &overloaded, &mut plan);
    }
    c.restore(cp);
    plan.into_iter()
        .filter_map(|(vm, to)| origin[vm].map(|from| Migration { vm, from, to }))
        .collect()
}

fn consolidate(
    c: &mut Cluster,
    idx: &mut PlacementIndex,
    det: &Detector,
    opts: &RoundOptions,
    overloaded: &[HostId],
    plan: &mut Vec<(VmId, HostId)>,
) {
    let n = c.hosts.len();
    let mut skip_under = vec![false; n];
    for &h in overloaded {
        skip_under[h] = true;
    }
    for (h, skip) in skip_under.iter_mut().enumerate() {
        if c.measured_util(h) == 0.0 {
            *skip = true;
            idx.exclude(h);
        }
    }
    if opts.exclude_new_targets {
        for &(_, h) in plan.iter() {
            skip_under[h] = true;
        }
    }
    // Candidates in increasing measured utilisation (ties by index): the exclusion set only
    // grows, so walking this order equals CloudSim's repeated minimum search.
    let mut order: Vec<HostId> = (0..n).filter(|&h| !skip_under[h]).collect();
    order.sort_by(|&a, &b| {
        c.measured_util(a)
            .total_cmp(&c.measured_util(b))
            .then(a.cmp(&b))
    });
    for h in order {
        if plan.len() >= opts.max_migrations {
            break;
        }
        let u = c.measured_util(h);
        if skip_under[h] || !(u > 0.0 && u < 1.0) || u >= opts.underload_below {
            continue;
        }
        let vms = &c.hosts[h].vms;
        if vms.is_empty() || vms.iter().all(|&v| c.vms[v].in_migration) {
            continue;
        }
        skip_under[h] = true;
        idx.exclude(h);
        let mut vms: Vec<VmId> = vms
            .iter()
            .copied()
            .filter(|&v| !c.vms[v].in_migration)
            .collect();
        sort_by_demand_desc(c, &mut vms);
        let mut placed: Vec<(VmId, HostId)> = Vec::new();
        let mut ok = true;
        for &v in &vms {
            match idx.find_host(c, det, v) {
                Some(t) => {
                    idx.place(c, t, v);
                    placed.push((v, t));
                }
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if !ok || plan.len() + placed.len() > opts.max_migrations {
            for &(v, t) in placed.iter().rev() {
                idx.unplace(c, t, v);
                c.vms[v].host = Some(h);
            }
            continue;
        }
        for &(_, t) in &placed {
            skip_under[t] = true;
        }
        plan.extend(placed);
    }
}

#[cfg(test)]
mod tests;
