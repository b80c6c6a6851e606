//! Ferry's VM host as a library: everything a process that hosts VMs needs, apart from the VMM and
//! the migration engine themselves.
//!
//! - [`protocol`]: typed, versioned requests, events and replies of the control socket;
//! - [`server`] and [`client`]: the control socket's two ends, with deadlines on both;
//! - [`vm_host::VmHost`]: one VM and its migrations (status, verify, stop, migrate, cancel), safe
//!   to call from many threads; [`receive`]: waiting for a VM to arrive;
//! - [`security`]: TLS identity, `--allow` policy, `--insecure`, same-host only;
//! - [`transport`]: TCP, TLS and Unix listeners and connectors for migrations;
//! - [`socket`]: private control sockets (0600 in a 0700 directory);
//! - [`outcome`]: where a failed migration left the VM, and `ferry migrate`'s exit codes;
//! - [`resolve`]: settling a migration whose outcome is unknown, by asking the other side;
//! - [`supervise`]: starting and stopping `ferry vm run` / `vm receive` processes.
//!
//! `ferry vm run` and `ferry vm receive` wrap one [`vm_host::VmHost`] each; a daemon can keep
//! several behind one server.

pub mod client;
pub mod gate;
pub mod guest_probe;
pub mod outcome;
pub mod protocol;
pub mod receive;
pub mod resolve;
pub mod security;
pub mod server;
pub mod socket;
pub mod supervise;
pub mod transport;
pub mod vm_host;

pub use client::{ClientError, ControlClient};
/// What guest RAM is made of, what a user asks for (`--ram-backing`), and what the host offers.
pub use ferry_vmm::{memory::HostMemory, RamBacking, RamBackingChoice};
pub use outcome::MigrateExit;
pub use protocol::{
    Cause, ErrorReply, HostEvent, HostState, HostStatus, MigrateRequest, Reply, Request, VmLocation,
};
pub use security::{Need, Security, SecurityConfig};
pub use server::{ControlServer, Handler, ServerOptions};
pub use transport::{Endpoint, MigrationListener};
pub use vm_host::{HostEnd, VmHost};
