//! `ferry vm run` and `ferry vm receive`: a process that hosts one VM and serves its control socket.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use ferry_migrate::channel::Stream;
use ferry_migrate::rate::RateLimit;
use ferry_migrate::tls;
use ferry_migrate::{
    migrate_out, receive, KvmSinkFactory, MigrateError, ReceiveOptions, SourceOptions, Strategy,
};
use ferry_vmm::clock::monotonic_ns;
use ferry_vmm::devices::{Console, HeartbeatLog};
use ferry_vmm::{ExitReason, Vm, VmConfig};
use serde_json::json;

use crate::control::{MigrateRequest, Request};
use crate::guest_probe;
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
    /// Control socket (Unix) for `ferry migrate` and status queries. Default: $TMPDIR/ferry-<pid>.sock.
    #[arg(long)]
    pub control: Option<PathBuf>,
    /// Copy the guest's COM1 output here, unbuffered: a file path, or `-` for stdout. Heartbeat bytes
    /// (0x80-0xFF) are passed through too, except when stdout is a terminal.
    #[arg(long)]
    pub serial: Option<String>,
    /// Directory with the cluster CA and this host's certificate (from `ferry certs`). Every
    /// migration runs over TLS 1.3 with mutual authentication unless --insecure is given.
    #[arg(long)]
    pub certs: Option<PathBuf>,
    /// This host's name: its certificate is CERTS/NAME.pem with key CERTS/NAME.key.
    #[arg(long)]
    pub name: Option<String>,
    /// Migrate in plaintext, without authentication: anyone on the network can read guest memory
    /// and anyone can send this host a VM. For isolated test networks only.
    #[arg(long, conflicts_with_all = ["certs", "name"])]
    pub insecure: bool,
    /// Set by commands that can run without certificates until a network migration is asked for.
    #[arg(skip)]
    pub local_ok: bool,
}

/// How this host protects migrations.
pub enum Security {
    /// Plaintext (--insecure).
    Insecure,
    /// No certificates configured: only same-host (Unix socket) migrations are possible.
    LocalOnly,
    /// TLS 1.3, mutual authentication.
    Tls {
        /// For migrating out.
        client: Arc<rustls::ClientConfig>,
        /// For migrations coming in.
        server: Arc<rustls::ServerConfig>,
        /// Who may send us a VM.
        policy: tls::Policy,
    },
}

impl HostArgs {
    /// Loads certificates (or accepts --insecure, loudly).
    pub fn security(&self, allow: &[String]) -> anyhow::Result<Security> {
        if self.insecure {
            eprintln!(
                "ferry: WARNING: --insecure: migrations to and from this host are plaintext and unauthenticated; \
                 guest memory crosses the network readable by anyone"
            );
            return Ok(Security::Insecure);
        }
        let (Some(dir), Some(name)) = (&self.certs, &self.name) else {
            if allow.is_empty() && self.local_ok {
                return Ok(Security::LocalOnly);
            }
            bail!(
                "migrations need TLS certificates: pass --certs DIR --name NAME (create them with \
                 `ferry certs init` and `ferry certs issue NAME`), or --insecure for a plaintext test setup"
            );
        };
        let id = tls::Identity::from_dir(dir, name).with_context(|| {
            format!("cannot load the TLS identity {name} from {}", dir.display())
        })?;
        Ok(Security::Tls {
            client: tls::client_config(&id)?,
            server: tls::server_config(&id)?,
            policy: tls::Policy {
                allowed: allow.to_vec(),
            },
        })
    }
}

/// `ferry vm run`.
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// Multiboot v1 kernel image (e.g. from `ferry guest build`).
    #[arg(long)]
    pub kernel: PathBuf,
    /// Guest RAM (multiple of 2 MiB).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub memory: u64,
    /// vCPUs (the first boots the kernel, the others wait for INIT/SIPI).
    #[arg(long, default_value_t = 1)]
    pub vcpus: u8,
    #[command(flatten)]
    pub host: HostArgs,
}

