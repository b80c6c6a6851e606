//! The indexed PABFD search.
//!
//! For a VM taking the fraction `x` of a host, a host measured at utilisation `u` whose live
//! allocation still equals the measurement ("untouched" this round) costs
//! `phi_x(u) = P(min(1, u + x)) - P(u)` more watts. `phi_x` is piecewise linear in `u`, with
//! pieces cut where `u` or `u + x` crosses a point of the SPECpower table. On a piece where
//! both ends lie on equally steep parts of the table, *every* host costs the same to the
//! microwatt: that is where most hosts are, and why a scan of all of them was slow. So hosts
//! are filed by *kind* (power model, capacity, RAM, bandwidth) and then:
//!
//! * **pool**: hosts measured idle with no VMs; all cost the same, so only the lowest-indexed
//!   one that fits matters (an ordered set).
//! * **sorted**: untouched hosts in order of measured utilisation, in blocks ([`super::blocks`]) that find the hosts in a range whose free CPU, RAM and
//!   bandwidth could take the VM. A flat piece is one class: the lowest-indexed fitting host
//!   that passes the overload check wins it. On a sloped piece
//!   the cost is monotone in `u`, so hosts are tried from the cheap end until the cost bound
//!   passes the best found.
//! * **touched**: hosts whose allocation changed this round (or never matched the
//!   measurement), in bins of *live* utilisation. [`super::bounds`] bounds the cost of a bin
//!   from below; each host adds its own `P(live) - P(measured)`. Bins are visited in bound
//!   order and skipped once the bound passes the best found.
//! * **irregular**: hosts of a power model that is not monotone: tried every time.
//!
//! Every candidate is evaluated exactly as the scan evaluates it and the winner is the least
//! (increase in microwatts, host index) among hosts that pass the overload check, so the
//! order of the visit does not matter and the index returns the scan's host.

use super::blocks::{HostBlocks, Leaf, Need};
use super::bounds::{self, ModelBounds, Row};
use super::{quantum, Best, LoadCache, INCREASE_QUANTUM_W};
use crate::forecast::{self, ForecastParams, Trend};
use crate::overload::Detector;
use crate::state::{Cluster, HostLoad};
use crate::{HostId, VmId};
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::sync::Arc;

/// A live allocation this close (fraction of capacity) to the measured utilisation counts
/// as untouched (the two are sums of the same VMs' shares in different orders).
const UNTOUCHED: f64 = 1e-12;
/// Largest difference between the scan's floating-point increase of an untouched host and
/// the exact `phi_x(u)` (rounding, and allocations up to [`UNTOUCHED`] off), W.
const EPS: f64 = 1e-8;
/// Slack of the free-capacity pruning (the exact check is `is_suitable`).
const FREE_SLACK: f64 = 1e-6;
/// A host's bound must exceed the best increase by this much to be skipped (rounding to
/// the quantum can make a slightly larger increase tie).
const PRUNE: f64 = 2.0 * INCREASE_QUANTUM_W;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Closed or excluded: never a candidate.
    Out,
    Pool,
    Sorted,
    Touched,
    Irregular,
}

#[derive(Debug, Clone)]
struct Bin {
    hosts: Vec<HostId>,
    max_avail: f64,
    max_free_ram: f64,
    max_free_bw: f64,
    /// Least demand on hosts filed here this round (for the overload check's cap).
    min_demand: f64,
    /// Least `P(live) - P(measured)` of hosts filed here this round.
    min_extra: f64,
}

impl Bin {
    fn empty() -> Self {
        Self {
            hosts: Vec::new(),
            max_avail: f64::NEG_INFINITY,
            max_free_ram: f64::NEG_INFINITY,
            max_free_bw: f64::NEG_INFINITY,
            min_demand: f64::INFINITY,
            min_extra: f64::INFINITY,
        }
    }
}

