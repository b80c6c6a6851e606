//! Ferry vs QEMU (issue 7): the same guest, the same scenario, migrated by ferry and by QEMU on the
//! same machine, measured the same way, reported as ratios ferry/QEMU.
//!
//! For every run both engines get the same guest image (from `ferry-guest`), one vCPU, a destination
//! that is not pre-faulted, host memory warmed the same way just before the migration
//! ([`warm_host_memory`]), and loopback TCP, or for a scenario that asks for it a shaped link of the
//! network lab ([`netlab`]: source and destination in two network namespaces, the migration stream
//! through a delay proxy and a `tc tbf` veth). Measured for each:
//! - total migration time and downtime as the engine reports them (ferry: `total_ms`, `downtime_ms`
//!   of `ferry migrate --json`; QEMU: `query-migrate` `total-time`, `downtime`);
//! - guest-observed downtime: the largest gap between the guest's 1 ms COM1 heartbeats, source and
//!   destination merged. Both engines write COM1 into a FIFO that a harness thread reads and
//!   timestamps with the monotonic clock ([`tap`]), so the method is the same for both;
//! - bytes on the wire (ferry: `bytes_sent`; QEMU: `ram.transferred`);
//! - CPU time (utime + stime from /proc/PID/stat) of the source and destination processes over the
//!   migration, guest vCPU included (the guest runs on both engines alike).
//!
//! A pre-copy that does not converge within the timeout is cancelled and reported as such: that is a
//! result, not an error.

#![warn(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

pub mod ferry;
pub mod netlab;
pub mod plot;
pub mod procs;
pub mod qemu;
pub mod report;
pub mod scenario;
pub mod tap;

pub use netlab::LabNetwork;
pub use report::{markdown_section, render_table};
pub use scenario::{Engine, LabSpec, Method, Scenario, Variant};

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

/// The measurements of one run.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    /// How it ended.
    pub outcome: Outcome,
    /// Total migration time, ms (engine's own; for a cancelled run: until the cancel).
    pub total_ms: Option<f64>,
    /// Downtime as the engine reports it, ms.
    pub engine_downtime_ms: Option<f64>,
    /// Largest heartbeat gap seen by the harness over the migration, ms.
    pub guest_gap_ms: Option<f64>,
    /// Whether the heartbeat sequence continued without a lost beat.
    pub sequence_continues: Option<bool>,
    /// Bytes on the wire (engine's counter).
    pub wire_bytes: Option<u64>,
    /// CPU time of the source process during the migration, ms.
    pub source_cpu_ms: Option<f64>,
    /// CPU time of the destination process during the migration, ms.
    pub destination_cpu_ms: Option<f64>,
    /// Page writes per second the guest did during the warm-up (before the migration).
    pub guest_writes_per_s: Option<f64>,
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
            sequence_continues: None,
            wire_bytes: None,
            source_cpu_ms: None,
            destination_cpu_ms: None,
            guest_writes_per_s: None,
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
    /// One per repetition.
    pub runs: Vec<RunResult>,
}

/// All variants of one scenario.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioResult {
    /// Scenario id.
    pub id: String,
    /// Scenario title.
    pub title: String,
    /// The guest, described.
    pub guest: String,
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

/// What to run.
#[derive(Clone)]
pub struct SuiteConfig {
    /// The `ferry` binary.
    pub ferry: PathBuf,
    /// Scenarios, in order.
    pub scenarios: Vec<Scenario>,
    /// Runs per variant.
    pub repeat: u32,
    /// A pre-copy still running after this long is cancelled ("did not converge").
    pub timeout: Duration,
    /// Limit for a guest to boot (and fill its RAM).
    pub boot_timeout: Duration,
    /// Working directory (images, FIFOs, logs); created if missing.
    pub work_dir: PathBuf,
    /// Network between the two sides for every scenario (None: loopback, except that a scenario
    /// with a [`LabSpec`] gets a network lab of its own, named `lab_name`, for its runs).
    pub network: Option<Arc<dyn Network>>,
    /// Name (namespace prefix) of the network lab brought up for scenarios that need one.
    pub lab_name: String,
    /// Print progress to stderr.
    pub progress: bool,
}

