//! How long a live migration takes, how long the guest pauses, and how many bytes it sends.
//!
//! * [`formula`]: the textbook pre-copy model (geometric rounds at a constant dirty rate).
//! * [`learned`]: a model fitted to the migrations a cluster actually ran (ridge least squares
//!   on a few engineered features per strategy), with its error on held-out migrations.
//!
//! Both take a [`MigrationInput`] and answer a [`Cost`]; the planner shows them side by side.

pub mod formula;
pub mod learned;

use serde::{Deserialize, Serialize};

/// What is known about a migration before it starts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MigrationInput {
    /// Guest RAM, bytes.
    pub ram_bytes: f64,
    /// Bytes the guest dirties per second.
    pub dirty_rate: f64,
    /// Bytes the guest keeps rewriting (what is left to send in the last round).
    pub working_set_bytes: f64,
    /// Link bandwidth, bytes per second.
    pub bandwidth: f64,
    /// Round-trip time, ms.
    pub rtt_ms: f64,
    /// Wire bytes per raw page byte (1: codecs gain nothing).
    pub codec_ratio: f64,
}

/// A predicted (or measured) cost.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// Total time, ms.
    pub total_ms: f64,
    /// Guest pause, ms.
    pub downtime_ms: f64,
    /// Bytes on the wire.
    pub bytes: f64,
}
