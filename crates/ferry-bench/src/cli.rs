//! `ferry bench qemu`: the flags, and what a run writes (tables on stdout, Markdown, JSON, plots).

use std::path::PathBuf;
use std::time::Duration;

use ferry_guest::{Heartbeat, Pattern};

use crate::scenario::{self, Scenario};
use crate::{
    check_prerequisites, plot, record, render_table, report, run_suite, BenchError, SuiteConfig,
};

/// `ferry bench qemu`: the flags.
#[derive(clap::Args, Clone, Debug)]
pub struct BenchQemuArgs {
    /// The ferry binary to benchmark (default: the running executable).
    #[arg(long)]
    pub ferry: Option<PathBuf>,
    /// Scenarios to run: b, c, c-busy, d, e (the baseline of issue 12, the default), a, c-more,
    /// d-zero, f, ram (guest RAM backings: first pass over fresh RAM), or `all`.
    #[arg(long = "scenario", value_delimiter = ',')]
    pub scenarios: Vec<String>,
    /// Writers to run the writing scenarios with (sequential, random, mixed, hotcold); default: each
    /// scenario's own (sequential and random; c adds mixed). Idle guests (d, d-zero) have none.
    #[arg(long = "pattern", value_delimiter = ',')]
    pub patterns: Vec<Pattern>,
    /// Runs per engine configuration (median and min-max are reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: u32,
    /// Only the variants whose label contains one of these (e.g. "ferry auto", "QEMU"); default all.
    /// Ratios need a QEMU variant in the same scenario.
    #[arg(long = "variant", value_delimiter = ',')]
    pub variants: Vec<String>,
    /// What the guests write to COM1 (default pages:1024, a progress byte per 1024 pages written;
    /// dots:N imitates a guest from outside the project; time:US is the old time-driven heartbeat,
    /// which hides slow writes).
    #[arg(long)]
    pub heartbeat: Option<Heartbeat>,
    /// Warm host memory just before every migration (touch and free as much as the guest has), as
    /// the bench did before issue 12: reported as such. Default: a cold host, as users have it.
    #[arg(long)]
    pub warm_host: bool,
    /// Smaller guests (RAM and working sets / 4), 10 s timeout: a quick look, not for the record.
    #[arg(long)]
    pub quick: bool,
    /// Seconds a pre-copy may run before it is cancelled and reported as not converging.
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Also write the results as a Markdown section (with the command, QEMU version, date) here.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Also write SVG plots of time and the largest progress gap per scenario into this directory.
    #[arg(long)]
    pub plots: Option<PathBuf>,
    /// Also write all results as JSON here: one flat record per run (`runs`, for tools) and the
    /// nested results (`scenarios`).
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
        cfg.scenarios = select(&self.scenarios)?;
        if !self.variants.is_empty() {
            for sc in &mut cfg.scenarios {
                sc.retain_variants(|v| {
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
        for sc in &mut cfg.scenarios {
            if !self.patterns.is_empty() {
                sc.patterns = self.patterns.clone();
            }
            if let Some(h) = self.heartbeat {
                sc.guest.heartbeat = h;
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
        cfg.warm_host = self.warm_host;
        cfg.repeat = self.repeat.max(1);
        Ok(cfg)
    }
}

/// The scenarios named by `ids` (empty: the baseline; `all`: every one), in the order given.
fn select(ids: &[String]) -> Result<Vec<Scenario>, BenchError> {
    let all = scenario::all();
    if ids.is_empty() {
        return Ok(all.into_iter().filter(|s| s.baseline).collect());
    }
    if ids.iter().any(|i| i == "all") {
        return Ok(all);
    }
    ids.iter()
        .map(|id| {
            all.iter().find(|s| &s.id == id).cloned().ok_or_else(|| {
                let known: Vec<&str> = all.iter().map(|s| s.id.as_str()).collect();
                BenchError::Setup(format!(
                    "unknown scenario '{id}' (known: {}, all)",
                    known.join(", ")
                ))
            })
        })
        .collect()
}

/// Runs `ferry bench qemu`: the suite, then the tables on stdout (and the optional files).
pub fn run_cli(args: &BenchQemuArgs) -> Result<(), BenchError> {
    let cfg = args.config()?;
    let version = check_prerequisites(&cfg.ferry)?;
    let load_before = report::load_average();
    let results = run_suite(&cfg)?;
    let load_after = report::load_average();
    let _ = std::fs::remove_dir_all(&cfg.work_dir);
    print!("{}", render_table(&results));
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let meta = record::Meta::new(&command, &version, &cfg, [load_before, load_after]);
    if let Some(p) = &args.markdown {
        let md = report::markdown_section(&results, &meta);
        std::fs::write(p, md)
            .map_err(|e| BenchError::io(format!("cannot write {}", p.display()), e))?;
    }
    if let Some(p) = &args.json {
        let j = serde_json::to_string_pretty(&record::document(&results, &meta))
            .map_err(|e| BenchError::Setup(format!("JSON: {e}")))?;
        std::fs::write(p, j)
            .map_err(|e| BenchError::io(format!("cannot write {}", p.display()), e))?;
    }
    if let Some(d) = &args.plots {
        plot::write_plots(&results, d)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchQemuArgs,
    }

    fn config(args: &[&str]) -> Result<SuiteConfig, BenchError> {
        let mut argv = vec!["bench", "--ferry", "/bin/true"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap().args.config()
    }

    #[test]
    fn one_scenario_one_writer_one_variant() {
        let cfg = config(&[
            "--scenario",
            "c",
            "--pattern",
            "sequential",
            "--variant",
            "ferry auto",
        ])
        .unwrap();
        assert_eq!(cfg.scenarios.len(), 1);
        let c = &cfg.scenarios[0];
        assert_eq!(c.patterns, [Pattern::Sequential]);
        assert_eq!(c.variants.len(), 1);
        assert_eq!(c.variants[0].label, "ferry auto (default)");
        assert!(!cfg.warm_host);
    }

    #[test]
    fn defaults_and_errors() {
        let cfg = config(&[]).unwrap();
        let ids: Vec<&str> = cfg.scenarios.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["b", "c", "c-busy", "d", "e"]);
        assert_eq!(config(&["--scenario", "all"]).unwrap().scenarios.len(), 10);
        let err = |args: &[&str]| config(args).err().expect("an error").to_string();
        let e = err(&["--scenario", "z"]);
        assert!(e.contains("unknown scenario 'z'"), "{e}");
        let e = err(&["--variant", "nothing"]);
        assert!(e.contains("no variant"), "{e}");
        let cfg = config(&["--warm-host", "--heartbeat", "dots:512", "--quick"]).unwrap();
        assert!(cfg.warm_host);
        assert!(cfg
            .scenarios
            .iter()
            .all(|s| s.guest.heartbeat == Heartbeat::Dots { every: 512 }));
        assert!(Cli::try_parse_from(["bench", "--pattern", "zigzag"]).is_err());
    }
}