/// `ferry vm receive`.
#[derive(Args, Clone, Debug)]
pub struct ReceiveArgs {
    /// Address to accept migrations on (host:port; port 0 picks a free one, printed at start).
    #[arg(long)]
    pub listen: String,
    /// Seconds the source may stay silent before the incoming migration is dropped.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// Do not fault guest RAM in when the VM is created (saves memory for mostly empty guests; makes
    /// the copy slower, since first-touch faults are expensive on nested KVM).
    #[arg(long)]
    pub no_prefault: bool,
    /// Exit after one failed incoming migration instead of waiting for another.
    #[arg(long)]
    pub once: bool,
    /// Accept VMs only from peers whose certificate carries one of these names (repeatable; default:
    /// any peer the cluster CA signed).
    #[arg(long = "allow")]
    pub allow: Vec<String>,
    #[command(flatten)]
    pub host: HostArgs,
}

/// Runs a vm subcommand.
pub fn run(cmd: VmCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        VmCommand::Run(a) => run_vm(a),
        VmCommand::Receive(a) => receive_vm(a),
        VmCommand::Status(c) => ask(&c.control, &Request::Status),
        VmCommand::Cancel(c) => ask(&c.control, &Request::Cancel),
        VmCommand::Bandwidth { control, rate } => ask(
            &control.control,
            &Request::SetBandwidth {
                bytes_per_sec: rate,
            },
        ),
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

fn control_path(host: &HostArgs) -> PathBuf {
    host.control
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("ferry-{}.sock", std::process::id())))
}

fn run_vm(a: RunArgs) -> anyhow::Result<ExitCode> {
    let image = std::fs::read(&a.kernel)
        .with_context(|| format!("cannot read kernel image {}", a.kernel.display()))?;
    // A VM runs without certificates; they are needed only to migrate it over the network.
    let security = HostArgs {
        local_ok: true,
        ..a.host.clone()
    }
    .security(&[])?;
    let control = bind_control(&control_path(&a.host))?;
    let mut vm = Vm::new(
        VmConfig {
            memory: a.memory,
            vcpus: a.vcpus,
        },
        console(&a.host.serial)?,
    )
    .context("cannot create the VM")?;
    vm.boot_multiboot(&image)
        .with_context(|| format!("cannot load {}", a.kernel.display()))?;
    vm.resume()?;
    eprintln!(
        "ferry: VM running ({} MiB); control socket {}",
        a.memory >> 20,
        control.1.display()
    );
    serve(vm, control, &security)
}

fn receive_vm(a: ReceiveArgs) -> anyhow::Result<ExitCode> {
    let listener = Listener::bind(&a.listen)?;
    // Same host: the socket file's permissions (0600) guard it; no certificates needed.
    let security = match listener {
        Listener::Unix(..) => Security::LocalOnly,
        Listener::Tcp(_) => a.host.security(&a.allow)?,
    };
    let control = bind_control(&control_path(&a.host))?;
    println!("listening on {}", listener.address());
    std::io::stdout().flush()?;
    let serial = a.host.serial.clone();
    let mut factory = KvmSinkFactory {
        console: Box::new(move || {
            console(&serial).unwrap_or_else(|_| Console::new(None, false, HeartbeatLog::default()))
        }),
        prefault: !a.no_prefault,
    };
    let opts = ReceiveOptions {
        timeout: Duration::from_secs(a.timeout),
    };
    loop {
        let mut accept = || -> std::io::Result<Stream> {
            let s = match &listener {
                Listener::Unix(l, _) => return l.accept().map(|(s, _)| Stream::Unix(s)),
                Listener::Tcp(l) => l.accept()?.0,
            };
            match &security {
                Security::Insecure => Ok(Stream::Tcp(s)),
                Security::LocalOnly => Err(std::io::Error::other(
                    "TCP migrations need TLS certificates",
                )),
                Security::Tls { server, policy, .. } => {
                    tls::accept(s, server, policy, opts.timeout)
                        .map_err(|e| std::io::Error::other(chain(&e)))
                }
            }
        };
        match receive(&mut accept, &mut factory, &opts) {
            Ok(incoming) => {
                eprintln!(
                    "ferry: VM arrived ({} received, digest {}); control socket {}",
                    crate::size::human(incoming.bytes),
                    match incoming.digest_match {
                        Some(true) => "matches",
                        Some(false) => "MISMATCH",
                        None => "not checked",
                    },
                    control.1.display()
                );
                if let Some(why) = &incoming.postcopy_incomplete {
                    eprintln!("ferry: WARNING: {why}");
                }
                let mut sink = incoming.sink;
                if let Some(rec) = incoming.recovery {
                    // The guest stays paused here (its missing pages can never read as zero) until
                    // the source reconnects with the same migration and sends them.
                    eprintln!(
                        "ferry: waiting on {} for the source to finish the migration \
                         (`ferry migrate --recover --to {}` on the source); {} pages missing",
                        listener.address(),
                        listener.address(),
                        rec.missing_pages()
                    );
                    loop {
                        match ferry_migrate::recovery::recover_in(&mut accept, &mut sink, &rec, &opts)
                        {
                            Ok(done) => {
                                eprintln!(
                                    "ferry: post-copy recovered ({} pages, digest {}); the VM runs here",
                                    done.pages,
                                    match done.digest_match {
                                        Some(true) => "matches",
                                        Some(false) => "MISMATCH",
                                        None => "not checked",
                                    }
                                );
                                break;
                            }
                            Err(e) => eprintln!(
                                "ferry: recovery attempt failed ({}); the VM stays paused, still waiting",
                                chain(&e)
                            ),
                        }
                    }
                }
                return serve(sink.vm, control, &security);
            }
            Err(e) => {
                eprintln!("ferry: incoming migration failed: {}", chain(&e));
                if a.once {
                    bail!("incoming migration failed");
                }
            }
        }
    }
}

