//! VM host processes started by a tool (the demo, the benchmarks, tests): `ferry vm run` and
//! `ferry vm receive` as children, their readiness lines, their control sockets, their exit.
//!
//! A host process prints one readiness line on stdout once its control socket serves:
//! [`READY_RECEIVING`] followed by the migration address (`vm receive`), or [`READY_RUNNING`]
//! followed by the control socket (`vm run`, before the guest's first instruction).

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ferry_vmm::RamBackingChoice;

use crate::client::{ClientError, ControlClient};
use crate::guest_probe::GuestStatus;
use crate::transport::Endpoint;

/// Readiness line of `ferry vm receive`: this prefix, then the address sources should dial.
pub const READY_RECEIVING: &str = "listening on ";
/// Readiness line of `ferry vm run`: this prefix, then the control socket.
pub const READY_RUNNING: &str = "running, control socket ";

/// What a host process does.
#[derive(Clone, Debug)]
pub enum Role {
    /// `ferry vm run`: boot a multiboot image.
    Run {
        /// The image.
        kernel: PathBuf,
        /// Guest RAM, bytes.
        memory: u64,
        /// vCPUs.
        vcpus: u8,
        /// What guest RAM is made of.
        ram_backing: RamBackingChoice,
    },
    /// `ferry vm receive`: wait for a VM.
    Receive {
        /// Where to listen (`127.0.0.1:0` picks a port).
        listen: Endpoint,
        /// Exit after one failed incoming migration.
        once: bool,
        /// Fault guest RAM in while the first pages arrive.
        prefault: bool,
        /// What the RAM of the arriving VM is made of.
        ram_backing: RamBackingChoice,
        /// Source names allowed to send a VM (empty: any the CA signed).
        allow: Vec<String>,
    },
}

/// How a host process authenticates migrations.
#[derive(Clone, Debug)]
pub enum Auth {
    /// TLS with the bundle in `dir` (ca.pem, NAME.pem, NAME.key).
    Certs {
        /// The directory.
        dir: PathBuf,
        /// The host's name.
        name: String,
    },
    /// Plaintext (`--insecure`).
    Insecure,
    /// No certificates: same-host migrations only.
    None,
}

/// A host process to start.
#[derive(Clone, Debug)]
pub struct HostSpec {
    /// What it does.
    pub role: Role,
    /// How it authenticates.
    pub auth: Auth,
    /// Its control socket.
    pub control: PathBuf,
    /// Where the guest's COM1 goes (a path, or `-` for stdout).
    pub serial: Option<String>,
}

impl HostSpec {
    /// The `ferry` arguments that start it.
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["vm".into()];
        match &self.role {
            Role::Run {
                kernel,
                memory,
                vcpus,
                ram_backing,
            } => {
                a.extend(["run".into(), "--kernel".into(), kernel.into()]);
                a.extend(["--memory".into(), memory.to_string().into()]);
                a.extend(["--vcpus".into(), vcpus.to_string().into()]);
                a.extend(["--ram-backing".into(), ram_backing.to_string().into()]);
            }
            Role::Receive {
                listen,
                once,
                prefault,
                ram_backing,
                allow,
            } => {
                a.extend([
                    "receive".into(),
                    "--listen".into(),
                    listen.to_string().into(),
                ]);
                if *once {
                    a.push("--once".into());
                }
                if !prefault {
                    a.push("--no-prefault".into());
                }
                a.extend(["--ram-backing".into(), ram_backing.to_string().into()]);
                for n in allow {
                    a.extend(["--allow".into(), n.into()]);
                }
            }
        }
        match &self.auth {
            Auth::Certs { dir, name } => {
                a.extend(["--certs".into(), dir.into(), "--name".into(), name.into()]);
            }
            Auth::Insecure => a.push("--insecure".into()),
            Auth::None => {}
        }
        a.extend(["--control".into(), self.control.clone().into()]);
        if let Some(s) = &self.serial {
            a.extend(["--serial".into(), s.into()]);
        }
        a
    }
}

/// Why a host process could not be started or watched.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// It did not start.
    #[error("cannot start the {name} process")]
    Spawn {
        /// Which.
        name: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// It exited, or printed something else, before it was ready.
    #[error("the {name} process did not start: {log}")]
    NotReady {
        /// Which.
        name: String,
        /// The end of its log.
        log: String,
    },
    /// It exited early.
    #[error("the {name} process exited early ({status}): {log}")]
    Exited {
        /// Which.
        name: String,
        /// How.
        status: String,
        /// The end of its log.
        log: String,
    },
    /// A wait ran out of time.
    #[error("timed out waiting for {what}: {log}")]
    Timeout {
        /// What.
        what: String,
        /// The end of the process's log.
        log: String,
    },
    /// Its control socket failed.
    #[error("control socket of the {name} process")]
    Control {
        /// Which.
        name: String,
        /// Why.
        #[source]
        source: ClientError,
    },
}

/// A running VM host process; killed (and reaped) when dropped.
pub struct HostProcess {
    child: Child,
    name: String,
    log: PathBuf,
    client: ControlClient,
    listen: Option<Endpoint>,
}

