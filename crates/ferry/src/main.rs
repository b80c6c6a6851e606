//! `ferry`: live migration of KVM virtual machines.

mod cmd;
mod size;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Live migration of KVM virtual machines.
///
/// Start with `ferry demo`: it boots a guest, migrates it live between two local hosts and prints
/// what it cost. Then use `ferry vm run` / `ferry vm receive` / `ferry migrate` to do the same by hand.
#[derive(Parser)]
#[command(name = "ferry", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Two hosts, a running guest, one live migration, and a report (downtime, time, bytes, integrity).
    Demo(cmd::demo::DemoArgs),
    /// Run a VM, or wait to receive one.
    #[command(subcommand)]
    Vm(cmd::vm::VmCommand),
    /// Migrate a VM: by name, from its daemon to another host's daemon (`ferry migrate VM --to
    /// HOST`), or a VM host process to a host waiting in `ferry vm receive` (`--vm SOCK --to ADDR`).
    Migrate(cmd::migrate::MigrateArgs),
    /// The host daemon: owns this host's VMs, sends and receives migrations, serves the API.
    Daemon(cmd::daemon::DaemonArgs),
    /// The cluster as its daemons see it.
    #[command(subcommand)]
    Cluster(cmd::cluster::ClusterCommand),
    /// Host operations (drain).
    #[command(subcommand)]
    Host(cmd::cluster::HostCommand),
    /// What the planner would do (--apply: do it).
    Plan(cmd::cluster::PlanArgs),
    /// Benchmarks that print ratios measured side by side in one run.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// Simulate a data centre over workload traces and compare planner policies.
    Sim(Box<ferry_sim::cli::SimArgs>),
    /// Create the cluster CA and host certificates that authenticate every migration.
    #[command(subcommand)]
    Certs(cmd::certs::CertsCommand),
    /// A network lab: hosts as namespaces on shaped links (root needed).
    #[command(subcommand)]
    Netlab(cmd::netlab::NetlabCommand),
    /// Build workload guest images.
    #[command(subcommand)]
    Guest(cmd::guest::GuestCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon sets up its own logging (JSON or text, from its configuration).
    if !matches!(cli.command, Command::Daemon(_)) {
        init_logging();
    }
    let result = match cli.command {
        Command::Demo(a) => cmd::demo::run(a),
        Command::Vm(c) => cmd::vm::run(c),
        Command::Migrate(a) => cmd::migrate::run(a),
        Command::Guest(c) => cmd::guest::run(c),
        Command::Netlab(c) => cmd::netlab::run(c),
        Command::Certs(c) => cmd::certs::run(c),
        Command::Bench(c) => cmd::bench::run(c),
        Command::Sim(a) => ferry_sim::cli::run(&a)
            .map(|()| ExitCode::SUCCESS)
            .map_err(Into::into),
        Command::Daemon(a) => cmd::daemon::run(a),
        Command::Cluster(cmd::cluster::ClusterCommand::Status(a)) => cmd::cluster::status(a),
        Command::Host(cmd::cluster::HostCommand::Drain(a)) => cmd::cluster::drain(a),
        Command::Plan(a) => cmd::cluster::plan(a),
    };
    finish(result)
}

/// The engine reports what it survived (a verification that did not complete, a fault it could
/// not serve) as tracing warnings: print them on stderr. FERRY_LOG=debug shows more.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
}

fn finish(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
