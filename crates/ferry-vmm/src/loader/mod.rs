//! Kernel image loaders.

pub mod multiboot;

pub use multiboot::{load_multiboot, BootInfo};