/// Formats an error with its causes, each once.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

struct ControlSocket(UnixListener, PathBuf);

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.1);
    }
}

fn bind_control(path: &Path) -> anyhow::Result<ControlSocket> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!(
                "control socket {} is in use by another ferry process",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let l = UnixListener::bind(path)
        .with_context(|| format!("cannot create control socket {}", path.display()))?;
    l.set_nonblocking(true)?;
    Ok(ControlSocket(l, path.to_path_buf()))
}

fn serve(mut vm: Vm, control: ControlSocket, security: &Security) -> anyhow::Result<ExitCode> {
    let mut paused_unknown = false;
    // The id of a post-copy whose link failed: `ferry migrate --recover` finishes it.
    let mut interrupted: Option<[u8; 16]> = None;
    loop {
        if let Some(reason) = vm.exit_reason() {
            eprintln!("ferry: guest stopped: {reason:?}");
            return Ok(match reason {
                ExitReason::Guest(0) => ExitCode::SUCCESS,
                ExitReason::Guest(c) => ExitCode::from(c),
                _ => ExitCode::from(2),
            });
        }
        let stream = match control.0.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(e).context("control socket"),
        };
        stream.set_nonblocking(false)?;
        let mut out = stream.try_clone()?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line)?;
        let reply = match serde_json::from_str::<Request>(&line) {
            Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
            Ok(Request::Status) => status(&vm, paused_unknown),
            Ok(Request::Verify) => match guest_probe::verify(vm.ram(), Duration::from_secs(60)) {
                Ok(v) => json!({"ok": true, "verify": v}),
                Err(e) => json!({"ok": false, "error": e}),
            },
            Ok(Request::Stop) => {
                vm.pause()?;
                let _ = writeln!(out, "{}", json!({"ok": true}));
                eprintln!("ferry: VM stopped on request");
                return Ok(ExitCode::SUCCESS);
            }
            Ok(Request::Cancel | Request::SetBandwidth { .. }) => {
                json!({"ok": false, "error": "no migration in progress"})
            }
            Ok(Request::Migrate(req)) if req.recover && interrupted.is_none() => {
                json!({"ok": false, "error": "no interrupted post-copy to recover on this host"})
            }
            // The guest may be running (or waiting for pages) on the earlier destination: a new
            // migration from this copy could make a second one.
            Ok(Request::Migrate(req)) if !req.recover && paused_unknown => json!({
                "ok": false,
                "error": "an earlier migration of this VM did not finish cleanly (see `ferry vm status`); \
                          finish a post-copy with `ferry migrate --recover`, or resolve it by hand"
            }),
            Ok(Request::Migrate(req)) => {
                let id = match (req.recover, interrupted) {
                    (true, Some(id)) => id,
                    _ => ferry_migrate::source::new_migration_id(),
                };
                match migrate_serving_control(&mut vm, &req, id, &mut out, security, &control.0) {
                    Ok(report) => {
                        let _ = writeln!(out, "{}", json!({"ok": true, "report": report}));
                        // The VM lives on the destination now: scrub our copy before we go (unless
                        // it was handed over: then it is the destination's RAM).
                        if report.strategy_used != ferry_migrate::source::HANDOVER {
                            let _ = vm.ram().scrub();
                        }
                        eprintln!("ferry: VM migrated to {}; source exits", req.to);
                        return Ok(ExitCode::SUCCESS);
                    }
                    Err(e) => {
                        paused_unknown |= matches!(
                            e,
                            MigrateError::OutcomeUnknown(_) | MigrateError::PostcopyInterrupted(_)
                        );
                        if matches!(e, MigrateError::PostcopyInterrupted(_)) {
                            interrupted = Some(id);
                        }
                        let hint = if interrupted.is_some() {
                            "; the guest is paused on both hosts and nothing is lost: `ferry migrate --recover` with the same --to finishes the migration"
                        } else {
                            ""
                        };
                        json!({"ok": false, "error": format!("{}{hint}", chain(&e))})
                    }
                }
            }
        };
        let _ = writeln!(out, "{reply}");
    }
}

