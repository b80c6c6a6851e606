//! Runs an etcd server on this machine: for tests, for `ferry cluster up`, and for a user who
//! wants one (`cargo run -p ferry-store --example local-etcd -- DIR`).

use std::fs::{self, File};
use std::io;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use tokio::task::JoinHandle;

/// How to run a local etcd.
#[derive(Debug, Clone)]
pub struct LocalEtcdConfig {
    /// The etcd binary (a bare name is looked up in `PATH`).
    pub binary: PathBuf,
    /// etcd's data directory (created if missing; reused if it holds a member).
    pub data_dir: PathBuf,
    /// Where etcd's log goes (`None`: discarded).
    pub log_file: Option<PathBuf>,
    /// The member's name.
    pub name: String,
    /// The address etcd listens on (loopback by default).
    pub host: IpAddr,
    /// The client port; 0 picks a free one.
    pub client_port: u16,
    /// The peer port; 0 picks a free one.
    pub peer_port: u16,
    /// Raft heartbeat interval.
    pub heartbeat: Duration,
    /// Raft election timeout. etcd's shortest lease is 1.5 × this, rounded up to a second.
    pub election_timeout: Duration,
    /// How long to wait for etcd to answer after starting it.
    pub startup_timeout: Duration,
    /// Kill etcd (SIGKILL) when the thread that started it exits. Meant for tests, whose
    /// etcd must not outlive a killed test run; leave it off when etcd is started from a
    /// thread that may exit before you are done (tokio's blocking pool, for one).
    pub die_with_parent: bool,
}

impl LocalEtcdConfig {
    /// etcd with its data in `data_dir`, etcd's default timings and free loopback ports.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            binary: PathBuf::from("etcd"),
            data_dir: data_dir.into(),
            log_file: None,
            name: "ferry".into(),
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            client_port: 0,
            peer_port: 0,
            heartbeat: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            startup_timeout: Duration::from_secs(20),
            die_with_parent: false,
        }
    }

    /// etcd in `dir`: data in `dir/data`, log in `dir/etcd.log`.
    pub fn in_dir(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        let mut c = Self::new(dir.join("data"));
        c.log_file = Some(dir.join("etcd.log"));
        c
    }

    /// Short Raft timings (50 ms heartbeat, 500 ms election) so that one-second leases are
    /// honoured, and kill-with-parent: the settings tests use.
    pub fn for_tests(mut self) -> Self {
        self.heartbeat = Duration::from_millis(50);
        self.election_timeout = Duration::from_millis(500);
        self.die_with_parent = true;
        self
    }
}

