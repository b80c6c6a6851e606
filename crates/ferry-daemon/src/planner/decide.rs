//! The plan as a plain function of the cluster's records: builds ferry-cluster's view
//! (1000 MIPS per CPU, as the simulator's hosts) and runs its policies in priority order,
//! each seeing the moves of the ones before.

use std::collections::{BTreeMap, HashMap};

use ferry_cluster::overload::Detector;
use ferry_cluster::power::PowerModel;
use ferry_cluster::selection::Selector;
use ferry_cluster::state::{Cluster, HostView, VmView};
use ferry_cluster::{balance, consolidation, drain, evacuate, Migration};
use ferry_cost::learned::Model;
use ferry_cost::{formula, MigrationInput};
use ferry_model::cpu::{feature_list, CpuFeatures};
use rand::SeedableRng;

use super::{Plan, PlannedMove, Prediction, Reason};

/// MIPS per CPU in the planner's view.
pub const MIPS_PER_CPU: f64 = 1000.0;

/// A host as the planner reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostIn {
    /// Its name.
    pub name: String,
    /// Alive (membership lease held).
    pub alive: bool,
    /// Takes VMs (state active).
    pub active: bool,
    /// Draining: the deadline, ms since the epoch.
    pub drain_deadline_ms: Option<u64>,
    /// Reports failure symptoms.
    pub failing: bool,
    /// CPUs (vCPUs offered).
    pub cpus: u32,
    /// Guest RAM offered, bytes.
    pub memory: u64,
    /// Its CPU features.
    pub features: CpuFeatures,
}

/// A VM as the planner reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct VmIn {
    /// Its name.
    pub name: String,
    /// Its owner.
    pub owner: String,
    /// Running (not migrating, lost or paused).
    pub running: bool,
    /// Migrating now.
    pub migrating: bool,
    /// vCPUs.
    pub vcpus: u32,
    /// RAM, bytes.
    pub memory: u64,
    /// CPUs it used recently (cores; `None`: unknown, taken as fully busy).
    pub cpu: Option<f64>,
    /// The CPU features it uses.
    pub features: Option<CpuFeatures>,
    /// Its last measured dirty rate and working set, bytes/s and bytes.
    pub dirty: Option<(f64, f64)>,
}

/// Knobs.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Now, ms since the epoch.
    pub now_ms: u64,
    /// A VM moved by the planner is not moved again for this long, ms.
    pub cooldown_ms: u64,
    /// Link bandwidth assumed for predictions, bytes/s.
    pub bandwidth: f64,
    /// Round trip assumed, ms.
    pub rtt_ms: f64,
    /// Wire bytes per raw byte assumed.
    pub codec_ratio: f64,
    /// Balance moves per round at most.
    pub balance_moves: usize,
    /// Utilisation gain a balance move must bring.
    pub balance_gain: f64,
    /// How long before a failing host is expected to fail, s.
    pub evacuation_window_s: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            now_ms: 0,
            cooldown_ms: 10 * 60 * 1000,
            bandwidth: 125e6,
            rtt_ms: 0.5,
            codec_ratio: 1.0,
            balance_moves: 2,
            balance_gain: 0.1,
            evacuation_window_s: 600.0,
        }
    }
}

/// The view and the names behind its indices.
pub struct View {
    /// ferry-cluster's view.
    pub cluster: Cluster,
    /// Host names by index.
    pub hosts: Vec<String>,
    /// VM names by index.
    pub vms: Vec<String>,
}

/// Builds ferry-cluster's view: live hosts (closed unless active and healthy), their
/// running and migrating VMs.
pub fn view(hosts: &[HostIn], vms: &[VmIn]) -> View {
    // RAM and bandwidth are checked on every placement.
    let mut c = Cluster::new(Vec::new(), Vec::new(), vec![PowerModel::ml110_g5()], 300.0);
    let mut names = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for h in hosts.iter().filter(|h| h.alive) {
        let mut v = HostView::new(
            f64::from(h.cpus) * MIPS_PER_CPU,
            MIPS_PER_CPU,
            h.memory as f64 / (1 << 20) as f64,
            1000.0,
            0,
        );
        v.closed = !h.active || h.failing;
        index.insert(&h.name, c.hosts.len());
        c.hosts.push(v);
        names.push(h.name.clone());
    }
    let mut vm_names = Vec::new();
    for vm in vms {
        let Some(&h) = index.get(vm.owner.as_str()) else {
            continue;
        };
        if !vm.running && !vm.migrating {
            continue;
        }
        let mips = f64::from(vm.vcpus.max(1)) * MIPS_PER_CPU;
        let mut v = VmView::new(mips.min(MIPS_PER_CPU), vm.memory as f64 / (1 << 20) as f64);
        let used = vm.cpu.unwrap_or(1.0).clamp(0.0, 1.0);
        v.demand_mips = used * MIPS_PER_CPU;
        v.push_history(used);
        v.in_migration = vm.migrating;
        let id = c.vms.len();
        c.vms.push(v);
        c.vm_create(h, id);
        vm_names.push(vm.name.clone());
    }
    for h in 0..c.hosts.len() {
        c.hosts[h].measured_mips = c.live_mips(h);
    }
    View {
        cluster: c,
        hosts: names,
        vms: vm_names,
    }
}

