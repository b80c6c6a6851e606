//! The real VM behind the engine's traits.

use std::sync::{Arc, Mutex};

use ferry_model::bitmap::DirtyBitmap;
use ferry_vmm::devices::{Console, HeartbeatLog};
use ferry_vmm::memory::Populator;
use ferry_vmm::postcopy::PostcopyRam;
use ferry_vmm::state::VmState;
use ferry_vmm::{GuestRam, RamBackingChoice, RamPlan, RamRequest, Vm};
use ferry_wire::message::VmConfig;

use crate::memory::GuestMemory;
use crate::postcopy::PostcopyTarget;
use crate::vm::{GuestObserved, MigrationSink, MigrationSource, SinkFactory};
use crate::MigrateError;

impl MigrationSource for Vm {
    fn memory(&self) -> Arc<dyn GuestMemory> {
        self.ram().clone()
    }
    fn vcpus(&self) -> u8 {
        self.vcpu_count()
    }
    fn start_dirty_log(&mut self) -> Result<(), MigrateError> {
        // Off and on again: a final read may have left KVM's log unarmed (collect_dirty_final).
        let t = std::time::Instant::now();
        self.set_dirty_logging(false)?;
        let t1 = t.elapsed();
        self.set_dirty_logging(true)?;
        let t2 = t.elapsed();
        let mut scratch = DirtyBitmap::new(self.ram().pages());
        self.collect_dirty(&mut scratch)?; // forget writes from before tracking started
        tracing::debug!(off = ?t1, on = ?t2, collect = ?t.elapsed(), "dirty log started");
        Ok(())
    }
    fn collect_dirty(&mut self, into: &mut DirtyBitmap) -> Result<(), MigrateError> {
        Ok(Vm::collect_dirty(self, into)?)
    }
    fn collect_dirty_final(&mut self, into: &mut DirtyBitmap) -> Result<(), MigrateError> {
        Ok(Vm::collect_dirty_final(self, into)?)
    }
    fn start_dirty_log_unprotected(&mut self) -> Result<bool, MigrateError> {
        Ok(Vm::start_dirty_log_unprotected(self)?)
    }
    fn protect_pages(&mut self, pages: &DirtyBitmap) -> Result<(), MigrateError> {
        Ok(Vm::protect_pages(self, pages)?)
    }
    fn collect_dirty_keep(
        &mut self,
        into: &mut DirtyBitmap,
        keep: &DirtyBitmap,
    ) -> Result<(), MigrateError> {
        Ok(Vm::collect_dirty_keep(self, into, keep)?)
    }
    fn stop_dirty_log(&mut self) -> Result<(), MigrateError> {
        Ok(self.set_dirty_logging(false)?)
    }
    fn pause(&mut self) -> Result<(), MigrateError> {
        Ok(Vm::pause(self)?)
    }
    fn resume(&mut self) -> Result<(), MigrateError> {
        Ok(Vm::resume(self)?)
    }
    fn set_throttle(&mut self, percent: u8) -> Result<(), MigrateError> {
        self.set_throttle_percent(percent);
        Ok(())
    }
    fn memory_file(&self) -> Option<std::fs::File> {
        self.ram().file().and_then(|f| f.try_clone().ok())
    }
    fn save_state(&mut self) -> Result<Vec<u8>, MigrateError> {
        let state = Vm::save_state(self)?;
        bincode::serialize(&state).map_err(|e| MigrateError::State(e.to_string()))
    }
}

/// A KVM VM under construction on the destination.
pub struct KvmSink {
    /// The VM (paused until the source commits).
    pub vm: Vm,
    /// How its RAM was chosen (None: RAM handed over by a VMM on this host).
    pub ram_plan: Option<RamPlan>,
    /// Faults RAM in while pages arrive; stopped before anything makes pages missing (post-copy)
    /// and before the guest runs.
    populator: Mutex<Option<Populator>>,
}

