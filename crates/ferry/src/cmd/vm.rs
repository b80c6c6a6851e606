//! `ferry vm ...`: a process that hosts one VM (`run`, `receive`), and requests to such a process.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use ferry_host::outcome::describe;
use ferry_host::receive::{receive_vm, HostSlot, ReceiveNote, ReceiveSettings};
use ferry_host::supervise::{READY_RECEIVING, READY_RUNNING};
use ferry_host::{
    ControlClient, ControlServer, Endpoint, HostEnd, MigrationListener, Need, Security,
    SecurityConfig, ServerOptions, VmHost,
};
use ferry_vmm::devices::{Console, HeartbeatLog};
use ferry_vmm::{GuestRam, RamBackingChoice, RamRequest, Vm};

use crate::size::parse_size;

/// VM commands.
#[derive(Subcommand)]
pub enum VmCommand {
    /// Boot a multiboot v1 kernel image and serve the VM's control socket until it stops or leaves.
    Run(RunArgs),
    /// Wait for a VM to arrive by migration, run it, and serve its control socket.
    Receive(ReceiveArgs),
    /// Show a VM's status (VM, guest, migration in progress).
    Status(ControlArg),
    /// Cancel the migration in progress; the VM runs on at the source.
    Cancel(ControlArg),
    /// Change the bandwidth limit of the migration in progress (bytes/s like 100M, or 1gbit; 0 = none).
    Bandwidth {
        #[command(flatten)]
        control: ControlArg,
        /// New limit.
        #[arg(value_parser = crate::size::parse_rate)]
        rate: u64,
    },
    /// Stop a VM: one of a daemon (NAME, with --host), or the one behind --control.
    Stop(StopArgs),
    /// List the VMs of a host's daemon.
    List(crate::cmd::remote::ListArgs),
    /// Settle a migration whose outcome is unknown (`ferry migrate` exit 6): ask the destination,
    /// then resume the VM on at most one host.
    Resolve(crate::cmd::resolve::ResolveArgs),
}

/// `ferry vm stop`.
#[derive(Args, Clone, Debug)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["name", "control"])))]
pub struct StopArgs {
    /// The VM's name (a VM run by a daemon).
    pub name: Option<String>,
    /// The control socket of a VM host process (as printed by `ferry vm run`).
    #[arg(long, conflicts_with_all = ["host", "cluster"])]
    pub control: Option<PathBuf>,
    #[command(flatten)]
    pub daemon: crate::cmd::remote::DaemonSel,
}

/// A VM host's control socket.
#[derive(Args, Clone, Debug)]
pub struct ControlArg {
    /// The control socket (as printed by `ferry vm run` or `ferry vm receive`).
    #[arg(long)]
    pub control: PathBuf,
}

/// Where the guest's COM1 goes and where the host listens for commands.
#[derive(Args, Clone, Debug)]
pub struct HostArgs {
    /// Control socket (Unix, mode 0600) for `ferry migrate` and status queries. Default:
    /// vm-<pid>.sock in a private directory (mode 0700): $XDG_RUNTIME_DIR/ferry, /run/ferry for
    /// root, else $TMPDIR/ferry-<uid>. Put an explicit path in a directory only you can write.
    #[arg(long)]
    pub control: Option<PathBuf>,
    /// Copy the guest's COM1 output here, unbuffered: a file path, or `-` for stdout. Heartbeat bytes
    /// (0x80-0xFF) are passed through too, except when stdout is a terminal.
    #[arg(long)]
    pub serial: Option<String>,
    /// Directory with the cluster CA certificate and this host's certificate and key (from
    /// `ferry certs`). Every migration runs over TLS 1.3 with mutual authentication unless
    /// --insecure is given.
    #[arg(long)]
    pub certs: Option<PathBuf>,
    /// This host's name: its certificate is CERTS/NAME.pem with key CERTS/NAME.key.
    #[arg(long)]
    pub name: Option<String>,
    /// Revocation list (`ferry certs revoke`): peers whose certificate it names are refused at
    /// every handshake, in both directions; the file is read again at each handshake. Default:
    /// CERTS/revoked.txt when it exists.
    #[arg(long, requires = "certs")]
    pub revoked: Option<PathBuf>,
    /// Migrate in plaintext, without authentication: anyone on the network can read guest memory
    /// and anyone can send this host a VM. For isolated test networks only.
    #[arg(long, conflicts_with_all = ["certs", "name", "revoked"])]
    pub insecure: bool,
}