fn status(vm: &Vm, paused_unknown: bool) -> serde_json::Value {
    let hb = vm.heartbeats();
    let (count, median) = hb
        .lock()
        .map(|l| (l.snapshot().count, l.median_gap()))
        .unwrap_or_default();
    json!({
        "ok": true,
        "vm": {
            "running": vm.is_running(),
            "memory": vm.ram().size(),
            "vcpus": vm.vcpu_count(),
            "heartbeats_seen": count,
            "heartbeat_period_ms": median.map(|m| m as f64 / 1e6),
            "outcome_unknown": paused_unknown,
        },
        "guest": guest_probe::status(vm.ram()),
        "console": vm.console_text(),
    })
}

/// Runs a migration while a second thread keeps answering the control socket, so a user can cancel
/// it or change its bandwidth limit.
fn migrate_serving_control(
    vm: &mut Vm,
    req: &MigrateRequest,
    id: [u8; 16],
    out: &mut UnixStream,
    security: &Security,
    listener: &UnixListener,
) -> Result<ferry_migrate::Report, MigrateError> {
    let cancel = Arc::new(AtomicBool::new(false));
    let limit = Arc::new(RateLimit::new(req.max_bandwidth));
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => answer_during_migration(stream, &cancel, &limit),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        let r = migrate(vm, req, id, out, security, cancel.clone(), limit.clone());
        done.store(true, Ordering::SeqCst);
        r
    })
}

fn answer_during_migration(stream: UnixStream, cancel: &AtomicBool, limit: &RateLimit) {
    let _ = stream.set_nonblocking(false);
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut line = String::new();
    if BufReader::new(stream).read_line(&mut line).is_err() {
        return;
    }
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(Request::Cancel) => {
            cancel.store(true, Ordering::SeqCst);
            json!({"ok": true, "cancel": "requested (honoured until the point of no return)"})
        }
        Ok(Request::SetBandwidth { bytes_per_sec }) => {
            limit.set(bytes_per_sec);
            json!({"ok": true, "max_bandwidth": bytes_per_sec})
        }
        Ok(Request::Status) => json!({"ok": true, "migrating": true, "max_bandwidth": limit.get()}),
        Ok(_) => {
            json!({"ok": false, "error": "a migration is in progress; only status, cancel and bandwidth changes are possible"})
        }
        Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
    };
    let _ = writeln!(out, "{reply}");
}

