//! Ferry vs QEMU (issues 7 and 12): the same guest, the same scenario, migrated by ferry and by
//! QEMU on the same machine, measured the same way from outside, reported side by side.
//!
//! For every run both engines get the same guest image (from `ferry-guest`), one vCPU, a destination
//! that is not pre-faulted, a cold host (no warm-up of host memory unless asked for:
//! [`SuiteConfig::warm_host`]), and loopback TCP, or for a scenario that asks for it a shaped link of
//! the network lab ([`netlab`]: source and destination in two network namespaces, the migration
//! stream through a delay proxy and a `tc tbf` veth). A busy-host scenario keeps every core busy
//! with plain busy loops ([`load`]) for the whole run. Measured for each:
//! - total migration time and downtime as the engine reports them (ferry: `total_ms`, `downtime_ms`
//!   of `ferry migrate --json`; QEMU: `query-migrate` `total-time`, `downtime`);
//! - the guest's progress: its progress bytes (one per N pages written, `--heartbeat pages:N`) of
//!   source and destination merged; the largest gap between two of them over the migration (a pause
//!   or a slowdown, whatever its cause), the gap across the switch-over, and how fast the guest wrote
//!   its first pass over fresh RAM. Both engines write COM1 into a FIFO that a harness thread reads
//!   and timestamps with the monotonic clock ([`tap`]), so the method is the same for both;
//! - bytes on the wire (ferry: `bytes_sent`; QEMU: `ram.transferred`);
//! - CPU time (utime + stime from /proc/PID/stat) of the source and destination processes over the
//!   migration, guest vCPU included (the guest runs on both engines alike), and the share of the
//!   machine's CPUs that makes;
//! - the guest's own check of every page it wrote, on the host where it runs after the migration.
//!
//! A pre-copy that does not converge within the timeout is cancelled and reported as such: that is a
//! result, not an error.

#![warn(missing_docs)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;

pub mod cli;
pub mod ferry;
mod gdb;
pub mod load;
pub mod netlab;
pub mod plot;
pub mod procs;
pub mod qemu;
pub mod record;
pub mod report;
pub mod scenario;
pub mod suite;
pub mod tap;

pub use cli::{run_cli, BenchQemuArgs};
pub use netlab::LabNetwork;
pub use report::{markdown_section, render_table};
pub use scenario::{Engine, HostLoad, LabSpec, Method, Scenario, Variant};
pub use suite::{check_prerequisites, run_suite, run_variant, warm_host_memory, SuiteConfig};
use suite::{warm_pages, warm_rate};

/// Errors of the harness (a migration that fails or does not converge is a result, not an error).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// An OS-level operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Something needed is missing or did not start.
    #[error("{0}")]
    Setup(String),
    /// QMP said no.
    #[error("QMP: {0}")]
    Qmp(String),
    /// A ferry process misbehaved.
    #[error("ferry: {0}")]
    Ferry(String),
}

