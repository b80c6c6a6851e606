//! What a migration tells the world: progress events while it runs, a report when it ends.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use ferry_model::RoundStats;

use crate::vm::GuestObserved;

/// How to move the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Pause, copy everything, resume on the destination.
    StopAndCopy,
    /// Copy while running, re-send dirtied pages in rounds, pause for the last few.
    Precopy,
    /// Resume on the destination at once; pages follow on demand and in the background.
    Postcopy,
    /// A few pre-copy rounds, then post-copy.
    Hybrid,
    /// Pick and adapt from measured dirty rate and bandwidth.
    Auto,
}

impl Strategy {
    /// Wire code (informational in the VmConfig frame).
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "stop-and-copy" | "stopcopy" => Strategy::StopAndCopy,
            "precopy" | "pre-copy" => Strategy::Precopy,
            "postcopy" | "post-copy" => Strategy::Postcopy,
            "hybrid" => Strategy::Hybrid,
            "auto" => Strategy::Auto,
            other => {
                return Err(format!("unknown strategy '{other}' (expected stop-and-copy, precopy, postcopy, hybrid or auto)"))
            }
        })
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::StopAndCopy => "stop-and-copy",
            Strategy::Precopy => "precopy",
            Strategy::Postcopy => "postcopy",
            Strategy::Hybrid => "hybrid",
            Strategy::Auto => "auto",
        })
    }
}

/// Where a migration is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Connecting and negotiating.
    Handshake,
    /// Copying RAM while the guest runs.
    LiveCopy,
    /// Guest paused; last pages and state in flight.
    SwitchOver,
    /// Guest runs on the destination; remaining pages follow.
    Postcopy,
    /// Checking the RAM digest.
    Verify,
    /// Finished.
    Done,
}

/// A progress event.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A new phase began.
    Phase {
        /// The phase.
        phase: Phase,
    },
    /// Copy progress within a round.
    Progress {
        /// Round number.
        round: u32,
        /// Pages of the round done.
        done: u64,
        /// Pages in the round.
        total: u64,
        /// Bytes sent so far in the migration.
        bytes: u64,
    },
    /// A round finished.
    Round(RoundStats),
    /// The engine changed a knob (strategy switch, throttle).
    Adapt {
        /// What changed, in words.
        what: String,
    },
}

/// The outcome of a migration, from the source's point of view.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// Strategy asked for.
    pub strategy: String,
    /// Strategy actually used at switch-over (auto resolves to one of the others).
    pub strategy_used: String,
    /// Guest RAM in bytes.
    pub ram_bytes: u64,
    /// Wall time from first connect to the destination running the VM, in ms.
    pub total_ms: f64,
    /// Guest paused, as the engine measured it (pause to the destination's Running), in ms.
    pub downtime_ms: f64,
    /// The pause as the guest saw it (heartbeat gap across hosts), if measured.
    pub guest_observed: Option<GuestObserved>,
    /// Largest heartbeat gap on the source while migrating (live rounds can stall the guest), ms.
    pub source_max_gap_ms: Option<f64>,
    /// Bytes on the wire (all channels, both directions, headers included).
    pub bytes_sent: u64,
    /// Pages sent (counting re-sends).
    pub pages_sent: u64,
    /// Wire throughput over the copy phases, MB/s.
    pub throughput_mbps: f64,
    /// Per-round statistics.
    pub rounds: Vec<RoundStats>,
    /// Channels used.
    pub channels: u16,
    /// Transport and its protection (TLS version and cipher suite, or plaintext).
    pub transport: String,
    /// RAM digest of the source at switch-over (hex).
    pub source_digest: String,
    /// Whether the destination's RAM digest matched the source's.
    pub digest_match: Option<bool>,
    /// Highest throttle applied (auto-converge), percent.
    pub max_throttle: u8,
    /// Pages the destination still lacked when it started running (post-copy).
    pub postcopy_pages: u64,
    /// Fault requests from the destination served during post-copy.
    pub postcopy_requests: u64,
    /// Time from the destination running to its last page arriving, in ms (post-copy).
    pub postcopy_ms: f64,
    /// Page sends skipped in live rounds because the guest rewrote those pages every round (each
    /// skip counted once per round; they went in a later round or the final one).
    #[serde(default)]
    pub held_back_pages: u64,
    /// Pages a guest walking its memory was left to write without a trap during the live copy
    /// (auto, ferry_model::hotset), sent in the pause or pushed after it; 0: every page tracked.
    #[serde(default)]
    pub hot_set_pages: u64,
    /// CPU the live rounds' copy threads got, in cores (their CPU time over the rounds' wall
    /// time): near their thread count on an idle host, their fair share on a busy one.
    #[serde(default)]
    pub live_copy_cpu_cores: f64,
    /// CPU time of the live rounds' copy threads, ms (with `live_copy_ms`, the rounds' wall time).
    #[serde(default)]
    pub live_copy_cpu_ms: f64,
    /// Wall time of the live rounds that ran copy threads, ms.
    #[serde(default)]
    pub live_copy_ms: f64,
    /// Round-trip time of the link, measured by the handshake, in ms.
    #[serde(default)]
    pub rtt_ms: f64,
    /// Post-copy committed without the Ready/Go exchange (a slow link: one round trip less of
    /// pause, see `postcopy::START_RUNS`).
    #[serde(default)]
    pub fast_commit: bool,
}
