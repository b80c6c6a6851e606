//! Errors of the simulator.

use std::path::PathBuf;

/// Everything that can go wrong setting up or running a simulation.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A trace line that does not parse.
    #[error("{path}:{line}: {msg}")]
    TraceLine {
        /// The trace file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        msg: String,
    },
    /// A file that cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A policy name that does not parse.
    #[error(transparent)]
    Policy(#[from] ferry_cluster::policy::PolicyError),
    /// A configuration that cannot run (no hosts, VMs that fit nowhere, ...).
    #[error("impossible configuration: {0}")]
    Config(String),
    /// A trace day or file that cannot be found.
    #[error("trace '{name}' not found (looked in: {looked})")]
    TraceNotFound {
        /// What was asked for.
        name: String,
        /// Where it was looked for.
        looked: String,
    },
    /// Drawing a plot failed.
    #[error("plot {path}: {msg}")]
    Plot {
        /// The output file.
        path: PathBuf,
        /// The backend's message.
        msg: String,
    },
}
