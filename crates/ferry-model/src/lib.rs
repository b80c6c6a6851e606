//! The migration engine's pure models and decisions: page bitmaps, statistics of a copy round,
//! the convergence rule (when pre-copy switches over, when it gives up for post-copy), which pages
//! are too hot to send in a live round, and how many channels a link needs.
//!
//! No KVM, no I/O, no threads: everything here builds and tests on any machine, and the simulator
//! (`ferry-sim`) uses the very same rules as the engine (`ferry-migrate`).

pub mod bitmap;
pub mod convergence;
pub mod cpu;
pub mod heat;
pub mod hotset;
pub mod parallelism;
pub mod walk;

use serde::{Deserialize, Serialize};

/// Statistics of one round of copying.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundStats {
    /// Round number (0 = the bulk copy of all RAM).
    pub round: u32,
    /// Pages sent in the round.
    pub pages: u64,
    /// Bytes put on the wire.
    pub bytes: u64,
    /// Wall time of the round in seconds.
    pub seconds: f64,
    /// Pages the guest dirtied while the round ran.
    pub dirtied: u64,
}

impl RoundStats {
    /// Wire throughput of the round in bytes/s.
    pub fn bandwidth(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// Rate at which the guest dirtied pages during the round, pages/s.
    pub fn dirty_rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.dirtied as f64 / self.seconds
        } else {
            0.0
        }
    }
}