impl SuiteConfig {
    /// All scenarios, 3 repeats, 30 s timeout, work directory under $TMPDIR.
    pub fn new(ferry: PathBuf) -> SuiteConfig {
        SuiteConfig {
            ferry,
            scenarios: scenario::all(),
            repeat: 3,
            timeout: Duration::from_secs(30),
            boot_timeout: Duration::from_secs(120),
            work_dir: std::env::temp_dir().join(format!("ferry-bench-{}", std::process::id())),
            network: None,
            lab_name: netlab::LAB_NAME.into(),
            progress: true,
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
    /// Warm-up before migrating.
    pub warmup: Duration,
    /// Network hook.
    pub network: Option<&'a dyn Network>,
}

impl RunCtx<'_> {
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

/// Waits until the guest has written its working set over, then returns its write rate.
///
/// A freshly booted guest first touches its working set, and on nested KVM every first touch of a
/// 4 KiB page is an expensive fault: an engine whose RAM has 2 MiB pages (QEMU's anonymous memory
/// with THP) gets through that phase far sooner than one with 4 KiB pages (ferry's memfd). Migrating
/// during it would compare a crawling guest with a running one. So both engines wait, at least
/// `min` and at most `max`, until the guest has made three writes per working-set page (random
/// writes then cover about 95% of it), and the rate is measured over the next 500 ms.
fn warm_rate(
    mut read: impl FnMut() -> Option<(Instant, u64)>,
    ws_pages: u64,
    min: Duration,
    max: Duration,
) -> Option<f64> {
    let start = Instant::now();
    std::thread::sleep(min);
    let first = read().map_or(0, |(_, i)| i);
    while read().is_some_and(|(_, i)| i < first + 3 * ws_pages) && start.elapsed() < max {
        std::thread::sleep(Duration::from_millis(100));
    }
    let a = read();
    std::thread::sleep(Duration::from_millis(500));
    rate(a, read())
}

/// Warms `bytes` of host memory just before a migration starts, the same for both engines: touches
/// that much fresh anonymous memory and frees it again.
///
/// These machines are nested VMs whose free memory is reported back to the outer host (virtio
/// balloon free-page reporting): a page freed a few seconds ago costs an outer-host fault on its next
/// first touch, one freed just now does not. A destination allocates its RAM during the migration,
/// so without this step the engine that ran right after another one's big free got warm pages and
/// the other cold ones (populating 1 GiB took 0.33 s warm, 1.8-2.7 s cold, measured here).
pub fn warm_host_memory(bytes: u64) {
    let Ok(len) = usize::try_from(bytes) else {
        return;
    };
    if len == 0 {
        return;
    }
    // SAFETY: a fresh private anonymous mapping owned here; nothing else refers to it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return;
    }
    // SAFETY: `p..p+len` is the mapping made above; populating and unmapping it touch nothing else.
    unsafe {
        libc::madvise(p, len, libc::MADV_NOHUGEPAGE);
        libc::madvise(p, len, libc::MADV_POPULATE_WRITE);
        libc::munmap(p, len);
    }
}

/// Working-set pages a guest must write over before measuring (0 for a guest that does not write).
fn warm_pages(g: &scenario::GuestSpec) -> u64 {
    if g.rate == Some(0) {
        0
    } else {
        g.working_set / 4096
    }
}

/// Page writes per second between two readings of the guest's `iterations` counter.
fn rate(a: Option<(Instant, u64)>, b: Option<(Instant, u64)>) -> Option<f64> {
    let ((ta, ia), (tb, ib)) = (a?, b?);
    let dt = (tb - ta).as_secs_f64();
    (dt > 0.0).then(|| ib.saturating_sub(ia) as f64 / dt)
}

/// Checks that QEMU, /dev/kvm and the ferry binary are there.
pub fn check_prerequisites(ferry: &Path) -> Result<String, BenchError> {
    let v = qemu::version()
        .ok_or_else(|| BenchError::Setup(format!("{} is not installed", qemu::QEMU)))?;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| BenchError::io("cannot open /dev/kvm", e))?;
    if !ferry.is_file() {
        return Err(BenchError::Setup(format!(
            "ferry binary {} not found (build it: cargo build -p ferry)",
            ferry.display()
        )));
    }
    Ok(v)
}

