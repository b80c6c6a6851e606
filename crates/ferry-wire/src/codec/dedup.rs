//! In-batch duplicate detection: hash a sample of each page, confirm candidates byte for byte.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::PageRef;

/// Page hash used to find candidates. A plain function pointer so tests can force collisions.
pub(crate) type PageHashFn = fn(&[u8]) -> u64;

/// Words sampled per page by [`sampled_page_hash`].
const SAMPLES: usize = 16;

/// A hash of 16 words spread over the page (each in its own cache line, at varying offsets), mixed
/// so the map needs no second hash.
///
/// Why not a hash of every byte: xxh3 of each page was the largest cost of a 2 GiB stop-and-copy's
/// sender (7% of all samples per sending thread, more than the socket writes), for a feature that
/// finds nothing in most batches. Equal pages still hash equal, so every duplicate whose first
/// occurrence holds its slot is found; pages that differ only outside the sample collide, and a
/// collision costs one byte comparison (which usually stops at the first cache line), never a
/// wrong page.
pub(crate) fn sampled_page_hash(page: &[u8]) -> u64 {
    const STRIDE: usize = super::PAGE_SIZE / SAMPLES;
    let mut h = 0x9E37_79B9_7F4A_7C15u64;
    for k in 0..SAMPLES {
        let at = k * STRIDE + (k % 8) * 8;
        let mut w = [0u8; 8];
        w.copy_from_slice(&page[at..at + 8]);
        h = (h ^ u64::from_le_bytes(w))
            .wrapping_mul(0xBF58_476D_1CE4_E5B9)
            .rotate_left(31);
    }
    // Final avalanche (splitmix64's), so the identity-hashed map spreads keys over its buckets.
    h ^= h >> 30;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

/// The keys are already mixed hashes; hashing them again would only cost time.
#[derive(Default)]
pub(crate) struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are used; fold anything else in so the impl stays correct.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// Remembers, per batch, the first page with each hash.
pub(crate) struct DedupIndex {
    first: HashMap<u64, u32, BuildHasherDefault<IdentityHasher>>,
    hash: PageHashFn,
}

impl DedupIndex {
    /// An index using [`sampled_page_hash`].
    pub(crate) fn new() -> Self {
        Self::with_hash(sampled_page_hash)
    }

    /// An index using `hash` (tests pass a constant to force collisions).
    pub(crate) fn with_hash(hash: PageHashFn) -> Self {
        Self {
            first: HashMap::default(),
            hash,
        }
    }

    /// Starts a new batch; keeps the map's capacity so steady state allocates nothing.
    pub(crate) fn clear(&mut self) {
        self.first.clear();
    }

    /// If page `index` equals an earlier registered page of `pages`, that page's index; otherwise
    /// registers it (when its hash is new) and returns `None`.
    ///
    /// Equality is checked on the full bytes, so a hash collision costs a compare, never a wrong
    /// page. On a collision the first page keeps the slot: the later one is simply sent whole.
    #[inline]
    pub(crate) fn find_or_insert(&mut self, pages: &[PageRef<'_>], index: usize) -> Option<usize> {
        let data = pages[index].data;
        let h = (self.hash)(data);
        match self.first.entry(h) {
            std::collections::hash_map::Entry::Occupied(e) => {
                let earlier = *e.get() as usize;
                (pages[earlier].data == data).then_some(earlier)
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(index as u32);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::PAGE_SIZE;

    fn page(fill: u8, poke: Option<usize>) -> Vec<u8> {
        let mut p = vec![fill; PAGE_SIZE];
        if let Some(i) = poke {
            p[i] ^= 1;
        }
        p
    }

    #[test]
    fn finds_true_duplicates() {
        let (a, b) = (page(1, None), page(2, None));
        let pages = [
            PageRef { gfn: 0, data: &a },
            PageRef { gfn: 1, data: &b },
            PageRef { gfn: 2, data: &a },
            PageRef { gfn: 3, data: &b },
        ];
        let mut idx = DedupIndex::new();
        let got: Vec<_> = (0..4).map(|i| idx.find_or_insert(&pages, i)).collect();
        assert_eq!(got, [None, None, Some(0), Some(1)]);
    }

    #[test]
    fn pages_differing_outside_the_sample_are_not_duplicates() {
        // Byte 9 is in no sampled word: the hashes collide, the comparison tells them apart.
        let (a, b) = (page(3, None), page(3, Some(9)));
        assert_eq!(sampled_page_hash(&a), sampled_page_hash(&b));
        let pages = [
            PageRef { gfn: 0, data: &a },
            PageRef { gfn: 1, data: &b },
            PageRef { gfn: 2, data: &a },
        ];
        let mut idx = DedupIndex::new();
        let got: Vec<_> = (0..3).map(|i| idx.find_or_insert(&pages, i)).collect();
        assert_eq!(got, [None, None, Some(0)]);
    }

    #[test]
    fn forced_hash_collision_is_not_a_duplicate() {
        // Every page hashes to 0: only the byte comparison tells them apart.
        let (a, b, c) = (page(1, None), page(1, Some(4095)), page(1, Some(0)));
        let pages = [
            PageRef { gfn: 0, data: &a },
            PageRef { gfn: 1, data: &b },
            PageRef { gfn: 2, data: &c },
            PageRef { gfn: 3, data: &a },
        ];
        let mut idx = DedupIndex::with_hash(|_| 0);
        let got: Vec<_> = (0..4).map(|i| idx.find_or_insert(&pages, i)).collect();
        assert_eq!(got, [None, None, None, Some(0)]);
        idx.clear();
        assert_eq!(idx.find_or_insert(&pages, 3), None);
    }
}