fn migrate(
    vm: &mut Vm,
    req: &MigrateRequest,
    id: [u8; 16],
    out: &mut UnixStream,
    security: &Security,
    cancel: Arc<AtomicBool>,
    limit: Arc<RateLimit>,
) -> Result<ferry_migrate::Report, MigrateError> {
    let strategy: Strategy = req.strategy.parse().map_err(MigrateError::Config)?;
    let compression = req
        .compression
        .parse()
        .map_err(|e| MigrateError::Config(format!("{e}")))?;
    let unix_target = req.to.strip_prefix("unix:").map(PathBuf::from);
    let addr = if unix_target.is_some() {
        "127.0.0.1:0"
    } else {
        req.to.as_str()
    }
    .to_socket_addrs()
    .map_err(MigrateError::io(format!("cannot resolve {}", req.to)))?
    .next()
    .ok_or_else(|| MigrateError::Config(format!("{} resolves to no address", req.to)))?;
    let opts = SourceOptions {
        cancel,
        max_bandwidth: limit,
        strategy,
        downtime_target: Duration::from_millis(req.downtime_ms),
        max_rounds: req.max_rounds,
        channels: req.channels,
        encoder: ferry_wire::codec::EncoderConfig {
            compression,
            ..Default::default()
        },
        verify: req.verify,
        migration_id: Some(id),
        ..SourceOptions::default()
    };
    let server_name = req.tls_name.clone().unwrap_or_else(|| host_part(&req.to));
    let transport = std::sync::Mutex::new(String::from("tcp, plaintext (--insecure)"));
    if unix_target.is_none() && matches!(security, Security::LocalOnly) {
        return Err(MigrateError::Config(
            "migrating over the network needs TLS certificates: start the VM with --certs DIR --name NAME \
             (see `ferry certs`), or --insecure for a plaintext test setup; same-host migrations (--to unix:PATH) need none"
                .into(),
        ));
    }
    if unix_target.is_some() {
        if let Ok(mut t) = transport.lock() {
            *t = "unix socket, same host (guest RAM handed over as a file)".into();
        }
    }
    let connect = || -> std::io::Result<Stream> {
        if let Some(path) = &unix_target {
            return UnixStream::connect(path).map(Stream::Unix);
        }
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        match security {
            Security::Insecure => Ok(Stream::Tcp(s)),
            Security::LocalOnly => Err(std::io::Error::other(
                "TCP migrations need TLS certificates",
            )),
            Security::Tls { client, .. } => {
                let stream = tls::connect(s, client, &server_name, Duration::from_secs(10))
                    .map_err(|e| std::io::Error::other(chain(&e)))?;
                if let (Ok(mut t), Some(suite)) = (transport.lock(), tls::cipher_suite(&stream)) {
                    *t = format!("TLS 1.3, {suite}, mutual authentication ({server_name})");
                }
                Ok(stream)
            }
        }
    };
    let start_ns = monotonic_ns();
    let mut events = |e: ferry_migrate::Event| {
        let _ = writeln!(out, "{}", json!({ "event": e }));
    };
    let result = if req.recover {
        ferry_migrate::recovery::recover_out(vm, &connect, &opts)
    } else {
        migrate_out(vm, &connect, &opts, &mut events)
    };
    let hb = vm.heartbeats();
    result.map(|mut r| {
        r.transport = transport.lock().map(|t| t.clone()).unwrap_or_default();
        r.source_max_gap_ms = hb
            .lock()
            .ok()
            .and_then(|l| l.max_gap_since(start_ns))
            .map(|g| g as f64 / 1e6);
        r
    })
}

/// The host part of `host:port` (brackets of an IPv6 literal removed): the name TLS checks.
fn host_part(addr: &str) -> String {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

/// Sends one request to a VM host and prints its answer.
fn ask(socket: &Path, req: &Request) -> anyhow::Result<ExitCode> {
    let reply = crate::control::call(socket, req, |_| {})?;
    println!("{}", serde_json::to_string_pretty(&reply)?);
    Ok(ExitCode::SUCCESS)
}

/// Where `vm receive` waits: TCP (`host:port`) or a Unix socket (`unix:PATH`, same host only).
enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    fn bind(addr: &str) -> anyhow::Result<Listener> {
        if let Some(path) = addr.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if path.exists() {
                if UnixStream::connect(&path).is_ok() {
                    bail!("{} is in use by another process", path.display());
                }
                std::fs::remove_file(&path)
                    .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
            }
            let l =
                UnixListener::bind(&path).with_context(|| format!("cannot listen on {addr}"))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            return Ok(Listener::Unix(l, path));
        }
        Ok(Listener::Tcp(
            TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?,
        ))
    }

    fn address(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Listener::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}