/// Runs one variant once.
pub fn run_variant(ctx: &RunCtx, v: &Variant) -> RunResult {
    let r = match &v.method {
        Method::Ferry(s) => ferry::run(ctx, s),
        Method::Qemu(s) => qemu::run(ctx, s),
        Method::NotApplicable(why) => Ok(RunResult::new(Outcome::NotApplicable(why.clone()))),
    };
    r.unwrap_or_else(|e| RunResult::new(Outcome::Failed(e.to_string())))
}

/// Runs the scenarios; a failed run is recorded in its result, only set-up problems are errors.
pub fn run_suite(cfg: &SuiteConfig) -> Result<Vec<ScenarioResult>, BenchError> {
    check_prerequisites(&cfg.ferry)?;
    std::fs::create_dir_all(&cfg.work_dir)
        .map_err(|e| BenchError::io(format!("cannot create {}", cfg.work_dir.display()), e))?;
    let mut out = vec![];
    for sc in &cfg.scenarios {
        let mut res = ScenarioResult {
            id: sc.id.clone(),
            title: sc.title.clone(),
            guest: sc.guest.describe(),
            skipped: sc.skip.clone(),
            network: None,
            reference: sc.reference,
            variants: sc
                .variants
                .iter()
                .map(|v| VariantResult {
                    label: v.label.clone(),
                    engine: v.engine,
                    settings: v.describe(),
                    runs: vec![],
                })
                .collect(),
        };
        if sc.skip.is_some() {
            out.push(res);
            continue;
        }
        // A scenario that asks for the network lab gets one for its runs (unless the caller gave a
        // network for all); dropping `lab` tears it down, also when a run fails or panics.
        let lab = match (&cfg.network, &sc.lab) {
            (None, Some(spec)) => {
                if cfg.progress {
                    eprintln!(
                        "[{}] network lab `{}`: {}",
                        sc.id,
                        cfg.lab_name,
                        spec.describe()
                    );
                }
                Some(LabNetwork::up(&cfg.lab_name, spec)?)
            }
            _ => None,
        };
        let network: Option<&dyn Network> = match &lab {
            Some(l) => Some(l),
            None => cfg.network.as_deref(),
        };
        res.network = network.map(|n| n.name());
        let dir = cfg.work_dir.join(format!("scenario-{}", sc.id));
        std::fs::create_dir_all(&dir)
            .map_err(|e| BenchError::io(format!("cannot create {}", dir.display()), e))?;
        let image = dir.join("guest.img");
        let bytes = ferry_guest::build_image(&sc.guest.config())
            .map_err(|e| BenchError::Setup(format!("cannot build the guest image: {e}")))?;
        std::fs::write(&image, bytes)
            .map_err(|e| BenchError::io(format!("cannot write {}", image.display()), e))?;
        let ctx = RunCtx {
            ferry: &cfg.ferry,
            image: &image,
            guest: &sc.guest,
            dir: &dir,
            timeout: cfg.timeout,
            boot_timeout: cfg.boot_timeout,
            warmup: Duration::from_secs_f64(sc.warmup_s),
            network,
        };
        // Repetitions outermost: engines alternate, so slow drift of the machine hits both.
        for rep in 0..cfg.repeat {
            for (i, v) in sc.variants.iter().enumerate() {
                let t = Instant::now();
                let r = run_variant(&ctx, v);
                if cfg.progress {
                    eprintln!(
                        "[{}] {} run {}/{}: {} (total {} ms, guest gap {} ms) in {:.1} s",
                        sc.id,
                        v.label,
                        rep + 1,
                        cfg.repeat,
                        r.outcome.short(),
                        r.total_ms.map_or("-".into(), |x| format!("{x:.0}")),
                        r.guest_gap_ms.map_or("-".into(), |x| format!("{x:.1}")),
                        t.elapsed().as_secs_f64()
                    );
                }
                res.variants[i].runs.push(r);
            }
        }
        let _ = std::fs::remove_file(&image);
        if let Some(l) = lab {
            l.down()?;
        }
        out.push(res);
    }
    Ok(out)
}

