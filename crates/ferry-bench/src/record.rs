//! Machine-readable results: one flat record per run with everything a model needs (RAM, working
//! set, writer, dirty rate, bandwidth, strategy, total time, pauses, bytes), plus how the whole run
//! was made. `ferry bench qemu --json FILE` writes [`document`].

use serde::Serialize;

use crate::scenario::{Engine, HostLoad, Method};
use crate::{report, RunResult, ScenarioResult, SuiteConfig};

/// How, where and when the suite ran.
#[derive(Clone, Debug, Serialize)]
pub struct Meta {
    /// The command line.
    pub command: String,
    /// Date (UTC).
    pub date: String,
    /// `qemu-system-x86_64 --version`.
    pub qemu: String,
    /// CPU model.
    pub cpu: String,
    /// Cores the machine has.
    pub cores: usize,
    /// `/proc/loadavg`'s 1, 5 and 15 minute load averages before and after the suite.
    pub load_average: [Option<[f64; 3]>; 2],
    /// Whether host memory was warmed before each migration ("warm") or not ("cold").
    pub host_memory: &'static str,
    /// Runs per variant.
    pub repeat: u32,
    /// Pre-copy timeout, seconds.
    pub timeout_s: u64,
}

impl Meta {
    /// The meta data of a suite run with `command`.
    pub fn new(
        command: &str,
        qemu: &str,
        cfg: &SuiteConfig,
        load_average: [Option<[f64; 3]>; 2],
    ) -> Meta {
        Meta {
            command: command.into(),
            date: report::today(),
            qemu: qemu.into(),
            cpu: report::cpu_model(),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            load_average,
            host_memory: if cfg.warm_host { "warm" } else { "cold" },
            repeat: cfg.repeat,
            timeout_s: cfg.timeout.as_secs(),
        }
    }
}

/// One run, flat.
#[derive(Clone, Debug, Serialize)]
pub struct RunRecord {
    /// Scenario id ("c").
    pub scenario: String,
    /// The writer: "sequential", "random", "mixed", "hotcold" or "idle".
    pub pattern: String,
    /// Variant label ("ferry auto (default)").
    pub variant: String,
    /// Engine.
    pub engine: Engine,
    /// Strategy asked for: ferry's `--strategy`; for QEMU "precopy" or "postcopy".
    pub strategy: String,
    /// Strategy used in the end (ferry's auto resolves to one).
    pub strategy_used: Option<String>,
    /// Repetition (0-based).
    pub repetition: usize,
    /// Guest RAM, bytes.
    pub ram_bytes: u64,
    /// Working set, bytes.
    pub working_set_bytes: u64,
    /// Page writes per second the guest is paced at (None: as fast as it can; 0: idle).
    pub guest_rate_limit_pages_s: Option<u64>,
    /// Page writes per second the guest did just before the migration (its mailbox).
    pub guest_writes_per_s: Option<f64>,
    /// The same as bytes/s of pages written (a page write dirties one 4 KiB page; a random writer
    /// rewrites some pages before they are sent, so fewer distinct pages get dirty).
    pub guest_write_bytes_s: Option<f64>,
    /// The dirty rate the engine measured, pages/s.
    pub engine_dirty_pages_s: Option<f64>,
    /// Bandwidth limit of the migration, bytes/s (None: unlimited).
    pub bandwidth_limit_bytes_s: Option<u64>,
    /// Link between the hosts (None: loopback).
    pub network: Option<String>,
    /// Bytes on the wire over the total time, bytes/s.
    pub throughput_bytes_s: Option<f64>,
    /// Host load: idle or busy loops.
    pub host_load: HostLoad,
    /// CPU the two VM hosts got over the migration, in cores.
    pub cpu_cores: Option<f64>,
    /// CPU the busy loops got, in cores.
    pub hogs_cpu_cores: Option<f64>,
    /// Whether host memory was warmed just before the migration.
    pub host_memory_warmed: bool,
    /// "completed", "did not converge in 30 s", "failed: ...".
    pub outcome: String,
    /// Total migration time, ms (engine's).
    pub total_ms: Option<f64>,
    /// Downtime, ms (engine's).
    pub downtime_ms: Option<f64>,
    /// Largest gap in the guest's progress over the migration, ms.
    pub largest_progress_gap_ms: Option<f64>,
    /// Where it was ("on the source", "at the switch-over", "on the destination").
    pub largest_progress_gap_where: Option<String>,
    /// Gap in the guest's progress across the switch-over, ms.
    pub switch_over_gap_ms: Option<f64>,
    /// Bytes on the wire.
    pub wire_bytes: Option<u64>,
    /// The guest's first pass over fresh RAM, MB/s.
    pub first_pass_mb_s: Option<f64>,
    /// The guest's write speed in the second before the migration, MB/s.
    pub before_mb_s: Option<f64>,
    /// The guest's own check after the migration found every page right.
    pub guest_check_ok: Option<bool>,
    /// The whole measured run (every field the harness has, the engine's own report included).
    pub raw: RunResult,
}

