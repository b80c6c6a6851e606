//! Commands that drive daemons: `ferry vm list|run|stop --host H`, `ferry migrate VM --to HOST`.
//!
//! `--host NAME` is resolved through the cluster file (`--cluster FILE`, `$FERRY_CLUSTER` or
//! `~/.config/ferry/cluster.toml`); without it the command talks to this host's daemon on its
//! local socket.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use ferry_daemon::api::types::{
    CreateVm, DaemonEvent, MigrationInfo, MigrationState, StartMigration, VmInfo, VmWhere,
};
use ferry_daemon::cluster_config::ClusterConfig;
use ferry_daemon::DaemonClient;
use ferry_host::{MigrateExit, VmLocation};
use ferry_migrate::Event;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use crate::size::human;

/// Which daemon: `--host` and `--cluster`.
#[derive(Args, Clone, Debug, Default)]
pub struct DaemonSel {
    /// The host whose daemon to ask: a name from the cluster file, or unix:PATH for a daemon's
    /// socket (default: this host's daemon, on its local socket).
    #[arg(long = "host")]
    pub host: Option<String>,
    /// The cluster file (default: $FERRY_CLUSTER, else ~/.config/ferry/cluster.toml).
    #[arg(long)]
    pub cluster: Option<PathBuf>,
}

impl DaemonSel {
    /// The cluster file.
    pub fn config(&self) -> anyhow::Result<ClusterConfig> {
        Ok(ClusterConfig::discover(self.cluster.as_deref())?)
    }

    /// A client of the selected daemon.
    pub fn client(&self) -> anyhow::Result<DaemonClient> {
        Ok(DaemonClient::new(
            self.config()?.target(self.host.as_deref())?,
        ))
    }
}

/// Runs `f` on a small runtime.
pub fn block_on<T>(f: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(f)
}

/// `ferry vm list`.
#[derive(Args, Clone, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub daemon: DaemonSel,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Prints VMs as a table.
pub fn print_vms(vms: &[VmInfo]) {
    println!(
        "{:<16} {:<8} {:<14} {:>9} {:>5} {:>8} {:>9}  MIGRATION / DETAIL",
        "VM", "HOST", "STATE", "MEMORY", "VCPUS", "PID", "RSS"
    );
    for v in vms {
        let note = v
            .migration
            .clone()
            .or_else(|| v.detail.clone())
            .unwrap_or_default();
        println!(
            "{:<16} {:<8} {:<14} {:>9} {:>5} {:>8} {:>9}  {note}",
            v.name,
            v.host,
            v.state.to_string(),
            human(v.memory),
            v.vcpus,
            v.pid.map_or("-".into(), |p| p.to_string()),
            v.rss.map_or("-".into(), human),
        );
    }
}

/// `ferry vm list`.
pub fn list(a: ListArgs) -> anyhow::Result<ExitCode> {
    let client = a.daemon.client()?;
    let vms: Vec<VmInfo> = block_on(async { Ok(client.get("/v1/vms").await?) })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&vms)?);
    } else if vms.is_empty() {
        println!("no VMs on this host");
    } else {
        print_vms(&vms);
    }
    Ok(ExitCode::SUCCESS)
}

/// `ferry vm run --host H NAME`: asks the daemon to boot a VM.
pub fn run(
    daemon: &DaemonSel,
    name: &str,
    kernel: &std::path::Path,
    memory: u64,
    vcpus: u8,
    ram_backing: ferry_host::RamBackingChoice,
) -> anyhow::Result<ExitCode> {
    let client = daemon.client()?;
    // The daemon reads the image on its own host: send an absolute path.
    let kernel = if kernel.is_absolute() || daemon.host.is_some() {
        kernel.to_path_buf()
    } else {
        std::env::current_dir()?.join(kernel)
    };
    let req = CreateVm {
        name: name.to_string(),
        kernel: kernel.to_string_lossy().into_owned(),
        memory,
        vcpus,
        ram_backing,
    };
    let vm: VmInfo = block_on(async { Ok(client.post("/v1/vms", &req).await?) })?;
    println!(
        "VM {} running on {} ({}, {} vCPU{}, pid {}{})",
        vm.name,
        vm.host,
        human(vm.memory),
        vm.vcpus,
        if vm.vcpus == 1 { "" } else { "s" },
        vm.pid.map_or("?".into(), |p| p.to_string()),
        vm.ram_backing
            .map_or(String::new(), |b| format!(", guest RAM: {b}"))
    );
    Ok(ExitCode::SUCCESS)
}

/// `ferry vm stop --host H NAME`.
pub fn stop(daemon: &DaemonSel, name: &str) -> anyhow::Result<ExitCode> {
    let client = daemon.client()?;
    block_on(async {
        let (status, body) = client
            .raw(hyper::Method::POST, &format!("/v1/vms/{name}/stop"), None)
            .await?;
        if !status.is_success() {
            let msg = serde_json::from_slice::<ferry_daemon::api::types::ApiError>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            bail!("{msg}");
        }
        Ok(())
    })?;
    println!("VM {name} stopped");
    Ok(ExitCode::SUCCESS)
}

