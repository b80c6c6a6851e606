//! The daemon: this host's VMs, its migrations in and out, its load, and the API server.

mod migrations;
mod state;
mod vms;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ferry_host::supervise::Auth;
use ferry_migrate::tls;
use tokio::sync::{broadcast, watch};

use crate::api::types::{CapacityInfo, DaemonEvent, HostInfo, LoadInfo};
use crate::client::{DaemonClient, Target};
use crate::config::{Capacity, DaemonConfig};
use crate::link::ClusterLink;
use crate::load::{self, CpuTimes};
use crate::metrics::Metrics;
use crate::rundir::RunDir;
use crate::server;
use crate::vm_process::Launcher;

pub use state::{Failure, State};

/// How often the daemon looks at its VM processes.
pub const MONITOR_PERIOD: Duration = Duration::from_millis(250);
/// How often it samples the host's load.
pub const LOAD_PERIOD: Duration = Duration::from_secs(2);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The run directory cannot be used.
    #[error("cannot use the run directory {}", path.display())]
    RunDir {
        /// It.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The certificates cannot be loaded.
    #[error("cannot load this host's TLS identity '{name}' from {}", dir.display())]
    Identity {
        /// The host's name.
        name: String,
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: tls::TlsError,
    },
    /// A listener cannot be set up.
    #[error(transparent)]
    Serve(#[from] server::ServeError),
    /// The `ferry` binary cannot be found.
    #[error("cannot find the ferry binary to start VMs with")]
    Binary(#[source] std::io::Error),
    /// The cluster store cannot be used.
    #[error(transparent)]
    Cluster(#[from] crate::link::LinkError),
}

/// TLS configurations made from this host's identity.
pub(crate) struct HostTls {
    pub(crate) server: Arc<rustls::ServerConfig>,
    pub(crate) client: Arc<rustls::ClientConfig>,
}

/// A running daemon's shared state (what API handlers see).
pub struct Daemon {
    pub(crate) cfg: DaemonConfig,
    pub(crate) capacity: Capacity,
    pub(crate) tls: Option<HostTls>,
    pub(crate) launcher: Launcher,
    state: Mutex<State>,
    events: broadcast::Sender<DaemonEvent>,
    pub(crate) metrics: Metrics,
    load: Mutex<LoadInfo>,
    /// The API's TCP addresses, ports resolved.
    api_addrs: Vec<SocketAddr>,
    /// The cluster store (with `[store]`).
    pub cluster: Option<Arc<ClusterLink>>,
}

impl Daemon {
    /// VMs on this host.
    pub fn vm_count(&self) -> usize {
        self.state().vm_count()
    }

    /// This host's name.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes an event to every subscriber (none listening is fine).
    pub(crate) fn publish(&self, e: DaemonEvent) {
        let _ = self.events.send(e);
    }

    /// A new subscription to the daemon's events.
    pub fn subscribe(&self) -> broadcast::Receiver<DaemonEvent> {
        self.events.subscribe()
    }

    /// This host's limits as the API shows them.
    pub fn capacity_info(&self) -> CapacityInfo {
        CapacityInfo {
            max_vms: self.capacity.max_vms,
            memory: self.capacity.memory,
            vcpus: self.capacity.vcpus,
            max_incoming: self.cfg.migration.max_incoming,
            max_outgoing: self.cfg.migration.max_outgoing,
        }
    }

    /// The latest load sample, with the VM and migration counts of now.
    pub fn load(&self) -> LoadInfo {
        let mut l = *self.load.lock().unwrap_or_else(|p| p.into_inner());
        self.state().fill_load(&mut l);
        l
    }

    /// The address other hosts dial for this host's API.
    pub fn api_advertise(&self) -> Option<String> {
        self.cfg
            .api
            .advertise
            .clone()
            .or_else(|| self.api_addrs.first().map(|a| a.to_string()))
    }

    /// `GET /v1/hosts/self`.
    pub fn host_info(&self) -> HostInfo {
        HostInfo {
            name: self.cfg.name.clone(),
            api: self.api_advertise(),
            migration_host: self.cfg.migration_advertise_host(),
            capacity: self.capacity_info(),
            load: self.load(),
            network_migrations: self.tls.is_some(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            state: None,
            alive: self.cluster.as_ref().map(|l| l.joined()),
            cpu_features: self.cluster.as_ref().map(|l| l.features.count()),
            leader: self.cluster.as_ref().map(|l| l.leader_state().leading),
        }
    }

    /// The Prometheus exposition text, host gauges refreshed.
    pub fn metrics_text(&self) -> String {
        self.metrics.set_load(&self.load());
        self.metrics.encode()
    }

    /// A client of another daemon's API, authenticated with this host's certificate.
    pub(crate) fn peer_client(&self, addr: &str, name: &str) -> Result<DaemonClient, Failure> {
        let Some(t) = &self.tls else {
            return Err(Failure::Refused(
                "this host has no certificates (certs_dir): it cannot migrate over the network"
                    .into(),
            ));
        };
        Ok(DaemonClient::new(Target::Tls {
            addr: addr.to_string(),
            server_name: name.to_string(),
            config: t.client.clone(),
        }))
    }

    async fn sample_load(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut prev: Option<CpuTimes> = None;
        let mut last = std::time::Instant::now();
        loop {
            let cpu = load::read_cpu();
            let mem = load::read_mem().unwrap_or_default();
            {
                let mut l = self.load.lock().unwrap_or_else(|p| p.into_inner());
                l.cpus = load::cpu_count();
                if let (Some(now), Some(before)) = (cpu, prev) {
                    l.cpu_usage = now.usage_since(&before);
                }
                l.memory_total = mem.total;
                l.memory_used = mem.used();
            }
            prev = cpu.or(prev);
            let pids = self.state().pids();
            let rss: Vec<(String, Option<u64>)> = pids
                .into_iter()
                .map(|(name, pid)| (name, load::process_rss(pid)))
                .collect();
            self.state().set_rss(rss);
            let cpu: Vec<(String, Option<f64>)> = self
                .state()
                .pids()
                .into_iter()
                .map(|(name, pid)| (name, load::process_cpu_seconds(pid)))
                .collect();
            let dt = last.elapsed().as_secs_f64();
            last = std::time::Instant::now();
            self.state().set_cpu(cpu, dt);
            self.metrics.set_load(&self.load());
            tokio::select! {
                _ = tokio::time::sleep(LOAD_PERIOD) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// A started daemon: its addresses, and how to stop it.
pub struct RunningDaemon {
    /// The shared state.
    pub daemon: Arc<Daemon>,
    /// The TCP addresses the API listens on (ports resolved).
    pub api_addrs: Vec<SocketAddr>,
    /// The local API socket.
    pub unix_socket: PathBuf,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningDaemon {
    /// Stops serving (the VMs keep running, to be adopted by the next daemon).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let _ = std::fs::remove_file(&self.unix_socket);
    }
}

/// Starts a daemon with `cfg` on the current tokio runtime: adopts the VMs in its run directory,
/// then serves the API.
pub async fn start(cfg: DaemonConfig) -> Result<RunningDaemon, StartError> {
    let link = ClusterLink::open(&cfg).await?.map(Arc::new);
    start_with(cfg, link).await
}

/// Starts a daemon with an already open cluster link (tests share one embedded store).
pub async fn start_with(
    cfg: DaemonConfig,
    cluster: Option<Arc<ClusterLink>>,
) -> Result<RunningDaemon, StartError> {
    let run = RunDir::open(&cfg.run_dir).map_err(|source| StartError::RunDir {
        path: cfg.run_dir.clone(),
        source,
    })?;
    let tls = match &cfg.certs_dir {
        Some(dir) => {
            let id =
                tls::Identity::from_dir(dir, &cfg.name).map_err(|source| StartError::Identity {
                    name: cfg.name.clone(),
                    dir: dir.clone(),
                    source,
                })?;
            let wrap = |source| StartError::Identity {
                name: cfg.name.clone(),
                dir: dir.clone(),
                source,
            };
            Some(HostTls {
                server: tls::server_config(&id).map_err(wrap)?,
                client: tls::client_config(&id).map_err(wrap)?,
            })
        }
        None => None,
    };
    let bin = match &cfg.ferry_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().map_err(StartError::Binary)?,
    };
    let auth = match &cfg.certs_dir {
        Some(dir) => Auth::Certs {
            dir: dir.clone(),
            name: cfg.name.clone(),
        },
        None => Auth::None,
    };
    let mem = load::read_mem().unwrap_or_default();
    let capacity = cfg.capacity(load::cpu_count(), mem.total);
    // Bound before anything else, so that a taken port fails the start at once.
    let mut listeners = Vec::new();
    if tls.is_some() {
        for addr in &cfg.api.listen {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| server::ServeError::Bind {
                    addr: addr.to_string(),
                    source,
                })?;
            listeners.push(l);
        }
    }
    let api_addrs: Vec<SocketAddr> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    let (events, _) = broadcast::channel(4096);
    let daemon = Arc::new(Daemon {
        capacity,
        tls,
        launcher: Launcher { bin, auth, run },
        state: Mutex::new(State::new(&cfg.name)),
        events,
        metrics: Metrics::new(&cfg.name),
        load: Mutex::new(LoadInfo::default()),
        api_addrs: api_addrs.clone(),
        cluster,
        cfg,
    });
    {
        let d = daemon.clone();
        tokio::task::spawn_blocking(move || d.adopt())
            .await
            .map_err(|e| StartError::RunDir {
                path: daemon.cfg.run_dir.clone(),
                source: std::io::Error::other(e),
            })?;
    }

    let (shutdown, rx) = watch::channel(false);
    let app = crate::api::router(daemon.clone());
    let mut tasks = Vec::new();
    let unix_socket = daemon.cfg.unix_socket();
    let unix = server::bind_unix(&unix_socket)?;
    tasks.push(tokio::spawn(server::serve_unix(
        unix,
        app.clone(),
        rx.clone(),
    )));
    if let Some(t) = &daemon.tls {
        for l in listeners {
            tasks.push(tokio::spawn(server::serve_tls(
                l,
                t.server.clone(),
                app.clone(),
                rx.clone(),
            )));
        }
    }
    tasks.push(tokio::spawn(daemon.clone().sample_load(rx.clone())));
    tasks.push(tokio::spawn(daemon.clone().monitor(rx.clone())));
    if let Some(link) = &daemon.cluster {
        tasks.push(tokio::spawn(
            daemon.clone().membership_loop(link.clone(), rx.clone()),
        ));
    }
    tracing::info!(
        host = %daemon.cfg.name,
        api = ?api_addrs,
        socket = %unix_socket.display(),
        vms = daemon.state().vm_count(),
        "ferry daemon serving"
    );
    Ok(RunningDaemon {
        daemon,
        api_addrs,
        unix_socket,
        shutdown,
        tasks,
    })
}
