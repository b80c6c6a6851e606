//! VM host processes (`ferry vm run`, `ferry vm receive`) that outlive the daemon.
//!
//! Each runs in its own process group with no tie to the daemon (stdin closed, output to its log
//! file), so stopping or restarting the daemon (or a Ctrl-C in its terminal) leaves the VMs
//! running; a restarted daemon finds them again through their run directories. These calls block
//! (they talk to control sockets and wait for processes): run them off the async executor.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_host::protocol::{HostState, HostStatus};
use ferry_host::supervise::{Auth, HostSpec, Role as SpecRole};
use ferry_host::transport::Endpoint;
use ferry_host::{ControlClient, RamBackingChoice};

use crate::rundir::{process_serves, RunDir, VmMeta};

/// How long a control call may stay silent (hosts send keepalives every second).
pub const PROBE_DEADLINE: Duration = Duration::from_secs(3);

/// Why a VM process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Its log file or directory could not be made.
    #[error("cannot prepare the VM's directory")]
    Dir(#[source] std::io::Error),
    /// The process did not start.
    #[error("cannot start {}", bin.display())]
    Spawn {
        /// The binary.
        bin: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// It exited before its control socket answered.
    #[error("the VM process exited ({status}): {log}")]
    Exited {
        /// How.
        status: String,
        /// The end of its log.
        log: String,
    },
    /// Its control socket did not answer in time.
    #[error("the VM process did not answer on its control socket within {} s: {log}", limit.as_secs())]
    NotReady {
        /// The limit.
        limit: Duration,
        /// The end of its log.
        log: String,
    },
}

/// How VM processes are started on this host.
#[derive(Clone, Debug)]
pub struct Launcher {
    /// The `ferry` binary.
    pub bin: PathBuf,
    /// Their certificates (`None`: same-host migrations only).
    pub auth: Auth,
    /// Where their directories are.
    pub run: RunDir,
}

/// A started VM process.
pub struct Started {
    /// The child (the daemon reaps it when it exits).
    pub child: Child,
    /// Its first status.
    pub status: HostStatus,
}

impl Launcher {
    fn spec(&self, meta: &VmMeta, role: SpecRole) -> HostSpec {
        HostSpec {
            role,
            auth: self.auth.clone(),
            control: self.run.control(&meta.name),
            serial: Some(self.run.console(&meta.name).to_string_lossy().into_owned()),
        }
    }

    /// Boots VM `meta` from its kernel image.
    pub fn run(&self, meta: &VmMeta, ready: Duration) -> Result<Started, StartError> {
        let role = SpecRole::Run {
            kernel: meta.kernel.clone().unwrap_or_default(),
            memory: meta.memory,
            vcpus: meta.vcpus,
            ram_backing: meta.ram_backing,
        };
        self.start(meta, role, &[], ready, |s| s.vm.is_some())
    }

    /// Starts a process that waits on `listen_host:0` for VM `meta` to arrive from a peer with one
    /// of `allow`'s names (any the CA signed when empty).
    pub fn receive(
        &self,
        meta: &VmMeta,
        listen_host: &str,
        allow: Vec<String>,
        gate: Option<&Path>,
        ready: Duration,
    ) -> Result<Started, StartError> {
        let host = if listen_host.contains(':') {
            format!("[{listen_host}]:0")
        } else {
            format!("{listen_host}:0")
        };
        let role = SpecRole::Receive {
            listen: Endpoint::Tcp(host),
            once: true,
            prefault: true,
            // The receiving host's own choice: the fastest backing it offers.
            ram_backing: RamBackingChoice::Auto,
            allow,
        };
        let extra: Vec<std::ffi::OsString> = match gate {
            Some(g) => vec!["--commit-gate".into(), g.into()],
            None => Vec::new(),
        };
        self.start(meta, role, &extra, ready, |s| s.listen.is_some())
    }

    fn start(
        &self,
        meta: &VmMeta,
        role: SpecRole,
        extra: &[std::ffi::OsString],
        ready: Duration,
        is_ready: impl Fn(&HostStatus) -> bool,
    ) -> Result<Started, StartError> {
        let spec = self.spec(meta, role);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.run.log(&meta.name))
            .map_err(StartError::Dir)?;
        let log2 = log.try_clone().map_err(StartError::Dir)?;
        let mut child = Command::new(&self.bin)
            .args(spec.args())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own process group: a signal to the daemon's group (Ctrl-C, a service manager
            // stopping the daemon's group) does not reach it.
            .process_group(0)
            .spawn()
            .map_err(|source| StartError::Spawn {
                bin: self.bin.clone(),
                source,
            })?;
        let client = ControlClient::new(&spec.control).with_deadline(PROBE_DEADLINE);
        let t = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(StartError::Exited {
                    status: status.to_string(),
                    log: self.run.log_tail(&meta.name, 5),
                });
            }
            if let Ok(s) = client.status() {
                if is_ready(&s) {
                    return Ok(Started { child, status: s });
                }
            }
            if t.elapsed() > ready {
                let _ = child.kill();
                let _ = child.wait();
                return Err(StartError::NotReady {
                    limit: ready,
                    log: self.run.log_tail(&meta.name, 5),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What a probe of a VM process found.
#[derive(Debug)]
pub enum Probe {
    /// It answered.
    Status(Box<HostStatus>),
    /// It is alive but did not answer (busy migrating, or stuck).
    Silent(String),
    /// Its process is gone.
    Gone,
}

/// Asks the VM process behind `control` (process `pid`) how it is.
pub fn probe(control: &Path, pid: Option<u32>) -> Probe {
    match ControlClient::new(control)
        .with_deadline(PROBE_DEADLINE)
        .with_total_deadline(PROBE_DEADLINE)
        .status()
    {
        Ok(s) => Probe::Status(Box::new(s)),
        Err(e) => match pid {
            Some(pid) if process_serves(pid, control) => Probe::Silent(e.to_string()),
            // Without a pid, a socket that cannot be connected to has no process behind it.
            None if control.exists() && !matches!(e, ferry_host::ClientError::Connect { .. }) => {
                Probe::Silent(e.to_string())
            }
            _ => Probe::Gone,
        },
    }
}

/// Whether a status says the VM's guest exited or the VM left (the process is about to end).
pub fn ended(s: &HostStatus) -> bool {
    s.state == Some(HostState::Ended)
}

/// Stops the VM behind `control` and waits up to `timeout` for process `pid` to end; kills it
/// otherwise. Whether it is gone.
pub fn stop(
    control: &Path,
    pid: Option<u32>,
    child: Option<&mut Child>,
    timeout: Duration,
) -> bool {
    let _ = ControlClient::new(control)
        .with_deadline(PROBE_DEADLINE)
        .stop();
    wait_gone(control, pid, child, timeout)
}

/// Waits up to `timeout` for the VM process to end (reaping it if it is our child), then kills
/// it. Whether it is gone.
pub fn wait_gone(
    control: &Path,
    pid: Option<u32>,
    mut child: Option<&mut Child>,
    timeout: Duration,
) -> bool {
    let t = Instant::now();
    loop {
        let gone = match child.as_deref_mut() {
            Some(c) => c.try_wait().map(|s| s.is_some()).unwrap_or(true),
            None => !pid.is_some_and(|p| process_serves(p, control)),
        };
        if gone {
            return true;
        }
        if t.elapsed() > timeout {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    match (child, pid) {
        (Some(c), _) => {
            let _ = c.kill();
            let _ = c.wait();
        }
        (None, Some(p)) if process_serves(p, control) => {
            // SAFETY: kill only sends a signal; the pid was checked to be the VM's process.
            unsafe { libc::kill(p as i32, libc::SIGKILL) };
        }
        _ => {}
    }
    true
}