impl KvmSink {
    /// Stops the background populate (waiting for its current 2 MiB step) and forgets it.
    fn stop_populating(&self) {
        let p = match self.populator.lock() {
            Ok(mut p) => p.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(p) = p {
            let pages = p.stop();
            tracing::debug!(pages, "background populate stopped");
        }
    }
}

impl MigrationSink for KvmSink {
    fn memory(&self) -> Arc<dyn GuestMemory> {
        self.vm.ram().clone()
    }
    fn restore_state(&mut self, state: &[u8]) -> Result<(), MigrateError> {
        let state: VmState =
            bincode::deserialize(state).map_err(|e| MigrateError::State(e.to_string()))?;
        self.vm.restore_state(&state)?;
        self.vm.continue_heartbeats(state.heartbeat);
        Ok(())
    }
    fn resume(&mut self) -> Result<(), MigrateError> {
        // The guest's vCPU gets the CPU, not a thread faulting in RAM it may never touch.
        self.stop_populating();
        Ok(self.vm.resume()?)
    }
    fn postcopy_target(&self) -> Result<Arc<dyn PostcopyTarget>, MigrateError> {
        // Populating a page after it was dropped would make it present (zero) instead of missing:
        // the populator stops here, before the engine can discard anything (the engine gets the
        // target from this call before its first discard).
        self.stop_populating();
        Ok(Arc::new(KvmPostcopy(PostcopyRam::new(
            self.vm.ram().clone(),
        )?)))
    }
    fn pause(&mut self) -> Result<(), MigrateError> {
        Ok(self.vm.pause()?)
    }
    fn guest_observed(&self) -> Option<GuestObserved> {
        let log = self.vm.heartbeats();
        let log = log.lock().ok()?;
        Some(GuestObserved {
            gap_ns: log.arrival_gap_ns?,
            sequence_continues: log.arrival_seq_ok?,
            // The log holds this host's heartbeats only: every gap in it came after the arrival.
            after_max_gap_ns: log.max_gap_since(0).unwrap_or(0),
        })
    }
}

/// Creates KVM VMs for incoming migrations, with the console wired as the user asked.
pub struct KvmSinkFactory {
    /// Makes the console of the VM (called once per incoming VM).
    pub console: Box<dyn FnMut() -> Console + Send>,
    /// Fault RAM in on a background thread at normal priority while pages arrive (from the top of
    /// RAM down, meeting the stream, which populates each run just before writing it). Never
    /// before the VM counts as created: the source waits for that before it sends the first page.
    /// Not for pure post-copy (pages arrive by userfaultfd into missing pages; populated ones would
    /// have to be dropped again inside the pause); stopped before any page is dropped when a
    /// migration switches to post-copy.
    pub prefault: bool,
    /// What guest RAM is made of (`--ram-backing`).
    pub ram_backing: RamBackingChoice,
}

/// Whether a migration of this strategy (the VmConfig's code) may end in post-copy. Unknown codes
/// may.
fn may_postcopy(strategy: u8) -> bool {
    strategy != crate::Strategy::StopAndCopy.code() && strategy != crate::Strategy::Precopy.code()
}

impl SinkFactory for KvmSinkFactory {
    type Sink = KvmSink;
    fn create(&mut self, cfg: &VmConfig) -> Result<KvmSink, MigrateError> {
        let postcopy = may_postcopy(cfg.strategy);
        let (ram, plan) = GuestRam::planned(&RamRequest {
            size: cfg.memory,
            choice: self.ram_backing,
            destination: true,
            may_postcopy: postcopy,
        })?;
        tracing::info!(%plan, "guest RAM for the incoming VM");
        let vm = Vm::with_ram(ram, cfg.vcpus, (self.console)())?;
        let pure_postcopy = cfg.strategy == crate::Strategy::Postcopy.code();
        let populator = if self.prefault && !pure_postcopy {
            Some(
                Populator::start(vm.ram().clone())
                    .map_err(MigrateError::io("starting the RAM populate thread"))?,
            )
        } else {
            None
        };
        Ok(KvmSink {
            vm,
            ram_plan: Some(plan),
            populator: Mutex::new(populator),
        })
    }

    fn create_shared(
        &mut self,
        cfg: &VmConfig,
        memory: std::fs::File,
    ) -> Result<KvmSink, MigrateError> {
        let ram = GuestRam::from_file(memory, cfg.memory)?;
        Ok(KvmSink {
            vm: Vm::with_ram(ram, cfg.vcpus, (self.console)())?,
            ram_plan: None,
            populator: Mutex::new(None),
        })
    }
}

impl Default for KvmSinkFactory {
    fn default() -> Self {
        Self {
            console: Box::new(|| Console::new(None, false, HeartbeatLog::default())),
            prefault: true,
            ram_backing: RamBackingChoice::Auto,
        }
    }
}

/// userfaultfd-backed post-copy over a KVM VM's RAM.
struct KvmPostcopy(PostcopyRam);

impl PostcopyTarget for KvmPostcopy {
    fn discard(&self, pages: &DirtyBitmap) -> Result<(), MigrateError> {
        // Punch holes run by run: one syscall per contiguous range, not per page.
        let mut run: Option<(u64, u64)> = None;
        for p in pages.iter() {
            run = match run {
                Some((first, n)) if first + n == p => Some((first, n + 1)),
                Some((first, n)) => {
                    self.0.discard(first, n)?;
                    Some((p, 1))
                }
                None => Some((p, 1)),
            };
        }
        if let Some((first, n)) = run {
            self.0.discard(first, n)?;
        }
        Ok(())
    }
    fn arm(&self) -> Result<(), MigrateError> {
        Ok(self.0.arm()?)
    }
    fn disarm(&self) -> Result<(), MigrateError> {
        Ok(self.0.disarm()?)
    }
    fn next_fault(&self, timeout: std::time::Duration) -> Result<Option<u64>, MigrateError> {
        Ok(self.0.next_fault(timeout)?)
    }
    fn place(&self, page: u64, data: &[u8]) -> Result<(), MigrateError> {
        Ok(self.0.place(page, data)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_stop_and_copy_and_precopy_never_end_in_post_copy() {
        use crate::Strategy::*;
        for (s, may) in [
            (StopAndCopy, false),
            (Precopy, false),
            (Postcopy, true),
            (Hybrid, true),
            (Auto, true),
        ] {
            assert_eq!(may_postcopy(s.code()), may, "{s}");
        }
        assert!(may_postcopy(200), "an unknown strategy may");
    }
}
