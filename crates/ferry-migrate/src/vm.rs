//! The two sides of a migration as the engine sees them.

use std::sync::Arc;

use ferry_model::bitmap::DirtyBitmap;
use ferry_wire::message::VmConfig;
use serde::{Deserialize, Serialize};

use crate::memory::GuestMemory;
use crate::postcopy::PostcopyTarget;
use crate::MigrateError;

/// A running VM that can be moved away.
pub trait MigrationSource {
    /// Its RAM.
    fn memory(&self) -> Arc<dyn GuestMemory>;
    /// vCPU count.
    fn vcpus(&self) -> u8;
    /// Starts tracking guest writes (and forgets earlier ones).
    fn start_dirty_log(&mut self) -> Result<(), MigrateError>;
    /// ORs pages written since the last call into `into`.
    fn collect_dirty(&mut self, into: &mut DirtyBitmap) -> Result<(), MigrateError>;
    /// Like [`MigrationSource::collect_dirty`], for the last time in a migration (the VM is
    /// paused): the log need not be re-armed, which may be cheaper. Logging must be stopped or
    /// restarted before another migration relies on it.
    fn collect_dirty_final(&mut self, into: &mut DirtyBitmap) -> Result<(), MigrateError> {
        self.collect_dirty(into)
    }
    /// Starts tracking with no page write-protected, where the VM can (KVM's manual log clearing
    /// with logs initially set): every page then reads as written, and stays writable, until
    /// [`MigrationSource::protect_pages`] arms it. False: not possible here, nothing changed.
    fn start_dirty_log_unprotected(&mut self) -> Result<bool, MigrateError> {
        Ok(false)
    }
    /// Arms `pages` for tracking: forgets that they were written and write-protects them (after
    /// [`MigrationSource::start_dirty_log_unprotected`]; otherwise every page read is armed).
    fn protect_pages(&mut self, _pages: &DirtyBitmap) -> Result<(), MigrateError> {
        Ok(())
    }
    /// Like [`MigrationSource::collect_dirty`], but the pages in `keep` stay writable: they keep
    /// reading as written, and the guest writes them without a trap (ferry_model::hotset).
    fn collect_dirty_keep(
        &mut self,
        into: &mut DirtyBitmap,
        _keep: &DirtyBitmap,
    ) -> Result<(), MigrateError> {
        self.collect_dirty(into)
    }
    /// Stops tracking.
    fn stop_dirty_log(&mut self) -> Result<(), MigrateError>;
    /// Stops the vCPUs.
    fn pause(&mut self) -> Result<(), MigrateError>;
    /// Restarts the vCPUs (after a failed or cancelled migration).
    fn resume(&mut self) -> Result<(), MigrateError>;
    /// Slows the guest down to `percent` of its CPU time off (auto-converge); 0 turns it off.
    fn set_throttle(&mut self, percent: u8) -> Result<(), MigrateError>;
    /// Serialises complete vCPU and device state (the VM is paused).
    fn save_state(&mut self) -> Result<Vec<u8>, MigrateError>;
    /// The file behind guest RAM, for handing it to a VMM on the same host (None: not shareable).
    fn memory_file(&self) -> Option<std::fs::File>;
}

/// A VM being built on the destination.
pub trait MigrationSink {
    /// Its RAM.
    fn memory(&self) -> Arc<dyn GuestMemory>;
    /// Loads state from [`MigrationSource::save_state`].
    fn restore_state(&mut self, state: &[u8]) -> Result<(), MigrateError>;
    /// Runs the VM (after the source committed).
    fn resume(&mut self) -> Result<(), MigrateError>;
    /// What the guest itself saw of the pause, once it has shown it.
    fn guest_observed(&self) -> Option<GuestObserved>;
    /// Fault tracking over this VM's RAM, for post-copy.
    fn postcopy_target(&self) -> Result<Arc<dyn PostcopyTarget>, MigrateError>;
    /// Stops the vCPUs (post-copy link failure: keep the VM paused and recoverable).
    fn pause(&mut self) -> Result<(), MigrateError>;
}

/// Builds a sink once the source has said what it sends.
pub trait SinkFactory {
    /// The sink type.
    type Sink: MigrationSink;
    /// Creates an empty VM of the given shape.
    fn create(&mut self, cfg: &VmConfig) -> Result<Self::Sink, MigrateError>;
    /// Creates a VM around RAM handed over by a VMM on this host (no copy).
    fn create_shared(
        &mut self,
        cfg: &VmConfig,
        memory: std::fs::File,
    ) -> Result<Self::Sink, MigrateError>;
}

/// The pause as the guest saw it, measured from its heartbeats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestObserved {
    /// Gap between the last heartbeat on the source and the first on the destination, in ns.
    pub gap_ns: u64,
    /// Whether the heartbeat sequence continued without a lost beat.
    pub sequence_continues: bool,
    /// Largest gap between heartbeats on the destination after that, until the migration ended, in
    /// ns (post-copy: the guest waits for pages while it runs).
    #[serde(default)]
    pub after_max_gap_ns: u64,
}

impl GuestObserved {
    /// The longest the guest saw itself stopped from the switch-over on: the arrival gap or a later
    /// one on the destination.
    pub fn max_gap_ns(&self) -> u64 {
        self.gap_ns.max(self.after_max_gap_ns)
    }
}