impl HostArgs {
    fn security(&self, allow: &[String], need: Need) -> anyhow::Result<Security> {
        let s = Security::load(
            &SecurityConfig {
                certs: self.certs.clone(),
                name: self.name.clone(),
                insecure: self.insecure,
                allow: allow.to_vec(),
                revoked: self.revoked.clone(),
            },
            need,
        )?;
        if let Security::Insecure = s {
            eprintln!(
                "ferry: WARNING: --insecure: migrations to and from this host are plaintext and unauthenticated; \
                 guest memory crosses the network readable by anyone"
            );
        }
        Ok(s)
    }

    fn control_path(&self) -> anyhow::Result<PathBuf> {
        match &self.control {
            Some(p) => Ok(p.clone()),
            None => Ok(ferry_host::socket::default_control_path(std::process::id())?),
        }
    }
}

/// `ferry vm run`.
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// The VM's name, to have a daemon run it (with --host, or this host's daemon with
    /// --daemon). Without it, this process hosts the VM itself.
    #[arg(requires = "on_daemon")]
    pub vm: Option<String>,
    /// Ask a daemon to run the VM: the host of a name from the cluster file, or unix:PATH.
    #[arg(long = "host", group = "on_daemon")]
    pub on_host: Option<String>,
    /// Ask this host's daemon (on its local socket) to run the VM.
    #[arg(long = "daemon", group = "on_daemon")]
    pub on_local_daemon: bool,
    /// The cluster file for --host (default: $FERRY_CLUSTER, else ~/.config/ferry/cluster.toml).
    #[arg(long)]
    pub cluster: Option<PathBuf>,
    /// Multiboot v1 kernel image (e.g. from `ferry guest build`).
    #[arg(long)]
    pub kernel: PathBuf,
    /// Guest RAM (multiple of 2 MiB).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub memory: u64,
    /// vCPUs (the first boots the kernel, the others wait for INIT/SIPI).
    #[arg(long, default_value_t = 1)]
    pub vcpus: u8,
    /// What guest RAM is made of: auto (the fastest the host offers: a hugetlb memfd when the
    /// 2 MiB pool has room, a memfd with shmem THP when shmem_enabled allows it, else anonymous
    /// memory with THP), anon, memfd (the only kind with 4 KiB pages everywhere; needed to hand RAM
    /// to a same-host destination without copying) or hugetlb. The choice and its reason are
    /// printed at start.
    #[arg(long, default_value = "auto")]
    pub ram_backing: RamBackingChoice,
    #[command(flatten)]
    pub host: HostArgs,
}

/// `ferry vm receive`.
#[derive(Args, Clone, Debug)]
pub struct ReceiveArgs {
    /// Address to accept migrations on (host:port; port 0 picks a free one, printed at start; or
    /// unix:PATH for a same-host migration, which needs no certificates).
    #[arg(long)]
    pub listen: Endpoint,
    /// Seconds the source may stay silent before the incoming migration is dropped.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// Do not fault guest RAM in on a background thread while the first pages arrive (saves memory
    /// for mostly empty guests; the copy then faults in each page it writes).
    #[arg(long)]
    pub no_prefault: bool,
    /// What the RAM of an arriving VM is made of (as for `vm run`). A migration that may end in
    /// post-copy never gets hugetlb RAM (post-copy places 4 KiB pages): the output says so. A VM
    /// handed over by a source on this host keeps the source's RAM.
    #[arg(long, default_value = "auto")]
    pub ram_backing: RamBackingChoice,
    /// Exit after one failed incoming migration instead of waiting for another.
    #[arg(long)]
    pub once: bool,
    /// Accept VMs only from peers whose certificate carries one of these names (repeatable; default:
    /// any peer the cluster CA signed).
    #[arg(long = "allow")]
    pub allow: Vec<String>,
    /// Before the arriving VM first runs, ask this Unix socket (its daemon) whether it may: the
    /// daemon records the VM as this host's; a refused VM never runs here.
    #[arg(long, value_name = "SOCKET")]
    pub commit_gate: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub host: HostArgs,
}

