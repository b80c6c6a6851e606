//! Ferry's host daemon, one per host.
//!
//! It owns the VMs it runs: each is a VM host process (`ferry vm run`, from `ferry-host`) in its
//! own process group, so the daemon can restart without stopping a VM and adopts the VM processes
//! it finds in its run directory when it starts. It sends and receives migrations (an incoming one
//! is a `ferry vm receive` process), reports the host's capacity and load, and serves an HTTP API:
//!
//! - [`config`]: the TOML configuration file;
//! - [`api`]: routes, handlers, the OpenAPI document and the types clients share;
//! - [`server`]: mutual TLS on TCP, and a 0600 Unix socket for the host's own CLI;
//! - [`client`]: the API's client (the CLI's and other daemons'); [`cluster_config`]: the CLI's
//!   cluster file (host names to API addresses, the client certificate);
//! - [`daemon`]: the VM and migration tables, adoption, the monitor;
//! - [`metrics`]: Prometheus metrics; [`load`]: CPU and memory from /proc;
//! - [`rundir`], [`vm_process`]: VM directories and processes;
//! - [`link`]: the cluster store (membership, host and VM records, the commit gate, leader
//!   election); [`planner`]: the leader's planner and scheduler.

pub mod api;
pub mod client;
pub mod cluster_config;
pub mod config;
pub mod daemon;
pub mod link;
pub mod load;
pub mod metrics;
pub mod planner;
pub mod rundir;
pub mod server;
pub mod vm_process;

pub use client::{DaemonClient, Target};
pub use config::DaemonConfig;
pub use daemon::{start, start_with, Daemon, RunningDaemon};
