//! clap definitions of `ferry sim`.

use crate::engine::HostAt;
use std::path::PathBuf;

/// Simulate a data centre running one of ferry's planner policies over a CPU trace.
///
/// By default it runs the literature's set-up: 800 hosts (half HP ProLiant ML110 G4, half
/// G5), one VM per trace line in four sizes, 5-minute scheduling, with realistic rules (RAM
/// and bandwidth checked on every placement, idle VMs kept, pre-copy migration times);
/// --cloudsim applies CloudSim 3.0.3's rules instead, for its reference results. It prints
/// energy, migrations, SLATAH, PDM, SLAV and ESV.
///
/// Examples:
///   ferry sim --policy lr-mmt-1.2 --trace 20110303
///   ferry sim --policy thr-mmt-0.8 --hosts 800 --trace 20110306 --out results --plot
///   ferry sim --synthetic --hosts 10000 --vms 50000 --days 7 --policy thr-mmt-0.8
///   ferry sim compare --trace 20110303 --cloudsim
///   ferry sim compare --all-days --policies lr-mmt-1.2,fc-mmt-1.0
#[derive(clap::Args, Debug, Clone)]
#[command(verbatim_doc_comment)]
pub struct SimArgs {
    /// Optional sub-command (without one, a single policy runs).
    #[command(subcommand)]
    pub command: Option<SimCommand>,

    /// Planner policy. npa | dvfs | DET-SEL[-PARAM] with DET one of thr (static threshold),
    /// iqr, mad (robust thresholds), lr, lrr (local regression), fc (ferry's forecast) and
    /// SEL one of mmt (minimum migration time), mc (maximum correlation), rs (random), mu
    /// (minimum utilisation); e.g. lr-mmt-1.2, thr-mmt-0.8, fc-mmt-1.0; or balance[-GAIN].
    #[arg(long, default_value = "lr-mmt-1.2", global = true)]
    pub policy: String,

    /// Number of physical hosts (host i is an ML110 G4 if i is even, a G5 if odd).
    #[arg(long, default_value_t = 800, global = true)]
    pub hosts: usize,

    /// Number of VMs (default: one per trace line; 1000 with --synthetic). VM i follows
    /// trace line i modulo the number of lines.
    #[arg(long, global = true)]
    pub vms: Option<usize>,