/// What `--json` writes.
#[derive(Clone, Debug, Serialize)]
pub struct Document<'a> {
    /// How the suite ran.
    pub meta: &'a Meta,
    /// One record per run.
    pub runs: Vec<RunRecord>,
    /// The results as the tables group them.
    pub scenarios: &'a [ScenarioResult],
}

/// Flattens `results` into one record per run.
pub fn records(results: &[ScenarioResult]) -> Vec<RunRecord> {
    let mut out = vec![];
    for sc in results {
        let g = &sc.guest_spec;
        for v in &sc.variants {
            let (strategy, limit) = match &v.method {
                Method::Ferry(f) => (f.strategy.clone(), None),
                Method::Qemu(q) => (
                    if q.postcopy { "postcopy" } else { "precopy" }.to_string(),
                    // QEMU 7.2's default is 128 MiB/s; the bench's "unlimited" is far above loopback.
                    Some(q.max_bandwidth.unwrap_or(128 << 20))
                        .filter(|&b| b < crate::scenario::QEMU_UNLIMITED_BW),
                ),
                Method::NotApplicable(_) => ("n/a".into(), None),
            };
            for (i, r) in v.runs.iter().enumerate() {
                out.push(RunRecord {
                    scenario: sc.id.clone(),
                    pattern: sc.writer.clone(),
                    variant: v.label.clone(),
                    engine: v.engine,
                    strategy: strategy.clone(),
                    strategy_used: r.strategy_used.clone(),
                    repetition: i,
                    ram_bytes: g.memory,
                    working_set_bytes: g.working_set,
                    guest_rate_limit_pages_s: g.rate,
                    guest_writes_per_s: r.guest_writes_per_s,
                    guest_write_bytes_s: r.guest_writes_per_s.map(|w| w * 4096.0),
                    engine_dirty_pages_s: r.engine_dirty_pages_per_s,
                    bandwidth_limit_bytes_s: limit,
                    network: sc.network.clone(),
                    throughput_bytes_s: r
                        .wire_bytes
                        .zip(r.total_ms)
                        .filter(|&(_, t)| t > 0.0)
                        .map(|(b, t)| b as f64 / (t / 1e3)),
                    host_load: sc.load,
                    cpu_cores: r.cpu_cores,
                    hogs_cpu_cores: r.hogs_cpu_cores,
                    host_memory_warmed: r.host_memory_warmed,
                    outcome: r.outcome.short(),
                    total_ms: r.total_ms,
                    downtime_ms: r.engine_downtime_ms,
                    largest_progress_gap_ms: r.guest_gap_ms,
                    largest_progress_gap_where: r.guest_gap_where.clone(),
                    switch_over_gap_ms: r.switch_over_gap_ms,
                    wire_bytes: r.wire_bytes,
                    first_pass_mb_s: r.first_pass_mb_s,
                    before_mb_s: r.before_mb_s,
                    guest_check_ok: r.guest_check.map(|c| c.ok()),
                    raw: r.clone(),
                });
            }
        }
    }
    out
}

/// The JSON document of a suite run.
pub fn document<'a>(results: &'a [ScenarioResult], meta: &'a Meta) -> Document<'a> {
    Document {
        meta,
        runs: records(results),
        scenarios: results,
    }
}
