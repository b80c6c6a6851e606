//! XBZRLE deltas (QEMU's format) and the encoder-side cache of previously sent pages.

use super::varint::{get_u64, write_u64};
use super::{PAGE_SIZE, XBZRLE_MAX_DELTA};

const WORD: usize = 8;

#[inline]
fn word(buf: &[u8], i: usize) -> u64 {
    u64::from_ne_bytes(buf[i..i + WORD].try_into().expect("8 bytes"))
}

/// True if some byte of `x` is zero (the classic has-zero-byte bit trick).
#[inline]
fn has_zero_byte(x: u64) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    (x.wrapping_sub(LO) & !x & HI) != 0
}

/// Encodes the delta turning `old` into `new` (same length) into `out`; returns its length, or
/// `None` if it does not fit in `out` (the caller then sends the page whole).
///
/// The format is a sequence of `(zrun, nzrun, new[..nzrun])` with LEB128 run lengths; the trailing
/// unchanged run is omitted. Comparisons go a u64 word at a time, since most of a page is unchanged.
pub fn xbzrle_encode(old: &[u8], new: &[u8], out: &mut [u8]) -> Option<usize> {
    assert_eq!(old.len(), new.len(), "xbzrle pages must have equal length");
    let n = new.len();
    let mut i = 0;
    let mut d = 0;
    while i < n {
        // Unchanged run: whole words first, then bytes.
        let zstart = i;
        while i + WORD <= n && word(old, i) == word(new, i) {
            i += WORD;
        }
        while i < n && old[i] == new[i] {
            i += 1;
        }
        if i == n {
            break;
        }
        d = write_u64(out, d, (i - zstart) as u64)?;

        // Changed run: stop at the first unchanged byte. Words whose XOR has no zero byte are
        // changed throughout, so they are skipped whole.
        let nzstart = i;
        while i < n && old[i] != new[i] && i & (WORD - 1) != 0 {
            i += 1;
        }
        if i & (WORD - 1) == 0 {
            while i + WORD <= n && !has_zero_byte(word(old, i) ^ word(new, i)) {
                i += WORD;
            }
            while i < n && old[i] != new[i] {
                i += 1;
            }
        }
        let len = i - nzstart;
        d = write_u64(out, d, len as u64)?;
        let dst = out.get_mut(d..d + len)?;
        dst.copy_from_slice(&new[nzstart..i]);
        d += len;
    }
    Some(d)
}

/// Applies a delta produced by [`xbzrle_encode`] to `page` in place. `false` (leaving `page`
/// partly modified) if the delta is malformed: truncated, a zero-length run where QEMU's format
/// forbids one, or a run past the end of the page. [`xbzrle_check`] gives the same verdict
/// without touching a page.
pub fn xbzrle_decode(delta: &[u8], page: &mut [u8]) -> bool {
    walk(delta, page.len(), |at, bytes| {
        page[at..at + bytes.len()].copy_from_slice(bytes)
    })
}

/// Whether `delta` would apply cleanly to a page of `page_len` bytes (the validity of a delta
/// depends only on its structure, never on the page content).
pub fn xbzrle_check(delta: &[u8], page_len: usize) -> bool {
    walk(delta, page_len, |_, _| {})
}

/// Parses `delta`, calling `write(offset, bytes)` for each changed run; `false` if malformed.
/// Every run handed to `write` lies within `0..page_len`.
#[inline]
fn walk(delta: &[u8], page_len: usize, mut write: impl FnMut(usize, &[u8])) -> bool {
    let mut i = 0;
    let mut d: usize = 0;
    let mut first = true;
    while i < delta.len() {
        let Some(zrun) = get_u64(delta, &mut i) else {
            return false;
        };
        // A later zero-length unchanged run would mean the previous changed run was not maximal.
        if zrun == 0 && !first {
            return false;
        }
        first = false;
        let Some(nzrun) = get_u64(delta, &mut i) else {
            return false;
        };
        if nzrun == 0 {
            return false;
        }
        // Both runs are bounded by the page length before any usize arithmetic, so nothing wraps.
        let room = (page_len - d) as u64;
        if zrun > room || nzrun > room - zrun {
            return false;
        }
        d += zrun as usize;
        let len = nzrun as usize;
        let Some(src) = delta.get(i..i + len) else {
            return false;
        };
        write(d, src);
        d += len;
        i += len;
    }
    true
}

