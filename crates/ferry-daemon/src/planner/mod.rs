//! The planner, run by the leader: the same ferry-cluster policies the simulator uses
//! (evacuation, maintenance drain with a deadline, load balancing, consolidation) over a view
//! built from the cluster store, a scheduler that turns the plan into migrations within
//! limits, and cost predictions per move (the pre-copy formula and the learned model).
//!
//! - [`decide`]: the plan, a plain function of the cluster's records;
//! - [`scheduler`]: which planned moves start now, and with what bandwidth;
//! - `run`: reading the store, starting migrations (each guarded by leadership), forwarding
//!   `plan` requests to the leader.

pub mod decide;
mod run;
pub mod scheduler;

use std::collections::BTreeMap;

use ferry_cost::learned::Model;
use ferry_cost::Cost;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Why a VM is moved; lower sorts first (evacuation first).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// Its host reports failure symptoms.
    Evacuate,
    /// Its host is drained for maintenance by a deadline.
    Drain,
    /// Load balancing.
    Balance,
    /// Consolidation (to empty hosts for power-off).
    Consolidate,
}

impl Reason {
    /// Whether the leader starts such moves by itself (others wait for `ferry plan --apply`).
    pub fn automatic(self) -> bool {
        matches!(self, Reason::Evacuate | Reason::Drain)
    }
}

/// A predicted cost, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Prediction {
    /// Total time, ms.
    pub total_ms: f64,
    /// Guest pause, ms.
    pub downtime_ms: f64,
    /// Bytes on the wire.
    pub bytes: f64,
}

impl From<Cost> for Prediction {
    fn from(c: Cost) -> Self {
        Prediction {
            total_ms: c.total_ms,
            downtime_ms: c.downtime_ms,
            bytes: c.bytes,
        }
    }
}

/// One planned migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlannedMove {
    /// The VM.
    pub vm: String,
    /// Its host now.
    pub from: String,
    /// Where it goes.
    pub to: String,
    /// Why.
    pub reason: Reason,
    /// The pre-copy formula's prediction.
    pub formula: Prediction,
    /// The learned model's prediction (absent until enough migrations were recorded).
    pub learned: Option<Prediction>,
}

/// What the planner would do now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Plan {
    /// Who planned (the leader).
    pub leader: String,
    /// Moves in priority order.
    pub moves: Vec<PlannedMove>,
    /// Hosts consolidation would empty and mark for power-off.
    pub power_off: Vec<String>,
    /// Why some things cannot be done (a drain that misses its deadline, a VM with no
    /// compatible host, ...).
    pub problems: Vec<String>,
    /// Migrations in flight now.
    pub in_flight: Vec<String>,
    /// Moves started by this request (`POST /v1/plan/apply`) or this round.
    pub started: Vec<String>,
    /// Time the decision took, ms.
    pub decision_ms: f64,
    /// Migrations the learned model was fitted on.
    pub model_samples: usize,
}

/// The leader's planner state.
#[derive(Default)]
pub struct PlannerState {
    /// The last plan.
    pub last: Option<Plan>,
    /// When each VM last moved by the planner's decision (ms since the epoch), and from where:
    /// no VM moves twice within the cooldown, nor back where it came from.
    pub recent: BTreeMap<String, (String, u64)>,
    /// Planned migrations started (id, vm): each exactly once.
    pub started: Vec<(String, String)>,
    /// The learned model and the sample count it was fitted on.
    pub model: Option<Model>,
}