#[derive(Debug, Clone)]
struct Kind {
    total_mips: f64,
    pe_mips: f64,
    ram_mb: f64,
    bw_mbps: f64,
    points: [f64; 11],
    /// `None` when the power model is not monotone (its hosts are all irregular).
    bounds: Option<Arc<ModelBounds>>,
    pool: BTreeSet<HostId>,
    /// Untouched hosts by measured utilisation, and their utilisations.
    sorted: Vec<HostId>,
    us: Vec<f64>,
    leaves: Vec<Leaf>,
    /// The VMs each sorted host had when the index was built (flat, by position).
    build_vms: Vec<VmId>,
    build_at: Vec<usize>,
    blocks: HostBlocks,
    /// Longest look-ahead horizon a placement check on this kind can use, in samples.
    horizon_hi: f64,
    touched: Vec<Bin>,
    /// Least `P(live) - P(measured)` of touched hosts this round.
    min_extra: f64,
}

/// Hosts of one round, filed for the search.
#[derive(Debug, Clone)]
pub(super) struct HostIndex {
    kinds: Vec<Kind>,
    kind_of: Vec<usize>,
    slot: Vec<Slot>,
    /// Position in a touched bin's or the irregular list's vector.
    pos: Vec<usize>,
    /// Position in the kind's sorted list, if the host was untouched when the index was built.
    sorted_pos: Vec<Option<usize>>,
    tbin: Vec<usize>,
    extra: Vec<f64>,
    demand: Vec<f64>,
    idle_at_build: Vec<bool>,
    irregular: Vec<HostId>,
    /// The forecast detector whose keys the sorted hosts carry.
    fc: Option<ForecastParams>,
}

/// A piece of `phi_x` for one kind, with its hosts' positions in the sorted list.
struct Piece {
    kind: usize,
    lo_pos: usize,
    hi_pos: usize,
    phi_a: f64,
    phi_b: f64,
    x: f64,
}

impl Piece {
    fn min(&self) -> f64 {
        self.phi_a.min(self.phi_b)
    }
}

impl HostIndex {
    pub(super) fn new(c: &Cluster, fc: Option<ForecastParams>, loads: &LoadCache) -> Self {
        let n = c.hosts.len();
        let max_ram = c.vms.iter().map(|v| v.ram_mb).fold(0.0, f64::max);
        let mut kinds: Vec<Kind> = Vec::new();
        let mut keys: Vec<(usize, [u64; 4])> = Vec::new();
        let mut ix = HostIndex {
            kinds: Vec::new(),
            kind_of: vec![0; n],
            slot: vec![Slot::Out; n],
            pos: vec![0; n],
            sorted_pos: vec![None; n],
            tbin: vec![0; n],
            extra: vec![0.0; n],
            demand: vec![0.0; n],
            idle_at_build: vec![false; n],
            irregular: Vec::new(),
            fc,
        };
        let mut untouched: Vec<Vec<(f64, HostId)>> = Vec::new();
        for (h, host) in c.hosts.iter().enumerate() {
            let key = (
                host.power,
                [
                    host.total_mips.to_bits(),
                    host.pe_mips.to_bits(),
                    host.ram_mb.to_bits(),
                    host.bw_mbps.to_bits(),
                ],
            );
            let k = match keys.iter().position(|k| *k == key) {
                Some(k) => k,
                None => {
                    let pm = &c.power_models[host.power];
                    keys.push(key);
                    let bounds = pm.is_monotone().then(|| bounds::for_points(&pm.points));
                    kinds.push(Kind {
                        total_mips: host.total_mips,
                        pe_mips: host.pe_mips,
                        ram_mb: host.ram_mb,
                        bw_mbps: host.bw_mbps,
                        points: pm.points,
                        touched: if bounds.is_some() {
                            vec![Bin::empty(); bounds::BINS]
                        } else {
                            Vec::new()
                        },
                        bounds,
                        pool: BTreeSet::new(),
                        sorted: Vec::new(),
                        us: Vec::new(),
                        leaves: Vec::new(),
                        build_vms: Vec::new(),
                        build_at: vec![0],
                        blocks: HostBlocks::new(std::iter::empty()),
                        horizon_hi: ix.fc.as_ref().map_or(0.0, |p| {
                            let mig = max_ram / (host.bw_mbps / 16.0);
                            (mig / c.interval_s).ceil().max(0.0) + p.lookahead
                        }),
                        min_extra: f64::INFINITY,
                    });
                    untouched.push(Vec::new());
                    kinds.len() - 1
                }
            };
            ix.kind_of[h] = k;
            ix.idle_at_build[h] = host.measured_mips == 0.0;
            if !host.closed
                && kinds[k].bounds.is_some()
                && !(ix.idle_at_build[h] && host.vms.is_empty())
                && is_untouched(c, h)
            {
                untouched[k].push((measured(c, h), h));
            }
        }
        for (k, mut list) in untouched.into_iter().enumerate() {
            list.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            for (p, &(_, h)) in list.iter().enumerate() {
                ix.sorted_pos[h] = Some(p);
            }
            let kind = &mut kinds[k];
            kind.us = list.iter().map(|&(u, _)| u).collect();
            kind.sorted = list.iter().map(|&(_, h)| h).collect();
            let hi = kind.horizon_hi;
            kind.leaves = list
                .iter()
                .map(|&(_, h)| leaf(c, h, ix.fc.as_ref(), hi, loads.peek(h)))
                .collect();
            kind.blocks = HostBlocks::new(kind.leaves.iter().copied());
            for &(_, h) in &list {
                kind.build_vms.extend_from_slice(&c.hosts[h].vms);
                kind.build_at.push(kind.build_vms.len());
            }
        }
        ix.kinds = kinds;
        for h in 0..n {
            if c.hosts[h].closed {
                ix.disable_sorted(h);
            } else {
                ix.file(c, h);
            }
        }
        ix
    }

