//! Which dirty pages a live round holds back: pages the guest rewrites round after round would only
//! be sent again, so pre-copy sends them last, in the final round (the issue's "pages dirtied often
//! go last"). A plain function of what the dirty log showed, testable without a VM.
//!
//! Holding a page back pays only if it would be dirty again anyway: a uniformly random writer that
//! dirties 60% of its working set per round leaves 40% of any page set clean by the next round, and
//! holding those back would grow the final pause. So the rule measures it: pages dirty in each of the
//! last two rounds are "hot", and they are held back only while at least [`REDIRTY_THRESHOLD`] of
//! the hot set came back dirty in the round just finished.

use crate::bitmap::DirtyBitmap;

/// Share of hot pages that must have been rewritten in the last round for hot pages to be held back.
pub const REDIRTY_THRESHOLD: f64 = 0.9;
/// Fewer hot pages than this are too few to judge (and too few to matter).
const MIN_HOT: u64 = 64;

/// Dirty history of every page over the last rounds.
#[derive(Debug, Clone)]
pub struct PageHeat {
    /// Dirty in the last round.
    last: DirtyBitmap,
    /// Dirty in each of the last two rounds.
    hot: DirtyBitmap,
    /// Share of the previous hot set dirty again in the last round (None: not measured yet).
    redirty: Option<f64>,
}

impl PageHeat {
    /// No history yet, for a guest of `pages` pages.
    pub fn new(pages: u64) -> Self {
        Self {
            last: DirtyBitmap::new(pages),
            hot: DirtyBitmap::new(pages),
            redirty: None,
        }
    }

    /// Records the pages the dirty log showed for the round just finished.
    pub fn observe(&mut self, logged: &DirtyBitmap) {
        let before = self.hot.count();
        if before >= MIN_HOT {
            let mut again = self.hot.clone();
            again.and(logged);
            self.redirty = Some(again.count() as f64 / before as f64);
        } else {
            self.redirty = None;
        }
        self.hot = self.last.clone();
        self.hot.and(logged);
        self.last = logged.clone();
    }

    /// Pages to hold back from the next live round, if holding back pays now.
    pub fn hold_back(&self) -> Option<&DirtyBitmap> {
        (self.redirty.is_some_and(|r| r >= REDIRTY_THRESHOLD) && self.hot.count() >= MIN_HOT)
            .then_some(&self.hot)
    }

    /// Share of the hot pages rewritten in the last round, as measured.
    pub fn redirty(&self) -> Option<f64> {
        self.redirty
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bitmap(pages: u64, set: impl IntoIterator<Item = u64>) -> DirtyBitmap {
        let mut b = DirtyBitmap::new(pages);
        set.into_iter().for_each(|p| b.set(p));
        b
    }

    #[test]
    fn pages_rewritten_every_round_are_held_back() {
        // 100 hot pages written every round, plus a different handful of cold ones each round.
        let mut h = PageHeat::new(10_000);
        for round in 0..4u64 {
            assert!(h.hold_back().is_none() || round >= 3, "round {round}");
            h.observe(&bitmap(
                10_000,
                (0..100).chain(1000 + round * 10..1005 + round * 10),
            ));
        }
        let held = h.hold_back().expect("hot pages rewritten every round");
        assert_eq!(held.count(), 100);
        assert!(held.get(0) && held.get(99) && !held.get(1030));
        assert_eq!(h.redirty(), Some(1.0));
    }

    #[test]
    fn a_uniform_random_writer_is_not_held_back() {
        // Each round rewrites 60% of a 1000-page working set, chosen afresh.
        let mut h = PageHeat::new(1000);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..6 {
            let pages = (0..1000u64).filter(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % 10 < 6
            });
            h.observe(&bitmap(1000, pages));
        }
        let r = h.redirty().expect("measured");
        assert!((0.5..0.7).contains(&r), "redirty {r}");
        assert!(h.hold_back().is_none());
    }

    #[test]
    fn too_few_hot_pages_are_not_judged() {
        let mut h = PageHeat::new(1000);
        for _ in 0..4 {
            h.observe(&bitmap(1000, 0..10));
        }
        assert!(h.hold_back().is_none());
    }
}
