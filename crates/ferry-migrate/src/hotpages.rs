//! The source's side of ferry_model::hotset: before the bulk copy, find the pages a guest walking
//! its memory writes, and leave them writable for the whole live copy (issue 12 item 6).
//!
//! While a page is write-protected for the dirty log, the guest's first write to it is a VM exit
//! (27 us and more here), so a guest writing many distinct pages crawls during every live round
//! (a sequential writer: about 28 ms per 1024 pages). Pages left writable cost nothing: they are
//! owed until the switch-over and reach the destination in the pause when few, else right after
//! it, pushed in the order the guest walks them (post-copy of the hot set).

use std::time::{Duration, Instant};

use ferry_model::bitmap::DirtyBitmap;
use ferry_model::hotset::HotSet;

use crate::memory::GuestMemory;
use crate::vm::MigrationSource;
use crate::MigrateError;

/// Time between two reads of the probes: short enough that a random writer leaves most probes
/// unwritten (its hits then scatter into many runs), long enough for a walk to cross regions.
const PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// Longest search for the hot set before the bulk copy starts.
const PROBE_MAX: Duration = Duration::from_millis(200);
/// Fewest samples before the writer is judged.
const PROBE_MIN_SAMPLES: u32 = 4;

/// Pages left writable while the live copy runs.
pub(crate) struct HotTracking {
    pub set: HotSet,
    /// Scratch for reads of the log.
    written: DirtyBitmap,
}

impl HotTracking {
    /// Pages owed until the switch-over.
    pub fn hot(&self) -> &DirtyBitmap {
        self.set.hot()
    }

    /// Reads the log into `dirty` (pages to send in the next round): armed pages written since the
    /// last read, re-armed; pages left writable stay so and are not part of it. Armed pages the
    /// guest wrote (outside the hot set) join the hot set.
    pub fn collect<S: MigrationSource>(
        &mut self,
        src: &mut S,
        dirty: &mut DirtyBitmap,
    ) -> Result<(), MigrateError> {
        self.written.clear();
        src.collect_dirty_keep(&mut self.written, self.set.hot())?;
        self.set.observe(&self.written);
        dirty.or(&self.written);
        dirty.and_not(self.set.hot());
        Ok(())
    }
}

/// Starts dirty tracking. Where the source can leave pages writable, it first probes the guest's
/// writes (one armed page per 256 KiB, [`PROBE_MAX`] at most): if the guest walks its memory in
/// order, its hot set stays writable and the rest is armed (Some); otherwise, or where it cannot,
/// every page is armed as before (None). Either way, tracking runs on return.
pub(crate) fn start_tracking<S: MigrationSource>(
    src: &mut S,
    mem: &dyn GuestMemory,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<Option<HotTracking>, MigrateError> {
    if !src.start_dirty_log_unprotected()? {
        src.start_dirty_log()?;
        return Ok(None);
    }
    let pages = mem.pages();
    let owed = mem.data_pages().unwrap_or_else(|| DirtyBitmap::full(pages));
    let mut set = HotSet::new(&owed);
    src.protect_pages(&set.armed_at_start())?;
    let mut written = DirtyBitmap::new(pages);
    let t = Instant::now();
    let mut samples = 0;
    while (samples < PROBE_MIN_SAMPLES || !set.settled()) && t.elapsed() < PROBE_MAX {
        if cancel.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        std::thread::sleep(PROBE_INTERVAL);
        written.clear();
        let mut keep = set.hot().clone();
        keep.or(set.undecided());
        src.collect_dirty_keep(&mut written, &keep)?;
        set.observe(&written);
        samples += 1;
    }
    tracing::debug!(
        samples,
        ms = t.elapsed().as_millis() as u64,
        hot = set.hot().count(),
        locality = ?set.locality(),
        sequential = set.sequential(),
        "hot set probed"
    );
    if !set.sequential() || set.hot().count() == 0 {
        // Arm everything: classic tracking from here (a read re-arms every page it shows).
        written.clear();
        src.collect_dirty(&mut written)?;
        return Ok(None);
    }
    let cold = set.arm_cold();
    src.protect_pages(&cold)?;
    Ok(Some(HotTracking { set, written }))
}
