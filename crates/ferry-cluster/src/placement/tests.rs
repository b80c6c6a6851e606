//! The index must choose the scan's host for every request, whatever happened in the round.

use super::*;
use crate::consolidation::{optimize, RoundOptions};
use crate::forecast::ForecastParams;
use crate::power::PowerModel;
use crate::selection::Selector;
use crate::state::{HostView, VmView};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

/// A random cluster: hosts of three kinds (one with a power model that falls somewhere, so
/// its hosts take the index's fallback path), VMs placed at random with a history, measured
/// utilisation near (sometimes away from) the live allocation, a few hosts closed.
fn random_cluster(seed: u64, hosts: usize, vms: usize) -> Cluster {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Half the clusters use few distinct VM sizes and loads, so that many hosts carry exactly
    // the same load and PABFD's ties decide.
    let coarse = rng.gen_bool(0.5);
    let mut odd = PowerModel::ml110_g4();
    odd.points[6] = 99.0;
    let kinds = [
        (3720.0, 1860.0, 4096.0, 0),
        (5320.0, 2660.0, 4096.0, 1),
        (5320.0, 2660.0, 8192.0, 2),
    ];
    let hv: Vec<HostView> = (0..hosts)
        .map(|i| {
            let k = if i % 7 == 6 { 2 } else { i % 2 };
            let (t, pe, ram, p) = kinds[k];
            HostView::new(t, pe, ram, 1000.0, p)
        })
        .collect();
    let sizes = [
        (2500.0, 870.0),
        (2000.0, 1740.0),
        (1000.0, 1740.0),
        (500.0, 613.0),
    ];
    let vv: Vec<VmView> = (0..vms)
        .map(|_| {
            let (m, r) = sizes[if coarse { 3 } else { rng.gen_range(0..4) }];
            let mut v = VmView::new(m, r);
            v.bw_mbps = 100.0;
            for _ in 0..rng.gen_range(0..30) {
                v.push_history(rng.gen_range(0.0..1.0));
            }
            v.demand_mips = if coarse {
                m * rng.gen_range(1..5) as f64 / 8.0
            } else {
                m * rng.gen_range(0.0..1.0)
            };
            if rng.gen_bool(0.05) {
                v.demand_mips = 0.0;
            }
            v
        })
        .collect();
    let mut c = Cluster::new(
        hv,
        vv,
        vec![PowerModel::ml110_g4(), PowerModel::ml110_g5(), odd],
        300.0,
    );
    c.enforce_ram = rng.gen_bool(0.5);
    c.enforce_bw = rng.gen_bool(0.5);
    // Leave some hosts empty so that the idle pools matter.
    let used = (hosts * 2 / 3).max(1);
    for v in 0..vms {
        if rng.gen_bool(0.9) {
            let h = rng.gen_range(0..used);
            c.vm_create(h, v);
        }
    }
    for h in 0..hosts {
        c.recompute_avail(h);
        let live = c.live_mips(h);
        c.hosts[h].measured_mips = match rng.gen_range(0..10) {
            0 => 0.0,
            1 => live * rng.gen_range(0.5..1.5),
            2 => c.hosts[h].total_mips * 1.02,
            3 => live * (1.0 + rng.gen_range(-1e-4..1e-4)),
            4 => live.next_up(),
            _ => live,
        };
        if rng.gen_bool(0.05) {
            c.hosts[h].closed = true;
        }
    }
    c
}

fn detectors() -> Vec<Detector> {
    vec![
        Detector::Thr(0.8),
        Detector::Never,
        Detector::Lr(1.2),
        Detector::Mad(2.5),
        Detector::Forecast(ForecastParams::with_cap(1.0)),
    ]
}

/// Runs the same random round (exclusions, placements, removals, queries) against the
/// scan and the index and returns every answer of each.
fn answers(
    c0: &Cluster,
    det: &Detector,
    seed: u64,
    search: PlacementSearch,
) -> Vec<Option<HostId>> {
    let mut c = c0.clone();
    c.search = search;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut idx = PlacementIndex::for_detector(&c, det);
    let mut out = Vec::new();
    let n_h = c.hosts.len();
    let n_v = c.vms.len();
    for _ in 0..60 {
        match rng.gen_range(0..11) {
            0 => idx.exclude(rng.gen_range(0..n_h)),
            10 => {
                // A VM's demand changes (as CloudSim's creation zeroes it); the index is told
                // about every host that lists it (a VM placed in the round is also still
                // listed where it came from).
                let v = rng.gen_range(0..n_v);
                c.vms[v].demand_mips *= rng.gen_range(0.0..1.5);
                for h in 0..n_h {
                    if c.hosts[h].vms.contains(&v) {
                        idx.touch(&c, h);
                    }
                }
            }
            1..=3 => {
                // Take a VM off its host (as relief and rollbacks do).
                let v = rng.gen_range(0..n_v);
                if let Some(h) = c.vms[v].host {
                    idx.unplace(&mut c, h, v);
                }
            }
            _ => {
                let v = rng.gen_range(0..n_v);
                let found = idx.find_host(&c, det, v);
                out.push(found);
                if let Some(h) = found {
                    if rng.gen_bool(0.7) {
                        idx.place(&mut c, h, v);
                    }
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn index_answers_like_the_scan(seed in any::<u64>(), hosts in 1usize..80, vms in 1usize..200, d in 0usize..5) {
        let c = random_cluster(seed, hosts, vms);
        let det = &detectors()[d];
        let scan = answers(&c, det, seed ^ 1, PlacementSearch::Scan);
        let index = answers(&c, det, seed ^ 1, PlacementSearch::Indexed);
        prop_assert_eq!(scan, index);
    }

    #[test]
    fn rounds_plan_like_the_scan(seed in any::<u64>(), hosts in 2usize..60, vms in 1usize..150, d in 0usize..5, fc_opts in any::<bool>()) {
        let c = random_cluster(seed, hosts, vms);
        let det = &detectors()[d];
        let mut opts = RoundOptions::cloudsim();
        if fc_opts {
            opts.exclude_new_targets = true;
            opts.underload_below = 0.3;
        }
        let plan = |search| {
            let mut c = c.clone();
            c.search = search;
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            optimize(&mut c, det, Selector::Mmt, &opts, &mut rng)
        };
        prop_assert_eq!(plan(PlacementSearch::Scan), plan(PlacementSearch::Indexed));
    }
}

#[test]
fn a_crowd_of_equal_hosts_gives_the_lowest_index() {
    // 300 identical idle hosts and 300 identical busy ones: the first of each kind wins ties.
    let hosts: Vec<HostView> = (0..600)
        .map(|_| HostView::new(5320.0, 2660.0, 4096.0, 1000.0, 0))
        .map(|mut h| {
            h.measured_mips = 0.0;
            h
        })
        .collect();
    let vms: Vec<VmView> = (0..301).map(|_| VmView::new(1000.0, 613.0)).collect();
    let mut c = Cluster::new(hosts, vms, vec![PowerModel::ml110_g5()], 300.0);
    c.search = PlacementSearch::Indexed;
    for h in 300..600 {
        c.vm_create(h, h - 300);
        c.hosts[h].measured_mips = c.live_mips(h);
    }
    let mut idx = PlacementIndex::new(&c);
    let mut scan_c = c.clone();
    scan_c.search = PlacementSearch::Scan;
    let mut scan = PlacementIndex::new(&scan_c);
    let det = Detector::Thr(1.0);
    assert_eq!(
        idx.find_host(&c, &det, 300),
        scan.find_host(&scan_c, &det, 300)
    );
    assert!(idx.find_host(&c, &det, 300).is_some());
}
