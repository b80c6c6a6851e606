//! One module per subcommand.

pub mod bench;
pub mod certs;
pub mod cluster;
pub mod daemon;
pub mod demo;
pub mod guest;
mod hosts;
pub mod migrate;
pub mod netlab;
pub mod remote;
pub mod resolve;
pub mod vm;