    /// Takes `host` out of the index for good (excluded).
    pub(super) fn remove(&mut self, host: HostId) {
        self.unfile(host);
    }

    /// Files `host` again after its allocation changed.
    pub(super) fn refile(&mut self, c: &Cluster, host: HostId) {
        if c.hosts[host].closed {
            self.unfile(host);
            return;
        }
        let want = self.wanted(c, host);
        if want == self.slot[host] && want != Slot::Touched {
            if want == Slot::Sorted {
                self.enable_sorted(c, host);
            }
            return;
        }
        self.unfile(host);
        self.file(c, host);
    }

    fn wanted(&self, c: &Cluster, h: HostId) -> Slot {
        if self.kinds[self.kind_of[h]].bounds.is_none() {
            return Slot::Irregular;
        }
        if self.idle_at_build[h] && c.hosts[h].vms.is_empty() {
            return Slot::Pool;
        }
        if self.sorted_pos[h].is_some() && is_untouched(c, h) {
            Slot::Sorted
        } else {
            Slot::Touched
        }
    }

    fn file(&mut self, c: &Cluster, h: HostId) {
        let slot = self.wanted(c, h);
        self.slot[h] = slot;
        let k = self.kind_of[h];
        match slot {
            Slot::Out => {}
            Slot::Pool => {
                self.kinds[k].pool.insert(h);
            }
            Slot::Sorted => self.enable_sorted(c, h),
            Slot::Irregular => {
                self.pos[h] = self.irregular.len();
                self.irregular.push(h);
            }
            Slot::Touched => {
                let kind = &mut self.kinds[k];
                let host = &c.hosts[h];
                let live = (c.live_mips(h) / host.total_mips).clamp(0.0, 1.0);
                let extra =
                    exact_power(&kind.points, live) - exact_power(&kind.points, measured(c, h));
                let b = bounds::bin_of(live);
                let bin = &mut kind.touched[b];
                let demand = demand_on(c, h);
                self.tbin[h] = b;
                self.extra[h] = extra;
                self.demand[h] = demand;
                self.pos[h] = bin.hosts.len();
                bin.hosts.push(h);
                bin.max_avail = bin.max_avail.max(host.avail_mips);
                bin.max_free_ram = bin.max_free_ram.max(host.ram_mb - host.ram_used);
                bin.max_free_bw = bin.max_free_bw.max(host.bw_mbps - host.bw_used);
                bin.min_extra = bin.min_extra.min(extra);
                bin.min_demand = bin.min_demand.min(demand);
                kind.min_extra = kind.min_extra.min(extra);
            }
        }
    }

    fn unfile(&mut self, h: HostId) {
        let k = self.kind_of[h];
        match self.slot[h] {
            Slot::Out => {}
            Slot::Pool => {
                self.kinds[k].pool.remove(&h);
            }
            Slot::Sorted => self.disable_sorted(h),
            Slot::Irregular => {
                let p = self.pos[h];
                self.irregular.swap_remove(p);
                if let Some(&moved) = self.irregular.get(p) {
                    self.pos[moved] = p;
                }
            }
            Slot::Touched => {
                let p = self.pos[h];
                let hosts = &mut self.kinds[k].touched[self.tbin[h]].hosts;
                hosts.swap_remove(p);
                if let Some(&moved) = hosts.get(p) {
                    self.pos[moved] = p;
                }
            }
        }
        self.slot[h] = Slot::Out;
    }

