use super::*;
use crate::power::PowerModel;
use crate::state::{HostView, VmView};
use proptest::prelude::*;
use rand::SeedableRng;

fn build(hosts: usize, demands: &[(f64, usize)]) -> Cluster {
    let mut c = Cluster::new(
        (0..hosts)
            .map(|i| {
                HostView::new(
                    if i % 2 == 0 { 3720.0 } else { 5320.0 },
                    if i % 2 == 0 { 1860.0 } else { 2660.0 },
                    4096.0,
                    1000.0,
                    i % 2,
                )
            })
            .collect(),
        Vec::new(),
        vec![PowerModel::ml110_g4(), PowerModel::ml110_g5()],
        300.0,
    );
    for (i, &(d, h)) in demands.iter().enumerate() {
        let mut v = VmView::new(1000.0, 613.0);
        v.demand_mips = d;
        c.vms.push(v);
        c.vm_create(h % hosts, i);
    }
    for h in 0..hosts {
        c.recompute_avail(h);
        c.hosts[h].measured_mips = c.hosts[h]
            .vms
            .iter()
            .map(|&v| c.capped_demand(h, v))
            .sum::<f64>()
            .min(c.hosts[h].total_mips);
    }
    c
}

fn apply(c: &mut Cluster, plan: &[Migration]) {
    for m in plan {
        let from = c.vms[m.vm].host.unwrap_or(m.from);
        c.vm_destroy(from, m.vm);
        c.vm_create(m.to, m.vm);
    }
}

#[test]
fn overloaded_host_is_relieved() {
    let mut c = build(
        4,
        &[(900.0, 0), (900.0, 0), (900.0, 0), (900.0, 0), (100.0, 1)],
    );
    let det = Detector::Thr(0.8);
    assert!(det.is_overloaded(&c, 0, None));
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let plan = optimize(
        &mut c,
        &det,
        Selector::Mmt,
        &RoundOptions::cloudsim(),
        &mut rng,
    );
    apply(&mut c, &plan);
    assert!(!det.is_overloaded(&c, 0, None));
}

proptest! {
    #[test]
    fn placement_never_exceeds_capacity(demands in proptest::collection::vec((0.0f64..1000.0, 0usize..6), 1..30), thr in 0.5f64..1.0) {
        let mut c = build(6, &demands);
        let det = Detector::Thr(thr);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let before: Vec<bool> = (0..6).map(|h| c.demand_util(h, None) <= 1.0 && c.hosts[h].ram_used <= c.hosts[h].ram_mb).collect();
        let plan = optimize(&mut c, &det, Selector::Mmt, &RoundOptions::cloudsim(), &mut rng);
        let targets: Vec<HostId> = plan.iter().map(|m| m.to).collect();
        apply(&mut c, &plan);
        for h in targets {
            if before[h] {
                prop_assert!(c.demand_util(h, None) <= 1.0 + 1e-9, "host {} over CPU", h);
                prop_assert!(c.hosts[h].ram_used <= c.hosts[h].ram_mb + 1e-9, "host {} over RAM", h);
            }
        }
    }

    #[test]
    fn overloaded_host_relieved_when_capacity_exists(n in 2usize..8, d in 500.0f64..1000.0) {
        // Host 0 (3720 MIPS) carries n VMs of demand d; eight empty hosts wait.
        let demands: Vec<(f64, usize)> = (0..n).map(|_| (d, 0)).collect();
        let mut c = build(9, &demands);
        let det = Detector::Thr(0.8);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let plan = optimize(&mut c, &det, Selector::Mmt, &RoundOptions::cloudsim(), &mut rng);
        apply(&mut c, &plan);
        prop_assert!(!det.is_overloaded(&c, 0, None));
    }

    #[test]
    fn drain_empties_or_explains(n in 1usize..10, d in 100.0f64..900.0, deadline in 10.0f64..400.0) {
        let demands: Vec<(f64, usize)> = (0..n).map(|i| (d, if i % 2 == 0 { 0 } else { 1 })).collect();
        let mut c = build(4, &demands);
        let before = c.hosts[0].vms.len();
        match crate::drain::plan(&mut c, &Detector::Thr(0.9), 0, 0.0, deadline, c_ram) {
            Ok(p) => {
                prop_assert_eq!(p.migrations.len(), before);
                prop_assert!(p.done_at <= deadline);
                apply(&mut c, &p.migrations);
                prop_assert!(c.hosts[0].vms.is_empty());
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}

fn c_ram(_vm: VmId) -> f64 {
    613.0 / 62.5
}
