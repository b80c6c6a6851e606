//! Ferry's cluster planner.
//!
//! Every decision is a plain function over a [`state::Cluster`] view (hosts, VMs, their
//! current demand and utilisation history), so the same code runs inside the data-centre
//! simulator (`ferry-sim`) and inside the real cluster manager.
//!
//! * [`overload`]: host overload detection (THR, IQR, MAD, LR, LRR, ferry's forecast).
//! * [`selection`]: which VM leaves an overloaded host (MMT, MC, RS, MU).
//! * [`placement`]: power-aware best-fit decreasing (PABFD) and first fit.
//! * [`consolidation`]: the full CloudSim-style optimisation round (overload relief, then
//!   underload consolidation).
//! * [`balance`], [`drain`], [`evacuate`], [`forecast`]: ferry's own policies.
//! * [`policy`]: parsing of policy names such as `lr-mmt-1.2`.

pub mod balance;
pub mod consolidation;
pub mod drain;
pub mod evacuate;
pub mod forecast;
pub mod overload;
pub mod placement;
pub mod policy;
pub mod power;
pub mod selection;
pub mod state;
pub mod stats;

/// Index of a host in a [`state::Cluster`].
pub type HostId = usize;
/// Index of a VM in a [`state::Cluster`].
pub type VmId = usize;

/// One planned live migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Migration {
    /// The VM to move.
    pub vm: VmId,
    /// The host it runs on when the plan is made.
    pub from: HostId,
    /// The host it must move to.
    pub to: HostId,
}
