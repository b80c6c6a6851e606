//! VM selection: which VM leaves an overloaded host.

use crate::state::Cluster;
use crate::stats;
use crate::{HostId, VmId};
use rand::Rng;

/// A VM selection rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selector {
    /// Minimum migration time: the VM with the least RAM.
    Mmt,
    /// Maximum correlation: the VM whose load best correlates with the others'.
    Mc,
    /// Random selection.
    Rs,
    /// Minimum utilisation.
    Mu,
}

impl Selector {
    /// Picks the next VM to migrate off `host`, or `None` if no VM can move.
    pub fn select(&self, c: &Cluster, host: HostId, rng: &mut impl Rng) -> Option<VmId> {
        let migratable: Vec<VmId> = c.hosts[host]
            .vms
            .iter()
            .copied()
            .filter(|&v| !c.vms[v].in_migration)
            .collect();
        if migratable.is_empty() {
            return None;
        }
        match self {
            Selector::Mmt => min_by_metric(&migratable, |v| c.vms[v].ram_mb),
            Selector::Mu => min_by_metric(&migratable, |v| c.vms[v].demand_mips / c.vms[v].mips),
            Selector::Rs => Some(migratable[rng.gen_range(0..migratable.len())]),
            Selector::Mc => max_correlation(c, &migratable)
                .or_else(|| min_by_metric(&migratable, |v| c.vms[v].ram_mb)),
        }
    }
}

fn min_by_metric(vms: &[VmId], metric: impl Fn(VmId) -> f64) -> Option<VmId> {
    let mut best = None;
    let mut min = f64::MAX;
    for &v in vms {
        let m = metric(v);
        if m < min {
            min = m;
            best = Some(v);
        }
    }
    best
}

/// CloudSim's MC: the VM with the highest R² when regressed on the other VMs' histories;
/// `None` when there are too few samples (the caller falls back to MMT).
fn max_correlation(c: &Cluster, vms: &[VmId]) -> Option<VmId> {
    let n = vms.len();
    let m = vms
        .iter()
        .map(|&v| c.vms[v].history.len())
        .min()
        .unwrap_or(0);
    if n < 2 || m <= n {
        return None;
    }
    let data: Vec<&[f64]> = vms.iter().map(|&v| &c.vms[v].history[..m]).collect();
    let mut best = 0;
    let mut max = f64::MIN_POSITIVE;
    for (i, r2) in stats::r_squared_each(&data).into_iter().enumerate() {
        let r2 = r2.unwrap_or(f64::NAN);
        if r2 > max {
            max = r2;
            best = i;
        }
    }
    Some(vms[best])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::power::PowerModel;
    use crate::state::{HostView, VmView};
    use rand::SeedableRng;

    #[test]
    fn mmt_picks_smallest_ram_and_skips_migrating() {
        let mut c = Cluster::new(
            vec![HostView::new(4000.0, 2000.0, 8192.0, 1000.0, 0)],
            vec![
                VmView::new(500.0, 1740.0),
                VmView::new(500.0, 613.0),
                VmView::new(500.0, 870.0),
            ],
            vec![PowerModel::ml110_g5()],
            300.0,
        );
        for v in 0..3 {
            c.vm_create(0, v);
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(Selector::Mmt.select(&c, 0, &mut rng), Some(1));
        c.vms[1].in_migration = true;
        assert_eq!(Selector::Mmt.select(&c, 0, &mut rng), Some(2));
        assert!(Selector::Mc.select(&c, 0, &mut rng).is_some());
    }
}
