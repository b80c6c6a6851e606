//! Page bitmaps over guest page indices: one bit per 4 KiB page, as the dirty log, the sets of
//! pages sent or arrived, and the wire's bitmaps use them. Pure data structures, no KVM.

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

    /// The words covering `pages` pages from page `first_page` (a multiple of 64), as a KVM slot's
    /// log covers its pages; the slice is shorter where the bitmap ends first.
    pub fn words_at(&self, first_page: u64, pages: u64) -> &[u64] {
        debug_assert!(first_page.is_multiple_of(64));
        let start = ((first_page / 64) as usize).min(self.words.len());
        let end = (start + pages.div_ceil(64) as usize).min(self.words.len());
        &self.words[start..end]
    }
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
        assert_eq!(b.words_at(64, 66), &b.words()[1..3]);
        assert_eq!(
            b.words_at(128, 64),
            &b.words()[2..3],
            "cut where the bitmap ends"
        );
        assert!(b.words_at(192, 64).is_empty());
    }
}
