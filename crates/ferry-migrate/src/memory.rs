//! Guest memory as the engine sees it: numbered 4 KiB pages.

use std::sync::Arc;

use ferry_model::bitmap::DirtyBitmap;
use ferry_vmm::{GuestRam, PAGE_SIZE};
use ferry_wire::codec::{CodecError, PageStore};

use crate::digest::PageHashes;

/// Page-granular access to a VM's RAM, shareable between sender or receiver threads.
pub trait GuestMemory: Send + Sync {
    /// Number of 4 KiB pages.
    fn pages(&self) -> u64;
    /// Copies page `index` into `buf` (one page long).
    fn read_page(&self, index: u64, buf: &mut [u8]);
    /// A mutable view of page `index`.
    ///
    /// # Safety
    /// The caller must be the only one touching this page while the slice lives: the guest is not
    /// running and no other thread has the same page (the engine shards pages across channels so
    /// that a page always travels on the same channel).
    #[allow(clippy::mut_from_ref)]
    unsafe fn page_mut(&self, index: u64) -> &mut [u8];
    /// Pages that may hold data; the rest are known to be zero without reading them.
    fn data_pages(&self) -> Option<DirtyBitmap>;
    /// A view of page `index`, read in place (no copy).
    ///
    /// # Safety
    /// Nothing may write the page while the slice lives: the guest is paused.
    unsafe fn page(&self, index: u64) -> &[u8];
    /// A view of `count` consecutive pages from `first`, which lie back to back in host memory.
    ///
    /// # Safety
    /// As for [`GuestMemory::page`], for every page of the run.
    unsafe fn run(&self, first: u64, count: u64) -> &[u8];
    /// A mutable view of `count` consecutive pages from `first`.
    ///
    /// # Safety
    /// As for [`GuestMemory::page_mut`], for every page of the run.
    #[allow(clippy::mut_from_ref)]
    unsafe fn run_mut(&self, first: u64, count: u64) -> &mut [u8];
    /// Makes pages `first..first + count` present before they are written (best effort: memory
    /// that cannot, or need not, does nothing).
    fn populate(&self, _first: u64, _count: u64) {}
}

/// Panics unless pages `first..first + count` exist in a RAM of `pages` pages; returns the byte
/// offset and length of the run.
pub(crate) fn run_bounds(first: u64, count: u64, pages: u64) -> (usize, usize) {
    assert!(
        first.checked_add(count).is_some_and(|end| end <= pages),
        "page run {first}+{count} beyond {pages} pages"
    );
    (first as usize * PAGE_SIZE, count as usize * PAGE_SIZE)
}

impl GuestMemory for GuestRam {
    fn pages(&self) -> u64 {
        GuestRam::pages(self)
    }
    fn read_page(&self, index: u64, buf: &mut [u8]) {
        GuestRam::read_page(self, index, buf)
    }
    unsafe fn page_mut(&self, index: u64) -> &mut [u8] {
        assert!(index < GuestRam::pages(self));
        // SAFETY: the page lies inside the live mapping (checked above); exclusivity is the caller's
        // contract, stated on the trait method.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.host_base().add(index as usize * PAGE_SIZE),
                PAGE_SIZE,
            )
        }
    }
    fn data_pages(&self) -> Option<DirtyBitmap> {
        Some(GuestRam::data_pages(self))
    }
    unsafe fn page(&self, index: u64) -> &[u8] {
        assert!(index < GuestRam::pages(self));
        // SAFETY: in bounds of the live mapping (checked); no writer while it lives is the caller's
        // contract.
        unsafe {
            std::slice::from_raw_parts(self.host_base().add(index as usize * PAGE_SIZE), PAGE_SIZE)
        }
    }
    unsafe fn run(&self, first: u64, count: u64) -> &[u8] {
        let (at, len) = run_bounds(first, count, GuestRam::pages(self));
        // SAFETY: one mapping holds all of RAM, and the run lies inside it (checked); no writer
        // while it lives is the caller's contract.
        unsafe { std::slice::from_raw_parts(self.host_base().add(at), len) }
    }
    fn populate(&self, first: u64, count: u64) {
        // Best effort: on failure the copy faults the pages in itself.
        let _ = self.populate_range(first, count);
    }
    unsafe fn run_mut(&self, first: u64, count: u64) -> &mut [u8] {
        let (at, len) = run_bounds(first, count, GuestRam::pages(self));
        // SAFETY: inside the one mapping (checked); exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.host_base().add(at), len) }
    }
}

/// The decoder's view of a destination's RAM for one channel: checks page numbers and records which
/// pages a batch wrote so their hashes can be updated after it is applied.
pub struct RamStore {
    mem: Arc<dyn GuestMemory>,
    touched: Vec<u64>,
}

impl RamStore {
    /// A store over `mem`.
    pub fn new(mem: Arc<dyn GuestMemory>) -> Self {
        Self {
            mem,
            touched: Vec::with_capacity(1024),
        }
    }

    /// Hashes the pages the last batch wrote into `hashes`, then forgets them.
    pub fn record_hashes(&mut self, hashes: Option<&PageHashes>) {
        if let Some(h) = hashes {
            for &p in &self.touched {
                // SAFETY: this channel just wrote page `p` and owns it (sharding); the guest is not
                // running while pages are applied through this store.
                h.set(p, unsafe { self.mem.page_mut(p) });
            }
        }
        self.touched.clear();
    }
}

impl PageStore for RamStore {
    fn page_mut(&mut self, gfn: u64) -> Result<&mut [u8], CodecError> {
        if gfn >= self.mem.pages() {
            return Err(CodecError::GfnOutOfRange(gfn));
        }
        // The decoder asks twice per page (check, then write); record it once.
        if self.touched.last() != Some(&gfn) {
            self.touched.push(gfn);
        }
        // SAFETY: the receive engine gives each channel a disjoint set of pages (pages are sharded by
        // number) and applies pages only while the destination guest is not running.
        Ok(unsafe { self.mem.page_mut(gfn) })
    }
}
