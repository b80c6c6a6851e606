//! An in-memory VM that dirties pages by a script: the engine's test double. It implements the same
//! traits as the KVM VM, so every strategy runs against both.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferry_model::bitmap::DirtyBitmap;
use ferry_vmm::PAGE_SIZE;
use ferry_wire::message::VmConfig;

use crate::memory::GuestMemory;
use crate::postcopy::PostcopyTarget;
use crate::vm::{GuestObserved, MigrationSink, MigrationSource, SinkFactory};
use crate::MigrateError;

/// RAM of a synthetic VM.
pub struct SyntheticMemory {
    ptr: *mut u8,
    pages: u64,
    _buf: Box<[u64]>,
    faults: Mutex<Faults>,
    placed: Condvar,
}

/// Post-copy state: which pages are missing, and accesses waiting for one.
#[derive(Default)]
struct Faults {
    armed: bool,
    missing: Option<DirtyBitmap>,
    queue: VecDeque<u64>,
}

// SAFETY: the buffer is owned and never reallocated; all access copies through raw pointers within
// bounds, as with real guest RAM.
unsafe impl Send for SyntheticMemory {}
// SAFETY: see Send.
unsafe impl Sync for SyntheticMemory {}

impl SyntheticMemory {
    /// Zeroed memory of `pages` pages.
    pub fn new(pages: u64) -> Self {
        let mut buf = vec![0u64; pages as usize * PAGE_SIZE / 8].into_boxed_slice();
        Self {
            ptr: buf.as_mut_ptr().cast(),
            pages,
            _buf: buf,
            faults: Mutex::default(),
            placed: Condvar::new(),
        }
    }

    fn write_word(&self, page: u64, value: u64) {
        assert!(page < self.pages);
        // SAFETY: in bounds (checked); u64-aligned since the buffer is a u64 slice and pages are
        // 4096-aligned within it.
        unsafe {
            self.ptr
                .add(page as usize * PAGE_SIZE)
                .cast::<u64>()
                .write_volatile(value)
        };
    }
}

impl GuestMemory for SyntheticMemory {
    fn pages(&self) -> u64 {
        self.pages
    }
    fn read_page(&self, index: u64, buf: &mut [u8]) {
        assert!(index < self.pages && buf.len() == PAGE_SIZE);
        // SAFETY: in bounds (checked), and `buf` is a distinct allocation.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.add(index as usize * PAGE_SIZE),
                buf.as_mut_ptr(),
                PAGE_SIZE,
            )
        };
    }
    unsafe fn page_mut(&self, index: u64) -> &mut [u8] {
        assert!(index < self.pages);
        // SAFETY: in bounds (checked); exclusivity is the caller's contract.
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.add(index as usize * PAGE_SIZE), PAGE_SIZE)
        }
    }
    fn data_pages(&self) -> Option<DirtyBitmap> {
        None
    }
    unsafe fn page(&self, index: u64) -> &[u8] {
        assert!(index < self.pages);
        // SAFETY: in bounds (checked); no writer while it lives is the caller's contract.
        unsafe { std::slice::from_raw_parts(self.ptr.add(index as usize * PAGE_SIZE), PAGE_SIZE) }
    }
    unsafe fn run(&self, first: u64, count: u64) -> &[u8] {
        let (at, len) = crate::memory::run_bounds(first, count, self.pages);
        // SAFETY: in bounds of the one buffer (checked); no writer is the caller's contract.
        unsafe { std::slice::from_raw_parts(self.ptr.add(at), len) }
    }
    unsafe fn run_mut(&self, first: u64, count: u64) -> &mut [u8] {
        let (at, len) = crate::memory::run_bounds(first, count, self.pages);
        // SAFETY: in bounds (checked); exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), len) }
    }
}

/// How the synthetic guest writes.
#[derive(Clone, Copy, Debug)]
pub struct DirtyScript {
    /// Page writes per second (0 = idle).
    pub pages_per_sec: u64,
    /// Pages it writes among (from page 0).
    pub working_set: u64,
    /// Random (true) or sequential order.
    pub random: bool,
}

struct Shared {
    mem: Arc<SyntheticMemory>,
    running: AtomicBool,
    stop: AtomicBool,
    throttle: AtomicU8,
    iteration: AtomicU64,
    dirty: Mutex<Option<DirtyBitmap>>,
}

/// An in-memory VM.
pub struct SyntheticVm {
    shared: Arc<Shared>,
    script: DirtyScript,
    worker: Option<JoinHandle<()>>,
    /// Whether it models KVM's manual log clearing (pages may be left writable).
    manual_clear: bool,
}

impl SyntheticVm {
    /// A paused VM with `pages` zeroed pages.
    pub fn new(pages: u64, script: DirtyScript) -> Self {
        let shared = Arc::new(Shared {
            mem: Arc::new(SyntheticMemory::new(pages)),
            running: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            throttle: AtomicU8::new(0),
            iteration: AtomicU64::new(0),
            dirty: Mutex::new(None),
        });
        let worker = {
            let shared = shared.clone();
            std::thread::spawn(move || guest_loop(&shared, script))
        };
        Self {
            shared,
            script,
            worker: Some(worker),
            manual_clear: false,
        }
    }

