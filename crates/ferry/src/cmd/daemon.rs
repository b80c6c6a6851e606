//! `ferry daemon --config FILE`: one per host; see docs/DAEMON.md.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use ferry_daemon::config::LogFormat;
use ferry_daemon::DaemonConfig;

/// `ferry daemon`.
#[derive(Args, Clone, Debug)]
pub struct DaemonArgs {
    /// The configuration file (TOML; see docs/DAEMON.md).
    #[arg(long)]
    pub config: PathBuf,
    /// Check the configuration file and exit.
    #[arg(long)]
    pub check: bool,
}

/// Sets up logging as the configuration says (`FERRY_LOG` overrides its level).
fn init_logging(cfg: &DaemonConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(cfg.log.level.as_deref().unwrap_or("info"))
    });
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log.format {
        LogFormat::Json => b.json().flatten_event(true).init(),
        LogFormat::Text => b.with_target(false).init(),
    }
}

/// Runs the daemon until SIGINT or SIGTERM. The VMs keep running when it stops.
pub fn run(a: DaemonArgs) -> anyhow::Result<ExitCode> {
    let cfg = DaemonConfig::load(&a.config)?;
    if a.check {
        println!(
            "{}: configuration of host {} is valid",
            a.config.display(),
            cfg.name
        );
        return Ok(ExitCode::SUCCESS);
    }
    init_logging(&cfg);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let running = ferry_daemon::start(cfg).await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot watch SIGTERM")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let vms = running.daemon.vm_count();
        tracing::info!(
            vms,
            "ferry daemon stopping; its VMs keep running and are adopted at the next start"
        );
        running.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}