/// Runs a vm subcommand.
pub fn run(cmd: VmCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        VmCommand::Run(a) => match &a.vm {
            Some(name) => crate::cmd::remote::run(
                &crate::cmd::remote::DaemonSel {
                    host: a.on_host.clone(),
                    cluster: a.cluster.clone(),
                },
                name,
                &a.kernel,
                a.memory,
                a.vcpus,
                a.ram_backing,
            ),
            None if a.on_host.is_some() || a.on_local_daemon => {
                bail!("name the VM to run on a daemon: ferry vm run NAME --host HOST --kernel ...")
            }
            None => run_vm(a),
        },
        VmCommand::List(a) => crate::cmd::remote::list(a),
        VmCommand::Resolve(a) => crate::cmd::resolve::run(a),
        VmCommand::Receive(a) => receive(a),
        VmCommand::Status(c) => {
            let s = ControlClient::new(&c.control).status()?;
            println!("{}", serde_json::to_string_pretty(&s)?);
            Ok(ExitCode::SUCCESS)
        }
        VmCommand::Cancel(c) => {
            ControlClient::new(&c.control).cancel()?;
            println!("cancel requested (honoured until the migration's point of no return)");
            Ok(ExitCode::SUCCESS)
        }
        VmCommand::Bandwidth { control, rate } => {
            let now = ControlClient::new(&control.control).set_bandwidth(rate)?;
            println!(
                "bandwidth limit {now} bytes/s{}",
                if now == 0 { " (none)" } else { "" }
            );
            Ok(ExitCode::SUCCESS)
        }
        VmCommand::Stop(a) => match (&a.name, &a.control) {
            (Some(name), _) => crate::cmd::remote::stop(&a.daemon, name),
            (None, Some(control)) => {
                ControlClient::new(control).stop()?;
                println!("VM stopped");
                Ok(ExitCode::SUCCESS)
            }
            (None, None) => bail!("name a VM (with --host) or give --control"),
        },
    }
}

fn console(serial: &Option<String>) -> anyhow::Result<Console> {
    let (out, pass): (Option<Box<dyn Write + Send>>, bool) = match serial.as_deref() {
        None => (None, false),
        Some("-") => (
            Some(Box::new(std::io::stdout())),
            !std::io::stdout().is_terminal(),
        ),
        Some(path) => {
            let f = std::fs::File::create(path)
                .with_context(|| format!("cannot open serial output {path}"))?;
            (Some(Box::new(f)), true)
        }
    };
    Ok(Console::new(out, pass, HeartbeatLog::default()))
}

fn serve_control(
    path: &std::path::Path,
    handler: Arc<dyn ferry_host::Handler>,
) -> anyhow::Result<ControlServer> {
    let listener = ferry_host::socket::bind_private(path)
        .with_context(|| format!("cannot create control socket {}", path.display()))?;
    Ok(ControlServer::start(
        listener,
        path.to_path_buf(),
        handler,
        ServerOptions::default(),
    )?)
}

/// Waits for the VM to end, lets the control server answer its last requests, says how it ended.
fn until_end(host: &VmHost, server: ControlServer) -> ExitCode {
    let end = host.wait_end();
    server.shutdown(Duration::from_secs(5));
    match &end {
        HostEnd::GuestExited(reason) => eprintln!("ferry: guest stopped: {reason:?}"),
        HostEnd::Stopped => eprintln!("ferry: VM stopped on request"),
        HostEnd::Migrated { to } => eprintln!("ferry: VM migrated to {to}; source exits"),
    }
    ExitCode::from(end.exit_code())
}