impl BenchError {
    fn io(what: impl Into<String>, source: std::io::Error) -> BenchError {
        BenchError::Io {
            what: what.into(),
            source,
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Outcome {
    /// Migrated; the guest runs on the destination.
    Completed,
    /// Pre-copy still going after the timeout: cancelled, the guest stays on the source.
    DidNotConverge {
        /// The timeout, seconds.
        after_s: f64,
    },
    /// The migration or the harness failed.
    Failed(String),
    /// The engine cannot do this (yet).
    NotApplicable(String),
}

impl Outcome {
    /// Short text for tables.
    pub fn short(&self) -> String {
        match self {
            Outcome::Completed => "completed".into(),
            Outcome::DidNotConverge { after_s } => format!("did not converge in {after_s:.0} s"),
            Outcome::Failed(e) => format!("failed: {e}"),
            Outcome::NotApplicable(why) => format!("n/a ({why})"),
        }
    }
}

/// The guest's own check of its pages, after the migration, where it runs then.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GuestCheck {
    /// Working-set pages the sweep went over.
    pub pages: u64,
    /// Of those, pages written at least once (the ones it can check); None where the host does not
    /// report it (ferry's control socket).
    pub written: Option<u64>,
    /// Pages whose content did not match the guest's own records.
    pub errors: u64,
    /// Mismatches the write loop itself found over the guest's whole life.
    pub loop_errors: u64,
    /// Checked on the destination (else on the source: the migration did not complete).
    pub on_destination: bool,
}

impl GuestCheck {
    /// Whether every page the guest wrote is as it wrote it.
    pub fn ok(&self) -> bool {
        self.errors == 0 && self.loop_errors == 0 && self.pages > 0
    }
}

/// The measurements of one run.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    /// How it ended.
    pub outcome: Outcome,
    /// Total migration time, ms (engine's own; for a cancelled run: until the cancel).
    pub total_ms: Option<f64>,
    /// Downtime as the engine reports it, ms.
    pub engine_downtime_ms: Option<f64>,
    /// Largest gap between the guest's progress bytes over the migration (source and destination
    /// merged, from the last byte before it started to the first one on the host where the guest
    /// runs after it), ms.
    pub guest_gap_ms: Option<f64>,
    /// Where that gap was: "on the source", "at the switch-over", "on the destination".
    pub guest_gap_where: Option<String>,
    /// Gap from the source's last progress byte to the destination's first, ms.
    pub switch_over_gap_ms: Option<f64>,
    /// From the first progress byte counted (the last one before the migration) to the last, ms:
    /// the largest gap cannot exceed it.
    pub progress_span_ms: Option<f64>,
    /// Progress bytes counted.
    pub progress_bytes: Option<usize>,
    /// Whether the progress bytes' sequence continued without a lost one (None: dots, no sequence).
    pub sequence_continues: Option<bool>,
    /// Bytes on the wire (engine's counter).
    pub wire_bytes: Option<u64>,
    /// The harness's own clock from the migrate command to the end being seen, ms.
    pub window_ms: Option<f64>,
    /// CPU time of the source process during the migration, ms.
    pub source_cpu_ms: Option<f64>,
    /// CPU time of the destination process during the migration, ms.
    pub destination_cpu_ms: Option<f64>,
    /// CPU the two VM hosts got over the migration, in cores (CPU time over the window).
    pub cpu_cores: Option<f64>,
    /// CPU the busy loops of a busy-host scenario got over the migration, in cores.
    pub hogs_cpu_cores: Option<f64>,
    /// Page writes per second the guest did during the warm-up (before the migration), from its
    /// mailbox.
    pub guest_writes_per_s: Option<f64>,
    /// How fast the guest wrote its first pass over fresh RAM (its first working set's worth of
    /// page writes, from its progress bytes), MB/s (10^6 bytes).
    pub first_pass_mb_s: Option<f64>,
    /// How fast it wrote in the second before the migration, MB/s.
    pub before_mb_s: Option<f64>,
    /// The guest's own check after the migration.
    pub guest_check: Option<GuestCheck>,
    /// Whether host memory was warmed just before the migration (default: cold).
    pub host_memory_warmed: bool,
    /// Strategy the engine ended up using (ferry's `strategy_used`).
    pub strategy_used: Option<String>,
    /// The guest's dirty rate as the engine measured it, pages/s (QEMU: `dirty-pages-rate`; ferry:
    /// pages dirtied over the live rounds / their time).
    pub engine_dirty_pages_per_s: Option<f64>,
    /// The engine's own report, unchanged (ferry: `ferry migrate --json`; QEMU: the last
    /// `query-migrate`), for whoever needs a field the harness does not pick out.
    pub engine_report: serde_json::Value,
    /// Engine-specific remarks (rounds, throttle, ...).
    pub notes: Vec<String>,
}

impl RunResult {
    /// An empty result with this outcome.
    pub fn new(outcome: Outcome) -> RunResult {
        RunResult {
            outcome,
            total_ms: None,
            engine_downtime_ms: None,
            guest_gap_ms: None,
            guest_gap_where: None,
            switch_over_gap_ms: None,
            progress_span_ms: None,
            progress_bytes: None,
            sequence_continues: None,
            wire_bytes: None,
            window_ms: None,
            source_cpu_ms: None,
            destination_cpu_ms: None,
            cpu_cores: None,
            hogs_cpu_cores: None,
            guest_writes_per_s: None,
            first_pass_mb_s: None,
            before_mb_s: None,
            guest_check: None,
            host_memory_warmed: false,
            strategy_used: None,
            engine_dirty_pages_per_s: None,
            engine_report: serde_json::Value::Null,
            notes: vec![],
        }
    }
}

/// All runs of one variant.
#[derive(Clone, Debug, Serialize)]
pub struct VariantResult {
    /// The variant's label.
    pub label: String,
    /// Engine.
    pub engine: Engine,
    /// Its settings, described.
    pub settings: String,
    /// The variant's settings as data.
    pub method: Method,
    /// Index of the ferry variant this row is compared with (QEMU rows).
    pub compare_with: Option<usize>,
    /// One per repetition.
    pub runs: Vec<RunResult>,
}

/// All variants of one scenario with one writer.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioResult {
    /// Scenario id.
    pub id: String,
    /// Scenario title.
    pub title: String,
    /// The guest, described.
    pub guest: String,
    /// The guest as data.
    pub guest_spec: scenario::GuestSpec,
    /// The writer: "sequential", "random", "mixed" or "idle".
    pub writer: String,
    /// What else ran on the host.
    pub load: HostLoad,
    /// Why it was not run.
    pub skipped: Option<String>,
    /// The network between the two sides, described (None: loopback).
    pub network: Option<String>,
    /// Index of the ferry variant that QEMU rows are compared with.
    pub reference: usize,
    /// Per variant.
    pub variants: Vec<VariantResult>,
}

