//! Helpers shared by the CLI's integration tests: the binary, private work directories, child
//! processes that die with the test, and the typed control client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferry_host::{ControlClient, HostStatus};

pub mod proxy;

pub fn ferry() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
}

pub fn run(args: &[&str]) -> Output {
    ferry().args(args).output().unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A private work directory, removed (with any keys in it) when the test ends.
pub struct Tmp(tempfile::TempDir);

impl Tmp {
    pub fn new() -> Tmp {
        Tmp(tempfile::Builder::new()
            .prefix("ferry-cli-test-")
            .tempdir()
            .unwrap())
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    pub fn arg(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }
}

pub struct Killed(pub Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn status(sock: &Path) -> Option<HostStatus> {
    ControlClient::new(sock).status().ok()
}

pub fn iterations(sock: &Path) -> u64 {
    status(sock)
        .and_then(|s| s.guest)
        .map_or(0, |g| g.iterations)
}

pub fn vm_running(sock: &Path) -> bool {
    status(sock).and_then(|s| s.vm).is_some_and(|v| v.running)
}

/// Page writes plus heartbeats: grows while the guest runs, idle or not.
pub fn progress(sock: &Path) -> u64 {
    status(sock)
        .and_then(|s| s.guest)
        .map_or(0, |g| g.iterations + g.heartbeats)
}

/// Asserts that the guest behind `sock` makes progress, and that its VM runs.
pub fn assert_still_running(sock: &Path) {
    let before = progress(sock);
    let t = Instant::now();
    while progress(sock) <= before {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the VM must keep running on the source (guest progress stuck at {before})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(vm_running(sock), "{:?}", status(sock));
}

/// Builds a guest image in `t` with `ferry guest build ARGS`.
pub fn build_guest(t: &Tmp, name: &str, args: &[&str]) -> PathBuf {
    let img = t.path(name);
    let mut all = vec!["guest", "build", "-o"];
    let img_arg = img.to_string_lossy().into_owned();
    all.push(&img_arg);
    all.extend_from_slice(args);
    let b = run(&all);
    assert!(b.status.success(), "{}", stderr(&b));
    img
}

/// Starts `ferry vm run` on `img` with control socket `sock` (and `extra` flags).
pub fn start_source(img: &Path, memory: &str, sock: &Path, extra: &[&str]) -> Killed {
    Killed(
        ferry()
            .args(["vm", "run", "--kernel"])
            .arg(img)
            .args(["--memory", memory, "--control"])
            .arg(sock)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// Starts `ferry vm receive --listen 127.0.0.1:0` with control socket `sock` (and `extra` flags);
/// returns it and the address it listens on.
pub fn start_destination(sock: &Path, extra: &[&str]) -> (Killed, String) {
    let mut dst = Killed(
        ferry()
            .args(["vm", "receive", "--listen", "127.0.0.1:0", "--control"])
            .arg(sock)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(dst.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix(ferry_host::supervise::READY_RECEIVING)
        .unwrap_or_else(|| panic!("destination did not start: {line:?}"))
        .to_string();
    (dst, addr)
}

/// Waits until the guest behind `sock` has made `n` page writes.
pub fn wait_iterations(sock: &Path, n: u64, timeout: Duration) {
    let t = Instant::now();
    while iterations(sock) < n {
        assert!(
            t.elapsed() < timeout,
            "guest did not reach {n} page writes in {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits up to `timeout` for a child to exit.
pub fn wait_exit(c: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if let Ok(Some(s)) = c.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}
