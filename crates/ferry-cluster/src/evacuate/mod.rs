//! Evacuation of a host predicted to fail: save as many VMs as possible before it does.

use crate::overload::Detector;
use crate::placement::PlacementIndex;
use crate::state::Cluster;
use crate::{HostId, Migration, VmId};

/// The evacuation: migrations that finish before the failure, and the VMs that will not.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EvacuationPlan {
    /// Migrations to start now, in order (sequential on the failing host's link).
    pub migrations: Vec<Migration>,
    /// VMs that cannot be moved off in time or have nowhere to go.
    pub stranded: Vec<VmId>,
}

/// Plans the evacuation of `host`, expected to fail `time_left` seconds from now.
///
/// Smallest-RAM VMs go first (the most VMs saved per second of link time). Targets are
/// chosen with PABFD under `det`; when that finds nothing, plain capacity is enough (an
/// overloaded host beats a dead one). The host is marked closed in `c`.
pub fn plan(
    c: &mut Cluster,
    det: &Detector,
    host: HostId,
    time_left: f64,
    migration_time: impl Fn(VmId) -> f64,
) -> EvacuationPlan {
    let mut out = EvacuationPlan::default();
    if host >= c.hosts.len() {
        return out;
    }
    c.hosts[host].closed = true;
    let cp = c.checkpoint();
    let mut idx = PlacementIndex::for_detector(c, det);
    idx.exclude(host);
    let mut vms: Vec<VmId> = c.hosts[host]
        .vms
        .iter()
        .copied()
        .filter(|&v| !c.vms[v].in_migration)
        .collect();
    vms.sort_by(|&a, &b| c.vms[a].ram_mb.total_cmp(&c.vms[b].ram_mb));
    let mut t = 0.0;
    for v in vms {
        let dt = migration_time(v);
        let target = idx
            .find_host(c, det, v)
            .or_else(|| idx.find_host(c, &Detector::Thr(1.0), v));
        match target {
            Some(to) if t + dt <= time_left => {
                idx.place(c, to, v);
                out.migrations.push(Migration {
                    vm: v,
                    from: host,
                    to,
                });
                t += dt;
            }
            _ => out.stranded.push(v),
        }
    }
    c.restore(cp);
    out
}