    /// Models KVM's manual log clearing with logs initially set: pages may be left writable
    /// while tracked (ferry_model::hotset). Off by default.
    pub fn with_manual_clear(mut self) -> Self {
        self.manual_clear = true;
        self
    }

    /// Fills every page with distinct content (so zero-page elision cannot hide bugs).
    pub fn fill(&self) {
        for p in 0..self.shared.mem.pages {
            self.shared
                .mem
                .write_word(p, p.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        }
    }

    /// Page writes done so far.
    pub fn iterations(&self) -> u64 {
        self.shared.iteration.load(Ordering::SeqCst)
    }

    /// The script.
    pub fn script(&self) -> DirtyScript {
        self.script
    }

    /// Whether the guest is running.
    pub fn is_running(&self) -> bool {
        self.shared.running.load(Ordering::SeqCst)
    }
}

impl Drop for SyntheticVm {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// The page written at iteration `i` (a fixed permutation-ish walk; deterministic across hosts).
fn page_for(i: u64, script: &DirtyScript) -> u64 {
    let ws = script.working_set.max(1);
    if script.random {
        let mut x = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (x ^ (x >> 31)) % ws
    } else {
        i % ws
    }
}

fn guest_loop(s: &Shared, script: DirtyScript) {
    let tick = Duration::from_millis(1);
    let per_tick = (script.pages_per_sec / 1000).max(u64::from(script.pages_per_sec > 0));
    while !s.stop.load(Ordering::SeqCst) {
        if !s.running.load(Ordering::SeqCst) || per_tick == 0 {
            std::thread::sleep(tick);
            continue;
        }
        let t = Instant::now();
        let throttle = u64::from(s.throttle.load(Ordering::Relaxed));
        let n = per_tick * (100 - throttle) / 100;
        for _ in 0..n {
            let i = s.iteration.fetch_add(1, Ordering::SeqCst);
            let p = page_for(i, &script);
            s.mem.write_word(p, i + 1);
            if let Ok(mut d) = s.dirty.lock() {
                if let Some(d) = d.as_mut() {
                    d.set(p);
                }
            }
        }
        if let Some(rest) = tick.checked_sub(t.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

impl MigrationSource for SyntheticVm {
    fn memory(&self) -> Arc<dyn GuestMemory> {
        self.shared.mem.clone()
    }
    fn vcpus(&self) -> u8 {
        1
    }
    fn start_dirty_log(&mut self) -> Result<(), MigrateError> {
        *self
            .shared
            .dirty
            .lock()
            .map_err(|_| MigrateError::Config("poisoned".into()))? =
            Some(DirtyBitmap::new(self.shared.mem.pages));
        Ok(())
    }
    fn collect_dirty(&mut self, into: &mut DirtyBitmap) -> Result<(), MigrateError> {
        let mut d = self
            .shared
            .dirty
            .lock()
            .map_err(|_| MigrateError::Config("poisoned".into()))?;
        let d = d
            .as_mut()
            .ok_or_else(|| MigrateError::Config("dirty logging is off".into()))?;
        into.or(d);
        d.clear();
        Ok(())
    }
    fn start_dirty_log_unprotected(&mut self) -> Result<bool, MigrateError> {
        if !self.manual_clear {
            return Ok(false);
        }
        // KVM's log with manual clearing, initially set: every bit set; a write to an armed page
        // sets its bit, a write to an unarmed one finds it set already. So the log alone models it.
        *self
            .shared
            .dirty
            .lock()
            .map_err(|_| MigrateError::Config("poisoned".into()))? =
            Some(DirtyBitmap::full(self.shared.mem.pages));
        Ok(true)
    }
    fn protect_pages(&mut self, pages: &DirtyBitmap) -> Result<(), MigrateError> {
        let mut d = self
            .shared
            .dirty
            .lock()
            .map_err(|_| MigrateError::Config("poisoned".into()))?;
        d.as_mut()
            .ok_or_else(|| MigrateError::Config("dirty logging is off".into()))?
            .and_not(pages);
        Ok(())
    }
    fn collect_dirty_keep(
        &mut self,
        into: &mut DirtyBitmap,
        keep: &DirtyBitmap,
    ) -> Result<(), MigrateError> {
        let mut d = self
            .shared
            .dirty
            .lock()
            .map_err(|_| MigrateError::Config("poisoned".into()))?;
        let d = d
            .as_mut()
            .ok_or_else(|| MigrateError::Config("dirty logging is off".into()))?;
        into.or(d);
        d.and(keep);
        Ok(())
    }
    fn stop_dirty_log(&mut self) -> Result<(), MigrateError> {
        *self
            .shared
            .dirty
            .lock()
            .map_err(|_| MigrateError::Config("poisoned".into()))? = None;
        Ok(())
    }
    fn pause(&mut self) -> Result<(), MigrateError> {
        self.shared.running.store(false, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(2)); // let an in-flight tick finish
        Ok(())
    }
    fn resume(&mut self) -> Result<(), MigrateError> {
        self.shared.running.store(true, Ordering::SeqCst);
        Ok(())
    }
    fn set_throttle(&mut self, percent: u8) -> Result<(), MigrateError> {
        self.shared
            .throttle
            .store(percent.min(99), Ordering::Relaxed);
        Ok(())
    }
    fn save_state(&mut self) -> Result<Vec<u8>, MigrateError> {
        Ok(self
            .shared
            .iteration
            .load(Ordering::SeqCst)
            .to_le_bytes()
            .to_vec())
    }
    fn memory_file(&self) -> Option<std::fs::File> {
        None
    }
}

impl MigrationSink for SyntheticVm {
    fn memory(&self) -> Arc<dyn GuestMemory> {
        self.shared.mem.clone()
    }
    fn restore_state(&mut self, state: &[u8]) -> Result<(), MigrateError> {
        let it: [u8; 8] = state
            .try_into()
            .map_err(|_| MigrateError::State("synthetic state is 8 bytes".into()))?;
        self.shared
            .iteration
            .store(u64::from_le_bytes(it), Ordering::SeqCst);
        Ok(())
    }
    fn resume(&mut self) -> Result<(), MigrateError> {
        self.shared.running.store(true, Ordering::SeqCst);
        Ok(())
    }
    fn guest_observed(&self) -> Option<GuestObserved> {
        None
    }
    fn postcopy_target(&self) -> Result<Arc<dyn PostcopyTarget>, MigrateError> {
        Ok(self.shared.mem.clone())
    }
    fn pause(&mut self) -> Result<(), MigrateError> {
        MigrationSource::pause(self)
    }
}

fn poisoned<T>(_: T) -> MigrateError {
    MigrateError::Config("synthetic VM lock poisoned".into())
}

impl PostcopyTarget for SyntheticMemory {
    fn discard(&self, pages: &DirtyBitmap) -> Result<(), MigrateError> {
        let zero = [0u8; PAGE_SIZE];
        for p in pages.iter() {
            // SAFETY: the guest does not run during discard (before the destination resumes).
            unsafe { self.page_mut(p) }.copy_from_slice(&zero);
        }
        let mut f = self.faults.lock().map_err(poisoned)?;
        f.missing
            .get_or_insert_with(|| DirtyBitmap::new(self.pages))
            .or(pages);
        Ok(())
    }
    fn arm(&self) -> Result<(), MigrateError> {
        let mut f = self.faults.lock().map_err(poisoned)?;
        f.armed = true;
        // Like a fresh memfd: pages never written are missing too.
        Ok(())
    }
    fn disarm(&self) -> Result<(), MigrateError> {
        self.faults.lock().map_err(poisoned)?.armed = false;
        self.placed.notify_all();
        Ok(())
    }
    fn next_fault(&self, timeout: Duration) -> Result<Option<u64>, MigrateError> {
        let f = self.faults.lock().map_err(poisoned)?;
        let (mut f, _) = self
            .placed
            .wait_timeout_while(f, timeout, |f| f.queue.is_empty())
            .map_err(poisoned)?;
        Ok(f.queue.pop_front())
    }
    fn place(&self, page: u64, data: &[u8]) -> Result<(), MigrateError> {
        let mut f = self.faults.lock().map_err(poisoned)?;
        let Some(missing) = f.missing.as_mut() else {
            return Ok(());
        };
        for (page, data) in (page..).zip(data.chunks_exact(PAGE_SIZE)) {
            if page < missing.pages() && missing.get(page) {
                // SAFETY: the page is missing, so the guest cannot be touching it (it would be
                // waiting).
                unsafe { self.page_mut(page) }.copy_from_slice(data);
                missing.clear_page(page);
            }
        }
        self.placed.notify_all();
        Ok(())
    }
}

/// Builds synthetic destination VMs with a given script.
pub struct SyntheticFactory {
    /// Script the arriving guest continues with.
    pub script: DirtyScript,
}

impl SinkFactory for SyntheticFactory {
    type Sink = SyntheticVm;
    fn create(&mut self, cfg: &VmConfig) -> Result<SyntheticVm, MigrateError> {
        if !cfg.memory.is_multiple_of(PAGE_SIZE as u64) || cfg.memory > (64 << 30) {
            return Err(MigrateError::Config(format!(
                "cannot build a VM of {} bytes",
                cfg.memory
            )));
        }
        Ok(SyntheticVm::new(cfg.memory / PAGE_SIZE as u64, self.script))
    }
    fn create_shared(
        &mut self,
        _: &VmConfig,
        _: std::fs::File,
    ) -> Result<SyntheticVm, MigrateError> {
        Err(MigrateError::Config(
            "the synthetic VM's memory cannot be shared".into(),
        ))
    }
}
