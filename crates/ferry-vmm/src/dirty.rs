//! Dirty-page bitmaps over guest page indices, and KVM's dirty log read into reusable buffers
//! (kvm-ioctls' `get_dirty_log` allocates a new vector per call, which we avoid on the hot path).

use kvm_bindings::kvm_dirty_log;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iow_nr;

const KVMIO: u32 = 0xAE;
ioctl_iow_nr!(KVM_GET_DIRTY_LOG, KVMIO, 0x42, kvm_dirty_log);
vmm_sys_util::ioctl_iowr_nr!(
    KVM_CLEAR_DIRTY_LOG,
    KVMIO,
    0xc0,
    kvm_bindings::kvm_clear_dirty_log
);

/// One bit per guest page, set and read by several threads without a lock: for state that a
/// latency-critical thread must read while bulk threads update it (a lock held by a descheduled
/// bulk thread made post-copy fault requests wait for it).
#[derive(Debug)]
pub struct AtomicBitmap {
    words: Vec<std::sync::atomic::AtomicU64>,
    pages: u64,
}

impl AtomicBitmap {
    /// An all-clear bitmap for `pages` pages.
    pub fn new(pages: u64) -> Self {
        Self {
            words: (0..pages.div_ceil(64))
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
            pages,
        }
    }

    /// Sets a page's bit; whether it was clear before (false for a page out of range).
    pub fn test_and_set(&self, page: u64) -> bool {
        if page >= self.pages {
            return false;
        }
        let bit = 1u64 << (page % 64);
        self.words[(page / 64) as usize].fetch_or(bit, std::sync::atomic::Ordering::AcqRel) & bit
            == 0
    }

    /// Whether a page's bit is set.
    pub fn get(&self, page: u64) -> bool {
        page < self.pages
            && self.words[(page / 64) as usize].load(std::sync::atomic::Ordering::Acquire)
                & (1 << (page % 64))
                != 0
    }

    /// A plain copy of the bits as they are now.
    pub fn snapshot(&self) -> DirtyBitmap {
        let words: Vec<u64> = self
            .words
            .iter()
            .map(|w| w.load(std::sync::atomic::Ordering::Acquire))
            .collect();
        DirtyBitmap::from_words(self.pages, &words).unwrap_or_else(|| DirtyBitmap::new(self.pages))
    }
}

/// One bit per guest page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirtyBitmap {
    words: Vec<u64>,
    pages: u64,
}

impl DirtyBitmap {
    /// An all-clear bitmap for `pages` pages.
    pub fn new(pages: u64) -> Self {
        Self {
            words: vec![0; pages.div_ceil(64) as usize],
            pages,
        }
    }

    /// An all-set bitmap (the first round of a migration sends everything).
    pub fn full(pages: u64) -> Self {
        let mut b = Self::new(pages);
        b.words.fill(u64::MAX);
        b.trim();
        b
    }

    fn trim(&mut self) {
        let rem = self.pages % 64;
        if rem != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << rem) - 1;
            }
        }
    }

    /// Number of pages covered.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Marks a page dirty.
    pub fn set(&mut self, page: u64) {
        if page < self.pages {
            self.words[(page / 64) as usize] |= 1 << (page % 64);
        }
    }

    /// Clears one page's bit.
    pub fn clear_page(&mut self, page: u64) {
        if page < self.pages {
            self.words[(page / 64) as usize] &= !(1 << (page % 64));
        }
    }

    /// Whether a page is dirty.
    pub fn get(&self, page: u64) -> bool {
        page < self.pages && self.words[(page / 64) as usize] & (1 << (page % 64)) != 0
    }

    /// Clears every bit.
    pub fn clear(&mut self) {
        self.words.fill(0);
    }

    /// Number of dirty pages.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// ORs `words` (a KVM slot log) in, starting at page `first_page` (a multiple of 64).
    pub fn or_words_at(&mut self, first_page: u64, words: &[u64]) {
        debug_assert!(first_page.is_multiple_of(64));
        let start = (first_page / 64) as usize;
        for (dst, src) in self.words[start..].iter_mut().zip(words) {
            *dst |= *src;
        }
        self.trim();
    }

    /// Clears the pages set in `other`.
    pub fn and_not(&mut self, other: &DirtyBitmap) {
        for (dst, src) in self.words.iter_mut().zip(&other.words) {
            *dst &= !*src;
        }
    }

    /// Keeps only the pages also set in `other`.
    pub fn and(&mut self, other: &DirtyBitmap) {
        for (dst, src) in self.words.iter_mut().zip(&other.words) {
            *dst &= *src;
        }
    }

    /// ORs another bitmap in.
    pub fn or(&mut self, other: &DirtyBitmap) {
        self.or_words_at(0, &other.words);
    }

    /// Dirty page indices in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros() as u64;
                w &= w - 1;
                Some(i as u64 * 64 + bit)
            })
        })
    }

    /// A bitmap of `pages` pages from raw words (as sent on the wire); extra bits are cleared.
    pub fn from_words(pages: u64, words: &[u64]) -> Option<Self> {
        if words.len() as u64 != pages.div_ceil(64) {
            return None;
        }
        let mut b = Self {
            words: words.to_vec(),
            pages,
        };
        b.trim();
        Some(b)
    }

    /// The first set page at or after `start`, if any.
    pub fn next_set_from(&self, start: u64) -> Option<u64> {
        if start >= self.pages {
            return None;
        }
        let mut i = (start / 64) as usize;
        let mut w = self.words[i] & (u64::MAX << (start % 64));
        loop {
            if w != 0 {
                return Some(i as u64 * 64 + u64::from(w.trailing_zeros()));
            }
            i += 1;
            w = *self.words.get(i)?;
        }
    }

    /// The raw words, for sending a bitmap on the wire.
    pub fn words(&self) -> &[u64] {
        &self.words
    }
}

