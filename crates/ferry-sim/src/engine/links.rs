//! Host network links shared by concurrent migrations: each link carries at most `slots`
//! migrations at once, each at `1 / slots` of the bandwidth; the others wait in line (the VM
//! already reserved on its target, as the plan assumed), so a plan that moves 40 VMs off one
//! host at once pays for it.

use super::{Completion, Sim};
use ferry_cluster::{HostId, VmId};
use std::collections::VecDeque;

/// Link slots in use per host, and the migrations waiting for one.
#[derive(Debug, Clone)]
pub(super) struct Links {
    slots: Option<usize>,
    busy: Vec<usize>,
    waiting: VecDeque<(VmId, HostId, HostId)>,
}

impl Links {
    pub(super) fn new(hosts: usize, slots: Option<usize>) -> Self {
        Self {
            slots: slots.map(|s| s.max(1)),
            busy: vec![0; hosts],
            waiting: VecDeque::new(),
        }
    }

    /// Whether links limit concurrent migrations at all.
    pub(super) fn limited(&self) -> bool {
        self.slots.is_some()
    }

    fn free(&self, from: HostId, to: HostId) -> bool {
        self.slots
            .is_none_or(|s| self.busy[from] < s && self.busy[to] < s)
    }

    fn take(&mut self, from: HostId, to: HostId) {
        self.busy[from] += 1;
        self.busy[to] += 1;
    }

    /// A migration between `from` and `to` ended.
    pub(super) fn release(&mut self, from: HostId, to: HostId) {
        self.busy[from] = self.busy[from].saturating_sub(1);
        self.busy[to] = self.busy[to].saturating_sub(1);
    }

    /// Migrations waiting for a slot.
    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

impl Sim<'_> {
    /// Starts moving `v` at `t`: its cost from the migration model over the bandwidth it
    /// gets (its slot's share of the slower link when `from` holds a slot, else the
    /// target's), and its completion event.
    pub(super) fn launch(&mut self, t: f64, v: VmId, from: Option<HostId>, to: HostId) {
        let bw = match (from, self.links.slots) {
            (Some(f), Some(s)) => self.c.hosts[f].bw_mbps.min(self.c.hosts[to].bw_mbps) / s as f64,
            _ => self.c.hosts[to].bw_mbps,
        };
        let vm = &self.c.vms[v];
        let cost = self
            .cfg
            .migration
            .cost(vm.ram_mb, vm.demand_mips / vm.mips, bw);
        self.moved_mb += cost.moved_mb;
        self.downtime_s += cost.downtime_s;
        self.seq += 1;
        self.events.push(Completion {
            t: t + cost.duration_s,
            seq: self.seq,
            vm: v,
            from,
            to,
        });
    }

    /// Starts `v` now if both links have a free slot, else puts it in line.
    pub(super) fn launch_or_wait(&mut self, t: f64, v: VmId, from: HostId, to: HostId) {
        if self.links.free(from, to) {
            self.links.take(from, to);
            self.launch(t, v, Some(from), to);
        } else {
            self.links.waiting.push_back((v, from, to));
        }
    }

    /// Starts, in arrival order, the waiting migrations whose links have a free slot at `t`;
    /// drops those whose VM or target changed meanwhile (a failure).
    pub(super) fn launch_waiting(&mut self, t: f64) {
        if self.links.waiting.is_empty() {
            return;
        }
        let mut still = VecDeque::with_capacity(self.links.waiting.len());
        while let Some((v, from, to)) = self.links.waiting.pop_front() {
            let valid = !self.failed[to]
                && self.c.vms[v].host == Some(from)
                && self.mig_in[to].contains(&v);
            if !valid {
                self.cancel_reservation(v, to);
                continue;
            }
            if self.links.free(from, to) {
                self.links.take(from, to);
                self.launch(t, v, Some(from), to);
            } else {
                still.push_back((v, from, to));
            }
        }
        self.links.waiting = still;
    }

    /// Frees what a migration that will not run reserved on its target.
    fn cancel_reservation(&mut self, v: VmId, to: HostId) {
        if let Some(p) = self.mig_in[to].iter().position(|&x| x == v) {
            self.mig_in[to].remove(p);
            if let Some(q) = self.c.hosts[to].vms.iter().position(|&x| x == v) {
                self.c.hosts[to].vms.remove(q);
                self.c.hosts[to].ram_used -= self.c.vms[v].ram_mb;
                self.c.hosts[to].bw_used -= self.c.vms[v].bw_mbps;
            }
            if self.c.vms[v].host.is_some() {
                self.c.vms[v].in_migration = false;
            }
        }
    }
}
