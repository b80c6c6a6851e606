//! Maintenance drain: empty a named host by a deadline, or say why it cannot be done.

use crate::overload::Detector;
use crate::placement::PlacementIndex;
use crate::state::Cluster;
use crate::{HostId, Migration, VmId};

/// A feasible drain: the migrations, in the order to run them, and when the last ends.
#[derive(Debug, Clone, PartialEq)]
pub struct DrainPlan {
    /// Migrations off the host, run one after another on its network link.
    pub migrations: Vec<Migration>,
    /// Estimated completion time of the last migration (same clock as `now`), s.
    pub done_at: f64,
}

/// Why a drain cannot meet its deadline.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DrainError {
    /// No other host can take this VM without overloading.
    #[error("no host can take VM {vm} ({demand_mips:.0} MIPS, {ram_mb:.0} MB) off host {host}")]
    NoCapacity {
        /// The drained host.
        host: HostId,
        /// The VM left without a destination.
        vm: VmId,
        /// Its CPU demand.
        demand_mips: f64,
        /// Its RAM.
        ram_mb: f64,
    },
    /// Moving every VM takes longer than the time left.
    #[error("draining host {host} needs {needed_s:.0} s but only {left_s:.0} s remain before the deadline")]
    TooSlow {
        /// The drained host.
        host: HostId,
        /// Time the migrations need.
        needed_s: f64,
        /// Time left before the deadline.
        left_s: f64,
    },
    /// The host index does not exist.
    #[error("host {0} does not exist")]
    NoSuchHost(HostId),
}

/// Plans the drain of `host` starting at `now` so that it is empty by `deadline`.
///
/// VMs are placed with PABFD under `det` (so the drain never overloads a target), largest
/// demand first; migration time is `migration_time(vm)` each, run sequentially. The host is
/// marked closed in `c` so nothing else is placed on it; the allocation is otherwise
/// unchanged on return.
pub fn plan(
    c: &mut Cluster,
    det: &Detector,
    host: HostId,
    now: f64,
    deadline: f64,
    migration_time: impl Fn(VmId) -> f64,
) -> Result<DrainPlan, DrainError> {
    if host >= c.hosts.len() {
        return Err(DrainError::NoSuchHost(host));
    }
    c.hosts[host].closed = true;
    let cp = c.checkpoint();
    let mut idx = PlacementIndex::for_detector(c, det);
    idx.exclude(host);
    let mut vms: Vec<VmId> = c.hosts[host]
        .vms
        .iter()
        .copied()
        .filter(|&v| !c.vms[v].in_migration)
        .collect();
    crate::placement::sort_by_demand_desc(c, &mut vms);
    let mut migrations = Vec::new();
    let mut t = now;
    let mut result = Ok(());
    for v in vms {
        let target = idx
            .find_host(c, det, v)
            .or_else(|| idx.find_host(c, &Detector::Thr(1.0), v));
        match target {
            Some(to) => {
                idx.place(c, to, v);
                migrations.push(Migration {
                    vm: v,
                    from: host,
                    to,
                });
                t += migration_time(v);
            }
            None => {
                result = Err(DrainError::NoCapacity {
                    host,
                    vm: v,
                    demand_mips: c.vms[v].demand_mips,
                    ram_mb: c.vms[v].ram_mb,
                });
                break;
            }
        }
    }
    c.restore(cp);
    result?;
    if t > deadline {
        return Err(DrainError::TooSlow {
            host,
            needed_s: t - now,
            left_s: deadline - now,
        });
    }
    Ok(DrainPlan {
        migrations,
        done_at: t,
    })
}