/// `ferry bench qemu`: the flags.
#[derive(clap::Args, Clone, Debug)]
pub struct BenchQemuArgs {
    /// The ferry binary to benchmark (default: the running executable).
    #[arg(long)]
    pub ferry: Option<PathBuf>,
    /// Scenarios to run (a, b, c, d, d-zero, e, f); default all.
    #[arg(long = "scenario", value_delimiter = ',')]
    pub scenarios: Vec<String>,
    /// Runs per engine configuration (median and min-max are reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: u32,
    /// Only the variants whose label contains one of these (e.g. "ferry auto", "QEMU"); default all.
    /// Ratios need a QEMU variant in the same scenario.
    #[arg(long = "variant", value_delimiter = ',')]
    pub variants: Vec<String>,
    /// Smaller guests (RAM and working sets / 4), 10 s timeout: a quick look, not for the record.
    #[arg(long)]
    pub quick: bool,
    /// Seconds a pre-copy may run before it is cancelled and reported as not converging.
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Also write the results as a Markdown section (with the command, QEMU version, date) here.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Also write SVG plots of time and downtime per scenario into this directory.
    #[arg(long)]
    pub plots: Option<PathBuf>,
    /// Also write all raw results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl BenchQemuArgs {
    /// The suite these flags describe.
    pub fn config(&self) -> Result<SuiteConfig, BenchError> {
        let ferry = match &self.ferry {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .map_err(|e| BenchError::io("cannot find the running executable", e))?,
        };
        let mut cfg = SuiteConfig::new(ferry);
        if !self.scenarios.is_empty() {
            let all = std::mem::take(&mut cfg.scenarios);
            for id in &self.scenarios {
                let sc = all.iter().find(|s| &s.id == id).ok_or_else(|| {
                    let ids: Vec<&str> = all.iter().map(|s| s.id.as_str()).collect();
                    BenchError::Setup(format!(
                        "unknown scenario '{id}' (known: {})",
                        ids.join(", ")
                    ))
                })?;
                cfg.scenarios.push(sc.clone());
            }
        }
        if !self.variants.is_empty() {
            for sc in &mut cfg.scenarios {
                sc.variants.retain(|v| {
                    self.variants
                        .iter()
                        .any(|want| v.label.contains(want.as_str()))
                });
            }
            cfg.scenarios.retain(|sc| !sc.variants.is_empty());
            if cfg.scenarios.is_empty() {
                return Err(BenchError::Setup(format!(
                    "no variant of the chosen scenarios matches {:?}",
                    self.variants
                )));
            }
        }
        if self.quick {
            cfg.timeout = Duration::from_secs(10);
            for sc in &mut cfg.scenarios {
                sc.guest = sc.guest.scaled(4);
                sc.warmup_s = sc.warmup_s.min(0.5);
            }
        }
        if let Some(t) = self.timeout {
            cfg.timeout = Duration::from_secs(t);
        }
        cfg.repeat = self.repeat.max(1);
        Ok(cfg)
    }
}

/// Runs `ferry bench qemu`: the suite, then the tables on stdout (and the optional files).
pub fn run_cli(args: &BenchQemuArgs) -> Result<(), BenchError> {
    let cfg = args.config()?;
    let version = check_prerequisites(&cfg.ferry)?;
    let results = run_suite(&cfg)?;
    let _ = std::fs::remove_dir_all(&cfg.work_dir);
    print!("{}", render_table(&results));
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    if let Some(p) = &args.markdown {
        let md = markdown_section(&results, &command, &version, &cfg);
        std::fs::write(p, md)
            .map_err(|e| BenchError::io(format!("cannot write {}", p.display()), e))?;
    }
    if let Some(p) = &args.json {
        let j = serde_json::to_string_pretty(&results)
            .map_err(|e| BenchError::Setup(format!("JSON: {e}")))?;
        std::fs::write(p, j)
            .map_err(|e| BenchError::io(format!("cannot write {}", p.display()), e))?;
    }
    if let Some(d) = &args.plots {
        plot::write_plots(&results, d)?;
    }
    Ok(())
}