fn run_vm(a: RunArgs) -> anyhow::Result<ExitCode> {
    let image = std::fs::read(&a.kernel)
        .with_context(|| format!("cannot read kernel image {}", a.kernel.display()))?;
    // A VM runs without certificates; they are needed only to migrate it over the network.
    let security = a.host.security(&[], Need::LocalOk)?;
    let path = a.host.control_path()?;
    let (ram, plan) = GuestRam::planned(&RamRequest {
        size: a.memory,
        choice: a.ram_backing,
        // The source side of any migration: pages are only read here.
        destination: false,
        may_postcopy: false,
    })
    .context("cannot create guest RAM")?;
    eprintln!("ferry: guest RAM: {plan}");
    if !plan.backing.shareable() {
        eprintln!(
            "ferry: note: anonymous RAM has no file: a same-host migration (--to unix:) copies it \
             over the socket instead of handing it over; --ram-backing memfd avoids that"
        );
    }
    let mut vm =
        Vm::with_ram(ram, a.vcpus, console(&a.host.serial)?).context("cannot create the VM")?;
    vm.boot_multiboot(&image)
        .with_context(|| format!("cannot load {}", a.kernel.display()))?;
    let host = Arc::new(VmHost::new(vm, security));
    let server = serve_control(&path, host.clone())?;
    eprintln!(
        "ferry: VM running ({} MiB); control socket {}",
        a.memory >> 20,
        path.display()
    );
    // The readiness line comes before the guest's first instruction (and its first COM1 byte).
    println!("{READY_RUNNING}{}", path.display());
    std::io::stdout().flush()?;
    host.resume()?;
    Ok(until_end(&host, server))
}

fn digest_text(m: Option<bool>) -> &'static str {
    match m {
        Some(true) => "matches",
        Some(false) => "MISMATCH",
        None => "not checked",
    }
}

fn receive(a: ReceiveArgs) -> anyhow::Result<ExitCode> {
    let listener = MigrationListener::bind(&a.listen)?;
    // Same host: the socket file's permissions (0600) guard it; no certificates needed.
    let security = if listener.is_local() {
        Security::LocalOnly
    } else {
        a.host.security(&a.allow, Need::Network)?
    };
    let path = a.host.control_path()?;
    let at = listener.endpoint();
    let slot = Arc::new(HostSlot::waiting(at.to_string()));
    let server = serve_control(&path, slot.clone())?;
    println!("{READY_RECEIVING}{at}");
    std::io::stdout().flush()?;
    let serial = a.host.serial.clone();
    let settings = ReceiveSettings {
        timeout: Duration::from_secs(a.timeout),
        once: a.once,
        prefault: !a.no_prefault,
        ram_backing: a.ram_backing,
        console: Box::new(move || {
            console(&serial).unwrap_or_else(|_| Console::new(None, false, HeartbeatLog::default()))
        }),
        gate: a.commit_gate.clone().map(ferry_host::gate::CommitGate::new),
    };
    let control = path.display().to_string();
    let mut note = |n: ReceiveNote| match n {
        ReceiveNote::Arrived {
            bytes,
            digest_match,
            postcopy_incomplete,
            ram,
        } => {
            eprintln!(
                "ferry: VM arrived ({} received, digest {}); control socket {control}",
                crate::size::human(bytes),
                digest_text(digest_match),
            );
            eprintln!("ferry: guest RAM: {ram}");
            if let Some(why) = postcopy_incomplete {
                eprintln!("ferry: WARNING: {why}");
            }
        }
        ReceiveNote::Failed(why) => eprintln!("ferry: incoming migration failed: {why}"),
        ReceiveNote::AwaitRecovery { missing_pages } => eprintln!(
            "ferry: waiting on {at} for the source to finish the migration \
             (`ferry migrate --recover --to {at}` on the source); {missing_pages} pages missing"
        ),
        ReceiveNote::RecoveryFailed(why) => {
            eprintln!("ferry: recovery attempt failed ({why}); the VM stays paused, still waiting")
        }
        ReceiveNote::Recovered {
            pages,
            digest_match,
        } => eprintln!(
            "ferry: post-copy recovered ({pages} pages, digest {}); the VM runs here",
            digest_text(digest_match)
        ),
    };
    let vm = match receive_vm(&listener, &security, settings, &slot, &mut note) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("ferry: incoming migration failed: {}", describe(&e));
            bail!("incoming migration failed");
        }
    };
    let host = Arc::new(VmHost::new(vm, security));
    slot.set_vm(host.clone());
    Ok(until_end(&host, server))
}
