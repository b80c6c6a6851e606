use super::*;
use crate::setup::Scenario;
use crate::trace::{SyntheticParams, Trace};
use ferry_cluster::policy::parse;
use ferry_cluster::Migration;

fn small(policy: &str, hosts: usize, vms: usize) -> Report {
    let trace = Trace::Synthetic(SyntheticParams {
        vms,
        days: 0.25,
        ..SyntheticParams::default()
    });
    let scn = Scenario::reference(trace, hosts, Some(vms), 0.25, 300.0).expect("scenario");
    let cfg = EngineConfig::new(policy, parse(policy).expect("policy"));
    run(&scn, &cfg).expect("runs").0
}

#[test]
fn npa_draws_full_power() {
    let r = small("npa", 10, 20);
    // 5 x 117 W + 5 x 135 W for 6 h minus the first interval.
    let expect = 1260.0 * (0.25 * 86400.0 - 300.0) / 3.6e6;
    assert!(
        (r.energy_kwh - expect).abs() < 1e-9,
        "{} vs {expect}",
        r.energy_kwh
    );
    assert_eq!(r.migrations, 0);
}

#[test]
fn consolidation_saves_energy_over_dvfs() {
    let dvfs = small("dvfs", 40, 60);
    let thr = small("thr-mmt-0.8", 40, 60);
    assert!(thr.migrations > 0);
    assert!(
        thr.energy_kwh < dvfs.energy_kwh,
        "{} !< {}",
        thr.energy_kwh,
        dvfs.energy_kwh
    );
    assert!(thr.slatah >= 0.0 && thr.pdm >= 0.0);
}

fn thirty(days: f64) -> Scenario {
    let trace = Trace::Synthetic(SyntheticParams {
        vms: 30,
        days,
        ..SyntheticParams::default()
    });
    Scenario::reference(trace, 30, Some(30), days, 300.0).expect("scenario")
}

#[test]
fn drain_empties_host_by_deadline() {
    let scn = thirty(0.25);
    let mut cfg = EngineConfig::new("lr-mmt-1.2", parse("lr-mmt-1.2").expect("policy"));
    // The deadline falls on a scheduling event (0.1 + 24 x 300).
    cfg.drains.push(HostAt { host: 1, t: 7200.1 });
    let (r, _) = run(&scn, &cfg).expect("runs");
    let d = &r.operations[0];
    assert_eq!(d.problem, None, "{d:?}");
    let emptied = d.emptied_at_s.expect("emptied");
    assert!(d.met && emptied <= 7200.1, "{d:?}");
    // The moment the last migration ended, not the next scheduling event.
    let k = (emptied - 0.1) / 300.0;
    assert!((k - k.round()).abs() > 1e-9, "{d:?}");
    assert!(emptied > 7200.1 - 3.0 * 300.0, "started too early: {d:?}");
}

#[test]
fn a_drain_that_cannot_be_met_is_reported_late() {
    let scn = thirty(0.1);
    let mut cfg = EngineConfig::new("lr-mmt-1.2", parse("lr-mmt-1.2").expect("policy"));
    // Before the first scheduling event: nothing can start in time.
    cfg.drains.push(HostAt { host: 1, t: 200.0 });
    let (r, _) = run(&scn, &cfg).expect("runs");
    let d = &r.operations[0];
    assert!(!d.met, "{d:?}");
    assert!(d.problem.is_some() || d.emptied_at_s.is_some_and(|e| e > 200.0));
    assert!(
        d.summary().contains("LATE") || d.summary().contains("NOT emptied"),
        "{}",
        d.summary()
    );
}

#[test]
fn evacuation_starts_when_the_warning_arrives() {
    // A warning of 100 s, shorter than the 300 s interval: checked only at scheduling
    // events, it would be seen at 9000.1, after the failure, and the VMs would be lost.
    let scn = thirty(0.25);
    let mut cfg = EngineConfig::new("lr-mmt-1.2", parse("lr-mmt-1.2").expect("policy"));
    cfg.failures.push(HostAt { host: 3, t: 9000.0 });
    cfg.failure_warning_s = 100.0;
    let (r, _) = run(&scn, &cfg).expect("runs");
    let e = &r.operations[0];
    assert_eq!(e.kind, "evacuate");
    assert_eq!(e.problem, None, "{e:?}");
    assert_eq!(r.vms_lost, 0, "{e:?}");
    let emptied = e.emptied_at_s.expect("emptied");
    assert!(e.met && (8900.0..9000.0).contains(&emptied), "{e:?}");
}

