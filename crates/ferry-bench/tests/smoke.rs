//! One small scenario (128 MiB guest, 16 MiB working set, one run) on both engines: both must
//! complete with sane numbers. Runs whenever qemu-system-x86_64 and /dev/kvm are there; under CI=true
//! their absence is a failure.

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
    cfg.boot_timeout = Duration::from_secs(10);
    cfg.work_dir = std::env::temp_dir().join(format!("ferry-bench-smoke-{}", std::process::id()));
    let results = run_suite(&cfg).expect("suite");
    let _ = std::fs::remove_dir_all(&cfg.work_dir);
    print!("{}", ferry_bench::render_table(&results));
    let sc = &results[0];
    assert_eq!(sc.variants.len(), 2);
    for engine in [Engine::Ferry, Engine::Qemu] {
        let v = sc.variants.iter().find(|v| v.engine == engine).unwrap();
        let r = &v.runs[0];
        assert_eq!(r.outcome, Outcome::Completed, "{engine}: {:?}", r.outcome);
        let total = r.total_ms.unwrap();
        let down = r.engine_downtime_ms.unwrap();
        let gap = r.guest_gap_ms.unwrap();
        assert!(
            total > 0.0 && total < 20_000.0,
            "{engine}: total {total} ms"
        );
        assert!(
            (0.0..=total + 1.0).contains(&down),
            "{engine}: downtime {down} ms"
        );
        // Engine-independent lower bound: 0 (a gap is never negative).
        assert!(
            (0.0..20_000.0).contains(&gap),
            "{engine}: guest gap {gap} ms"
        );
        assert_eq!(
            r.sequence_continues,
            Some(true),
            "{engine}: heartbeats lost"
        );
        let wire = r.wire_bytes.unwrap();
        assert!(wire > 1 << 20, "{engine}: only {wire} bytes on the wire");
        assert!(r.source_cpu_ms.unwrap() >= 0.0 && r.destination_cpu_ms.unwrap() >= 0.0);
    }
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t.elapsed()
    );
}
