//! `ferry certs`: the cluster CA and host certificates that every migration authenticates with.
//!
//! The operator keeps the CA (`init`) on a machine of their own and gives each host only a bundle
//! (`issue NAME --bundle DIR`: the host's key and certificate, the CA certificate, the revocation
//! list). `revoke` adds a certificate to the revocation list, which hosts read at every handshake.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use ferry_migrate::tls::certs;
use ferry_migrate::tls::revoke::Revoked;

/// Certificate commands.
#[derive(Subcommand)]
pub enum CertsCommand {
    /// Create a cluster CA (ca.pem, ca.key) in a directory; keep it on the operator's machine.
    Init(InitArgs),
    /// Issue a host certificate (NAME.pem, NAME.key) signed by the CA, into the CA's directory or
    /// (--bundle) into a directory of its own to copy to the host.
    Issue(IssueArgs),
    /// Revoke a certificate (by host name or serial number): appended to DIR/revoked.txt, which
    /// every host must get a copy of (CERTS/revoked.txt, or --revoked FILE).
    Revoke(RevokeArgs),
}

/// `ferry certs init`.
#[derive(Args, Clone, Debug)]
pub struct InitArgs {
    /// Directory for the CA (created 0700 if missing; an existing CA is never replaced).
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
    /// Write the host's bundle here (created 0700): its key and certificate, the CA certificate and
    /// the revocation list, and not the CA key. Copy this directory, and only it, to the host.
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = 365)]
    pub days: i64,
}

/// `ferry certs revoke`.
#[derive(Args, Clone, Debug)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["name", "serial"]))]
pub struct RevokeArgs {
    /// A name the certificate carries (its host name or one of its --san names).
    pub name: Option<String>,
    /// The certificate's serial number, as `ferry certs issue` printed it.
    #[arg(long)]
    pub serial: Option<String>,
    /// Directory holding the CA (the list is DIR/revoked.txt).
    #[arg(long, default_value = "ferry-certs")]
    pub dir: PathBuf,
}

/// Runs a certs subcommand.
pub fn run(cmd: CertsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CertsCommand::Init(a) => {
            let p = certs::init_ca(&a.dir, a.days).context("cannot create the cluster CA")?;
            println!(
                "cluster CA written to {} (key beside it, mode 0600: keep it on this machine)",
                p.display()
            );
        }
        CertsCommand::Issue(a) => {
            let mut names = vec![a.name.clone()];
            names.extend(a.sans);
            let issued = match &a.bundle {
                Some(b) => certs::issue_bundle(&a.dir, &names, a.days, b),
                None => certs::issue(&a.dir, &names, a.days),
            }
            .with_context(|| format!("cannot issue a certificate for {}", a.name))?;
            println!(
                "certificate for {} written to {} (valid for: {}; serial {})",
                a.name,
                issued.cert.display(),
                names.join(", "),
                issued.serial
            );
            if let Some(b) = &a.bundle {
                println!(
                    "host bundle {}: copy it to {} and start the host with --certs DIR --name {}",
                    b.display(),
                    a.name,
                    a.name
                );
            }
        }
        CertsCommand::Revoke(a) => {
            let entry = match (&a.name, &a.serial) {
                (Some(n), _) => format!("name:{n}"),
                (None, Some(s)) => format!("serial:{s}"),
                (None, None) => unreachable!("clap requires one"),
            };
            let entry: Revoked = entry.parse().map_err(anyhow::Error::msg)?;
            let p = certs::revoke(&a.dir, &entry).context("cannot update the revocation list")?;
            println!(
                "{entry} revoked in {}: copy it to every host's certificate directory (hosts read \
                 it at every handshake)",
                p.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