    fn enable_sorted(&mut self, c: &Cluster, h: HostId) {
        if let Some(p) = self.sorted_pos[h] {
            let kind = &mut self.kinds[self.kind_of[h]];
            let same = kind.build_vms[kind.build_at[p]..kind.build_at[p + 1]] == c.hosts[h].vms[..];
            let l = if same {
                // The same VMs as when built (a placement was rolled back): the forecast key
                // depends only on them; the free capacity is read again.
                Leaf {
                    key: kind.leaves[p].key,
                    ..leaf(c, h, None, 0.0, None)
                }
            } else {
                leaf(c, h, self.fc.as_ref(), kind.horizon_hi, None)
            };
            kind.leaves[p] = l;
            kind.blocks.set(p, Some(l));
        }
    }

    fn disable_sorted(&mut self, h: HostId) {
        if let Some(p) = self.sorted_pos[h] {
            self.kinds[self.kind_of[h]].blocks.set(p, None);
        }
    }

    /// Offers `consider` every host that could be the least-increase host for `vm`;
    /// `consider` returns the best so far.
    pub(super) fn search(
        &mut self,
        c: &Cluster,
        vm: VmId,
        det: &Detector,
        consider: &mut impl FnMut(HostId) -> Best,
    ) {
        let v = &c.vms[vm];
        let demand = v.demand_mips;
        let need = Need {
            max_demand: f64::INFINITY,
            max_key: f64::INFINITY,
            mips: demand,
            ram: if c.enforce_ram {
                v.ram_mb - FREE_SLACK
            } else {
                f64::NEG_INFINITY
            },
            bw: if c.enforce_bw {
                v.bw_mbps - FREE_SLACK
            } else {
                f64::NEG_INFINITY
            },
        };
        let mut best = Best::default();
        for &h in &self.irregular {
            if c.is_suitable(h, vm) {
                best = consider(h);
            }
        }
        for k in &self.kinds {
            let fits_empty = k.pe_mips >= demand
                && k.total_mips >= demand - FREE_SLACK
                && k.ram_mb >= need.ram
                && k.bw_mbps >= need.bw;
            if fits_empty {
                if let Some(&h) = k.pool.iter().find(|&&h| c.is_suitable(h, vm)) {
                    best = consider(h);
                }
            }
        }
        // What a host may carry and still pass the overload check, per kind.
        let cap = det.placement_demand_cap().unwrap_or(f64::INFINITY);
        let vm_trend = match (det, &self.fc) {
            (Detector::Forecast(p), Some(q)) if p == q => {
                Some((p, Trend::of(&v.history, p.samples)))
            }
            _ => None,
        };
        let needs: Vec<Need> = self
            .kinds
            .iter()
            .map(|k| Need {
                max_demand: (cap + 1e-9) * k.total_mips - demand,
                max_key: vm_trend.as_ref().map_or(f64::INFINITY, |(p, t)| {
                    let t = t.scaled(v.mips / k.total_mips);
                    let mig = v.ram_mb / (k.bw_mbps / 16.0);
                    let lo = (mig / c.interval_s).ceil().max(0.0) + p.lookahead;
                    forecast::vm_allowance(p, &t, lo, k.horizon_hi.max(lo))
                }),
                ..need
            })
            .collect();
        best = self.search_sorted(c, vm, &needs, best, consider);
        self.search_touched(c, vm, &needs, best, consider);
    }

