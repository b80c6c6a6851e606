//! VM placement: power-aware best-fit decreasing (PABFD) and first fit.
//!
//! PABFD puts each VM on the host whose power draw grows least, skipping hosts that the
//! overload detector would flag once the VM is there. As in CloudSim 3.0.3, the utilisation
//! *after* allocation starts from the host's live allocation (VMs placed or removed earlier in
//! the round count), while the power it is compared with is the stale measured one.
//!
//! A planning round asks for a host many times while it moves VMs around, so the search runs
//! over a [`PlacementIndex`] built once per round: hosts binned by kind and measured
//! utilisation, with a precomputed lower bound of the power increase for every bin (see
//! [`index`]), searched best bin first. [`PlacementSearch::Scan`] keeps the plain scan over
//! every host; the two give the same host for every request (property tests and the
//! simulator's `verify-index` command check it).

mod blocks;
mod bounds;
mod index;
mod scan;
#[cfg(test)]
mod tests;

use crate::forecast::{self, Trend};
use crate::overload::Detector;
use crate::state::{Cluster, HostLoad};
use crate::{HostId, VmId};

/// How [`PlacementIndex::find_host`] searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlacementSearch {
    /// The index from [`AUTO_INDEX_HOSTS`] hosts up, the scan below (where building the
    /// index each round costs more than it saves: 0.40-0.45 s against 0.29-0.39 s of CPU
    /// for an 800-host PlanetLab day with LR-MMT). Both give the same hosts.
    #[default]
    Auto,
    /// Hosts filed by kind and utilisation, searched by a lower bound of the power
    /// increase: the cost grows with the hosts that could win, not with the cluster.
    Indexed,
    /// Every host looked at for every VM (the original code, kept as the reference).
    Scan,
}

/// Cluster size from which [`PlacementSearch::Auto`] uses the index.
pub const AUTO_INDEX_HOSTS: usize = 2000;

/// The hosts of one planning round, ready for repeated PABFD searches.
///
/// Build it with [`PlacementIndex::new`], mark hosts that may not receive VMs with
/// [`PlacementIndex::exclude`], and change the allocation only through
/// [`PlacementIndex::place`] and [`PlacementIndex::unplace`] (or call
/// [`PlacementIndex::touch`] after changing a host directly) so the index follows.
#[derive(Debug, Clone)]
pub struct PlacementIndex {
    excluded: Vec<bool>,
    base_power: Vec<f64>,
    loads: LoadCache,
    inner: Inner,
}

/// Hosts' [`HostLoad`]s computed during the round (with the host's forecast trend, once
/// asked for), dropped when the host changes.
#[derive(Debug, Clone)]
pub(crate) struct LoadCache {
    slot: Vec<u32>,
    loads: Vec<(HostLoad, Option<Option<Trend>>)>,
    /// History entries a load sums.
    depth: usize,
}

impl LoadCache {
    const NONE: u32 = u32::MAX;

    fn new(hosts: usize, det: &Detector) -> Self {
        Self {
            slot: vec![Self::NONE; hosts],
            loads: Vec::new(),
            depth: match det {
                Detector::Forecast(p) => p.samples.max(1),
                _ => crate::state::HISTORY_LEN,
            },
        }
    }

    fn get(&mut self, c: &Cluster, host: HostId) -> &mut (HostLoad, Option<Option<Trend>>) {
        if self.slot[host] == Self::NONE {
            self.slot[host] = self.loads.len() as u32;
            self.loads.push((c.host_load_to(host, self.depth), None));
        }
        &mut self.loads[self.slot[host] as usize]
    }

    /// The load of `host` if it was computed.
    pub(crate) fn peek(&self, host: HostId) -> Option<&HostLoad> {
        (self.slot[host] != Self::NONE).then(|| &self.loads[self.slot[host] as usize].0)
    }

    fn forget(&mut self, host: HostId) {
        self.slot[host] = Self::NONE;
    }
}

#[derive(Debug, Clone)]
enum Inner {
    Scan(scan::ScanIndex),
    Indexed(Box<index::HostIndex>),
}

impl PlacementIndex {
    /// Builds the index from the hosts' measured utilisation, with the search `c.search`
    /// names. Closed hosts are never candidates.
    pub fn new(c: &Cluster) -> Self {
        Self::build(c, &Detector::Never)
    }