/// Marks a slot as holding no page.
const EMPTY: u64 = u64::MAX;

/// Bounded cache of the last version sent of recently sent pages, keyed by gfn.
///
/// Two-way set associative with one LRU bit per set: O(1), allocation-free after construction, and
/// a hot page survives one cold page mapping to its set. The storage is allocated zeroed up front,
/// which the OS backs lazily, so an oversized cache costs address space rather than memory.
pub(crate) struct XbzrleCache {
    /// `2 * sets` pages of content.
    data: Vec<u8>,
    /// gfn stored in each slot, or [`EMPTY`].
    gfns: Vec<u64>,
    /// Batch sequence number when each slot was last written.
    seqs: Vec<u64>,
    /// Per set: which way (0/1) was used least recently.
    lru: Vec<u8>,
    sets: usize,
}

impl XbzrleCache {
    /// A cache holding up to `bytes / PAGE_SIZE` pages (rounded down to an even count, at least 2).
    pub(crate) fn new(bytes: usize) -> Self {
        let sets = (bytes / PAGE_SIZE / 2).max(1);
        Self {
            data: vec![0; sets * 2 * PAGE_SIZE],
            gfns: vec![EMPTY; sets * 2],
            seqs: vec![0; sets * 2],
            lru: vec![0; sets],
            sets,
        }
    }

    #[inline]
    fn set_of(&self, gfn: u64) -> usize {
        // Fibonacci hashing spreads strided gfns (e.g. every 512th page) across sets.
        let h = gfn.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((h >> 32) as usize) % self.sets
    }

    #[inline]
    fn find(&self, gfn: u64) -> Option<usize> {
        let base = self.set_of(gfn) * 2;
        (base..base + 2).find(|&s| self.gfns[s] == gfn)
    }

    /// The cached version of `gfn`, unless it was stored during batch `seq` (a gfn repeated within
    /// one batch must not be delta-encoded: the decoder deltas against the pre-batch content).
    #[inline]
    pub(crate) fn get(&mut self, gfn: u64, seq: u64) -> Option<&[u8]> {
        let slot = self.find(gfn)?;
        if self.seqs[slot] == seq {
            return None;
        }
        self.lru[slot / 2] = u8::from(slot & 1 == 0);
        Some(&self.data[slot * PAGE_SIZE..(slot + 1) * PAGE_SIZE])
    }

    /// Records `page` as the version of `gfn` sent in batch `seq`, evicting the set's LRU way.
    #[inline]
    pub(crate) fn put(&mut self, gfn: u64, page: &[u8], seq: u64) {
        let set = self.set_of(gfn);
        let slot = self
            .find(gfn)
            .unwrap_or_else(|| set * 2 + usize::from(self.lru[set]));
        self.gfns[slot] = gfn;
        self.seqs[slot] = seq;
        self.lru[set] = u8::from(slot & 1 == 0);
        self.data[slot * PAGE_SIZE..(slot + 1) * PAGE_SIZE].copy_from_slice(page);
    }

    /// Forgets every page (after a dropped payload the destination no longer matches).
    pub(crate) fn clear(&mut self) {
        self.gfns.fill(EMPTY);
    }
}

