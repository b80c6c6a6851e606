//! Ferry's data-centre simulator.
//!
//! Drives the planner policies of `ferry-cluster` over PlanetLab or synthetic CPU traces
//! and reports energy, SLA and migration metrics comparable with CloudSim's published
//! results. Mounted by the CLI as `ferry sim ...` through [`cli::SimArgs`] and [`cli::run`].

pub mod cli;
pub mod engine;
pub mod error;
pub mod migration;
pub mod plot;
pub mod report;
pub mod setup;
pub mod trace;

pub use error::SimError;