    /// Like [`PlacementIndex::new`], prepared for searches under `det` (with the forecast
    /// detector, hosts carry a key that rules many of them out without a check).
    pub fn for_detector(c: &Cluster, det: &Detector) -> Self {
        Self::build(c, det)
    }

    fn build(c: &Cluster, det: &Detector) -> Self {
        let base_power: Vec<f64> = (0..c.hosts.len())
            .map(|h| c.power_at(h, c.measured_util(h)))
            .collect();
        let mut loads = LoadCache::new(c.hosts.len(), det);
        if !matches!(det, Detector::Thr(_) | Detector::Never) {
            // Every host's load is read at least once per round (overload detection).
            for h in 0..c.hosts.len() {
                if !c.hosts[h].vms.is_empty() {
                    loads.get(c, h);
                }
            }
        }
        let fc = match det {
            Detector::Forecast(p) => Some(p.clone()),
            _ => None,
        };
        let indexed = match c.search {
            PlacementSearch::Auto => c.hosts.len() >= AUTO_INDEX_HOSTS,
            PlacementSearch::Indexed => true,
            PlacementSearch::Scan => false,
        };
        let inner = match indexed {
            false => Inner::Scan(scan::ScanIndex::new(c)),
            true => Inner::Indexed(Box::new(index::HostIndex::new(c, fc, &loads))),
        };
        Self {
            excluded: vec![false; c.hosts.len()],
            base_power,
            loads,
            inner,
        }
    }

    /// [`Detector::is_overloaded`] for `host` as it is now (without an extra VM), from the
    /// loads this index keeps.
    pub fn is_overloaded(&mut self, c: &Cluster, det: &Detector, host: HostId) -> bool {
        match det {
            Detector::Never => false,
            Detector::Thr(_) => det.is_overloaded(c, host, None),
            _ => det.is_overloaded_given(c, host, None, &self.loads.get(c, host).0),
        }
    }

    /// `host` may not receive VMs for the rest of the round.
    pub fn exclude(&mut self, host: HostId) {
        if host >= self.excluded.len() || self.excluded[host] {
            return;
        }
        self.excluded[host] = true;
        if let Inner::Indexed(ix) = &mut self.inner {
            ix.remove(host);
        }
    }

    /// Whether `host` was excluded.
    pub fn is_excluded(&self, host: HostId) -> bool {
        self.excluded[host]
    }

    /// Re-files `host` after its allocation changed outside [`PlacementIndex::place`] and
    /// [`PlacementIndex::unplace`].
    pub fn touch(&mut self, c: &Cluster, host: HostId) {
        self.loads.forget(host);
        if self.excluded[host] {
            return;
        }
        if let Inner::Indexed(ix) = &mut self.inner {
            ix.refile(c, host);
        }
    }

    /// Places `vm` on `host` (as [`Cluster::vm_create`]) and keeps the index current.
    pub fn place(&mut self, c: &mut Cluster, host: HostId, vm: VmId) {
        c.vm_create(host, vm);
        self.touch(c, host);
    }

    /// Removes `vm` from `host` (as [`Cluster::vm_destroy`]) and keeps the index current.
    pub fn unplace(&mut self, c: &mut Cluster, host: HostId, vm: VmId) {
        c.vm_destroy(host, vm);
        self.touch(c, host);
    }

    /// PABFD host choice for `vm`: least power increase, ties to the lowest host index;
    /// excluded hosts are skipped. Returns `None` when nothing fits.
    ///
    /// Only hosts with a live allocation get the overload check (an empty host cannot be
    /// overloaded by the VM alone in CloudSim's rule), and only when they would win.
    pub fn find_host(&mut self, c: &Cluster, det: &Detector, vm: VmId) -> Option<HostId> {
        let demand = c.vms[vm].demand_mips;
        let base_power = &self.base_power;
        let loads = &mut self.loads;
        let vm_trend = match det {
            Detector::Forecast(p) if p.samples >= 4 => {
                Some(Trend::of(&c.vms[vm].history, p.samples))
            }
            _ => None,
        };
        let mut overloaded = |h: HostId| {
            let (load, trend) = loads.get(c, h);
            let load = &*load;
            if let (Detector::Forecast(p), Some(vt)) = (det, vm_trend) {
                // The host's own trend rules most hosts out without fitting the sum.
                let ht = *trend.get_or_insert_with(|| {
                    let long =
                        load.longer || crate::stats::non_zero_len(&load.history) >= p.samples;
                    (load.depth >= p.samples && long).then(|| Trend::of(&load.history, p.samples))
                });
                if let Some(ht) = ht {
                    let vt = vt.scaled(c.vms[vm].mips / c.hosts[h].total_mips);
                    let horizon = forecast::horizon(p, c, h, Some(vm), load);
                    if forecast::placement_surely_over(p, &ht, &vt, horizon) {
                        return true;
                    }
                }
            }
            det.is_overloaded_given(c, h, Some(vm), load)
        };
        let mut best = Best::default();
        let mut consider = |h: HostId| {
            let live = c.live_mips(h);
            let d = increase(c, h, live, demand, base_power[h]);
            if best.beaten_by(d, h) && (live == 0.0 || !overloaded(h)) {
                best.set(d, h);
            }
            best
        };
        match &mut self.inner {
            Inner::Scan(s) => s.search(c, vm, &self.excluded, &mut consider),
            Inner::Indexed(ix) => ix.search(c, vm, det, &mut consider),
        }
        best.host
    }
}

