//! One module per subcommand.

pub mod demo;
pub mod guest;
pub mod migrate;
pub mod vm;
