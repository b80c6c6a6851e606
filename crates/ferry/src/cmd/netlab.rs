//! `ferry netlab`: hosts as network namespaces joined by shaped veth links, for tests and benchmarks.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use ferry_netlab::units::{parse_duration, parse_rate};
use ferry_netlab::{Lab, LabConfig};

/// Network lab commands (root needed).
#[derive(Subcommand)]
pub enum NetlabCommand {
    /// Create the lab: HOSTS namespaces on one bridge, each link shaped with tc tbf.
    Up(UpArgs),
    /// Show the lab's hosts, addresses and shaping.
    Status(NameArg),
    /// Change the shaping of every link (RATE like 1gbit, or "none").
    Rate {
        /// New rate, or "none" to remove shaping.
        rate: String,
        #[command(flatten)]
        name: NameArg,
    },
    /// Remove the lab and everything in it.
    Down(NameArg),
}

/// Which lab.
#[derive(Args, Clone, Debug)]
pub struct NameArg {
    /// Lab name (prefix of its namespaces).
    #[arg(long, default_value = "ferrylab")]
    pub name: String,
}

/// `ferry netlab up`.
#[derive(Args, Clone, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    pub name: NameArg,
    /// Number of hosts.
    #[arg(long, default_value_t = 2)]
    pub hosts: u8,
    /// Link rate (e.g. 1gbit, 100mbit); unshaped if absent.
    #[arg(long)]
    pub rate: Option<String>,
    /// One-way delay added by the userspace proxy to TCP services (e.g. 10ms).
    #[arg(long)]
    pub delay: Option<String>,
    /// Chance that a chunk is stalled (TCP cannot drop: see docs/NETLAB.md).
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
}

/// Runs a netlab subcommand.
pub fn run(cmd: NetlabCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        NetlabCommand::Up(a) => {
            let cfg = LabConfig {
                name: a.name.name,
                hosts: a.hosts,
                rate_bit: a.rate.as_deref().map(parse_rate).transpose()?,
                delay: a.delay.as_deref().map(parse_duration).transpose()?,
                loss: a.loss,
            };
            let lab = Lab::up(&cfg)?;
            println!("up: {cfg}");
            for i in 0..lab.hosts() {
                println!(
                    "  host {i}: netns {} addr {}",
                    lab.netns(i),
                    lab.host_addr(i)
                );
            }
            lab.persist();
        }
        NetlabCommand::Status(n) => println!("{}", Lab::status(&n.name)?),
        NetlabCommand::Rate { rate, name } => {
            let lab = Lab::attach(&name.name)?;
            if rate == "none" {
                lab.clear_rate()?;
            } else {
                lab.set_rate(parse_rate(&rate)?)?;
            }
            lab.persist();
            println!("{}", Lab::status(&name.name)?);
        }
        NetlabCommand::Down(n) => {
            for ns in Lab::teardown(&n.name)? {
                println!("removed {ns}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