/// `ferry migrate VM --to HOST` through the daemons.
pub struct DaemonMigration<'a> {
    /// Which daemons.
    pub daemon: &'a DaemonSel,
    /// The VM's name.
    pub vm: &'a str,
    /// The destination host's name.
    pub to: &'a str,
    /// The request (its `to_api` filled in here).
    pub request: StartMigration,
    /// Print JSON instead of a progress bar and a report.
    pub json: bool,
}

/// Finds the daemon that has `vm`: `--host` when given, else this host's daemon, else every
/// host of the cluster file in turn.
async fn find_vm(sel: &DaemonSel, cfg: &ClusterConfig, vm: &str) -> anyhow::Result<DaemonClient> {
    if sel.host.is_some() {
        return sel.client();
    }
    let mut tried = Vec::new();
    let mut candidates = vec![None];
    candidates.extend(cfg.hosts.keys().map(|h| Some(h.as_str())));
    for host in candidates {
        let Ok(target) = cfg.target(host) else {
            continue;
        };
        let client = DaemonClient::new(target).with_timeout(Duration::from_secs(5));
        match client.get::<VmInfo>(&format!("/v1/vms/{vm}")).await {
            Ok(_) => return Ok(client),
            Err(e) => tried.push(format!("{}: {e}", host.unwrap_or("this host"))),
        }
    }
    bail!(
        "no daemon reports a VM named '{vm}' (asked {}); pass --host to name its host",
        tried.join("; ")
    )
}

/// Starts the migration at the source daemon and follows it to the end.
pub fn migrate(m: DaemonMigration<'_>) -> anyhow::Result<ExitCode> {
    let cfg = m.daemon.config()?;
    let mut req = m.request;
    req.vm = m.vm.to_string();
    req.to = m.to.to_string();
    if req.to_api.is_none() {
        req.to_api = cfg.api_of(m.to).map(str::to_string);
    }
    let json = m.json;
    let info = block_on(async {
        let source = find_vm(m.daemon, &cfg, m.vm).await?;
        let started: MigrationInfo = source.post("/v1/migrations", &req).await?;
        follow(&source, &started.id, !json).await
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    }
    Ok(outcome(&info, !json))
}

/// The exit code of an ended migration (printing the report or the failure when `show`).
fn outcome(info: &MigrationInfo, show: bool) -> ExitCode {
    match (&info.state, &info.report, &info.error) {
        (MigrationState::Completed, Some(r), _) => {
            if show {
                println!("VM {} migrated from {} to {}", info.vm, info.from, info.to);
                crate::cmd::migrate::print_report(r);
            }
            if r.digest_match == Some(false) {
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            }
        }
        (_, _, Some(e)) => {
            let loc = match e.vm {
                VmWhere::Source => VmLocation::Source,
                VmWhere::Destination => VmLocation::Destination,
                VmWhere::PausedRecoverable => VmLocation::PausedRecoverable,
                VmWhere::Unknown => VmLocation::Unknown,
            };
            eprintln!(
                "ferry: error: migration {} failed ({}): {}",
                info.id, e.cause, e.message
            );
            eprintln!("ferry: {}", ferry_host::outcome::location_text(loc));
            ExitCode::from(MigrateExit::for_location(Some(loc)).code())
        }
        _ => {
            eprintln!("ferry: error: migration {} ended without a report", info.id);
            ExitCode::from(MigrateExit::for_location(Some(VmLocation::Unknown)).code())
        }
    }
}

/// Follows migration `id` on the daemon's event stream until it ends; shows a progress bar.
pub async fn follow(client: &DaemonClient, id: &str, show: bool) -> anyhow::Result<MigrationInfo> {
    let bar = if show {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:<28} [{bar:30}] {pos}/{len} pages  {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    let say = |line: String| {
        if show && bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    };
    let events = client
        .clone()
        .with_timeout(Duration::from_secs(30))
        .events(&format!("?migration={id}"))
        .await?;
    futures_util::pin_mut!(events);
    let mut last = None;
    while let Some(e) = events.next().await {
        match e? {
            DaemonEvent::Migration { migration } => {
                if migration.state.is_final() {
                    last = Some(*migration);
                    break;
                }
                bar.set_message(format!("{:?}", migration.state).to_lowercase());
            }
            DaemonEvent::MigrationProgress { event, .. } => match event {
                Event::Phase { phase } => bar.set_message(format!(
                    "phase: {}",
                    serde_json::to_value(phase)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                )),
                Event::Progress {
                    round,
                    done,
                    total,
                    bytes,
                } => {
                    bar.set_length(total);
                    bar.set_position(done);
                    bar.set_message(format!("round {round} ({})", human(bytes)));
                }
                Event::Round(r) => say(format!(
                    "  round {:>2}: {:>7} pages in {:>6.1} ms, guest dirtied {} meanwhile",
                    r.round,
                    r.pages,
                    r.seconds * 1e3,
                    r.dirtied
                )),
                Event::Adapt { what } => say(format!("  adapt: {what}")),
            },
            DaemonEvent::Vm { .. } => {}
        }
    }
    bar.finish_and_clear();
    match last {
        Some(m) => Ok(m),
        // The stream ended early (the daemon restarted?): ask for the migration's state.
        None => Ok(client.get(&format!("/v1/migrations/{id}")).await?),
    }
}
