//! Which planned moves start now: at most `per_host` migrations at once on any host (in and
//! out together), at most `per_link` between one pair of hosts, in priority order (the plan's
//! order: evacuation first), skipping VMs already moving; and each host's bandwidth budget
//! shared equally by the migrations on it.

use std::collections::BTreeMap;

/// Limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Migrations at once per host.
    pub per_host: u32,
    /// Migrations at once per pair of hosts.
    pub per_link: u32,
    /// Bytes per second shared by one host's migrations (`None`: unlimited).
    pub bandwidth: Option<u64>,
}

/// A migration as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// The VM.
    pub vm: String,
    /// Source.
    pub from: String,
    /// Destination.
    pub to: String,
}

fn link(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

/// The moves of `queue` (indices) that may start next to `running`.
pub fn admit(queue: &[Flow], running: &[Flow], limits: &Limits) -> Vec<usize> {
    let mut per_host: BTreeMap<String, u32> = BTreeMap::new();
    let mut per_link: BTreeMap<(String, String), u32> = BTreeMap::new();
    let mut busy: Vec<&str> = Vec::new();
    let count = |f: &Flow, ph: &mut BTreeMap<String, u32>, pl: &mut BTreeMap<_, u32>| {
        *ph.entry(f.from.clone()).or_default() += 1;
        *ph.entry(f.to.clone()).or_default() += 1;
        *pl.entry(link(&f.from, &f.to)).or_default() += 1;
    };
    for f in running {
        count(f, &mut per_host, &mut per_link);
        busy.push(&f.vm);
    }
    let mut out = Vec::new();
    for (i, f) in queue.iter().enumerate() {
        if busy.contains(&f.vm.as_str()) {
            continue;
        }
        let h = |n: &str| per_host.get(n).copied().unwrap_or(0);
        let l = per_link.get(&link(&f.from, &f.to)).copied().unwrap_or(0);
        if h(&f.from) >= limits.per_host || h(&f.to) >= limits.per_host || l >= limits.per_link {
            continue;
        }
        count(f, &mut per_host, &mut per_link);
        busy.push(&f.vm);
        out.push(i);
    }
    out
}

/// Each flow's share of the budget: the budget divided by the migrations on the busier of
/// its two hosts (`None` without a budget).
pub fn shares(flows: &[Flow], limits: &Limits) -> Vec<Option<u64>> {
    let Some(budget) = limits.bandwidth else {
        return vec![None; flows.len()];
    };
    let mut per_host: BTreeMap<&str, u64> = BTreeMap::new();
    for f in flows {
        *per_host.entry(&f.from).or_default() += 1;
        *per_host.entry(&f.to).or_default() += 1;
    }
    flows
        .iter()
        .map(|f| {
            let n = per_host[f.from.as_str()].max(per_host[f.to.as_str()]);
            Some(budget / n.max(1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(vm: &str, from: &str, to: &str) -> Flow {
        Flow {
            vm: vm.into(),
            from: from.into(),
            to: to.into(),
        }
    }

    const L: Limits = Limits {
        per_host: 2,
        per_link: 1,
        bandwidth: Some(100),
    };

    #[test]
    fn limits_per_host_and_per_link_in_priority_order() {
        let q = vec![
            f("v1", "a", "b"),
            f("v2", "a", "b"), // same link: waits
            f("v3", "a", "c"),
            f("v4", "a", "d"), // a has 2 already: waits
            f("v5", "c", "d"), // c has 1: ok
        ];
        assert_eq!(admit(&q, &[], &L), vec![0, 2, 4]);
        // With v1 running, v1 is not started twice, and the a-b link is full.
        assert_eq!(admit(&q, &[f("v1", "a", "b")], &L), vec![2, 4]);
    }

    #[test]
    fn the_budget_is_shared_by_the_busier_end() {
        let fl = vec![f("v1", "a", "b"), f("v2", "a", "c"), f("v3", "d", "e")];
        assert_eq!(shares(&fl, &L), vec![Some(50), Some(50), Some(100)]);
        let none = Limits {
            bandwidth: None,
            ..L
        };
        assert_eq!(shares(&fl, &none), vec![None, None, None]);
    }
}
