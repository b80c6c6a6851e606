//! RAM digests: one CRC32C per page, combined with xxh3 into one 128-bit digest.
//!
//! The check is against mistakes (a page missed by dirty tracking, a page applied out of order), not
//! against an adversary (TLS covers that): a wrong page goes unnoticed with probability 2^-32.
//! CRC32C runs in hardware at several times xxh3's speed here, and the destination computes it on
//! the receive path, so the cheaper function is measurably better for migration time.
//!
//! The destination keeps per-page hashes as pages land, so its digest at switch-over costs a pass
//! over 8 bytes per page instead of over all of RAM; the source hashes its frozen RAM after the
//! destination runs, off the downtime path.

use std::sync::atomic::{AtomicU64, Ordering};

use xxhash_rust::xxh3::xxh3_128;

use crate::memory::GuestMemory;

/// The per-page check value.
fn page_hash(page: &[u8]) -> u64 {
    u64::from(crc32c::crc32c(page))
}

/// Per-page hashes, updatable from several threads (each owns distinct pages).
pub struct PageHashes {
    hashes: Vec<AtomicU64>,
}

impl PageHashes {
    /// Hashes for `pages` pages, all initialised to the hash of a zero page (fresh RAM).
    pub fn new(pages: u64) -> Self {
        let zero = page_hash(&[0u8; ferry_vmm::PAGE_SIZE]);
        Self {
            hashes: (0..pages).map(|_| AtomicU64::new(zero)).collect(),
        }
    }

    /// Records page `index`'s content.
    pub fn set(&self, index: u64, page: &[u8]) {
        if let Some(h) = self.hashes.get(index as usize) {
            h.store(page_hash(page), Ordering::Relaxed);
        }
    }

    /// Records page `index`'s check value, computed by the caller (`crc32c` of its bytes).
    pub fn set_crc(&self, index: u64, crc: u32) {
        if let Some(h) = self.hashes.get(index as usize) {
            h.store(u64::from(crc), Ordering::Relaxed);
        }
    }

    /// The combined digest.
    pub fn digest(&self) -> [u8; 16] {
        let mut bytes = Vec::with_capacity(self.hashes.len() * 8);
        for h in &self.hashes {
            bytes.extend_from_slice(&h.load(Ordering::Relaxed).to_le_bytes());
        }
        xxh3_128(&bytes).to_le_bytes()
    }
}

/// Digest of all of `mem` as it is now (the caller keeps it from changing).
///
/// Holes in the backing file are hashed as zero pages without being read: reading one would make
/// the kernel allocate and clear it (on a 1 GiB guest with 128 MiB in use that was 650 ms of
/// post-copy's completion, all of it page faults).
pub fn digest_memory(mem: &dyn GuestMemory) -> [u8; 16] {
    let mut page = vec![0u8; ferry_vmm::PAGE_SIZE];
    let zero = page_hash(&page).to_le_bytes();
    let data = mem.data_pages();
    let mut bytes = Vec::with_capacity(mem.pages() as usize * 8);
    for p in 0..mem.pages() {
        if data.as_ref().is_some_and(|d| !d.get(p)) {
            bytes.extend_from_slice(&zero);
            continue;
        }
        mem.read_page(p, &mut page);
        bytes.extend_from_slice(&page_hash(&page).to_le_bytes());
    }
    xxh3_128(&bytes).to_le_bytes()
}

/// Hex form of a digest, for reports.
pub fn hex(d: &[u8; 16]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}
