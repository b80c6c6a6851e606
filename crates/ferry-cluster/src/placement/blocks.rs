//! Untouched hosts of one kind in utilisation order, in blocks of [`BLOCK`] positions with
//! each block's best free capacity, least demand and least forecast key, so that a range
//! of positions is searched for hosts that could take a VM without looking at blocks where
//! none can. (A segment tree was tried first: mixing several limits in one aggregate made
//! its searches descend into hundreds of nodes for each host found.)

use std::cmp::Reverse;

/// Positions per block.
const BLOCK: usize = 64;

/// What a position offers: the host and its free capacity.
#[derive(Debug, Clone, Copy)]
pub(super) struct Leaf {
    pub host: usize,
    pub avail: f64,
    pub free_ram: f64,
    pub free_bw: f64,
    /// Demand already on the host (MIPS) as the overload check counts it; `-inf` where the
    /// check does not apply.
    pub demand: f64,
    /// The forecast detector's key ([`crate::forecast::host_key`]); `-inf` where unknown.
    pub key: f64,
}

/// What a VM needs (already loosened by the caller's slack).
#[derive(Debug, Clone, Copy)]
pub(super) struct Need {
    pub mips: f64,
    pub ram: f64,
    pub bw: f64,
    /// Most demand a host may already carry and still pass the overload check.
    pub max_demand: f64,
    /// Largest forecast key that may pass the overload check.
    pub max_key: f64,
}

#[derive(Debug, Clone, Copy)]
struct Summary {
    avail: f64,
    free_ram: f64,
    free_bw: f64,
    min_demand: f64,
    min_key: f64,
}

const NONE: Summary = Summary {
    avail: f64::NEG_INFINITY,
    free_ram: f64::NEG_INFINITY,
    free_bw: f64::NEG_INFINITY,
    min_demand: f64::INFINITY,
    min_key: f64::INFINITY,
};

impl Summary {
    fn of(l: &Leaf) -> Self {
        Summary {
            avail: l.avail,
            free_ram: l.free_ram,
            free_bw: l.free_bw,
            min_demand: l.demand,
            min_key: l.key,
        }
    }

    fn merge(self, o: Summary) -> Summary {
        Summary {
            avail: self.avail.max(o.avail),
            free_ram: self.free_ram.max(o.free_ram),
            free_bw: self.free_bw.max(o.free_bw),
            min_demand: self.min_demand.min(o.min_demand),
            min_key: self.min_key.min(o.min_key),
        }
    }

    fn fits(&self, need: &Need) -> bool {
        self.avail >= need.mips
            && self.free_ram >= need.ram
            && self.free_bw >= need.bw
            && self.min_demand <= need.max_demand
            && self.min_key <= need.max_key
    }
}

/// The blocks.
#[derive(Debug, Clone)]
pub(super) struct HostBlocks {
    leaves: Vec<Option<Leaf>>,
    blocks: Vec<Summary>,
}

impl HostBlocks {
    /// Blocks over `leaves` (in position order), all enabled.
    pub(super) fn new(leaves: impl Iterator<Item = Leaf>) -> Self {
        let leaves: Vec<Option<Leaf>> = leaves.map(Some).collect();
        let mut b = Self {
            blocks: vec![NONE; leaves.len().div_ceil(BLOCK)],
            leaves,
        };
        for i in 0..b.blocks.len() {
            b.summarise(i);
        }
        b
    }

    fn summarise(&mut self, block: usize) {
        let end = ((block + 1) * BLOCK).min(self.leaves.len());
        self.blocks[block] = self.leaves[block * BLOCK..end]
            .iter()
            .flatten()
            .fold(NONE, |s, l| s.merge(Summary::of(l)));
    }

    /// Enables position `pos` with `leaf`, or disables it.
    pub(super) fn set(&mut self, pos: usize, leaf: Option<Leaf>) {
        self.leaves[pos] = leaf;
        self.summarise(pos / BLOCK);
    }