/// What a move of `vm` is predicted to cost.
fn predict(vm: &VmIn, opts: &Options, model: Option<&Model>) -> (Prediction, Option<Prediction>) {
    let (dirty, ws) = vm.dirty.unwrap_or((0.0, 0.0));
    let input = MigrationInput {
        ram_bytes: vm.memory as f64,
        dirty_rate: dirty,
        working_set_bytes: ws,
        bandwidth: opts.bandwidth,
        rtt_ms: opts.rtt_ms,
        codec_ratio: opts.codec_ratio,
    };
    (
        formula::precopy(&input).into(),
        model.map(|m| m.predict("precopy", &input).into()),
    )
}

/// Plans: evacuations, then drains, then balancing, then consolidation. `recent` holds, per
/// VM, the host it last left by the planner's decision and when (ms).
pub fn decide(
    hosts: &[HostIn],
    vms: &[VmIn],
    recent: &BTreeMap<String, (String, u64)>,
    opts: &Options,
    model: Option<&Model>,
) -> Plan {
    let mut v = view(hosts, vms);
    let by_name: HashMap<&str, &VmIn> = vms.iter().map(|vm| (vm.name.as_str(), vm)).collect();
    let host_in: HashMap<&str, &HostIn> = hosts.iter().map(|h| (h.name.as_str(), h)).collect();
    let mut plan = Plan::default();
    let seconds = |vm: usize, v: &View| -> f64 {
        by_name
            .get(v.vms[vm].as_str())
            .map(|x| predict(x, opts, model).0.total_ms / 1e3)
            .unwrap_or(1.0)
    };
    let now_s = opts.now_ms as f64 / 1e3;
    let det = Detector::Thr(0.9);
    let mut chosen: Vec<(Migration, Reason)> = Vec::new();

    // Evacuation of failing hosts.
    for h in 0..v.hosts.len() {
        if !host_in[v.hosts[h].as_str()].failing {
            continue;
        }
        let times: Vec<f64> = (0..v.vms.len()).map(|i| seconds(i, &v)).collect();
        let e = evacuate::plan(&mut v.cluster, &det, h, opts.evacuation_window_s, |i| {
            times[i]
        });
        for m in e.migrations {
            chosen.push((m, Reason::Evacuate));
        }
        for s in e.stranded {
            plan.problems.push(format!(
                "VM {} cannot be evacuated from failing host {} in time or has nowhere to go",
                v.vms[s], v.hosts[h]
            ));
        }
        apply(&mut v.cluster, &chosen);
    }
    // Drains.
    for h in 0..v.hosts.len() {
        let Some(deadline) = host_in[v.hosts[h].as_str()].drain_deadline_ms else {
            continue;
        };
        let times: Vec<f64> = (0..v.vms.len()).map(|i| seconds(i, &v)).collect();
        match drain::plan(&mut v.cluster, &det, h, now_s, deadline as f64 / 1e3, |i| {
            times[i]
        }) {
            Ok(d) => chosen.extend(d.migrations.into_iter().map(|m| (m, Reason::Drain))),
            Err(e) => {
                plan.problems.push(format!(
                    "drain of {}: {}",
                    v.hosts[h],
                    name_error(&e.to_string(), &v)
                ));
                // Still move what can be moved, in time or not.
                if let Ok(d) =
                    drain::plan(&mut v.cluster, &det, h, now_s, f64::INFINITY, |i| times[i])
                {
                    chosen.extend(d.migrations.into_iter().map(|m| (m, Reason::Drain)));
                }
            }
        }
        apply(&mut v.cluster, &chosen);
    }
    // Balancing, never undoing a recent decision.
    let recently = |vm: &str| {
        recent
            .get(vm)
            .is_some_and(|(_, at)| opts.now_ms.saturating_sub(*at) < opts.cooldown_ms)
    };
    let already: Vec<usize> = chosen.iter().map(|(m, _)| m.vm).collect();
    for m in balance::plan(&mut v.cluster, opts.balance_moves, opts.balance_gain) {
        if already.contains(&m.vm) || recently(&v.vms[m.vm]) {
            continue;
        }
        chosen.push((m, Reason::Balance));
    }
    apply(
        &mut v.cluster,
        &chosen[chosen.len() - count(&chosen, Reason::Balance)..],
    );
    // Consolidation: empty the least used hosts for power-off.
    let opts_round = consolidation::RoundOptions {
        consolidate: true,
        underload_below: 0.5,
        exclude_new_targets: true,
        max_migrations: 16,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let moved: Vec<usize> = chosen.iter().map(|(m, _)| m.vm).collect();
    let before: Vec<bool> = (0..v.hosts.len())
        .map(|h| v.cluster.hosts[h].vms.is_empty())
        .collect();
    let cons: Vec<Migration> = consolidation::optimize(
        &mut v.cluster,
        &Detector::Thr(0.8),
        Selector::Mmt,
        &opts_round,
        &mut rng,
    )
    .into_iter()
    .filter(|m| !moved.contains(&m.vm) && !recently(&v.vms[m.vm]))
    .collect();
    let cons_moves: Vec<(Migration, Reason)> =
        cons.into_iter().map(|m| (m, Reason::Consolidate)).collect();
    apply(&mut v.cluster, &cons_moves);
    for h in 0..v.hosts.len() {
        let hi = host_in[v.hosts[h].as_str()];
        if v.cluster.hosts[h].vms.is_empty() && !before[h] && hi.active {
            plan.power_off.push(v.hosts[h].clone());
        }
    }
    chosen.extend(cons_moves);

    // CPU compatibility: ferry-cluster's placement does not know CPU features.
    for (m, reason) in chosen {
        let vm = by_name[v.vms[m.vm].as_str()];
        let to = &v.hosts[m.to];
        if let Some(f) = &vm.features {
            let missing = f.missing_on(&host_in[to.as_str()].features);
            if !missing.is_empty() {
                plan.problems.push(format!(
                    "VM {} cannot go to {to}: it lacks CPU features {}",
                    vm.name,
                    feature_list(&missing)
                ));
                continue;
            }
        }
        let (formula, learned) = predict(vm, opts, model);
        plan.moves.push(PlannedMove {
            vm: vm.name.clone(),
            from: v.hosts[m.from].clone(),
            to: to.clone(),
            reason,
            formula,
            learned,
        });
    }
    plan.moves.sort_by_key(|m| m.reason);
    plan.model_samples = model.map_or(0, Model::samples);
    plan
}

fn count(chosen: &[(Migration, Reason)], r: Reason) -> usize {
    chosen.iter().filter(|(_, x)| *x == r).count()
}

/// Moves the planned VMs in the view so later policies see them where they will be.
fn apply(c: &mut Cluster, moves: &[(Migration, Reason)]) {
    for (m, _) in moves {
        if c.vms[m.vm].host == Some(m.from) {
            c.vm_destroy(m.from, m.vm);
            c.vm_create(m.to, m.vm);
        }
    }
}

/// Replaces "host N" and "VM N" indices in a policy's message with names.
fn name_error(msg: &str, v: &View) -> String {
    let mut out = Vec::new();
    let words: Vec<&str> = msg.split(' ').collect();
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        if (w == "host" || w == "VM") && i + 1 < words.len() {
            if let Ok(n) = words[i + 1].parse::<usize>() {
                let name = if w == "host" {
                    v.hosts.get(n)
                } else {
                    v.vms.get(n)
                };
                if let Some(name) = name {
                    out.push(format!("{w} {name}"));
                    i += 2;
                    continue;
                }
            }
        }
        out.push(w.to_string());
        i += 1;
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> HostIn {
        HostIn {
            name: name.into(),
            alive: true,
            active: true,
            drain_deadline_ms: None,
            failing: false,
            cpus: 8,
            memory: 16 << 30,
            features: CpuFeatures::from_cpuid(&[(1, 0, [0, 0, 1 << 28, 0])]),
        }
    }

    fn vm(name: &str, owner: &str, cpu: f64) -> VmIn {
        VmIn {
            name: name.into(),
            owner: owner.into(),
            running: true,
            migrating: false,
            vcpus: 1,
            memory: 256 << 20,
            cpu: Some(cpu),
            features: Some(CpuFeatures::from_cpuid(&[(1, 0, [0, 0, 1 << 28, 0])])),
            dirty: None,
        }
    }

    fn opts() -> Options {
        Options {
            now_ms: 1_000_000,
            ..Options::default()
        }
    }

    #[test]
    fn a_drain_moves_every_vm_off_first_and_never_onto_a_closed_host() {
        let mut hosts = vec![host("a"), host("b"), host("c")];
        hosts[0].active = false;
        hosts[0].drain_deadline_ms = Some(1_000_000 + 600_000);
        hosts[2].active = false; // marked for power-off: takes nothing
        let vms: Vec<VmIn> = (0..6).map(|i| vm(&format!("v{i}"), "a", 0.5)).collect();
        let p = decide(&hosts, &vms, &BTreeMap::new(), &opts(), None);
        let drains: Vec<_> = p
            .moves
            .iter()
            .filter(|m| m.reason == Reason::Drain)
            .collect();
        assert_eq!(drains.len(), 6, "{p:?}");
        assert!(drains.iter().all(|m| m.from == "a" && m.to == "b"), "{p:?}");
        assert!(p.moves[..6].iter().all(|m| m.reason == Reason::Drain));
        assert!(p.problems.is_empty(), "{p:?}");
    }

    #[test]
    fn a_drain_that_cannot_meet_its_deadline_says_so_and_still_moves() {
        let mut hosts = vec![host("a"), host("b")];
        hosts[0].active = false;
        hosts[0].drain_deadline_ms = Some(1_000_000 + 1_000); // 1 s for 6 x 256 MiB at 1 Gbit/s
        let vms: Vec<VmIn> = (0..6).map(|i| vm(&format!("v{i}"), "a", 0.5)).collect();
        let p = decide(&hosts, &vms, &BTreeMap::new(), &opts(), None);
        assert_eq!(p.moves.len(), 6);
        assert!(
            p.problems
                .iter()
                .any(|x| x.contains("drain of a") && x.contains("before the deadline")),
            "{p:?}"
        );
    }

    #[test]
    fn evacuation_goes_first_and_cpu_features_are_respected() {
        let mut hosts = vec![host("a"), host("b"), host("old")];
        hosts[0].failing = true;
        hosts[1].drain_deadline_ms = Some(2_000_000);
        hosts[1].active = false;
        hosts[2].features = CpuFeatures::default(); // lacks the VM's feature
        let vms = vec![vm("e1", "a", 0.2), vm("d1", "b", 0.2)];
        let p = decide(&hosts, &vms, &BTreeMap::new(), &opts(), None);
        // The only open host lacks the feature: nothing moves, and the plan says why.
        assert!(p.moves.is_empty(), "{p:?}");
        assert!(
            p.problems.iter().any(|x| x.contains("lacks CPU features")),
            "{p:?}"
        );
        hosts[2].features = hosts[0].features;
        let p = decide(&hosts, &vms, &BTreeMap::new(), &opts(), None);
        assert_eq!(p.moves[0].reason, Reason::Evacuate, "{p:?}");
        assert_eq!(p.moves[0].vm, "e1");
        assert!(p
            .moves
            .iter()
            .any(|m| m.vm == "d1" && m.reason == Reason::Drain));
        assert!(p.moves.iter().all(|m| m.to == "old"));
    }

    #[test]
    fn balancing_never_moves_a_vm_again_within_the_cooldown() {
        let hosts = vec![host("a"), host("b")];
        // ferry-cluster balances between hosts that carry VMs (empty ones are powered off).
        let mut vms: Vec<VmIn> = (0..6).map(|i| vm(&format!("v{i}"), "a", 1.0)).collect();
        vms.push(vm("idle", "b", 0.1));
        let p = decide(&hosts, &vms, &BTreeMap::new(), &opts(), None);
        let balanced: Vec<String> = p
            .moves
            .iter()
            .filter(|m| m.reason == Reason::Balance)
            .map(|m| m.vm.clone())
            .collect();
        assert!(!balanced.is_empty(), "{p:?}");
        let recent: BTreeMap<String, (String, u64)> = vms
            .iter()
            .map(|v| (v.name.clone(), ("b".to_string(), 999_000)))
            .collect();
        let p2 = decide(&hosts, &vms, &recent, &opts(), None);
        assert!(
            p2.moves.iter().all(|m| m.reason != Reason::Balance),
            "{p2:?}"
        );
    }
}