    /// PlanetLab day (e.g. 20110303) or path to a trace file (NAME<TAB>v1 v2 ... per line,
    /// integer percent every 5 minutes).
    #[arg(
        long,
        default_value = "20110303",
        global = true,
        value_name = "DAY-or-PATH"
    )]
    pub trace: String,

    /// Folder holding the PlanetLab day files. Default: ../shared/data/planetlab (from the
    /// working directory, then from the repository), then the small sample in the crate.
    #[arg(long, global = true, value_name = "DIR")]
    pub trace_dir: Option<PathBuf>,

    /// Use the seeded synthetic generator (daily wave, noise, bursts) instead of PlanetLab.
    #[arg(long, global = true)]
    pub synthetic: bool,

    /// Synthetic: mean VM utilisation (0..1).
    #[arg(long, default_value_t = 0.25, global = true, value_name = "FRACTION")]
    pub syn_mean: f64,

    /// Synthetic: amplitude of the daily wave (0..1).
    #[arg(long, default_value_t = 0.15, global = true, value_name = "FRACTION")]
    pub syn_diurnal: f64,

    /// Synthetic: noise level (0..1).
    #[arg(long, default_value_t = 0.08, global = true, value_name = "FRACTION")]
    pub syn_noise: f64,

    /// Synthetic: probability that a VM bursts in a given hour.
    #[arg(long, default_value_t = 0.02, global = true, value_name = "P")]
    pub syn_burst_prob: f64,

    /// Synthetic: extra utilisation during a burst (0..1).
    #[arg(long, default_value_t = 0.5, global = true, value_name = "FRACTION")]
    pub syn_burst: f64,

    /// Simulated days (a PlanetLab day repeats).
    #[arg(long, default_value_t = 1.0, global = true)]
    pub days: f64,

    /// Scheduling interval in seconds.
    #[arg(long, default_value_t = 300.0, global = true, value_name = "SECONDS")]
    pub interval: f64,

    /// Seed (synthetic trace, random VM selection).
    #[arg(long, default_value_t = 1, global = true)]
    pub seed: u64,

    /// Write metrics.csv, metrics.json (and intervals.csv for a single run) into DIR.
    #[arg(long, global = true, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Also draw plots (SVG and PNG, both with text) into --out (default ./ferry-sim-out):
    /// energy vs SLAV per policy; hosts, utilisation and migrations over time.
    #[arg(long, global = true)]
    pub plot: bool,

    /// Migration time model: precopy (rounds with a dirty rate; the default) or cloudsim
    /// (RAM / half the bandwidth; the default with --cloudsim). Bytes moved and downtime are
    /// always estimated with pre-copy.
    #[arg(long, value_enum, global = true)]
    pub migration: Option<MigrationArg>,

    /// Migrations one host's network link carries at once, each at that share of the
    /// bandwidth; more wait in line (default: no limit, every migration at full bandwidth).
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub link_slots: Option<u32>,

    /// Pre-copy: MB/s a VM dirties at 100 % CPU.
    #[arg(long, default_value_t = 20.0, global = true, value_name = "MB_PER_S")]
    pub dirty_rate: f64,

    /// Place VMs at start by their initial demand rather than their full size, so that more
    /// VMs than the hosts' total MIPS can run (needed for e.g. 10,000 hosts / 50,000 VMs).
    #[arg(long, global = true)]
    pub overcommit: bool,

    /// Split the data centre into this many independent pods (contiguous blocks of hosts
    /// and VMs), each with its own planner, run on --jobs threads and summed. 1 = one planner
    /// for everything (the literature's set-up).
    #[arg(long, default_value_t = 1, global = true)]
    pub pods: usize,

    /// Worker threads for pods and for `compare`.
    #[arg(long, default_value_t = 2, global = true)]
    pub jobs: usize,

    /// Reproduce CloudSim 3.0.3's rules, for its reference results: RAM and bandwidth checked
    /// only when a VM is created (never when it moves), a VM deleted for good the first time
    /// it requests 0 MIPS, migration time = RAM / half the bandwidth. Without it the
    /// simulator is realistic: RAM and bandwidth checked on every placement, idle VMs kept,
    /// pre-copy migration times.
    #[arg(long, global = true)]
    pub cloudsim: bool,

    /// With --cloudsim: still check host RAM when re-placing VMs.
    #[arg(long, global = true)]
    pub enforce_ram: bool,

    /// PABFD's host search: auto (the index from 2000 hosts up, the scan below), index
    /// (hosts filed by kind and utilisation) or scan (every host for every VM, the
    /// reference the index must agree with). All give the same results.
    #[arg(long, value_enum, default_value = "auto", global = true)]
    pub placement_search: SearchArg,

    /// With --cloudsim: keep VMs whose load drops to 0 % (CloudSim deletes them as
    /// completed; the realistic default keeps them anyway).
    #[arg(long, global = true)]
    pub keep_idle_vms: bool,

    /// Maintenance drain: empty host HOST by time SECONDS (repeatable), e.g. --drain 17@3600.
    #[arg(long, global = true, value_name = "HOST@SECONDS", value_parser = super::parse_host_at)]
    pub drain: Vec<HostAt>,

    /// Host failure: HOST dies at SECONDS and is evacuated when predicted (repeatable).
    #[arg(long, global = true, value_name = "HOST@SECONDS", value_parser = super::parse_host_at)]
    pub fail: Vec<HostAt>,

    /// How long before a failure it is predicted, seconds.
    #[arg(long, default_value_t = 1800.0, global = true, value_name = "SECONDS")]
    pub fail_warning: f64,
}

/// Sub-commands of `ferry sim`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum SimCommand {
    /// Run a grid of policies on the same set-up and print one table.
    Compare(CompareArgs),
    /// Run every policy and day twice, with PABFD's index and with the plain scan, and
    /// check that the two reports are identical (everything but the wall time).
    VerifyIndex(CompareArgs),
}

/// Flags of `ferry sim compare`.
#[derive(clap::Args, Debug, Clone)]
pub struct CompareArgs {
    /// Comma-separated policies (default: the published CloudSim set plus ferry's own).
    #[arg(long, value_delimiter = ',', default_values_t = ferry_cluster::policy::STANDARD_GRID.iter().map(|s| s.to_string()).collect::<Vec<_>>())]
    pub policies: Vec<String>,

    /// Run on every PlanetLab day found instead of --trace.
    #[arg(long)]
    pub all_days: bool,
}

/// PABFD's host search.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchArg {
    /// The index for large clusters, the scan for small ones.
    Auto,
    /// The index.
    Index,
    /// The plain scan.
    Scan,
}

/// Migration time model.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationArg {
    /// RAM / half the host bandwidth (CloudSim).
    Cloudsim,
    /// Pre-copy rounds with a dirty rate.
    Precopy,
}