/// Which end of a migration a process belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The source: `ferry vm run` and `ferry migrate`, the source QEMU.
    Source,
    /// The destination: `ferry vm receive`, the `-incoming` QEMU.
    Destination,
}

/// The address the source sends to, and whatever must stay alive while it is used (e.g. a proxy):
/// keep the `Route` until the migration is over.
pub struct Route {
    /// host:port for the source (`ferry migrate --to`, QEMU `migrate tcp:...`).
    pub addr: String,
    _keep: Option<Box<dyn Send>>,
}

impl Route {
    /// A route that is just an address.
    pub fn direct(addr: impl Into<String>) -> Route {
        Route {
            addr: addr.into(),
            _keep: None,
        }
    }

    /// A route through something (a proxy) that works only while `keep` lives.
    pub fn through(addr: impl Into<String>, keep: impl Send + 'static) -> Route {
        Route {
            addr: addr.into(),
            _keep: Some(Box::new(keep)),
        }
    }
}

/// A network between source and destination other than plain loopback (scenario f runs on the
/// network lab, [`LabNetwork`]). Processes of each side start behind [`Network::prefix`] (e.g.
/// `ip netns exec NS`), the destination listens on [`Network::listen_host`], and the source sends to
/// [`Network::route`] of that address so that the traffic crosses the shaped path. Control sockets,
/// QMP sockets and the serial FIFOs are files, so the harness reaches them from anywhere.
pub trait Network: Send + Sync {
    /// Name for reports.
    fn name(&self) -> String;
    /// Program and arguments to run a command of `side` under (empty: run it as it is).
    fn prefix(&self, side: Side) -> Vec<String> {
        let _ = side;
        vec![]
    }
    /// The host (IP address) the destination listens on.
    fn listen_host(&self) -> String {
        "127.0.0.1".into()
    }
    /// The route the source sends to, given where the destination listens (host:port).
    fn route(&self, listen: &str) -> Result<Route, BenchError>;
}

