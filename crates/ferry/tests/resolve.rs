//! `ferry vm resolve` on real processes (issue 14 item 1): a migration in doubt is settled by
//! asking the destination, and the VM runs on at most one host afterwards.

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::proxy::CutProxy;
use common::*;
use ferry_host::HostState;
use ferry_migrate::Phase;
use ferry_vmm::testing::require_kvm;

fn resolve(src: &Path, peer: &[&str]) -> (Option<i32>, String) {
    let o = ferry()
        .args(["vm", "resolve", "--control"])
        .arg(src)
        .args(peer)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.code(), text)
}

fn start_migration(src: &Path, to: &str, args: &[&str]) -> Child {
    ferry()
        .args(["migrate", "--vm"])
        .arg(src)
        .args(["--to", to])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_phase(src: &Path, phase: Phase, poll: Duration) {
    let t0 = Instant::now();
    while status(src).and_then(|s| s.migration).and_then(|m| m.phase) != Some(phase) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the migration never reached {phase:?}"
        );
        std::thread::sleep(poll);
    }
}

fn state(sock: &Path) -> Option<HostState> {
    status(sock).and_then(|s| s.state)
}

/// Issue 14: `kill -9` of the destination in post-copy lost the VM while the source said "nothing
/// is lost". The source keeps the VM as it was at the switch-over: `resolve` refuses to guess
/// while the destination might be alive, and with `--peer-gone` resumes it there (the guest's
/// own check of every page is clean).
#[test]
fn a_destination_killed_in_postcopy_is_settled_by_rolling_back_to_the_source() {
    if !require_kvm() {
        return;
    }
    let t = Tmp::new();
    let img = build_guest(
        &t,
        "slow.img",
        &["--memory", "128M", "--ws", "64M", "--fill", "--rate", "0"],
    );
    let (src_sock, dst_sock) = (t.path("src.sock"), t.path("dst.sock"));
    let (mut dst, addr) = start_destination(&dst_sock, &["--insecure"]);
    let _src = start_source(&img, "128M", &src_sock, &["--insecure"]);
    wait_iterations(&src_sock, 16384, Duration::from_secs(60));
    let proxy = CutProxy::new(&addr, 4_000_000);
    let mig = start_migration(
        &src_sock,
        &proxy.addr,
        &[
            "--strategy",
            "postcopy",
            "--compression",
            "off",
            "--channels",
            "2",
        ],
    );
    wait_phase(&src_sock, Phase::Postcopy, Duration::from_millis(20));
    std::thread::sleep(Duration::from_millis(300));
    dst.0.kill().unwrap();
    dst.0.wait().unwrap();
    let o = mig.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(!vm_running(&src_sock), "{:?}", status(&src_sock));

    // The destination does not answer: nothing is changed.
    let (code, text) = resolve(&src_sock, &["--peer", &dst_sock.to_string_lossy()]);
    assert_eq!(code, Some(6), "{text}");
    assert!(text.contains("--peer-gone"), "{text}");
    assert!(!vm_running(&src_sock), "{:?}", status(&src_sock));
    // A plain resume is refused by the host itself while a post-copy is interrupted.
    let r = ferry_host::ControlClient::new(&src_sock).resume(false);
    assert!(r.is_err(), "{r:?}");
    assert!(!vm_running(&src_sock));

    let (code, text) = resolve(&src_sock, &["--peer-gone"]);
    assert_eq!(code, Some(4), "runs on the source: {text}");
    assert!(text.contains("as it was at the switch-over"), "{text}");
    assert_still_running(&src_sock);
    let check = ferry_host::ControlClient::new(&src_sock).verify().unwrap();
    assert!(check.pages > 0, "{check:?}");
    assert_eq!((check.errors, check.loop_errors), (0, 0), "{check:?}");
    // Settled: nothing more to resolve, and the VM migrates again.
    let (code, text) = resolve(&src_sock, &["--peer-gone"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("nothing to resolve"), "{text}");
}

/// Nothing the destination sends reaches the source once the switch-over began (a half-broken
/// link): the source has not committed (it waits for the destination to confirm the state is
/// loaded), so at its peer-silence deadline it resumes the guest and `ferry migrate` exits 4; the
/// destination never runs the VM and gives up on it. At no instant do two copies run.
#[test]
fn a_switch_over_whose_answers_are_lost_resumes_on_the_source() {
    if !require_kvm() {
        return;
    }
    let t = Tmp::new();
    let img = build_guest(&t, "small.img", &["--memory", "64M", "--ws", "8M"]);
    let (src_sock, dst_sock) = (t.path("src.sock"), t.path("dst.sock"));
    let (_dst, addr) = start_destination(&dst_sock, &["--insecure"]);
    let _src = start_source(&img, "64M", &src_sock, &["--insecure"]);
    wait_iterations(&src_sock, 4096, Duration::from_secs(60));
    let proxy = CutProxy::new(&addr, 20_000_000);
    let mig = start_migration(
        &src_sock,
        &proxy.addr,
        &[
            "--strategy",
            "precopy",
            "--compression",
            "off",
            "--channels",
            "1",
            "--downtime",
            "2000",
        ],
    );
    wait_phase(&src_sock, Phase::SwitchOver, Duration::from_millis(2));
    proxy.stall_back();
    let t0 = Instant::now();
    let mut mig = mig;
    while mig.try_wait().unwrap().is_none() {
        assert!(
            !(vm_running(&src_sock) && vm_running(&dst_sock)),
            "two copies run"
        );
        assert!(t0.elapsed() < Duration::from_secs(90), "no end");
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = mig.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(err.contains("timed out"), "{err}");
    assert_still_running(&src_sock);
    proxy.cut();
    // The destination never ran it, and is free again.
    let t1 = Instant::now();
    while state(&dst_sock) != Some(HostState::Waiting) {
        assert!(
            !vm_running(&dst_sock),
            "two copies run: {:?}",
            status(&dst_sock)
        );
        assert!(
            t1.elapsed() < Duration::from_secs(60),
            "{:?}",
            status(&dst_sock)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nothing to resolve on the source.
    let (code, text) = resolve(&src_sock, &["--peer", &dst_sock.to_string_lossy()]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("nothing to resolve"), "{text}");
}
