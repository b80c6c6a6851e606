//! A VM host under hostile or unlucky control clients, and `ferry migrate` under dying or silent
//! hosts (issue 14 item 3, issue 12 item 1), on real processes.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use ferry_host::HostState;
use ferry_vmm::testing::require_kvm;

/// A guest that fills 64 MiB with random data and then idles (heartbeats only): at 4 MB/s its
/// migration takes about 16 s, long enough to act on it while it runs.
fn slow_guest(t: &Tmp) -> std::path::PathBuf {
    build_guest(
        t,
        "slow.img",
        &["--memory", "128M", "--ws", "64M", "--fill", "--rate", "0"],
    )
}

/// Starts a bandwidth-limited stop-and-copy of the VM at `sock` to `addr`.
fn slow_migration(sock: &Path, addr: &str, extra: &[&str]) -> Child {
    ferry()
        .args(["migrate", "--vm"])
        .arg(sock)
        .args(["--to", addr, "--strategy", "stop-and-copy"])
        .args(["--compression", "off", "--max-bandwidth", "4M", "--json"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the host at `sock` reports a migration in progress.
fn wait_migrating(sock: &Path) {
    let t = Instant::now();
    while status(sock).and_then(|s| s.state) != Some(HostState::Migrating) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no migration started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn output(c: Child) -> (Option<i32>, String) {
    let o = c.wait_with_output().unwrap();
    (o.status.code(), stderr(&o))
}

fn raw_request(sock: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line
}

/// Issue 14: one non-UTF-8 line made the VM host exit and destroyed the VM; a client that
/// connected and sent nothing made every other request hang, cancel included.
#[test]
fn bad_and_silent_control_clients_cost_nothing_and_cancel_still_works() {
    if !require_kvm() {
        return;
    }
    let t = Tmp::new();
    let img = slow_guest(&t);
    let (src_sock, dst_sock) = (t.path("src.sock"), t.path("dst.sock"));
    let (_dst, addr) = start_destination(&dst_sock, &["--insecure"]);
    let mut src = start_source(&img, "128M", &src_sock, &["--insecure"]);
    wait_iterations(&src_sock, 16384, Duration::from_secs(60));

    for bad in [
        &b"\xff\xfe\x80 not text at all\n"[..],
        b"{\"v\":1,\"op\":\"self-destruct\"}\n",
        b"not json\n",
    ] {
        let reply = raw_request(&src_sock, bad);
        assert!(reply.contains("\"error\""), "{bad:?} -> {reply}");
    }
    assert_still_running(&src_sock);

    // A silent client, and one that sent half a line, stay connected through what follows.
    let silent = UnixStream::connect(&src_sock).unwrap();
    let mut half = UnixStream::connect(&src_sock).unwrap();
    half.write_all(b"{\"v\":1,\"op\":\"sta").unwrap();
    let t0 = Instant::now();
    let st = run(&["vm", "status", "--control", &src_sock.to_string_lossy()]);
    assert!(st.status.success(), "{}", stderr(&st));
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());

    let mig = slow_migration(&src_sock, &addr, &[]);
    wait_migrating(&src_sock);
    let c = run(&["vm", "cancel", "--control", &src_sock.to_string_lossy()]);
    assert!(c.status.success(), "{}", stderr(&c));
    let (code, err) = output(mig);
    assert_eq!(code, Some(4), "the VM is still on the source: {err}");
    assert!(err.contains("cancelled"), "{err}");
    assert_still_running(&src_sock);
    drop((silent, half));
    assert!(
        src.0.try_wait().unwrap().is_none(),
        "the VM host must still be running"
    );
    let mut log = String::new();
    let st = run(&["vm", "stop", "--control", &src_sock.to_string_lossy()]);
    assert!(st.status.success(), "{}", stderr(&st));
    let exit = wait_exit(&mut src.0, Duration::from_secs(10));
    src.0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}: {log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// Issue 12: `ferry migrate` must never wait forever on a source that died.
#[test]
fn migrate_says_outcome_unknown_when_the_source_host_dies() {
    if !require_kvm() {
        return;
    }
    let t = Tmp::new();
    let img = slow_guest(&t);
    let (src_sock, dst_sock) = (t.path("src.sock"), t.path("dst.sock"));
    let (_dst, addr) = start_destination(&dst_sock, &["--insecure"]);
    let mut src = start_source(&img, "128M", &src_sock, &["--insecure"]);
    wait_iterations(&src_sock, 16384, Duration::from_secs(60));
    let mig = slow_migration(&src_sock, &addr, &[]);
    wait_migrating(&src_sock);
    src.0.kill().unwrap();
    let t0 = Instant::now();
    let (code, err) = output(mig);
    assert_eq!(code, Some(6), "outcome unknown: {err}");
    assert!(
        err.contains("closed the connection without an answer"),
        "{err}"
    );
    assert!(err.contains("outcome is unknown"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

/// Issue 12: a source that stops answering (here: SIGSTOP, as a hung host looks) is a deadline
/// error naming the host, not an endless wait.
#[test]
fn migrate_gives_up_on_a_silent_source_host_at_its_deadline() {
    if !require_kvm() {
        return;
    }
    let t = Tmp::new();
    let img = slow_guest(&t);
    let (src_sock, dst_sock) = (t.path("src.sock"), t.path("dst.sock"));
    let (_dst, addr) = start_destination(&dst_sock, &["--insecure"]);
    let src = start_source(&img, "128M", &src_sock, &["--insecure"]);
    wait_iterations(&src_sock, 16384, Duration::from_secs(60));
    let mig = slow_migration(&src_sock, &addr, &["--deadline", "2"]);
    wait_migrating(&src_sock);
    // Keepalives arrive every second: 3 s in, the client is still waiting.
    std::thread::sleep(Duration::from_secs(3));
    let mut mig = mig;
    assert!(
        mig.try_wait().unwrap().is_none(),
        "a live host must keep the client waiting"
    );
    // SAFETY: kill only sends a signal to the child we started.
    assert_eq!(unsafe { libc::kill(src.0.id() as i32, libc::SIGSTOP) }, 0);
    let t0 = Instant::now();
    let (code, err) = output(mig);
    // SAFETY: as above.
    unsafe { libc::kill(src.0.id() as i32, libc::SIGCONT) };
    assert_eq!(code, Some(6), "outcome unknown: {err}");
    assert!(err.contains("sent nothing for"), "{err}");
    assert!(
        err.contains(&*src_sock.to_string_lossy()),
        "names the host: {err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
}

/// Issue 12: guests that print only text, or nothing at all, migrate like any other: the
/// migration completes, the source exits cleanly and `ferry migrate` exits 0.
#[test]
fn guests_without_heartbeat_bytes_migrate_and_the_source_exits_cleanly() {
    if !require_kvm() {
        return;
    }
    for (heartbeat, strategy) in [("none", "auto"), ("dots:64", "auto"), ("none", "postcopy")] {
        let t = Tmp::new();
        let img = build_guest(
            &t,
            "g.img",
            &["--memory", "128M", "--ws", "16M", "--heartbeat", heartbeat],
        );
        let (src_sock, dst_sock) = (t.path("src.sock"), t.path("dst.sock"));
        let (mut dst, addr) = start_destination(&dst_sock, &["--insecure", "--once"]);
        let mut src = start_source(&img, "128M", &src_sock, &["--insecure"]);
        wait_iterations(&src_sock, 1000, Duration::from_secs(60));
        let m = run(&[
            "migrate",
            "--vm",
            &src_sock.to_string_lossy(),
            "--to",
            &addr,
            "--strategy",
            strategy,
        ]);
        let what = format!("heartbeat {heartbeat}, {strategy}");
        assert_eq!(m.status.code(), Some(0), "{what}: {}", stderr(&m));
        let exit = wait_exit(&mut src.0, Duration::from_secs(10));
        let mut log = String::new();
        src.0
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut log)
            .unwrap();
        assert!(
            exit.is_some_and(|s| s.success()),
            "{what}: source exit {exit:?}: {log}"
        );
        assert!(!log.contains("panicked"), "{what}: {log}");
        // The guest goes on at the destination.
        assert_still_running(&dst_sock);
        let st = run(&["vm", "stop", "--control", &dst_sock.to_string_lossy()]);
        assert!(st.status.success(), "{what}: {}", stderr(&st));
        let exit = wait_exit(&mut dst.0, Duration::from_secs(10));
        assert!(exit.is_some_and(|s| s.success()), "{what}: {exit:?}");
    }
}

/// Issue 14: the control socket's mode followed the umask (0775 under umask 002) at a
/// predictable path in the temp directory.
#[test]
fn the_default_control_socket_is_private_whatever_the_umask() {
    if !require_kvm() {
        return;
    }
    let t = Tmp::new();
    let img = build_guest(&t, "g.img", &["--memory", "64M", "--ws", "8M"]);
    let runtime = t.path("xdg");
    std::fs::create_dir(&runtime).unwrap();
    let mut child = Killed(
        std::process::Command::new("sh")
            .args(["-c", "umask 002 && exec \"$0\" \"$@\""])
            .arg(env!("CARGO_BIN_EXE_ferry"))
            .args(["vm", "run", "--memory", "64M", "--insecure", "--kernel"])
            .arg(&img)
            .env("XDG_RUNTIME_DIR", &runtime)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let sock = line
        .trim()
        .strip_prefix(ferry_host::supervise::READY_RUNNING)
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_string();
    let dir = runtime.join("ferry");
    assert_eq!(
        Path::new(&sock),
        dir.join(format!("vm-{}.sock", child.0.id()))
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(Path::new(&sock)), 0o600);
    assert!(status(Path::new(&sock)).is_some());
}
