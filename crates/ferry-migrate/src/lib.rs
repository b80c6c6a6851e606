//! Ferry's migration engine.
//!
//! The engine moves a VM described by [`MigrationSource`] into one described by [`MigrationSink`]
//! over framed [`channel::Channel`]s. Two implementations stand behind each trait: the real KVM VM
//! (`ferry_vmm::Vm`) and [`synthetic::SyntheticVm`], an in-memory VM that dirties pages by a
//! script, so every strategy is tested fast and deterministically without KVM. Decisions
//! (convergence, switch-over, heat, channel count) are plain functions in the `ferry-model` crate,
//! which builds without KVM and which the simulator uses too.

pub mod channel;
pub mod digest;
mod error;
mod hotpages;
mod kvm;
pub mod memory;
pub mod postcopy;
pub mod priority;
pub mod rate;
pub mod recovery;
pub mod report;
pub mod sink;
pub mod source;
pub mod synthetic;
pub mod tls;
mod vm;

pub use error::MigrateError;
pub use kvm::KvmSinkFactory;
pub use memory::GuestMemory;
pub use report::{Event, Phase, Report, Strategy};
pub use sink::{receive, Incoming, ReceiveOptions};
pub use source::{migrate_out, SourceOptions};
pub use vm::{GuestObserved, MigrationSink, MigrationSource, SinkFactory};
