//! Ferry's network lab: hosts as Linux network namespaces joined by a bridge, links shaped
//! with `tc tbf`, and latency (plus loss emulated as stalls) from a userspace TCP delay proxy.
//!
//! Every address lives inside namespaces the lab creates (`10.77.0.0/24`); nothing is
//! configured in the root namespace, so no lab traffic can leave the machine.
//! See `docs/NETLAB.md` for topology, commands and measured numbers.

mod lab;
pub mod netns;
pub mod probe;
mod proxy;
pub mod units;

use std::io;

pub use lab::{HostStatus, Lab, LabConfig, LabStatus, LAB_SUBNET};
pub use netns::{enter_netns, spawn_in_netns, NetnsThread};
pub use proxy::{DelayProxy, ProxyHandle, ProxyStats};

/// Errors from setting up, changing or tearing down a lab, and from the proxy.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The configuration cannot describe a lab.
    #[error("invalid lab config: {0}")]
    Config(String),
    /// A command (`ip`, `tc`) ran and reported failure.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status as printed.
        status: String,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// A program could not be started at all.
    #[error("cannot run `{program}`: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A network namespace could not be opened or entered.
    #[error("network namespace `{name}`: {source}")]
    Netns {
        /// Namespace name.
        name: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A per-namespace sysctl could not be written.
    #[error("sysctl {key} in `{netns}`: {source}")]
    Sysctl {
        /// Namespace name.
        netns: String,
        /// The sysctl path under /proc/sys.
        key: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A socket operation of the proxy or a probe failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A thread could not be spawned.
    #[error("cannot spawn thread: {0}")]
    Thread(#[source] io::Error),
    /// A rate or duration string did not parse.
    #[error("cannot parse {what} `{input}`")]
    Parse {
        /// Rate or duration.
        what: &'static str,
        /// The input.
        input: String,
    },
}
