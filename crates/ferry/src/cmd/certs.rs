//! `ferry certs`: the cluster CA and host certificates that every migration authenticates with.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use ferry_migrate::tls::certs;

/// Certificate commands.
#[derive(Subcommand)]
pub enum CertsCommand {
    /// Create a cluster CA (ca.pem, ca.key) in a directory.
    Init(InitArgs),
    /// Issue a host certificate (NAME.pem, NAME.key) signed by the CA in the directory.
    Issue(IssueArgs),
}

/// `ferry certs init`.
#[derive(Args, Clone, Debug)]
pub struct InitArgs {
    /// Directory for the CA (created if missing; an existing CA is never replaced).
    #[arg(long, default_value = "ferry-certs")]
    pub dir: PathBuf,
    /// Days the CA is valid.
    #[arg(long, default_value_t = 3650)]
    pub days: i64,
}

/// `ferry certs issue`.
#[derive(Args, Clone, Debug)]
pub struct IssueArgs {
    /// The host's name: the file name, and the name peers check (also allowed: an IP address).
    pub name: String,
    /// More names or IP addresses the certificate is valid for (repeatable).
    #[arg(long = "san")]
    pub sans: Vec<String>,
    /// Directory holding the CA.
    #[arg(long, default_value = "ferry-certs")]
    pub dir: PathBuf,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = 365)]
    pub days: i64,
}

/// Runs a certs subcommand.
pub fn run(cmd: CertsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CertsCommand::Init(a) => {
            let p = certs::init_ca(&a.dir, a.days).context("cannot create the cluster CA")?;
            println!(
                "cluster CA written to {} (key beside it, mode 0600)",
                p.display()
            );
        }
        CertsCommand::Issue(a) => {
            let mut names = vec![a.name.clone()];
            names.extend(a.sans);
            let p = certs::issue(&a.dir, &names, a.days)
                .with_context(|| format!("cannot issue a certificate for {}", a.name))?;
            println!(
                "certificate for {} written to {} (valid for: {})",
                a.name,
                p.display(),
                names.join(", ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
