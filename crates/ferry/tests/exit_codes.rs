//! `ferry migrate`'s exit codes and messages, provoked one cause at a time on real processes
//! (issue 14 item 5): refused by policy, unknown CA, revoked, a destination that stalls (timeout),
//! a link cut in post-copy (paused, recoverable) and its recovery.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::proxy::CutProxy;
use common::*;
use ferry_vmm::testing::require_kvm;

/// `ferry migrate --vm SOCK --to ADDR ARGS`: exit code and stderr.
fn migrate(sock: &Path, to: &str, args: &[&str]) -> (Option<i32>, String) {
    let o = ferry()
        .args(["migrate", "--vm"])
        .arg(sock)
        .args(["--to", to])
        .args(args)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    (o.status.code(), stderr(&o))
}

fn small_guest(t: &Tmp) -> std::path::PathBuf {
    build_guest(t, "small.img", &["--memory", "64M", "--ws", "8M"])
}

/// A cluster CA in `t/ca` and a bundle per name (valid for 127.0.0.1 too).
fn bundles(t: &Tmp, ca: &str, names: &[&str]) {
    let dir = t.arg(ca);
    let o = run(&["certs", "init", "--dir", &dir]);
    assert!(o.status.success(), "{}", stderr(&o));
    for n in names {
        let o = run(&[
            "certs",
            "issue",
            n,
            "--san",
            "127.0.0.1",
            "--dir",
            &dir,
            "--bundle",
            &t.arg(n),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
}

/// Issue 14: a source refused by `--allow` saw "peer closed the connection during handshake", the
/// wrong CA showed as "DecryptError", and every failure exited 1. Each refusal now exits 4 (the VM
/// still runs on the source) and names its cause.
#[test]
fn tls_refusals_exit_4_and_name_their_cause() {
    if !require_kvm() {
        return;
    }
    let t = Tmp::new();
    let img = small_guest(&t);
    bundles(&t, "ca", &["hosta", "hostc", "hostr"]);
    let r = run(&["certs", "revoke", "hostr", "--dir", &t.arg("ca")]);
    assert!(r.status.success(), "{}", stderr(&r));
    // hostb's bundle is issued after the revocation: it carries the list.
    let o = run(&[
        "certs",
        "issue",
        "hostb",
        "--san",
        "127.0.0.1",
        "--dir",
        &t.arg("ca"),
        "--bundle",
        &t.arg("hostb"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    bundles(&t, "other-ca", &["hostd"]);

    let dst_sock = t.path("dst.sock");
    let (_dst, addr) = start_destination(
        &dst_sock,
        &[
            "--certs",
            &t.arg("hostb"),
            "--name",
            "hostb",
            "--allow",
            "hosta",
        ],
    );
    for (name, want) in [
        ("hostc", "--allow policy"),
        ("hostd", "not signed by this host's cluster CA"),
        ("hostr", "revoked this host's certificate"),
    ] {
        let sock = t.path(&format!("{name}.sock"));
        let _src = start_source(
            &img,
            "64M",
            &sock,
            &["--certs", &t.arg(name), "--name", name],
        );
        wait_iterations(&sock, 1, Duration::from_secs(60));
        let (code, err) = migrate(&sock, &addr, &["--strategy", "precopy"]);
        assert_eq!(
            code,
            Some(4),
            "{name}: the VM is still on the source: {err}"
        );
        assert!(err.contains(want), "{name}: {err}");
        assert!(err.contains("still runs on the source"), "{name}: {err}");
        assert_still_running(&sock);
    }
    // The destination is still there for an allowed source.
    let sock = t.path("hosta.sock");
    let _src = start_source(
        &img,
        "64M",
        &sock,
        &["--certs", &t.arg("hosta"), "--name", "hosta"],
    );
    wait_iterations(&sock, 1, Duration::from_secs(60));
    let (code, err) = migrate(&sock, &addr, &["--strategy", "precopy"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(vm_running(&dst_sock), "{:?}", status(&dst_sock));
}

/// A destination that accepts the connection and then says nothing (stopped, as a partitioned or
/// hung host looks): the TLS handshake times out, `ferry migrate` says "timed out" (not "os error
/// 11") and exits 4; the VM runs on at the source.
#[test]
fn a_silent_destination_is_a_timeout_and_the_vm_stays_on_the_source() {
    if !require_kvm() {
        return;
    }
    let t = Tmp::new();
    let img = small_guest(&t);
    bundles(&t, "ca", &["hosta", "hostb"]);
    let (src_sock, dst_sock) = (t.path("src.sock"), t.path("dst.sock"));
    let (dst, addr) =
        start_destination(&dst_sock, &["--certs", &t.arg("hostb"), "--name", "hostb"]);
    let _src = start_source(
        &img,
        "64M",
        &src_sock,
        &["--certs", &t.arg("hosta"), "--name", "hosta"],
    );
    wait_iterations(&src_sock, 1, Duration::from_secs(60));
    // SAFETY: kill only sends a signal to the child this test started.
    assert_eq!(unsafe { libc::kill(dst.0.id() as i32, libc::SIGSTOP) }, 0);
    let t0 = Instant::now();
    let (code, err) = migrate(&src_sock, &addr, &["--strategy", "precopy"]);
    let took = t0.elapsed();
    // SAFETY: as above.
    unsafe { libc::kill(dst.0.id() as i32, libc::SIGCONT) };
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("timed out"), "{err}");
    assert!(!err.contains("os error 11"), "{err}");
    assert!(err.contains("still runs on the source"), "{err}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_still_running(&src_sock);
}

/// A link cut in post-copy, after the guest has run on the destination: exit 5 (paused,
/// recoverable) with the command that finishes it; no copy runs meanwhile; `--recover` through
/// the same address finishes the migration (exit 0) and the guest's own check is clean.
#[test]
fn a_link_cut_in_postcopy_exits_5_and_recover_finishes_it() {
    if !require_kvm() {
        return;
    }
    let t = Tmp::new();
    // 64 MiB of random data through a link of 4 MB/s per connection: post-copy takes seconds.
    let img = build_guest(
        &t,
        "slow.img",
        &["--memory", "128M", "--ws", "64M", "--fill", "--rate", "0"],
    );
    let (src_sock, dst_sock) = (t.path("src.sock"), t.path("dst.sock"));
    let (_dst, addr) = start_destination(&dst_sock, &["--insecure"]);
    let _src = start_source(&img, "128M", &src_sock, &["--insecure"]);
    wait_iterations(&src_sock, 16384, Duration::from_secs(60));
    let proxy = CutProxy::new(&addr, 4_000_000);
    let mig = ferry()
        .args(["migrate", "--vm"])
        .arg(&src_sock)
        .args(["--to", &proxy.addr, "--strategy", "postcopy"])
        .args(["--compression", "off", "--channels", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    // The source reports post-copy once the guest runs on the destination.
    while status(&src_sock)
        .and_then(|s| s.migration)
        .and_then(|m| m.phase)
        != Some(ferry_migrate::Phase::Postcopy)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the migration never reached post-copy"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    proxy.cut();
    let o = mig.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(5), "paused, recoverable: {err}");
    assert!(err.contains("--recover"), "{err}");
    // Exactly one copy, and it is paused: neither side runs the guest.
    assert!(!vm_running(&src_sock), "{:?}", status(&src_sock));
    let before = progress(&dst_sock);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !vm_running(&dst_sock) || progress(&dst_sock) == before,
        "the destination must wait paused for its missing pages: {:?}",
        status(&dst_sock)
    );
    // A new migration from the source's copy is refused (it would make a second VM).
    let (code, e2) = migrate(&src_sock, &proxy.addr, &["--strategy", "precopy"]);
    assert_ne!(code, Some(0), "{e2}");
    assert!(e2.contains("--recover"), "{e2}");

    let (code, e3) = migrate(&src_sock, &proxy.addr, &["--recover"]);
    assert_eq!(code, Some(0), "recovered: {e3}");
    let t1 = Instant::now();
    while !vm_running(&dst_sock) {
        assert!(
            t1.elapsed() < Duration::from_secs(10),
            "{:?}",
            status(&dst_sock)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_still_running(&dst_sock);
    let check = ferry_host::ControlClient::new(&dst_sock).verify().unwrap();
    assert!(check.pages > 0, "{check:?}");
    assert_eq!((check.errors, check.loop_errors), (0, 0), "{check:?}");
}
