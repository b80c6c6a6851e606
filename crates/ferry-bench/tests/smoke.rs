//! One small scenario (128 MiB guest, a sequential writer over 16 MiB, one run) on both engines:
//! both must complete, the guest's own check must find every page it wrote intact on the
//! destination, and the numbers must agree with each other and with the run's own timestamps. Runs
//! whenever qemu-system-x86_64 and /dev/kvm are there; under CI=true their absence is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_bench::{run_suite, scenario, Engine, Outcome, SuiteConfig};

fn prerequisites() -> bool {
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !(qemu && kvm) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but qemu-system-x86_64 ({qemu}) or a usable /dev/kvm ({kvm}) is missing"
        );
        eprintln!("skipping: qemu-system-x86_64 found: {qemu}, /dev/kvm usable: {kvm}");
    }
    qemu && kvm
}

/// The ferry binary: $FERRY_BIN, else the newest `debug/ferry` in this test's target directory or the
/// workspace's `target/`, else one built now with `cargo build -p ferry` into a separate target
/// directory (the running `cargo test` holds the lock of its own).
fn ferry_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "FERRY_BIN={} is not a file", p.display());
        return p;
    }
    // current_exe = <target>/debug/deps/smoke-<hash>
    let exe = std::env::current_exe().expect("current_exe");
    let target = exe
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .expect("target directory");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let candidates = [
        target.join("debug/ferry"),
        workspace.join("target/debug/ferry"),
    ];
    let newest = candidates
        .iter()
        .filter_map(|p| Some((std::fs::metadata(p).ok()?.modified().ok()?, p)))
        .max_by_key(|(t, _)| *t);
    if let Some((_, p)) = newest {
        eprintln!("using {}", p.display());
        return p.clone();
    }
    let own = target.join("ferry-bench-smoke");
    eprintln!(
        "no ferry binary found; building one into {} (slow the first time)",
        own.display()
    );
    let status = Command::new(env!("CARGO"))
        .args(["build", "-p", "ferry", "--target-dir"])
        .arg(&own)
        .current_dir(&workspace)
        .status()
        .expect("cannot run cargo");
    assert!(status.success(), "cargo build -p ferry failed ({status})");
    let p = own.join("debug/ferry");
    assert!(p.is_file(), "cargo build -p ferry made no {}", p.display());
    p
}

#[test]
fn one_small_scenario_on_both_engines() {
    if !prerequisites() {
        return;
    }
    let ferry = ferry_binary();
    let t = Instant::now();
    let mut cfg = SuiteConfig::new(ferry);
    cfg.scenarios = vec![scenario::smoke()];
    cfg.repeat = 1;
    cfg.timeout = Duration::from_secs(10);
    // Generous: QEMU took over 10 s to boot while other builds kept the load average at 16.
    cfg.boot_timeout = Duration::from_secs(30);
    cfg.work_dir = std::env::temp_dir().join(format!("ferry-bench-smoke-{}", std::process::id()));
    let results = run_suite(&cfg).expect("suite");
    let _ = std::fs::remove_dir_all(&cfg.work_dir);
    print!("{}", ferry_bench::render_table(&results));
    let sc = &results[0];
    assert_eq!(sc.variants.len(), 2);
    let ws = sc.guest_spec.working_set;
    for engine in [Engine::Ferry, Engine::Qemu] {
        let v = sc.variants.iter().find(|v| v.engine == engine).unwrap();
        let r = &v.runs[0];
        assert_eq!(r.outcome, Outcome::Completed, "{engine}: {:?}", r.outcome);
        // The guest's own check, on the destination: every page it wrote is as it wrote it.
        let check = r
            .guest_check
            .unwrap_or_else(|| panic!("{engine}: the guest was not checked: {:?}", r.notes));
        assert!(check.on_destination, "{engine}: checked on the source");
        assert_eq!(
            check.pages,
            ws / 4096,
            "{engine}: the sweep covers the working set"
        );
        assert_eq!(
            (check.errors, check.loop_errors),
            (0, 0),
            "{engine}: the guest found bad pages"
        );
        if let Some(w) = check.written {
            assert_eq!(
                w,
                ws / 4096,
                "{engine}: a sequential writer has written every page"
            );
        }
        // The engine's own times, within the harness's window around the migration.
        let total = r.total_ms.unwrap();
        let down = r.engine_downtime_ms.unwrap();
        let window = r.window_ms.unwrap();
        assert!(
            total > 0.0 && total <= window + 5.0,
            "{engine}: total {total} ms outside the harness's window of {window} ms"
        );
        assert!(
            down > 0.0 && down <= total,
            "{engine}: downtime {down} ms, total {total} ms"
        );
        // The guest's progress: a finite largest gap, no larger than the stretch of progress bytes
        // it was measured over, which covers the whole migration; the switch-over gap is one of the
        // gaps, and the guest cannot have made progress while the engine had it paused.
        let gap = r.guest_gap_ms.unwrap();
        let span = r.progress_span_ms.unwrap();
        let switch = r.switch_over_gap_ms.unwrap();
        assert!(gap.is_finite() && gap > 0.0, "{engine}: gap {gap} ms");
        assert!(
            gap <= span,
            "{engine}: gap {gap} ms longer than its span {span} ms"
        );
        assert!(
            span >= total,
            "{engine}: progress measured over {span} ms, the migration took {total} ms"
        );
        assert!(
            switch <= gap,
            "{engine}: switch-over {switch} ms > largest {gap} ms"
        );
        assert!(
            switch + 2.0 >= down,
            "{engine}: the guest progressed during the engine's pause ({switch} ms gap, {down} ms down)"
        );
        assert!(
            r.progress_bytes.unwrap() >= 3,
            "{engine}: {:?} progress bytes",
            r.progress_bytes
        );
        assert_eq!(
            r.sequence_continues,
            Some(true),
            "{engine}: progress bytes lost"
        );
        // Every page of the working set crosses the wire at least once.
        let wire = r.wire_bytes.unwrap();
        assert!(
            wire >= ws,
            "{engine}: {wire} bytes on the wire, working set {ws}"
        );
        // The first pass over fresh RAM was measured and is a plausible speed.
        let fp = r.first_pass_mb_s.unwrap();
        assert!(
            (1.0..100_000.0).contains(&fp),
            "{engine}: first pass {fp} MB/s"
        );
        let cores = r.cpu_cores.unwrap();
        let n = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        assert!(
            cores > 0.0 && cores <= n + 0.5,
            "{engine}: the VM hosts got {cores} cores of {n}"
        );
        assert!(!r.host_memory_warmed, "the default is a cold host");
    }
    // About 15 s on an idle machine: a hang or a collapse shows, a busy machine does not.
    assert!(
        t.elapsed() < Duration::from_secs(90),
        "took {:?}",
        t.elapsed()
    );
}
