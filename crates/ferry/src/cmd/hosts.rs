//! Host processes that the demo and the benchmarks start: a destination (`ferry vm receive`) and a
//! source (`ferry vm run`), each with its control socket and a log file; killed if we fail half way.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::control::{call, Request};
use crate::guest_probe::GuestStatus;

/// A `ferry` child process hosting one VM.
pub(crate) struct Host {
    pub(crate) child: Child,
    log: PathBuf,
    /// Its control socket.
    pub(crate) socket: PathBuf,
}

impl Host {
    fn spawn(
        name: &str,
        dir: &Path,
        args: &[&str],
        stdout: Stdio,
        socket: PathBuf,
    ) -> anyhow::Result<Host> {
        let log = dir.join(format!("{name}.log"));
        let err = std::fs::File::create(&log)?;
        let child = Command::new(std::env::current_exe()?)
            .args(args)
            .args(["--control", &socket.to_string_lossy()])
            .stdout(stdout)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start the {name} process"))?;
        Ok(Host { child, log, socket })
    }

    /// Creates a cluster CA in `dir/certs` with certificates for "destination" (valid for
    /// 127.0.0.1) and "source"; returns the directory.
    pub(crate) fn make_certs(dir: &Path) -> anyhow::Result<PathBuf> {
        let certs = dir.join("certs");
        ferry_migrate::tls::certs::init_ca(&certs, 1)?;
        ferry_migrate::tls::certs::issue(&certs, &["destination".into(), "127.0.0.1".into()], 1)?;
        ferry_migrate::tls::certs::issue(&certs, &["source".into()], 1)?;
        Ok(certs)
    }

    /// Starts `ferry vm receive` on a free loopback port; returns it and the address it listens on.
    /// With `certs` it accepts only TLS peers of that CA, else plaintext (--insecure).
    pub(crate) fn destination(
        dir: &Path,
        prefault: bool,
        certs: Option<&Path>,
    ) -> anyhow::Result<(Host, String)> {
        Self::destination_at(dir, "127.0.0.1:0", prefault, certs)
    }

    /// Like [`Host::destination`], listening on `listen` (`unix:PATH` for a same-host destination,
    /// which needs no certificates).
    pub(crate) fn destination_at(
        dir: &Path,
        listen: &str,
        prefault: bool,
        certs: Option<&Path>,
    ) -> anyhow::Result<(Host, String)> {
        let certs_arg = certs.map(|c| c.to_string_lossy().into_owned());
        let mut args = vec!["vm", "receive", "--listen", listen, "--once"];
        match &certs_arg {
            Some(c) => args.extend(["--certs", c.as_str(), "--name", "destination"]),
            None if listen.starts_with("unix:") => {}
            None => args.push("--insecure"),
        }
        if !prefault {
            args.push("--no-prefault");
        }
        let mut host = Host::spawn(
            "destination",
            dir,
            &args,
            Stdio::piped(),
            dir.join("destination.sock"),
        )?;
        let mut first = String::new();
        BufReader::new(host.child.stdout.take().context("destination stdout")?)
            .read_line(&mut first)?;
        match first.trim().strip_prefix("listening on ") {
            Some(addr) => Ok((host, addr.to_string())),
            None => bail!("destination did not start: {}", host.log_tail()),
        }
    }

    /// Starts `ferry vm run` booting `image` with `memory` bytes of RAM (TLS with `certs`).
    pub(crate) fn source(
        dir: &Path,
        image: &Path,
        memory: u64,
        certs: Option<&Path>,
    ) -> anyhow::Result<Host> {
        let (image, memory) = (image.to_string_lossy(), memory.to_string());
        let certs_arg = certs.map(|c| c.to_string_lossy().into_owned());
        let mut args = vec!["vm", "run", "--kernel", &image, "--memory", &memory];
        match &certs_arg {
            Some(c) => args.extend(["--certs", c.as_str(), "--name", "source"]),
            None => args.push("--insecure"),
        }
        Host::spawn("source", dir, &args, Stdio::null(), dir.join("source.sock"))
    }

    /// Starts `ferry vm run` with no certificates: it can migrate only to the same host.
    pub(crate) fn source_local(dir: &Path, image: &Path, memory: u64) -> anyhow::Result<Host> {
        let (image, memory) = (image.to_string_lossy(), memory.to_string());
        let args = ["vm", "run", "--kernel", &image, "--memory", &memory];
        Host::spawn("source", dir, &args, Stdio::null(), dir.join("source.sock"))
    }

    /// The guest's status, read over the control socket.
    pub(crate) fn guest(&self) -> anyhow::Result<GuestStatus> {
        let v = call(&self.socket, &Request::Status, |_| {})?;
        Ok(serde_json::from_value(v["guest"].clone())?)
    }

    /// Polls the guest until `ready` holds; fails if the process exits or `timeout` passes.
    pub(crate) fn wait_guest(
        &mut self,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&GuestStatus) -> bool,
    ) -> anyhow::Result<GuestStatus> {
        let t = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("VM process exited early ({status}): {}", self.log_tail());
            }
            if let Ok(g) = self.guest() {
                if ready(&g) {
                    return Ok(g);
                }
            }
            if t.elapsed() > timeout {
                bail!("timed out waiting for {what}: {}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Last lines of the process's stderr, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits up to `timeout` for the process to exit.
    pub(crate) fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Asks the VM to stop and waits for the process to end.
    pub(crate) fn stop(&mut self) {
        let _ = call(&self.socket, &Request::Stop, |_| {});
        let _ = self.wait(Duration::from_secs(5));
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