    /// Untouched hosts, piece by piece of `phi_x`, cheapest piece first.
    fn search_sorted(
        &mut self,
        c: &Cluster,
        vm: VmId,
        needs: &[Need],
        mut best: Best,
        consider: &mut impl FnMut(HostId) -> Best,
    ) -> Best {
        let demand = c.vms[vm].demand_mips;
        let mut pieces: Vec<Piece> = Vec::new();
        for (ki, k) in self.kinds.iter().enumerate() {
            if k.bounds.is_none() || k.pe_mips < demand || k.sorted.is_empty() {
                continue;
            }
            pieces_of(ki, k, demand / k.total_mips, &mut pieces);
        }
        pieces.sort_by(|a, b| a.min().total_cmp(&b.min()));
        let mut fitting: Vec<Reverse<HostId>> = Vec::new();
        for p in &pieces {
            if p.min() - EPS > best.d + PRUNE {
                break;
            }
            let kind = &mut self.kinds[p.kind];
            let need = needs[p.kind];
            let lo_q = quantum(p.min() - EPS);
            let hi_q = quantum(p.phi_a.max(p.phi_b) + EPS);
            if lo_q == hi_q {
                // A flat piece: every host in it costs the same quantum; the lowest index
                // that fits and passes wins.
                if lo_q > best.q && best.host.is_some() {
                    continue;
                }
                let limit = match best.host {
                    Some(bh) if lo_q == best.q => bh,
                    _ => usize::MAX,
                };
                fitting.clear();
                kind.blocks
                    .fitting(p.lo_pos, p.hi_pos, &need, limit, &mut fitting);
                // Usually the first few candidates settle it: take them in host order from
                // a heap (linear to build) rather than sorting them all.
                let mut heap = BinaryHeap::from(std::mem::take(&mut fitting));
                while let Some(Reverse(h)) = heap.pop() {
                    if c.is_suitable(h, vm) {
                        best = consider(h);
                        if best.host == Some(h) {
                            break;
                        }
                    }
                }
                fitting = heap.into_vec();
            } else {
                // A sloped piece: try hosts from the cheap end while they could still win.
                let rising = p.phi_a <= p.phi_b;
                let (mut lo, mut hi) = (p.lo_pos, p.hi_pos);
                while let Some(pos) = kind.blocks.first_fit(lo, hi, &need, rising) {
                    if rising {
                        lo = pos + 1;
                    } else {
                        hi = pos;
                    }
                    if phi(&kind.points, p.x, kind.us[pos]) - EPS > best.d + PRUNE {
                        break;
                    }
                    let h = kind.sorted[pos];
                    if c.is_suitable(h, vm) {
                        best = consider(h);
                    }
                }
            }
        }
        best
    }

    /// Touched hosts, bins of live utilisation in increasing order of their bound.
    fn search_touched(
        &self,
        c: &Cluster,
        vm: VmId,
        needs: &[Need],
        mut best: Best,
        consider: &mut impl FnMut(HostId) -> Best,
    ) {
        let demand = c.vms[vm].demand_mips;
        let mut cursors: Vec<Cursor> = self
            .kinds
            .iter()
            .zip(needs)
            .filter(|(k, _)| k.pe_mips >= demand && k.min_extra.is_finite())
            .filter_map(|(k, need)| {
                let b = k.bounds.as_ref()?;
                Some(Cursor {
                    need: *need,
                    kind: k,
                    row: b.row(bounds::step_of(demand / k.total_mips)),
                    at: 0,
                })
            })
            .collect();
        let fits = |bin: &Bin, need: &Need| {
            !bin.hosts.is_empty()
                && bin.max_avail >= need.mips
                && bin.max_free_ram >= need.ram
                && bin.max_free_bw >= need.bw
                && bin.min_demand <= need.max_demand
        };
        loop {
            let mut pick: Option<(f64, usize)> = None;
            for (i, cur) in cursors.iter_mut().enumerate() {
                while let Some(&b) = cur.row.order.get(cur.at) {
                    if fits(&cur.kind.touched[b as usize], &cur.need) {
                        break;
                    }
                    cur.at += 1;
                }
                if let Some(&b) = cur.row.order.get(cur.at) {
                    let lb = cur.row.lb[b as usize] as f64 + cur.kind.min_extra;
                    if pick.is_none_or(|(p, _)| lb < p) {
                        pick = Some((lb, i));
                    }
                }
            }
            let Some((lb, i)) = pick else { break };
            if lb > best.d + PRUNE {
                break;
            }
            let cur = &mut cursors[i];
            let b = cur.row.order[cur.at] as usize;
            cur.at += 1;
            let bin = &cur.kind.touched[b];
            let base = cur.row.lb[b] as f64;
            if base + bin.min_extra > best.d + PRUNE {
                continue;
            }
            let most = cur.need.max_demand;
            for &h in &bin.hosts {
                if base + self.extra[h] <= best.d + PRUNE
                    && self.demand[h] <= most
                    && c.is_suitable(h, vm)
                {
                    best = consider(h);
                }
            }
        }
    }
}