/// `program` run under `prefix` (as `prefix[0] prefix[1..] program`), or as it is.
pub fn prefixed_command(prefix: &[String], program: impl AsRef<std::ffi::OsStr>) -> Command {
    match prefix.split_first() {
        None => Command::new(program),
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
    }
}

/// Everything one run needs.
pub struct RunCtx<'a> {
    /// The ferry binary.
    pub ferry: &'a Path,
    /// The guest image.
    pub image: &'a Path,
    /// The guest.
    pub guest: &'a scenario::GuestSpec,
    /// Directory for this run's FIFOs, sockets and logs.
    pub dir: &'a Path,
    /// Pre-copy timeout.
    pub timeout: Duration,
    /// Boot timeout.
    pub boot_timeout: Duration,
    /// Warm-up before migrating (the guest's: it runs at least this long, and until it has written
    /// its working set over three times).
    pub warmup: Duration,
    /// Warm host memory just before the migration ([`warm_host_memory`]); off by default.
    pub warm_host: bool,
    /// Busy loops running on the host (busy-host scenario).
    pub load: Option<&'a load::Hogs>,
    /// Network hook.
    pub network: Option<&'a dyn Network>,
}

impl RunCtx<'_> {
    /// Warms host memory if asked to ([`RunCtx::warm_host`]); call just before the migration.
    fn before_migration(&self) {
        if self.warm_host {
            warm_host_memory(self.guest.memory);
        }
    }

    /// CPU time of the busy loops so far, ms (None without any).
    fn load_cpu_ms(&self) -> Option<f64> {
        self.load.and_then(load::Hogs::cpu_ms)
    }
    /// A command running `program` on `side` (inside its namespace on the network lab).
    fn command(&self, side: Side, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let prefix = self.network.map(|n| n.prefix(side)).unwrap_or_default();
        prefixed_command(&prefix, program)
    }

    /// The host the destination listens on.
    fn listen_host(&self) -> String {
        self.network
            .map_or_else(|| "127.0.0.1".to_string(), |n| n.listen_host())
    }

    /// Where the source sends to reach `listen`; keep the route for the migration.
    fn route(&self, listen: &str) -> Result<Route, BenchError> {
        match self.network {
            Some(n) => n.route(listen),
            None => Ok(Route::direct(listen)),
        }
    }
}

/// Fills in what the progress bytes say about a run: the gaps over the migration window `t0..end`
/// (source `src`, destination `dst`), the guest's first pass, its speed before `t0`, and the CPU
/// share the VM hosts got over `t0..t1`.
pub(crate) fn analyse(
    r: &mut RunResult,
    ctx: &RunCtx,
    (src, dst): (&[tap::Stamped], &[tap::Stamped]),
    (t0, t1, end): (Instant, Instant, Instant),
) {
    let beat = ctx.guest.heartbeat;
    if let Some(g) = tap::guest_gap(beat, src, dst, t0, end) {
        r.guest_gap_ms = Some(ms(g.max_gap));
        r.guest_gap_where = Some(g.largest_between.describe().into());
        r.switch_over_gap_ms = g.switch_over_gap.map(ms);
        r.progress_span_ms = Some(ms(g.span));
        r.progress_bytes = Some(g.heartbeats);
        r.sequence_continues = g.sequence_continues;
        r.notes.push(g.note());
    }
    r.first_pass_mb_s = tap::first_pass(beat, src, ctx.guest.ws_pages()).map(|s| s.mb_per_s());
    if ctx.guest.writes() {
        r.before_mb_s =
            tap::speed_before(beat, src, t0, Duration::from_secs(1)).map(|s| s.mb_per_s());
    }
    let window = t1.saturating_duration_since(t0);
    r.window_ms = Some(ms(window));
    let secs = window.as_secs_f64();
    if secs > 0.0 {
        if let (Some(a), Some(b)) = (r.source_cpu_ms, r.destination_cpu_ms) {
            r.cpu_cores = Some((a + b) / 1e3 / secs);
        }
    }
    r.host_memory_warmed = ctx.warm_host;
}

/// A duration in milliseconds.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