/// Reads one slot's KVM dirty log into `buf` (resized once, then reused). Reading clears the log,
/// unless manual clearing is on ([`enable_manual_clear`]).
pub fn get_dirty_log(
    vm: &kvm_ioctls::VmFd,
    slot: u32,
    pages: u64,
    buf: &mut Vec<u64>,
) -> std::io::Result<()> {
    buf.resize(pages.div_ceil(64) as usize, 0);
    let log = kvm_dirty_log {
        slot,
        padding1: 0,
        __bindgen_anon_1: kvm_bindings::kvm_dirty_log__bindgen_ty_1 {
            dirty_bitmap: buf.as_mut_ptr().cast(),
        },
    };
    // SAFETY: `log` points at a buffer of ceil(pages/64) u64s, exactly the bitmap size KVM writes for a
    // slot of `pages` pages; the VM fd is valid for the call's duration.
    let ret = unsafe { ioctl_with_ref(vm, KVM_GET_DIRTY_LOG(), &log) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Turns on manual clearing of the dirty log (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) if this KVM has it:
/// reading the log then neither clears it nor write-protects pages; [`clear_dirty_log`] does that
/// for exactly the pages given. Returns whether it is on.
pub fn enable_manual_clear(vm: &kvm_ioctls::VmFd) -> bool {
    let cap = kvm_bindings::kvm_enable_cap {
        cap: kvm_bindings::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
        args: [
            u64::from(kvm_bindings::KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE),
            0,
            0,
            0,
        ],
        ..Default::default()
    };
    vm.check_extension_raw(u64::from(kvm_bindings::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)) > 0
        && vm.enable_cap(&cap).is_ok()
}

/// Clears (and write-protects again) the pages of `slot` whose bits are set in `bitmap`, which
/// covers the whole slot of `pages` pages: after this, writes to them are logged anew.
pub fn clear_dirty_log(
    vm: &kvm_ioctls::VmFd,
    slot: u32,
    pages: u64,
    bitmap: &mut [u64],
) -> std::io::Result<()> {
    let num_pages = u32::try_from(pages).map_err(|_| std::io::Error::other("slot too large"))?;
    if bitmap.len() as u64 != pages.div_ceil(64) {
        return Err(std::io::Error::other("bitmap does not cover the slot"));
    }
    let log = kvm_bindings::kvm_clear_dirty_log {
        slot,
        num_pages,
        first_page: 0,
        __bindgen_anon_1: kvm_bindings::kvm_clear_dirty_log__bindgen_ty_1 {
            dirty_bitmap: bitmap.as_mut_ptr().cast(),
        },
    };
    // SAFETY: the bitmap holds ceil(pages/64) u64s (checked), the size KVM reads for `num_pages`
    // pages from page 0 of the slot; the VM fd is valid for the call.
    let ret = unsafe { ioctl_with_ref(vm, KVM_CLEAR_DIRTY_LOG(), &log) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_bitmap_sets_once_across_threads() {
        let b = std::sync::Arc::new(AtomicBitmap::new(130));
        let firsts: usize = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..130).filter(|&p| b.test_and_set(p)).count())
            })
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(firsts, 130, "each page is new to exactly one thread");
        assert!(b.get(129) && !b.get(130));
        assert!(!b.test_and_set(500), "out of range");
        assert_eq!(b.snapshot().count(), 130);
    }

    #[test]
    fn bitmap_basics() {
        let mut b = DirtyBitmap::new(130);
        b.set(0);
        b.set(64);
        b.set(129);
        b.set(500); // out of range: ignored
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![0, 64, 129]);
        assert_eq!(b.count(), 3);
        assert_eq!(DirtyBitmap::full(130).count(), 130);
        let mut c = DirtyBitmap::new(130);
        c.or_words_at(64, &[u64::MAX, u64::MAX]);
        assert_eq!(c.count(), 66);
        assert_eq!(b.next_set_from(1), Some(64));
        assert_eq!(b.next_set_from(65), Some(129));
        assert_eq!(b.next_set_from(130), None);
        assert_eq!(DirtyBitmap::from_words(130, b.words()).unwrap(), b);
        assert!(DirtyBitmap::from_words(1000, b.words()).is_none());
    }
}