struct Cursor<'a> {
    need: Need,
    kind: &'a Kind,
    row: &'a Row,
    at: usize,
}

/// The pieces of `phi_x` over [0, 1] for kind `ki`, with the positions of its sorted hosts.
fn pieces_of(ki: usize, k: &Kind, x: f64, out: &mut Vec<Piece>) {
    let mut cuts: Vec<f64> = Vec::with_capacity(24);
    cuts.extend([0.0, 1.0, 1.0 - x]);
    for j in 1..10 {
        let t = j as f64 / 10.0;
        cuts.extend([t, t - x]);
    }
    cuts.retain(|&t| (0.0..=1.0).contains(&t));
    cuts.sort_by(f64::total_cmp);
    cuts.dedup();
    let at = |t: f64| k.us.partition_point(|&u| u < t);
    for w in cuts.windows(2) {
        let (a, b) = (w[0], w[1]);
        let lo_pos = at(a);
        let hi_pos = if b >= 1.0 { k.us.len() } else { at(b) };
        if lo_pos >= hi_pos {
            continue;
        }
        out.push(Piece {
            kind: ki,
            lo_pos,
            hi_pos,
            phi_a: phi(&k.points, x, a),
            phi_b: phi(&k.points, x, b),
            x,
        });
    }
}

/// The table's power at `u` in exact piecewise-linear form.
fn exact_power(points: &[f64; 11], u: f64) -> f64 {
    let u = u.clamp(0.0, 1.0);
    let j = ((u * 10.0) as usize).min(9);
    points[j] + (points[j + 1] - points[j]) * (u * 10.0 - j as f64)
}

fn phi(points: &[f64; 11], x: f64, u: f64) -> f64 {
    exact_power(points, (u + x).min(1.0)) - exact_power(points, u)
}

/// Measured utilisation as the power model sees it.
fn measured(c: &Cluster, h: HostId) -> f64 {
    c.measured_util(h).clamp(0.0, 1.0)
}

fn is_untouched(c: &Cluster, h: HostId) -> bool {
    (c.live_mips(h) / c.hosts[h].total_mips - measured(c, h)).abs() <= UNTOUCHED
}

/// What the blocks keep of an untouched host: free capacity, demand (for the overload
/// check's cap) and, for the forecast detector `fc`, its key.
fn leaf(
    c: &Cluster,
    h: HostId,
    fc: Option<&ForecastParams>,
    horizon_hi: f64,
    load: Option<&HostLoad>,
) -> Leaf {
    let host = &c.hosts[h];
    let mut key = f64::NEG_INFINITY;
    if let Some(p) = fc {
        if c.live_mips(h) != 0.0 && p.samples >= 4 {
            let mut recent = [0.0; crate::state::HISTORY_LEN];
            let (long, hist, lo) = match load {
                Some(l) if l.depth >= p.samples => (
                    l.longer || crate::stats::non_zero_len(&l.history) >= p.samples,
                    &l.history,
                    forecast::horizon(p, c, h, None, l),
                ),
                _ => {
                    let long = c.recent_history(h, p.samples, &mut recent);
                    let mig = c.max_migration_time(h);
                    let lo = (mig / c.interval_s).ceil().max(0.0) + p.lookahead;
                    (long, &recent, lo)
                }
            };
            if long {
                let t = Trend::of(hist, p.samples);
                key = forecast::host_key(p, &t, lo, horizon_hi.max(lo));
            }
        }
    }
    Leaf {
        host: h,
        avail: host.avail_mips,
        free_ram: host.ram_mb - host.ram_used,
        free_bw: host.bw_mbps - host.bw_used,
        demand: demand_on(c, h),
        key,
    }
}

/// The demand the overload check sees on `h` (MIPS), or `-inf` where PABFD skips the check
/// (an empty allocation).
fn demand_on(c: &Cluster, h: HostId) -> f64 {
    if c.live_mips(h) == 0.0 {
        return f64::NEG_INFINITY;
    }
    c.hosts[h].vms.iter().map(|&v| c.vms[v].demand_mips).sum()
}
