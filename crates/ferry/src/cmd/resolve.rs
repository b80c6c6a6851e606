//! `ferry vm resolve`: settles a migration whose outcome is unknown by asking the destination, and
//! resumes the VM on at most one host.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use ferry_host::resolve::{decide, Peer, Resolution};
use ferry_host::{ControlClient, MigrateExit};

/// `ferry vm resolve`.
#[derive(Args, Clone, Debug)]
#[command(
    group(clap::ArgGroup::new("peer_info").required(true).args(["peer", "peer_gone"])),
    after_help = "Exit codes (where the VM is afterwards):
  0  on the destination (the source's paused copy was stopped), or nothing was in doubt
  4  on the source: it runs there again (the destination holds no copy)
  5  paused on the destination, waiting for its pages: `ferry migrate --recover` finishes it
  6  still undecided: nothing was changed (the message says what would settle it)"
)]
pub struct ResolveArgs {
    /// The control socket of the source's VM host (the copy kept paused).
    #[arg(long)]
    pub control: PathBuf,
    /// The control socket of the destination's VM host (`ferry vm receive --control`).
    #[arg(long)]
    pub peer: Option<PathBuf>,
    /// The destination host is gone for good (powered off, fenced, its process killed): resume
    /// the VM here as it was at the switch-over; whatever the guest did on the destination since
    /// is lost with that host.
    #[arg(long)]
    pub peer_gone: bool,
}

/// Runs `ferry vm resolve`.
pub fn run(a: ResolveArgs) -> anyhow::Result<ExitCode> {
    let source = ControlClient::new(&a.control).with_deadline(Duration::from_secs(5));
    let status = source.status()?;
    let peer = match &a.peer {
        _ if a.peer_gone => Peer::Gone,
        Some(p) => match ControlClient::new(p)
            .with_deadline(Duration::from_secs(5))
            .status()
        {
            Ok(s) => Peer::Status(s),
            Err(e) => Peer::Unreachable(ferry_host::outcome::describe(&e)),
        },
        None => unreachable!("clap requires --peer or --peer-gone"),
    };
    let exit = match decide(&status, &peer) {
        Resolution::Nothing(why) => {
            println!("nothing to resolve: {why}");
            MigrateExit::Migrated
        }
        Resolution::StopSource => {
            source.stop()?;
            println!(
                "the destination has the VM: the paused copy on the source is stopped; the VM \
                 runs on the destination only"
            );
            MigrateExit::Migrated
        }
        Resolution::ResumeSource { rollback } => {
            source.resume(rollback)?;
            println!(
                "the destination holds no copy: the VM runs on the source again, as it was at the \
                 switch-over (what the guest did on the destination since, if it ran there, is \
                 lost)"
            );
            MigrateExit::OnSource
        }
        Resolution::Recover => {
            eprintln!(
                "ferry: the destination waits for the rest of an interrupted post-copy: finish it \
                 with `ferry migrate --vm {} --to ADDR --recover` (the same --to)",
                a.control.display()
            );
            MigrateExit::Recoverable
        }
        Resolution::Undecided(why) => {
            eprintln!("ferry: not resolved, nothing changed: {why}");
            MigrateExit::Unknown
        }
    };
    Ok(ExitCode::from(exit.code()))
}