impl HostProcess {
    /// Starts `cmd` (a `ferry` binary, possibly behind a wrapper such as `ip netns exec`) with
    /// `spec`'s arguments, stderr to `log_dir/NAME.log`, and waits up to `ready_timeout` for its
    /// readiness line.
    pub fn spawn(
        mut cmd: Command,
        spec: &HostSpec,
        name: &str,
        log_dir: &Path,
        ready_timeout: Duration,
    ) -> Result<HostProcess, SuperviseError> {
        let spawn_err = |source| SuperviseError::Spawn {
            name: name.into(),
            source,
        };
        let log = log_dir.join(format!("{name}.log"));
        let err = std::fs::File::create(&log).map_err(spawn_err)?;
        let child = cmd
            .args(spec.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .map_err(spawn_err)?;
        let mut host = HostProcess {
            name: name.into(),
            log,
            client: ControlClient::new(&spec.control),
            listen: None,
            child,
        };
        let stdout = host.child.stdout.take();
        let line = stdout
            .map(read_ready_line)
            .and_then(|rx| rx.recv_timeout(ready_timeout).ok().flatten());
        let prefix = match spec.role {
            Role::Run { .. } => READY_RUNNING,
            Role::Receive { .. } => READY_RECEIVING,
        };
        match line
            .as_deref()
            .and_then(|l| l.trim_end().strip_prefix(prefix))
        {
            Some(rest) => {
                if let Role::Receive { .. } = spec.role {
                    host.listen = rest.parse().ok();
                }
                Ok(host)
            }
            None => Err(SuperviseError::NotReady {
                name: name.into(),
                log: host.log_tail(5),
            }),
        }
    }

    /// The address a receiving host listens on.
    pub fn listen(&self) -> Option<&Endpoint> {
        self.listen.as_ref()
    }

    /// A client of its control socket.
    pub fn client(&self) -> &ControlClient {
        &self.client
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The guest's status, read over the control socket.
    pub fn guest(&self) -> Result<GuestStatus, SuperviseError> {
        let s = self
            .client
            .status()
            .map_err(|source| SuperviseError::Control {
                name: self.name.clone(),
                source,
            })?;
        Ok(s.guest.unwrap_or_default())
    }

    /// Polls the guest until `ready` holds; fails if the process exits or `timeout` passes.
    pub fn wait_guest(
        &self,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&GuestStatus) -> bool,
    ) -> Result<GuestStatus, SuperviseError> {
        let t = Instant::now();
        loop {
            if let Some(status) = self.exit_status() {
                return Err(SuperviseError::Exited {
                    name: self.name.clone(),
                    status,
                    log: self.log_tail(5),
                });
            }
            if let Ok(g) = self.guest() {
                if ready(&g) {
                    return Ok(g);
                }
            }
            if t.elapsed() > timeout {
                return Err(SuperviseError::Timeout {
                    what: what.into(),
                    log: self.log_tail(5),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How it exited, if it has, without reaping it (its CPU time stays readable in /proc).
    pub fn exit_status(&self) -> Option<String> {
        // SAFETY: siginfo_t is plain data (all zero is valid); waitid writes at most one into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, writable siginfo_t; WNOWAIT leaves the child unreaped.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                self.child.id(),
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: after a successful waitid, si_pid is set (0 when the child has not exited).
        let pid = unsafe { info.si_pid() };
        if r != 0 || pid == 0 {
            return None;
        }
        // SAFETY: as above; si_status holds the exit code or the signal for CLD_EXITED/KILLED.
        let status = unsafe { info.si_status() };
        Some(match info.si_code {
            libc::CLD_EXITED => format!("exit status {status}"),
            _ => format!("signal {status}"),
        })
    }

    /// Waits up to `timeout` for it to exit, without reaping it; whether it did.
    pub fn wait_exited(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if self.exit_status().is_some() {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits up to `timeout` for it to exit, and reaps it.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if !self.wait_exited(timeout) {
            return None;
        }
        self.child.wait().ok()
    }

    /// Asks the VM to stop, waits up to `timeout` for the process to end, kills it otherwise.
    pub fn stop(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let _ = self.client.stop();
        let s = self.wait(timeout);
        if s.is_none() {
            self.kill();
        }
        s
    }

    /// Kills it (if still running) and reaps it.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    /// The last `lines` lines of its stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut tail: Vec<&str> = s.lines().rev().take(lines).collect();
        tail.reverse();
        tail.join("\n")
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads the first line of `out` on a thread (so a wait for it has a deadline), then keeps
/// draining `out` so a guest writing to stdout never blocks on a full pipe.
fn read_ready_line(out: impl Read + Send + 'static) -> mpsc::Receiver<Option<String>> {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("ferry-host-stdout".into())
        .spawn(move || {
            let mut r = BufReader::new(out);
            let mut line = String::new();
            let got = r.read_line(&mut line).ok().filter(|&n| n > 0).map(|_| line);
            let _ = tx.send(got);
            let _ = std::io::copy(&mut r, &mut std::io::sink());
        });
    if spawned.is_err() {
        let (tx, rx2) = mpsc::channel();
        let _ = tx.send(None);
        return rx2;
    }
    rx
}