#[test]
fn a_failure_without_warning_loses_its_vms_at_the_failure_time() {
    let scn = thirty(0.25);
    let mut cfg = EngineConfig::new("lr-mmt-1.2", parse("lr-mmt-1.2").expect("policy"));
    cfg.failures.push(HostAt { host: 3, t: 9000.0 });
    cfg.failure_warning_s = 0.0;
    let (r, _) = run(&scn, &cfg).expect("runs");
    let e = &r.operations[0];
    assert!(!e.met, "{e:?}");
    assert!(r.vms_lost > 0, "{e:?}");
}

#[test]
fn unknown_host_is_a_clear_error() {
    let trace = Trace::Synthetic(SyntheticParams {
        vms: 4,
        days: 0.1,
        ..SyntheticParams::default()
    });
    let scn = Scenario::reference(trace, 4, Some(4), 0.1, 300.0).expect("scenario");
    let mut cfg = EngineConfig::new("thr-mmt-0.8", parse("thr-mmt-0.8").expect("policy"));
    cfg.drains.push(HostAt { host: 99, t: 10.0 });
    let e = run(&scn, &cfg)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("host 99"), "{e}");
}

#[test]
fn the_index_and_the_scan_give_identical_runs_on_a_planetlab_sample() {
    let path =
        crate::trace::resolve("20110303", Some(&crate::trace::bundled_dir())).expect("sample");
    for policy in [
        "thr-mmt-0.8",
        "lr-mmt-1.2",
        "mad-mmt-2.5",
        "fc-mmt-1.0",
        "lr-mc-1.2",
    ] {
        let run_with = |search| {
            let trace = crate::trace::load_planetlab(&path).expect("loads");
            let scn = Scenario::reference(trace, 40, None, 1.0, 300.0).expect("scenario");
            let mut cfg = EngineConfig::new(policy, parse(policy).expect("policy"));
            cfg.search = search;
            run(&scn, &cfg).expect("runs").0
        };
        let indexed = run_with(PlacementSearch::Indexed);
        let scanned = run_with(PlacementSearch::Scan);
        assert!(indexed.migrations > 0, "{policy}: nothing to compare");
        assert!(
            crate::report::same_outcome(&indexed, &scanned),
            "{policy}: index {indexed:?}\nscan {scanned:?}"
        );
    }
}

/// Moves VMs 0..n of a 30-host scenario onto host 29 at once; returns when the last arrived.
fn all_onto_one_host(slots: Option<usize>, n: usize) -> f64 {
    let scn = thirty(0.1);
    let mut cfg = EngineConfig::new("thr-mmt-0.8", parse("thr-mmt-0.8").expect("policy"));
    cfg.link_slots = slots;
    cfg.drop_idle_vms = false;
    let mut sim = Sim::new(&scn, &cfg).expect("scenario");
    let to = 29;
    let plan: Vec<Migration> = (0..n)
        .filter_map(|vm| {
            let from = sim.c.vms[vm].host?;
            (from != to).then_some(Migration { vm, from, to })
        })
        .collect();
    assert!(plan.len() >= 8, "too few VMs to move: {}", plan.len());
    sim.start(T0, &plan);
    let mut last = T0;
    while let Some(e) = sim.events.peek().copied() {
        last = e.t;
        sim.complete_until(e.t + 1e-9);
    }
    for m in &plan {
        assert_eq!(sim.c.vms[m.vm].host, Some(to), "VM {} did not arrive", m.vm);
    }
    assert_eq!(sim.links.waiting(), 0);
    last - T0
}

#[test]
fn migrations_that_share_a_link_share_its_bandwidth() {
    let free = all_onto_one_host(None, 10);
    let two = all_onto_one_host(Some(2), 10);
    let one = all_onto_one_host(Some(1), 10);
    // Ten migrations into one host: unlimited, they all run at once at full bandwidth; with
    // two slots they go two at a time at half the bandwidth each (five waves of twice the
    // time); one at a time at full bandwidth takes as long as two at half.
    assert!(two > 4.0 * free, "two slots {two} s vs unlimited {free} s");
    assert!(
        (one - two).abs() < 0.25 * two,
        "one slot {one} s vs two {two} s"
    );
}
