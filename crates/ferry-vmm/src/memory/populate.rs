//! Faulting guest RAM in on a background thread, so that a migration destination's first-touch
//! faults overlap the transfer instead of preceding it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::memory::{GuestRam, HUGE_PAGE_SIZE, PAGE_SIZE};

/// A thread populating RAM from its top down, one 2 MiB step at a time. A migration stream writes
/// RAM from the bottom up (each run populated just before it is copied), so the two meet instead of
/// faulting the same pages. Stop it before anything makes pages missing again (post-copy) and
/// before the guest runs; dropping it stops it too.
#[derive(Debug)]
pub struct Populator {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl Populator {
    /// Starts populating `ram`.
    pub fn start(ram: Arc<GuestRam>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ram-populate".into())
            .spawn(move || {
                let step = HUGE_PAGE_SIZE / PAGE_SIZE as u64;
                let mut first = ram.pages();
                let mut done = 0;
                while first > 0 && !flag.load(Ordering::Relaxed) {
                    let n = step.min(first);
                    first -= n;
                    if ram.populate_range(first, n).is_err() {
                        break; // best effort: the stream populates what it writes anyway
                    }
                    done += n;
                }
                done
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it (at most one 2 MiB step); returns the pages it populated.
    pub fn stop(mut self) -> u64 {
        self.halt()
    }

    fn halt(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

impl Drop for Populator {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::RamBacking;

    #[test]
    fn populates_everything_and_changes_nothing() {
        for b in [RamBacking::Memfd, RamBacking::AnonThp] {
            let ram = Arc::new(GuestRam::with_backing(8 << 20, b).unwrap());
            ram.write_u64(0x5000, 77).unwrap();
            let p = Populator::start(ram.clone()).unwrap();
            while p.thread.as_ref().is_some_and(|t| !t.is_finished()) {
                std::thread::yield_now();
            }
            assert_eq!(p.stop(), ram.pages(), "{b:?}");
            assert_eq!(ram.data_pages().count(), ram.pages(), "{b:?}");
            assert_eq!(ram.read_u64(0x5000).unwrap(), 77, "{b:?}");
        }
    }

    #[test]
    fn stops_when_asked() {
        let ram = Arc::new(GuestRam::with_backing(1 << 30, RamBacking::Memfd).unwrap());
        let done = Populator::start(ram.clone()).unwrap().stop();
        assert!(done < ram.pages(), "stopped before the end ({done} pages)");
    }
}
