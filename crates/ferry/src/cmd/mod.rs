//! One module per subcommand.

pub mod bench;
pub mod certs;
pub mod demo;
pub mod guest;
mod hosts;
pub mod migrate;
pub mod netlab;
pub mod vm;