/// Scratch buffer size for one delta: the limit itself; reaching it means "send Normal".
pub(crate) const DELTA_BUF: usize = XBZRLE_MAX_DELTA;

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(old: &[u8], new: &[u8]) -> Option<usize> {
        let mut buf = [0u8; DELTA_BUF];
        let len = xbzrle_encode(old, new, &mut buf)?;
        let mut page = old.to_vec();
        assert!(xbzrle_decode(&buf[..len], &mut page));
        assert_eq!(page, new);
        Some(len)
    }

    #[test]
    fn unchanged_page_is_empty_delta() {
        let p = vec![7u8; PAGE_SIZE];
        assert_eq!(round_trip(&p, &p), Some(0));
    }

    #[test]
    fn small_changes_round_trip_compactly() {
        let old: Vec<u8> = (0..PAGE_SIZE).map(|i| (i * 31 % 251) as u8).collect();
        for idx in [0usize, 1, 7, 8, 9, 100, 4088, 4095] {
            let mut new = old.clone();
            new[idx] ^= 0x5a;
            let len = round_trip(&old, &new).unwrap();
            assert!(len <= 6, "one byte at {idx} took {len}");
        }
        let mut new = old.clone();
        new[10..300].iter_mut().for_each(|b| *b = !*b);
        new[4000..4096]
            .iter_mut()
            .for_each(|b| *b = b.wrapping_add(1));
        round_trip(&old, &new).unwrap();
    }

    #[test]
    fn gives_up_past_half_a_page() {
        let old = vec![0u8; PAGE_SIZE];
        let new = vec![1u8; PAGE_SIZE];
        assert_eq!(round_trip(&old, &new), None);
        // Alternating changed/unchanged bytes cost 3 bytes per 2 bytes of page: too much.
        let alt: Vec<u8> = (0..PAGE_SIZE).map(|i| (i % 2) as u8).collect();
        assert_eq!(round_trip(&old, &alt), None);
    }

    #[test]
    fn rejects_malformed_deltas() {
        let mut page = vec![0u8; PAGE_SIZE];
        // nzrun of zero.
        assert!(!xbzrle_decode(&[0, 0], &mut page));
        // Second zrun of zero.
        assert!(!xbzrle_decode(&[0, 1, 9, 0, 1, 9], &mut page));
        // Run past the end of the page: zrun 4095, nzrun 2.
        assert!(!xbzrle_decode(&[0xff, 0x1f, 2, 1, 1], &mut page));
        // Literal bytes missing.
        assert!(!xbzrle_decode(&[0, 3, 1], &mut page));
        // Truncated varint.
        assert!(!xbzrle_decode(&[0x80], &mut page));
        // Huge varints must not wrap.
        let mut huge = vec![0xff; 9];
        huge.push(0x01);
        huge.extend_from_slice(&[1, 1]);
        assert!(!xbzrle_decode(&huge, &mut page));
        for bad in [
            &[0u8, 0][..],
            &[0, 1, 9, 0, 1, 9],
            &[0xff, 0x1f, 2, 1, 1],
            &[0x80],
        ] {
            assert!(!xbzrle_check(bad, PAGE_SIZE));
        }
        // Exactly to the end is fine.
        assert!(xbzrle_check(&[0xff, 0x1f, 1, 42], PAGE_SIZE));
        assert!(xbzrle_decode(&[0xff, 0x1f, 1, 42], &mut page));
        assert_eq!(page[4095], 42);
    }

    #[test]
    fn cache_evicts_lru_way_and_respects_batch_seq() {
        let mut c = XbzrleCache::new(2 * PAGE_SIZE); // one set, two ways
        let a = [1u8; PAGE_SIZE];
        let b = [2u8; PAGE_SIZE];
        let d = [3u8; PAGE_SIZE];
        c.put(10, &a, 1);
        c.put(11, &b, 1);
        assert!(c.get(10, 1).is_none(), "same batch must miss");
        assert_eq!(c.get(10, 2).unwrap()[0], 1); // 10 is now most recent
        c.put(12, &d, 2); // evicts 11
        assert!(c.get(11, 3).is_none());
        assert_eq!(c.get(10, 3).unwrap()[0], 1);
        assert_eq!(c.get(12, 3).unwrap()[0], 3);
        c.clear();
        assert!(c.get(10, 4).is_none());
    }
}
