//! Measuring hosts: the CPU shares their schedulers grant, utilisation, energy and the SLA
//! entries of hosts and VMs (CloudSim's `updateCloudletProcessing` and state histories).
//!
//! A whole-data-centre measurement runs in two passes: hosts in index order (shares,
//! utilisation, energy), then VMs in index order (their accounting entries), so that each
//! pass walks its arrays in memory order. The arithmetic is the one of a single host's
//! measurement, value for value.

use super::accounting::HostEntry;
use super::Sim;
use ferry_cluster::policy::PolicySpec;
use ferry_cluster::HostId;

/// What a host's scheduler grants at one measurement.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Shares {
    /// Scaling of every VM's capped request (1 unless over-subscribed).
    f: f64,
    /// Over-subscribed: shares are scaled by `f` and floored.
    over: bool,
}

/// MIPS a VM gets: its request capped at one core `pe`, scaled by the host's shares; an
/// incoming VM runs 10 % of it on the target, an outgoing one 90 % on the source.
fn alloc(req: f64, pe: f64, s: Shares, incoming: bool, outgoing: bool) -> f64 {
    let c = req.min(pe);
    let a = if incoming {
        0.1 * c * s.f
    } else if outgoing {
        c * s.f * 0.9
    } else {
        c * s.f
    };
    if s.over {
        a.floor()
    } else {
        a
    }
}

impl Sim<'_> {
    /// The shares of host `h` and the MIPS left unallocated.
    fn shares_of(&self, h: HostId) -> (Shares, f64) {
        let host = &self.c.hosts[h];
        let (total, pe) = (host.total_mips, host.pe_mips);
        let mut sum_eff = 0.0;
        let mut over = false;
        let mut avail = total;
        for &v in &host.vms {
            let c = self.c.vms[v].demand_mips.min(pe);
            let eff = if self.mig_in[h].contains(&v) {
                0.1 * c
            } else {
                c
            };
            sum_eff += eff;
            if avail >= eff {
                avail -= eff;
            } else {
                over = true;
                avail = 0.0;
            }
        }
        let f = if over { total / sum_eff } else { 1.0 };
        (Shares { f, over }, avail)
    }

    /// Utilisation (MIPS, a migrating VM counted at its full share) and summed request.
    fn util_of(&self, h: HostId, s: Shares) -> (f64, f64) {
        let host = &self.c.hosts[h];
        let mut util_mips = 0.0;
        let mut req_total = 0.0;
        for &v in &host.vms {
            let vm = &self.c.vms[v];
            let req = vm.demand_mips;
            let incoming = self.mig_in[h].contains(&v);
            let a = alloc(req, host.pe_mips, s, incoming, vm.in_migration && !incoming);
            util_mips += if incoming || !vm.in_migration {
                a
            } else {
                a / 0.9
            };
            req_total += req;
        }
        (util_mips, req_total)
    }

    /// Stores a host's measurement: its utilisation, the energy since the last one, and its
    /// state-history entry.
    fn record(&mut self, h: HostId, t: f64, avail: f64, util_mips: f64, req_total: f64) {
        let host = &mut self.c.hosts[h];
        let total = host.total_mips;
        host.avail_mips = avail;
        host.measured_mips = util_mips;
        let clamp = |u: f64| if u > 1.0 && u < 1.01 { 1.0 } else { u };
        let dt = t - self.last_t[h];
        if dt > 0.0 && !matches!(self.cfg.policy, PolicySpec::Npa) {
            let pm = &self.c.power_models[host.power];
            self.energy_j += pm.energy_linear(
                clamp(self.prev_mips[h] / total),
                clamp(util_mips / total),
                dt,
            );
            if self.prev_mips[h] == 0.0 && util_mips > 0.0 {
                self.energy_j += pm.wake_j;
            }
        }
        self.prev_mips[h] = util_mips;
        self.last_t[h] = t;
        self.host_acc[h].push(HostEntry {
            t,
            alloc: util_mips,
            req: req_total,
            active: util_mips > 0.0,
        });
    }

    /// Whether measuring `h` would change nothing but its clock: no VMs, off since its last
    /// entry, and drawing nothing while off (energy and state history then read the same
    /// whether or not the entry is written).
    fn stays_off(&self, h: HostId) -> bool {
        let host = &self.c.hosts[h];
        host.vms.is_empty()
            && self.prev_mips[h] == 0.0
            && self.c.power_models[host.power].sleep_w == 0.0
            && self.host_acc[h].is_off()
    }

    /// Re-measures one host at `t`: CPU shares, utilisation, energy and SLA entries.
    pub(super) fn measure(&mut self, h: HostId, t: f64) {
        let (s, avail) = self.shares_of(h);
        let (util_mips, req_total) = self.util_of(h, s);
        self.record(h, t, avail, util_mips, req_total);
        let pe = self.c.hosts[h].pe_mips;
        for i in 0..self.c.hosts[h].vms.len() {
            let v = self.c.hosts[h].vms[i];
            if self.mig_in[h].contains(&v) {
                continue;
            }
            let vm = &self.c.vms[v];
            let a = alloc(vm.demand_mips, pe, s, false, vm.in_migration);
            self.vm_acc[v].push(t, a, vm.demand_mips, vm.in_migration);
        }
    }

    /// Re-measures every host at `t`, with the same results as [`Sim::measure`] on each host
    /// in index order.
    pub(super) fn measure_all(&mut self, t: f64) {
        let n = self.c.hosts.len();
        let mut shares = std::mem::take(&mut self.shares);
        shares.clear();
        shares.resize(n, Shares::default());
        for (h, sh) in shares.iter_mut().enumerate() {
            if self.stays_off(h) {
                let host = &mut self.c.hosts[h];
                host.avail_mips = host.total_mips;
                host.measured_mips = 0.0;
                self.last_t[h] = t;
                continue;
            }
            let (s, avail) = self.shares_of(h);
            let (util_mips, req_total) = self.util_of(h, s);
            self.record(h, t, avail, util_mips, req_total);
            *sh = s;
        }
        // A VM's entry belongs to the host it runs on (an incoming copy has none), and a host
        // that stayed off has no VMs.
        for (v, vm) in self.c.vms.iter().enumerate() {
            if let Some(h) = vm.host {
                debug_assert!(self.c.hosts[h].vms.contains(&v));
                let pe = self.c.hosts[h].pe_mips;
                let a = alloc(vm.demand_mips, pe, shares[h], false, vm.in_migration);
                self.vm_acc[v].push(t, a, vm.demand_mips, vm.in_migration);
            }
        }
        self.shares = shares;
    }
}
