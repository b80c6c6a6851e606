//! The plain PABFD scan: every active host, then the first fitting untouched idle host of
//! each kind. This is the search the simulator used before the index, kept as the reference
//! the index must agree with.

use crate::state::Cluster;
use crate::{HostId, VmId};

/// Active hosts in index order, and idle hosts grouped by hardware (idle hosts of one kind
/// are interchangeable for PABFD, so only the first one that fits needs looking at).
#[derive(Debug, Clone, Default)]
pub(super) struct ScanIndex {
    active: Vec<HostId>,
    idle_groups: Vec<Vec<HostId>>,
}

impl ScanIndex {
    pub(super) fn new(c: &Cluster) -> Self {
        let mut idx = ScanIndex::default();
        let mut keys: Vec<(usize, u64, u64)> = Vec::new();
        for (h, host) in c.hosts.iter().enumerate() {
            if host.measured_mips != 0.0 {
                idx.active.push(h);
                continue;
            }
            let key = (
                host.power,
                host.total_mips.to_bits(),
                host.pe_mips.to_bits(),
            );
            match keys.iter().position(|k| *k == key) {
                Some(g) => idx.idle_groups[g].push(h),
                None => {
                    keys.push(key);
                    idx.idle_groups.push(vec![h]);
                }
            }
        }
        idx
    }

    /// Offers every candidate host for `vm` to `consider`.
    pub(super) fn search(
        &self,
        c: &Cluster,
        vm: VmId,
        excluded: &[bool],
        consider: &mut impl FnMut(HostId) -> super::Best,
    ) {
        for &h in &self.active {
            if !excluded[h] && c.is_suitable(h, vm) {
                consider(h);
            }
        }
        for group in &self.idle_groups {
            // Untouched idle hosts of one kind all cost the same: only the first suitable one
            // matters. Idle hosts that received VMs this round are looked at one by one.
            let mut untouched_seen = false;
            for &h in group {
                if excluded[h] {
                    continue;
                }
                let fresh = !c.hosts[h].vms.is_empty();
                if (!fresh && untouched_seen) || !c.is_suitable(h, vm) {
                    continue;
                }
                untouched_seen |= !fresh;
                consider(h);
            }
        }
    }
}