/// Why a local etcd could not be run.
#[derive(Debug, thiserror::Error)]
pub enum LocalEtcdError {
    /// No etcd binary.
    #[error("etcd binary {0:?} not found (on Debian: apt-get install etcd-server)")]
    NotInstalled(PathBuf),
    /// Creating the data directory or the log failed.
    #[error("cannot prepare {path:?} for etcd")]
    Prepare {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No free port.
    #[error("cannot find a free port for etcd")]
    Port(#[source] io::Error),
    /// A configured port is taken (by another etcd, perhaps).
    #[error("port {port} on {host} is already in use")]
    PortInUse {
        /// The address.
        host: IpAddr,
        /// The port.
        port: u16,
    },
    /// Spawning failed.
    #[error("cannot start etcd")]
    Spawn(#[source] io::Error),
    /// etcd exited while starting.
    #[error("etcd exited while starting ({status}); its log ends with:\n{log_tail}")]
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// The last lines of its log, if it has one.
        log_tail: String,
    },
    /// etcd did not answer in time.
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    /// Signalling or waiting for etcd failed.
    #[error("cannot stop etcd (pid {pid})")]
    Stop {
        /// Its pid.
        pid: u32,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A running etcd server, stopped (SIGTERM, then SIGKILL) by [`LocalEtcd::stop`] or killed
/// when dropped. It runs in its own process group, so terminal signals go to the program that
/// started it, which stops it; a program killed with SIGKILL leaves it running unless
/// [`LocalEtcdConfig::die_with_parent`] is set.
#[derive(Debug)]
pub struct LocalEtcd {
    config: LocalEtcdConfig,
    binary: PathBuf,
    client_port: u16,
    peer_port: u16,
    child: Child,
}

/// Finds `binary` in `PATH` unless it names a path; `None` if it is not there.
pub(crate) fn find_binary(binary: &Path) -> Option<PathBuf> {
    if binary.components().count() > 1 {
        return binary.is_file().then(|| binary.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(binary))
            .find(|p| p.is_file())
    })
}

fn free_port(host: IpAddr) -> Result<u16, LocalEtcdError> {
    let l = TcpListener::bind((host, 0)).map_err(LocalEtcdError::Port)?;
    Ok(l.local_addr().map_err(LocalEtcdError::Port)?.port())
}

/// Fails if `port` is taken: otherwise the readiness probe could reach the server that holds
/// it and take it for the etcd just started.
fn check_free(host: IpAddr, port: u16) -> Result<(), LocalEtcdError> {
    match TcpListener::bind((host, port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            Err(LocalEtcdError::PortInUse { host, port })
        }
        Err(e) => Err(LocalEtcdError::Port(e)),
    }
}

fn url(host: IpAddr, port: u16) -> String {
    match host {
        IpAddr::V4(a) => format!("http://{a}:{port}"),
        IpAddr::V6(a) => format!("http://[{a}]:{port}"),
    }
}

fn log_tail(path: Option<&Path>) -> String {
    let Some(text) = path.and_then(|p| fs::read_to_string(p).ok()) else {
        return "(no log)".into();
    };
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

impl LocalEtcd {
    /// Whether an etcd binary is installed (looked up in `PATH`).
    pub fn installed() -> bool {
        find_binary(Path::new("etcd")).is_some()
    }

    /// Starts etcd and waits until it answers a read (it has a leader).
    pub async fn start(config: LocalEtcdConfig) -> Result<Self, LocalEtcdError> {
        let binary = find_binary(&config.binary)
            .ok_or_else(|| LocalEtcdError::NotInstalled(config.binary.clone()))?;
        // etcd wants its data private (0700) and warns otherwise.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.data_dir)
            .map_err(|source| LocalEtcdError::Prepare {
                path: config.data_dir.clone(),
                source,
            })?;
        // Free ports are found by binding and releasing them; another process may take one
        // before etcd binds it, so a start that fails with picked ports is retried.
        let picked = config.client_port == 0 || config.peer_port == 0;
        let attempts = if picked { 3 } else { 1 };
        let mut last = None;
        for _ in 0..attempts {
            let client_port = match config.client_port {
                0 => free_port(config.host)?,
                p => p,
            };
            let peer_port = match config.peer_port {
                0 => free_port(config.host)?,
                p => p,
            };
            let child = match spawn(&config, &binary, client_port, peer_port) {
                Ok(c) => c,
                Err(e @ LocalEtcdError::PortInUse { .. }) if picked => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut etcd = Self {
                config: config.clone(),
                binary: binary.clone(),
                client_port,
                peer_port,
                child,
            };
            match etcd.wait_ready().await {
                Ok(()) => return Ok(etcd),
                Err(e @ LocalEtcdError::Exited { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(LocalEtcdError::Timeout(config.startup_timeout)))
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        url(self.config.host, self.client_port)
    }

    /// etcd's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The configuration it runs with (ports filled in by [`LocalEtcd::endpoint`]).
    pub fn config(&self) -> &LocalEtcdConfig {
        &self.config
    }

    /// Its exit status if it has exited (reaping it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Starts etcd again on the same ports and data after it exited (or stops it first).
    pub async fn restart(&mut self) -> Result<(), LocalEtcdError> {
        if self.exited().is_none() {
            self.terminate().await?;
        }
        self.child = spawn(&self.config, &self.binary, self.client_port, self.peer_port)?;
        self.wait_ready().await
    }

    /// Stops etcd: SIGTERM by pid, then SIGKILL if it has not exited within 5 s.
    pub async fn stop(mut self) -> Result<ExitStatus, LocalEtcdError> {
        self.terminate().await
    }

    /// Hands etcd to a task that restarts it whenever it exits, checking every `period`.
    pub fn supervise(self, period: Duration) -> EtcdSupervisor {
        EtcdSupervisor::start(self, period)
    }

    async fn terminate(&mut self) -> Result<ExitStatus, LocalEtcdError> {
        let pid = self.child.id();
        if let Some(s) = self.exited() {
            return Ok(s);
        }
        let stop_err = |source| LocalEtcdError::Stop { pid, source };
        let raw = libc::pid_t::try_from(pid)
            .map_err(|_| stop_err(io::Error::other("pid out of range")))?;
        // SAFETY: kill(2) only sends a signal; `raw` is our own child, not yet reaped (try_wait
        // above returned None), so the pid cannot have been reused by another process.
        if unsafe { libc::kill(raw, libc::SIGTERM) } != 0 {
            return Err(stop_err(io::Error::last_os_error()));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().map_err(stop_err)? {
                return Ok(s);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!(pid, "etcd ignored SIGTERM for 5 s; killing it");
        self.child.kill().map_err(stop_err)?;
        self.child.wait().map_err(stop_err)
    }

    async fn wait_ready(&mut self) -> Result<(), LocalEtcdError> {
        let start = Instant::now();
        let endpoint = self.endpoint();
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(500))
            .with_timeout(Duration::from_secs(1));
        loop {
            if let Some(status) = self.exited() {
                return Err(LocalEtcdError::Exited {
                    status,
                    log_tail: log_tail(self.config.log_file.as_deref()),
                });
            }
            if let Ok(mut c) = Client::connect([endpoint.as_str()], Some(options.clone())).await {
                // A linearizable read answers only once the member has a leader.
                if c.get("/ferry-store-probe", None).await.is_ok() && self.exited().is_none() {
                    return Ok(());
                }
            }
            if start.elapsed() > self.config.startup_timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(LocalEtcdError::Timeout(self.config.startup_timeout));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn spawn(
    config: &LocalEtcdConfig,
    binary: &Path,
    client_port: u16,
    peer_port: u16,
) -> Result<Child, LocalEtcdError> {
    check_free(config.host, client_port)?;
    check_free(config.host, peer_port)?;
    let client = url(config.host, client_port);
    let peer = url(config.host, peer_port);
    let mut cmd = Command::new(binary);
    cmd.arg("--name")
        .arg(&config.name)
        .arg("--data-dir")
        .arg(&config.data_dir)
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .arg("--initial-cluster")
        .arg(format!("{}={peer}", config.name))
        .arg("--heartbeat-interval")
        .arg(config.heartbeat.as_millis().to_string())
        .arg("--election-timeout")
        .arg(config.election_timeout.as_millis().to_string())
        .args([
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
            "--log-level",
            "warn",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    match &config.log_file {
        Some(p) => {
            let f = File::options()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|source| LocalEtcdError::Prepare {
                    path: p.clone(),
                    source,
                })?;
            cmd.stderr(f);
        }
        None => {
            cmd.stderr(Stdio::null());
        }
    }
    // Its own process group: a Ctrl-C at the terminal reaches the supervising program, which
    // stops etcd itself, instead of killing etcd behind the supervisor's back.
    cmd.process_group(0);
    if config.die_with_parent {
        // SAFETY: the closure runs in the forked child before exec. It only calls prctl(2),
        // which is async-signal-safe, allocates nothing and takes no lock.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.spawn().map_err(LocalEtcdError::Spawn)
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A [`LocalEtcd`] restarted whenever it exits.
#[derive(Debug)]
pub struct EtcdSupervisor {
    etcd: Arc<tokio::sync::Mutex<LocalEtcd>>,
    endpoint: String,
    pid: Arc<AtomicU32>,
    restarts: Arc<AtomicU32>,
    task: JoinHandle<()>,
}

impl EtcdSupervisor {
    fn start(etcd: LocalEtcd, period: Duration) -> Self {
        let endpoint = etcd.endpoint();
        let pid = Arc::new(AtomicU32::new(etcd.pid()));
        let restarts = Arc::new(AtomicU32::new(0));
        let etcd = Arc::new(tokio::sync::Mutex::new(etcd));
        let task = tokio::spawn({
            let (etcd, pid, restarts) = (etcd.clone(), pid.clone(), restarts.clone());
            async move {
                loop {
                    tokio::time::sleep(period).await;
                    let mut e = etcd.lock().await;
                    if let Some(status) = e.exited() {
                        tracing::warn!(%status, "local etcd exited; restarting it");
                        match e.restart().await {
                            Ok(()) => {
                                pid.store(e.pid(), Ordering::SeqCst);
                                restarts.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(err) => {
                                tracing::error!(error = %err, "restarting local etcd failed")
                            }
                        }
                    }
                }
            }
        });
        Self {
            etcd,
            endpoint,
            pid,
            restarts,
            task,
        }
    }

    /// The client URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The current etcd process id.
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
    }

    /// How many times etcd was restarted.
    pub fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::SeqCst)
    }

    /// Stops supervising and stops etcd.
    pub async fn stop(mut self) -> Result<ExitStatus, LocalEtcdError> {
        self.task.abort();
        let _ = (&mut self.task).await;
        let mut etcd = self.etcd.lock().await;
        etcd.terminate().await
    }
}

impl Drop for EtcdSupervisor {
    /// Stops supervising; etcd is killed when the last reference to it goes.
    fn drop(&mut self) {
        self.task.abort();
    }
}