    /// Every enabled position of `lo..hi` whose host is below `limit` and whose free capacity
    /// covers `need`, as hosts in position order (wrapped for a min-heap).
    pub(super) fn fitting(
        &self,
        lo: usize,
        hi: usize,
        need: &Need,
        limit: usize,
        out: &mut Vec<Reverse<usize>>,
    ) {
        let hi = hi.min(self.leaves.len());
        let mut pos = lo;
        while pos < hi {
            let b = pos / BLOCK;
            let end = ((b + 1) * BLOCK).min(hi);
            if self.blocks[b].fits(need) {
                for p in pos..end {
                    if let Some(l) = &self.leaves[p] {
                        if l.host < limit && Summary::of(l).fits(need) {
                            out.push(Reverse(l.host));
                        }
                    }
                }
            }
            pos = end;
        }
    }

    /// The first enabled position of `lo..hi` whose free capacity covers `need`, counting up
    /// from `lo` (`rising`) or down from `hi - 1`.
    pub(super) fn first_fit(
        &self,
        lo: usize,
        hi: usize,
        need: &Need,
        rising: bool,
    ) -> Option<usize> {
        let hi = hi.min(self.leaves.len());
        if lo >= hi {
            return None;
        }
        let ok = |p: usize| {
            self.leaves[p]
                .as_ref()
                .is_some_and(|l| Summary::of(l).fits(need))
        };
        if rising {
            let mut pos = lo;
            while pos < hi {
                let b = pos / BLOCK;
                let end = ((b + 1) * BLOCK).min(hi);
                if self.blocks[b].fits(need) {
                    if let Some(p) = (pos..end).find(|&p| ok(p)) {
                        return Some(p);
                    }
                }
                pos = end;
            }
        } else {
            let mut end = hi;
            while end > lo {
                let b = (end - 1) / BLOCK;
                let start = (b * BLOCK).max(lo);
                if self.blocks[b].fits(need) {
                    if let Some(p) = (start..end).rev().find(|&p| ok(p)) {
                        return Some(p);
                    }
                }
                end = start;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn searches_match_a_scan(
            leaves in proptest::collection::vec((0usize..1000, 0.0f64..10.0, 0.0f64..10.0, any::<bool>(), 0.0f64..10.0, -5.0f64..5.0), 1..300),
            lo in 0usize..300, len in 0usize..300, mips in 0.0f64..10.0, ram in 0.0f64..10.0, limit in 0usize..1100,
            max_demand in 0.0f64..12.0, max_key in -5.0f64..5.0,
        ) {
            let mk = |&(h, a, r, _, d, k): &(usize, f64, f64, bool, f64, f64)| Leaf { host: h, avail: a, free_ram: r, free_bw: 1.0, demand: d, key: k };
            let mut t = HostBlocks::new(leaves.iter().map(mk));
            for (p, l) in leaves.iter().enumerate() {
                if !l.3 {
                    t.set(p, None);
                }
            }
            let hi = (lo + len).min(leaves.len());
            let need = Need { mips, ram, bw: 0.5, max_demand, max_key };
            let ok = |p: usize| leaves[p].3 && leaves[p].1 >= mips && leaves[p].2 >= ram && leaves[p].4 <= max_demand && leaves[p].5 <= max_key;
            let want: Vec<Reverse<usize>> = (lo.min(hi)..hi).filter(|&p| ok(p) && leaves[p].0 < limit).map(|p| Reverse(leaves[p].0)).collect();
            let mut got = Vec::new();
            t.fitting(lo, hi, &need, limit, &mut got);
            prop_assert_eq!(got, want);
            let up = (lo.min(hi)..hi).find(|&p| ok(p));
            let down = (lo.min(hi)..hi).rev().find(|&p| ok(p));
            prop_assert_eq!(t.first_fit(lo, hi, &need, true), up);
            prop_assert_eq!(t.first_fit(lo, hi, &need, false), down);
        }
    }
}
