use super::*;
use proptest::prelude::*;

fn build(hosts: usize, vms: usize) -> Cluster {
    let mut c = Cluster::new(
        (0..hosts)
            .map(|i| HostView::new(3720.0, 1860.0, 4096.0, 1000.0, i % 2))
            .collect(),
        (0..vms)
            .map(|i| {
                let mut v = VmView::new(1000.0, 613.0);
                v.demand_mips = 100.0 * (i % 7) as f64;
                v.bw_mbps = 10.0;
                v
            })
            .collect(),
        vec![PowerModel::ml110_g4(), PowerModel::ml110_g5()],
        300.0,
    );
    for v in 0..vms {
        c.vm_create(v % hosts, v);
    }
    c
}

/// Everything a checkpoint must bring back.
type Allocation = Vec<(Vec<VmId>, u64, u64, u64)>;

fn allocation(c: &Cluster) -> (Allocation, Vec<Option<HostId>>) {
    (
        c.hosts
            .iter()
            .map(|h| {
                (
                    h.vms.clone(),
                    h.avail_mips.to_bits(),
                    h.ram_used.to_bits(),
                    h.bw_used.to_bits(),
                )
            })
            .collect(),
        c.vms.iter().map(|v| v.host).collect(),
    )
}

proptest! {
    /// Any sequence of moves and re-measurements inside a checkpoint is undone exactly, and
    /// a later checkpoint on the same cluster (a new generation) works the same way.
    #[test]
    fn restore_undoes_every_change(
        rounds in proptest::collection::vec(
            proptest::collection::vec((0usize..12, 0usize..5, any::<bool>()), 0..30),
            1..4,
        ),
    ) {
        let mut c = build(5, 12);
        for ops in rounds {
            let before = allocation(&c);
            let cp = c.checkpoint();
            for &(v, h, recompute) in &ops {
                if let Some(from) = c.vms[v].host {
                    c.vm_destroy(from, v);
                }
                c.vm_create(h, v);
                c.vms[v].demand_mips += 1.0;
                if recompute {
                    c.recompute_avail(h);
                }
            }
            c.restore(cp);
            prop_assert_eq!(allocation(&c), before);
            // A real change between rounds is kept.
            let v = ops.first().map_or(0, |o| o.0);
            let from = c.vms[v].host.unwrap();
            c.vm_destroy(from, v);
            c.vm_create((from + 1) % 5, v);
            prop_assert_eq!(c.vms[v].host, Some((from + 1) % 5));
        }
    }
}

#[test]
#[should_panic(expected = "already open")]
fn nested_checkpoints_are_refused() {
    let mut c = build(2, 2);
    let _outer = c.checkpoint();
    let _inner = c.checkpoint();
}
