//! The `ferry` binary as a user meets it: the demo, and clear errors for bad input.

mod common;

use std::net::TcpListener;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use ferry_host::HostState;
use ferry_vmm::testing::require_kvm;

#[test]
fn demo_migrates_and_reports_integrity_ok() {
    if !require_kvm() {
        return;
    }
    let o = run(&["demo", "--memory", "256M", "--ws", "64M", "--warmup", "0.3"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "demo failed:\n{out}\n{}", stderr(&o));
    for field in [
        "downtime (engine)",
        "downtime (guest)",
        "bytes on the wire",
        "total time",
        "RAM digest",
    ] {
        assert!(out.contains(field), "report lacks '{field}':\n{out}");
    }
    assert!(out.contains("integrity           OK"), "{out}");
    assert!(out.contains("heartbeat sequence continues"), "{out}");
}

#[test]
fn missing_image_is_one_clear_error() {
    let t = Tmp::new();
    let o = run(&[
        "vm",
        "run",
        "--kernel",
        "/nonexistent/img.bin",
        "--control",
        &t.arg("a.sock"),
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("cannot read kernel image /nonexistent/img.bin"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "one line: {e}");
}

#[test]
fn garbage_image_is_refused() {
    if !require_kvm() {
        return;
    }
    let t = Tmp::new();
    let img = t.path("garbage.img");
    std::fs::write(&img, vec![0x5a; 20000]).unwrap();
    let o = run(&[
        "vm",
        "run",
        "--kernel",
        &img.to_string_lossy(),
        "--memory",
        "64M",
        "--control",
        &t.arg("b.sock"),
        "--insecure",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no multiboot v1 header"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn port_in_use_is_reported() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let t = Tmp::new();
    let o = run(&[
        "vm",
        "receive",
        "--listen",
        &addr,
        "--control",
        &t.arg("c.sock"),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&format!("cannot listen on {addr}")),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_flags_are_explained() {
    let o = run(&[
        "migrate",
        "--vm",
        "x.sock",
        "--to",
        "h:1",
        "--strategy",
        "teleport",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("unknown strategy 'teleport'"),
        "{}",
        stderr(&o)
    );
    let o = run(&["guest", "build", "--memory", "lots", "-o", "/dev/null"]);
    assert!(stderr(&o).contains("is not a size"), "{}", stderr(&o));
}

#[test]
fn migrating_to_a_dead_destination_keeps_the_vm_running() {
    if !require_kvm() {
        return;
    }
    let t = Tmp::new();
    let img = t.path("small.img");
    let b = run(&[
        "guest",
        "build",
        "--memory",
        "64M",
        "--ws",
        "8M",
        "-o",
        &img.to_string_lossy(),
    ]);
    assert!(b.status.success(), "{}", stderr(&b));
    let sock = t.path("src.sock");
    let _src = Killed(
        ferry()
            .args([
                "vm",
                "run",
                "--kernel",
                &img.to_string_lossy(),
                "--memory",
                "64M",
                "--control",
                &sock.to_string_lossy(),
                "--insecure",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    while iterations(&sock) == 0 {
        assert!(t.elapsed() < Duration::from_secs(30), "guest did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string(); // bound, then dropped
    let o = run(&[
        "migrate",
        "--vm",
        &sock.to_string_lossy(),
        "--to",
        &closed,
        "--strategy",
        "precopy",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("cannot connect to the destination"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("still runs on the source"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        o.status.code(),
        Some(4),
        "exit code 4: the VM is still on the source"
    );
    assert_still_running(&sock);
}

#[test]
fn migrations_need_certificates_or_an_explicit_insecure() {
    let t = Tmp::new();
    let o = run(&[
        "vm",
        "receive",
        "--listen",
        "127.0.0.1:0",
        "--control",
        &t.arg("d.sock"),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("need TLS certificates"),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "vm",
        "receive",
        "--listen",
        "127.0.0.1:0",
        "--certs",
        "/nonexistent",
        "--name",
        "x",
    ]);
    assert!(
        stderr(&o).contains("cannot load the TLS identity x"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn certs_commands_create_a_ca_and_host_certificates() {
    let t = Tmp::new();
    let d = t.path("certs-cmd");
    let ds = d.to_string_lossy().into_owned();
    assert!(run(&["certs", "init", "--dir", &ds]).status.success());
    let o = run(&["certs", "issue", "hostb", "--san", "10.0.0.2", "--dir", &ds]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(d.join("hostb.pem").exists() && d.join("hostb.key").exists());
    let again = run(&["certs", "init", "--dir", &ds]);
    assert!(
        !again.status.success(),
        "an existing CA must not be overwritten"
    );
}

/// The operator flow: the CA stays on the operator's machine, each host gets a bundle with only
/// its own key; revocation goes into a list the hosts read.
#[test]
fn certs_issue_host_bundles_and_revoke() {
    use std::os::unix::fs::PermissionsExt;
    let t = Tmp::new();
    let ca = t.arg("ca");
    assert!(run(&["certs", "init", "--dir", &ca]).status.success());
    let bundle = t.path("hostb-bundle");
    let o = run(&[
        "certs",
        "issue",
        "hostb",
        "--san",
        "10.0.0.2",
        "--dir",
        &ca,
        "--bundle",
        &bundle.to_string_lossy(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let serial = out
        .split("serial ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("no serial printed: {out}"))
        .to_string();
    let mut files: Vec<String> = std::fs::read_dir(&bundle)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["ca.pem", "hostb.key", "hostb.pem"], "{out}");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&bundle), 0o700);
    assert_eq!(mode(&bundle.join("hostb.key")), 0o600);
    assert!(!t.path("ca").join("hostb.key").exists());

    let r = run(&["certs", "revoke", "--serial", &serial, "--dir", &ca]);
    assert!(r.status.success(), "{}", stderr(&r));
    let r = run(&["certs", "revoke", "hostc", "--dir", &ca]);
    assert!(r.status.success(), "{}", stderr(&r));
    let list = std::fs::read_to_string(t.path("ca").join("revoked.txt")).unwrap();
    assert_eq!(list, format!("serial:{serial}\nname:hostc\n"));
    let bad = run(&["certs", "revoke", "--serial", "xyz", "--dir", &ca]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("hex"), "{}", stderr(&bad));
    // A host refuses to start on a revocation list it cannot read or parse.
    std::fs::write(t.path("broken.txt"), "hostb\n").unwrap();
    let o = run(&[
        "vm",
        "receive",
        "--listen",
        "127.0.0.1:0",
        "--certs",
        &bundle.to_string_lossy(),
        "--name",
        "hostb",
        "--revoked",
        &t.arg("broken.txt"),
        "--control",
        &t.arg("r.sock"),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("revocation list"), "{}", stderr(&o));
}

#[test]
fn allow_names_are_checked_at_startup() {
    let t = Tmp::new();
    let o = run(&[
        "vm",
        "receive",
        "--listen",
        "127.0.0.1:0",
        "--insecure",
        "--allow",
        "hosta;rm -rf",
        "--control",
        &t.arg("a.sock"),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--allow 'hosta;rm -rf' is not a DNS name or an IP address"),
        "{}",
        stderr(&o)
    );
}

/// A slow (bandwidth-limited) migration can be inspected, re-limited and cancelled from the CLI;
/// after the cancel the VM runs on at the source.
#[test]
fn a_running_migration_can_be_limited_and_cancelled() {
    if !require_kvm() {
        return;
    }
    let t = Tmp::new();
    let img = t.path("cancel.img");
    let b = run(&[
        "guest",
        "build",
        "--memory",
        "128M",
        "--ws",
        "64M",
        "--fill",
        "--rate",
        "0",
        "-o",
        &img.to_string_lossy(),
    ]);
    assert!(b.status.success(), "{}", stderr(&b));
    let (src_sock, dst_sock) = (t.path("cancel-src.sock"), t.path("cancel-dst.sock"));
    let mut dst = Killed(
        ferry()
            .args([
                "vm",
                "receive",
                "--listen",
                "127.0.0.1:0",
                "--insecure",
                "--control",
                &dst_sock.to_string_lossy(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(dst.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    let _src = Killed(
        ferry()
            .args([
                "vm",
                "run",
                "--kernel",
                &img.to_string_lossy(),
                "--memory",
                "128M",
                "--insecure",
                "--control",
                &src_sock.to_string_lossy(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    while iterations(&src_sock) < 16384 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "guest did not fill its working set"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // 64 MiB of random data at 4 MB/s: about 16 s unless something intervenes.
    let mig = ferry()
        .args([
            "migrate",
            "--vm",
            &src_sock.to_string_lossy(),
            "--to",
            &addr,
            "--strategy",
            "stop-and-copy",
        ])
        .args(["--compression", "off", "--max-bandwidth", "4M", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let st = run(&["vm", "status", "--control", &src_sock.to_string_lossy()]);
    let out = String::from_utf8_lossy(&st.stdout).into_owned();
    assert!(
        out.contains("\"state\": \"migrating\""),
        "status during a migration: {out}"
    );
    let during = status(&src_sock).unwrap();
    assert_eq!(during.state, Some(HostState::Migrating));
    assert_eq!(during.migration.unwrap().max_bandwidth, 4 << 20);
    let bw = run(&[
        "vm",
        "bandwidth",
        "--control",
        &src_sock.to_string_lossy(),
        "2M",
    ]);
    assert!(
        String::from_utf8_lossy(&bw.stdout).contains(&(2u64 << 20).to_string()),
        "{}",
        stderr(&bw)
    );
    let c = run(&["vm", "cancel", "--control", &src_sock.to_string_lossy()]);
    assert!(c.status.success(), "{}", stderr(&c));
    let o = mig.wait_with_output().unwrap();
    assert!(!o.status.success(), "the migration must fail as cancelled");
    assert!(stderr(&o).contains("cancelled"), "{}", stderr(&o));
    assert_eq!(
        o.status.code(),
        Some(4),
        "exit code 4: the VM is still on the source"
    );
    // The VM is still here, running (a stop-and-copy pause, if it began, was undone).
    assert_still_running(&src_sock);
    drop(dst);
}

#[test]
fn same_host_demo_hands_the_ram_over_without_copying() {
    if !require_kvm() {
        return;
    }
    let o = run(&[
        "demo",
        "--same-host",
        "--memory",
        "256M",
        "--ws",
        "32M",
        "--warmup",
        "0.3",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "demo failed:\n{out}\n{}", stderr(&o));
    assert!(out.contains("used: fd-handover"), "{out}");
    assert!(out.contains("integrity           OK"), "{out}");
}

/// Output lines of a child's stderr, collected on a thread (`ferry vm run` keeps running).
fn collect_stderr(child: &mut std::process::Child) -> std::sync::Arc<std::sync::Mutex<String>> {
    use std::io::{BufRead, BufReader};
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let err = child.stderr.take().unwrap();
    let sink = text.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let mut t = sink.lock().unwrap();
            t.push_str(&line);
            t.push('\n');
        }
    });
    text
}

#[test]
fn same_host_migration_of_anonymous_ram_copies_it_and_says_so() {
    if !require_kvm() {
        return;
    }
    let t = Tmp::new();
    let img = t.path("guest.img");
    let b = run(&[
        "guest",
        "build",
        "--memory",
        "64M",
        "--ws",
        "8M",
        "-o",
        &img.to_string_lossy(),
    ]);
    assert!(b.status.success(), "{}", stderr(&b));
    let (src_sock, dst_sock, mig_sock) = (
        t.path("src.sock"),
        t.path("dst.sock"),
        t.path("migrate.sock"),
    );
    let listen = format!("unix:{}", mig_sock.display());
    let mut dst = Killed(
        ferry()
            .args(["vm", "receive", "--once", "--listen", &listen, "--control"])
            .arg(&dst_sock)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let dst_err = collect_stderr(&mut dst.0);
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(dst.0.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(first.starts_with("listening on unix:"), "{first}");
    let mut src = Killed(
        ferry()
            .args([
                "vm",
                "run",
                "--memory",
                "64M",
                "--ram-backing",
                "anon",
                "--kernel",
            ])
            .arg(&img)
            .arg("--control")
            .arg(&src_sock)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let src_err = collect_stderr(&mut src.0);
    wait_iterations(&src_sock, 1, Duration::from_secs(30));
    assert_eq!(
        status(&src_sock).unwrap().vm.unwrap().ram_backing,
        Some(ferry_host::RamBacking::AnonThp)
    );
    let said = src_err.lock().unwrap().clone();
    assert!(said.contains("ferry: guest RAM: anonymous"), "{said}");
    assert!(said.contains("copies it over the socket"), "{said}");

    let o = run(&[
        "migrate",
        "--vm",
        &src_sock.to_string_lossy(),
        "--to",
        &listen,
        "--strategy",
        "precopy",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_ne!(report["strategy_used"], "fd-handover", "{report}");
    assert!(
        report["transport"]
            .as_str()
            .unwrap()
            .contains("guest RAM copied: anonymous RAM has no file to hand over"),
        "{report}"
    );
    assert_eq!(report["digest_match"], true, "{report}");
    assert!(report["pages_sent"].as_u64().unwrap() > 0, "{report}");
    // The guest runs on at the destination.
    let before = iterations(&dst_sock);
    wait_iterations(&dst_sock, before + 1, Duration::from_secs(10));
    assert!(
        dst_err.lock().unwrap().contains("ferry: guest RAM: "),
        "{}",
        dst_err.lock().unwrap()
    );
    drop((src, dst));
}
