//! Load balancing: reduce the spread of utilisation across active hosts.

use crate::state::Cluster;
use crate::{HostId, Migration, VmId};

/// Plans at most `max_moves` migrations, each moving one VM from the most to the least
/// utilised active host, as long as that lowers the larger of the two by more than
/// `min_gain` (a fraction of capacity). The allocation in `c` is unchanged on return.
pub fn plan(c: &mut Cluster, max_moves: usize, min_gain: f64) -> Vec<Migration> {
    let cp = c.checkpoint();
    let origin: Vec<Option<HostId>> = c.vms.iter().map(|v| v.host).collect();
    let mut out = Vec::new();
    let mut moved = vec![false; c.vms.len()];
    while out.len() < max_moves {
        let active: Vec<HostId> = (0..c.hosts.len())
            .filter(|&h| !c.hosts[h].vms.is_empty() && !c.hosts[h].closed)
            .collect();
        let util = |h: HostId| c.demand_util(h, None);
        let Some(&hi) = active.iter().max_by(|&&a, &&b| util(a).total_cmp(&util(b))) else {
            break;
        };
        let Some(&lo) = active.iter().min_by(|&&a, &&b| util(a).total_cmp(&util(b))) else {
            break;
        };
        if hi == lo {
            break;
        }
        let (uh, ul) = (util(hi), util(lo));
        let mut best: Option<(f64, VmId)> = None;
        for &v in &c.hosts[hi].vms {
            if moved[v] || c.vms[v].in_migration || !c.is_suitable(lo, v) {
                continue;
            }
            let d = c.vms[v].demand_mips;
            let after = (uh - d / c.hosts[hi].total_mips).max(ul + d / c.hosts[lo].total_mips);
            if best.is_none_or(|(b, _)| after < b) {
                best = Some((after, v));
            }
        }
        match best {
            Some((after, v)) if uh - after > min_gain => {
                c.vm_destroy(hi, v);
                c.vm_create(lo, v);
                moved[v] = true;
                if let Some(from) = origin[v] {
                    out.push(Migration {
                        vm: v,
                        from,
                        to: lo,
                    });
                }
            }
            _ => break,
        }
    }
    c.restore(cp);
    out
}

/// Spread of demanded utilisation over hosts with VMs: (max - min, standard deviation).
pub fn spread(c: &Cluster) -> (f64, f64) {
    let u: Vec<f64> = (0..c.hosts.len())
        .filter(|&h| !c.hosts[h].vms.is_empty())
        .map(|h| c.demand_util(h, None))
        .collect();
    if u.is_empty() {
        return (0.0, 0.0);
    }
    let max = u.iter().cloned().fold(f64::MIN, f64::max);
    let min = u.iter().cloned().fold(f64::MAX, f64::min);
    let mean = u.iter().sum::<f64>() / u.len() as f64;
    let sd = (u.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / u.len() as f64).sqrt();
    (max - min, sd)
}