/// Power increases are compared in whole microwatts; equal ones go to the lowest host index.
///
/// CloudSim compares the raw floating-point increases, so among hosts that cost the same
/// (every host on an equally steep part of its power curve) the winner is decided by
/// rounding noise in the last bits. Rounding to a microwatt makes those ties explicit and
/// lets the index answer them without evaluating every tied host.
pub const INCREASE_QUANTUM_W: f64 = 1e-6;

fn quantum(d: f64) -> f64 {
    (d / INCREASE_QUANTUM_W).round()
}

/// The best host so far: least increase (in quanta), ties to the lowest index.
#[derive(Debug, Clone, Copy)]
struct Best {
    /// The increase, W.
    d: f64,
    /// The increase in quanta.
    q: f64,
    host: Option<HostId>,
}

impl Default for Best {
    fn default() -> Self {
        Self {
            d: f64::INFINITY,
            q: f64::INFINITY,
            host: None,
        }
    }
}

impl Best {
    fn beaten_by(&self, d: f64, h: HostId) -> bool {
        let q = quantum(d);
        match self.host {
            None => true,
            Some(bh) => q < self.q || (q == self.q && h < bh),
        }
    }

    fn set(&mut self, d: f64, h: HostId) {
        self.d = d;
        self.q = quantum(d);
        self.host = Some(h);
    }
}

/// Watts added to `host` when `demand` MIPS join its live allocation `live`, against its
/// measured power `base` (CloudSim's `getPowerAfterAllocation - getPower`).
fn increase(c: &Cluster, host: HostId, live: f64, demand: f64, base: f64) -> f64 {
    let h = &c.hosts[host];
    let after = ((live + demand) / h.total_mips).min(1.0);
    c.power_at(host, after) - base
}

/// Watts added to `host` by `demand` MIPS, from its measured utilisation.
pub fn power_increase(c: &Cluster, host: HostId, demand: f64) -> f64 {
    let h = &c.hosts[host];
    let after = ((h.measured_mips + demand) / h.total_mips).min(1.0);
    c.power_at(host, after) - c.power_at(host, c.measured_util(host))
}

/// First host (by index) where `vm` fits, as CloudSim's `PowerVmAllocationPolicySimple`.
pub fn first_fit(c: &Cluster, vm: VmId, excluded: &[bool]) -> Option<HostId> {
    (0..c.hosts.len()).find(|&h| !excluded[h] && c.is_suitable(h, vm))
}

/// Places VMs in decreasing order of demand with PABFD away from `excluded` hosts,
/// returning `(vm, host)` pairs for the VMs that found a host (the allocation in `c` is
/// updated).
pub fn place_all(
    c: &mut Cluster,
    det: &Detector,
    vms: &[VmId],
    excluded: &[HostId],
) -> Vec<(VmId, HostId)> {
    let mut idx = PlacementIndex::for_detector(c, det);
    for &h in excluded {
        idx.exclude(h);
    }
    let mut order = vms.to_vec();
    sort_by_demand_desc(c, &mut order);
    let mut out = Vec::new();
    for v in order {
        if let Some(h) = idx.find_host(c, det, v) {
            idx.place(c, h, v);
            out.push((v, h));
        }
    }
    out
}

/// Stable sort of VMs by decreasing CPU demand (CloudSim's `sortByCpuUtilization`).
pub fn sort_by_demand_desc(c: &Cluster, vms: &mut [VmId]) {
    vms.sort_by(|&a, &b| c.vms[b].demand_mips.total_cmp(&c.vms[a].demand_mips));
}
