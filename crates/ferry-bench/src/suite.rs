//! Running the suite: scenarios, the writers of each, repetitions with the engines alternating.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::scenario::{self, HostLoad, Scenario};
use crate::{
    ferry, load, netlab, qemu, BenchError, LabNetwork, Method, Network, Outcome, RunCtx, RunResult,
    ScenarioResult, Variant, VariantResult,
};

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
    /// with a [`crate::LabSpec`] gets a network lab of its own, named `lab_name`, for its runs).
    pub network: Option<Arc<dyn Network>>,
    /// Name (namespace prefix) of the network lab brought up for scenarios that need one.
    pub lab_name: String,
    /// Warm host memory just before every migration ([`warm_host_memory`]). Off by default: users'
    /// hosts are cold, and a warmed one hides what a destination's first touch of its RAM costs.
    pub warm_host: bool,
    /// Print progress to stderr.
    pub progress: bool,
}

impl SuiteConfig {
    /// The baseline scenarios of issue 12, 3 repeats, 30 s timeout, cold host, work directory
    /// under $TMPDIR.
    pub fn new(ferry: PathBuf) -> SuiteConfig {
        SuiteConfig {
            ferry,
            scenarios: scenario::all().into_iter().filter(|s| s.baseline).collect(),
            repeat: 3,
            timeout: Duration::from_secs(30),
            boot_timeout: Duration::from_secs(120),
            work_dir: std::env::temp_dir().join(format!("ferry-bench-{}", std::process::id())),
            network: None,
            lab_name: netlab::LAB_NAME.into(),
            warm_host: false,
            progress: true,
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
pub(crate) fn warm_rate(
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
pub(crate) fn warm_pages(g: &scenario::GuestSpec) -> u64 {
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

/// The order of the variants in repetition `rep`: as listed, reversed every other repetition, so
/// that neither engine always runs first (the variants of a scenario alternate between engines).
pub fn order(variants: usize, rep: u32) -> Vec<usize> {
    if rep.is_multiple_of(2) {
        (0..variants).collect()
    } else {
        (0..variants).rev().collect()
    }
}

/// Runs one variant once on `ctx`'s host, with the busy loops a busy-host scenario asks for
/// running from before the guests boot until they are gone.
fn run_loaded(ctx: &RunCtx, load: HostLoad, v: &Variant) -> RunResult {
    match load {
        HostLoad::Idle => run_variant(ctx, v),
        HostLoad::Busy { hogs } => match load::Hogs::start(hogs) {
            Ok(h) => {
                let ctx = RunCtx {
                    load: Some(&h),
                    ..*ctx
                };
                let mut r = run_variant(&ctx, v);
                if let Some(nice) = h.nice() {
                    r.notes.push(format!("{hogs} busy loops at nice {nice}"));
                }
                r
            }
            Err(e) => RunResult::new(Outcome::Failed(e.to_string())),
        },
    }
}

/// Runs the scenarios (each with each of its writers); a failed run is recorded in its result,
/// only set-up problems are errors.
pub fn run_suite(cfg: &SuiteConfig) -> Result<Vec<ScenarioResult>, BenchError> {
    check_prerequisites(&cfg.ferry)?;
    std::fs::create_dir_all(&cfg.work_dir)
        .map_err(|e| BenchError::io(format!("cannot create {}", cfg.work_dir.display()), e))?;
    let mut out = vec![];
    for sc in &cfg.scenarios {
        // A scenario that asks for the network lab gets one for its runs (unless the caller gave a
        // network for all); dropping `lab` tears it down, also when a run fails or panics.
        let lab = match (&cfg.network, &sc.lab, &sc.skip) {
            (None, Some(spec), None) => {
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
        for guest in sc.guests() {
            let mut res = ScenarioResult {
                id: sc.id.clone(),
                title: sc.title.clone(),
                guest: guest.describe(),
                guest_spec: guest.clone(),
                writer: guest.writer(),
                load: sc.load,
                skipped: sc.skip.clone(),
                network: network.map(|n| n.name()),
                reference: sc.reference,
                variants: sc
                    .variants
                    .iter()
                    .map(|v| VariantResult {
                        label: v.label.clone(),
                        engine: v.engine,
                        settings: v.describe(),
                        method: v.method.clone(),
                        compare_with: v.compare_with,
                        runs: vec![],
                    })
                    .collect(),
            };
            if sc.skip.is_some() {
                out.push(res);
                continue;
            }
            let dir = cfg
                .work_dir
                .join(format!("scenario-{}-{}", sc.id, guest.writer()));
            std::fs::create_dir_all(&dir)
                .map_err(|e| BenchError::io(format!("cannot create {}", dir.display()), e))?;
            let image = dir.join("guest.img");
            let bytes = ferry_guest::build_image(&guest.config())
                .map_err(|e| BenchError::Setup(format!("cannot build the guest image: {e}")))?;
            std::fs::write(&image, bytes)
                .map_err(|e| BenchError::io(format!("cannot write {}", image.display()), e))?;
            let ctx = RunCtx {
                ferry: &cfg.ferry,
                image: &image,
                guest: &guest,
                dir: &dir,
                timeout: cfg.timeout,
                boot_timeout: cfg.boot_timeout,
                warmup: Duration::from_secs_f64(sc.warmup_s),
                warm_host: cfg.warm_host,
                load: None,
                network,
            };
            // Repetitions outermost: engines alternate, so slow drift of the machine hits both.
            for rep in 0..cfg.repeat {
                for i in order(sc.variants.len(), rep) {
                    let v = &sc.variants[i];
                    let t = Instant::now();
                    let r = run_loaded(&ctx, sc.load, v);
                    if cfg.progress {
                        eprintln!(
                            "[{} {}] {} run {}/{}: {} (total {} ms, largest progress gap {} ms, \
                             switch-over {} ms) in {:.1} s",
                            sc.id,
                            guest.writer(),
                            v.label,
                            rep + 1,
                            cfg.repeat,
                            r.outcome.short(),
                            r.total_ms.map_or("-".into(), |x| format!("{x:.0}")),
                            r.guest_gap_ms.map_or("-".into(), |x| format!("{x:.1}")),
                            r.switch_over_gap_ms
                                .map_or("-".into(), |x| format!("{x:.1}")),
                            t.elapsed().as_secs_f64()
                        );
                    }
                    res.variants[i].runs.push(r);
                }
            }
            let _ = std::fs::remove_file(&image);
            out.push(res);
        }
        if let Some(l) = lab {
            l.down()?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_alternate_and_the_order_flips() {
        assert_eq!(order(3, 0), vec![0, 1, 2]);
        assert_eq!(order(3, 1), vec![2, 1, 0]);
        assert_eq!(order(3, 2), vec![0, 1, 2]);
        assert!(order(0, 1).is_empty());
    }

    #[test]
    fn the_default_suite_is_the_baseline_on_a_cold_host() {
        let cfg = SuiteConfig::new(PathBuf::from("/bin/true"));
        let ids: Vec<&str> = cfg.scenarios.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["b", "c", "c-busy", "d", "e"]);
        assert!(!cfg.warm_host);
        assert_eq!(cfg.repeat, 3);
    }

    #[test]
    fn write_rate_between_readings() {
        let t = Instant::now();
        let later = t + Duration::from_millis(500);
        assert_eq!(rate(Some((t, 100)), Some((later, 600))), Some(1000.0));
        assert_eq!(rate(Some((t, 100)), Some((t, 600))), None);
        assert_eq!(rate(None, Some((later, 1))), None);
    }
}
