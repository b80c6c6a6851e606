//! Post-copy locality (issue 12 item 3): a guest that faulted on page p and then on a page a little
//! after it is walking its memory, and will fault on the pages after that next. Such faults are
//! answered with the pages ahead of the fault too (fault-around), growing while the walk lasts,
//! and the background push moves to where the walk goes. An isolated fault (a random writer) gets
//! its own page only: extra pages would only delay the next fault's answer.

/// Pages after the previous fault within which a fault continues the walk (4 MiB: a guest that
/// skips up to this much still walks in order).
pub const WALK_STRIDE: u64 = 1024;
/// Pages sent after the faulting one at the second fault of a walk.
pub const FIRST_AROUND: u64 = 32;
/// Most pages sent after a faulting one (1 MiB): the answer to the fault is sent before them, in
/// its own frame, so they delay only the next request, by about this much time on the link.
pub const MAX_AROUND: u64 = 256;

/// What to send for one fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultAnswer {
    /// Pages to send right after the faulting page, from the page after it on.
    pub around: u64,
    /// Where the background push should continue: the page after the fault-around (None: the
    /// fault is not part of a walk, the push keeps its order).
    pub push_from: Option<u64>,
}

/// The guest's recent faults, as far as they tell where it goes next.
#[derive(Clone, Debug, Default)]
pub struct FaultWalk {
    /// The last fault and the end of what was sent for it (first page after the fault-around).
    last: Option<(u64, u64)>,
    /// Faults in a row that continued the walk.
    streak: u32,
}

impl FaultWalk {
    /// No fault seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a fault on `page` and says what to send for it.
    pub fn fault(&mut self, page: u64) -> FaultAnswer {
        let continues = self
            .last
            .is_some_and(|(last, end)| page > last && page <= end.max(last) + WALK_STRIDE);
        self.streak = if continues { self.streak + 1 } else { 0 };
        let around = match self.streak {
            0 => 0,
            n => (FIRST_AROUND << (n - 1).min(16)).min(MAX_AROUND),
        };
        let end = page + 1 + around;
        self.last = Some((page, end));
        FaultAnswer {
            around,
            push_from: (self.streak > 0).then_some(end),
        }
    }

    /// Whether the last faults walked memory in order.
    pub fn walking(&self) -> bool {
        self.streak > 0
    }
}

/// The pages of `hot` (ascending) in the order a guest walking upwards from `head` reaches them:
/// from `head` to the end, then from the start (a walk that wraps around its working set).
pub fn walk_order(hot: impl Iterator<Item = u64>, head: u64) -> Vec<u64> {
    let all: Vec<u64> = hot.collect();
    let split = all.partition_point(|&p| p < head);
    let mut v = Vec::with_capacity(all.len());
    v.extend_from_slice(&all[split..]);
    v.extend_from_slice(&all[..split]);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_walk_grows_its_fault_around() {
        let mut w = FaultWalk::new();
        assert_eq!(
            w.fault(1000),
            FaultAnswer {
                around: 0,
                push_from: None
            }
        );
        assert!(!w.walking());
        let a = w.fault(1001);
        assert_eq!(a.around, FIRST_AROUND);
        assert_eq!(a.push_from, Some(1002 + FIRST_AROUND));
        // The guest overtakes what was sent (a page still on the wire, or one the push skipped).
        let a = w.fault(1001 + FIRST_AROUND + 5);
        assert_eq!(a.around, 2 * FIRST_AROUND);
        let mut last = a;
        let mut p = 1100;
        for _ in 0..10 {
            p += 300;
            last = w.fault(p);
        }
        assert_eq!(last.around, MAX_AROUND);
        assert!(w.walking());
    }

    #[test]
    fn random_faults_get_their_page_only() {
        let mut w = FaultWalk::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut walks = 0;
        for _ in 0..1000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let a = w.fault(x % (1 << 18));
            walks += u32::from(a.around > 0);
        }
        // A random fault lands within 4 MiB after the previous one about 0.4 % of the time.
        assert!(walks < 20, "{walks} random faults taken for walks");
    }

    #[test]
    fn a_backward_jump_or_a_far_one_ends_the_walk() {
        let mut w = FaultWalk::new();
        w.fault(10);
        w.fault(11);
        assert!(w.walking());
        assert_eq!(w.fault(5).around, 0);
        w.fault(6);
        assert!(w.walking());
        assert_eq!(w.fault(6 + 33 + WALK_STRIDE + 1).around, 0);
    }

    #[test]
    fn walk_order_starts_at_the_head_and_wraps() {
        let hot = [3u64, 7, 9, 12, 40];
        assert_eq!(walk_order(hot.into_iter(), 9), vec![9, 12, 40, 3, 7]);
        assert_eq!(walk_order(hot.into_iter(), 0), hot.to_vec());
        assert_eq!(walk_order(hot.into_iter(), 41), hot.to_vec());
    }

    proptest! {
        #[test]
        fn walk_order_is_a_permutation(mut hot in proptest::collection::btree_set(0u64..10_000, 0..200), head in 0u64..10_000) {
            let v: Vec<u64> = std::mem::take(&mut hot).into_iter().collect();
            let mut o = walk_order(v.iter().copied(), head);
            // Pages at or after the head come first, in order.
            let after = v.iter().filter(|&&p| p >= head).count();
            prop_assert!(o[..after].iter().all(|&p| p >= head));
            prop_assert!(o[after..].iter().all(|&p| p < head));
            o.sort_unstable();
            prop_assert_eq!(o, v);
        }

        #[test]
        fn fault_around_is_bounded(pages in proptest::collection::vec(0u64..1_000_000, 1..100)) {
            let mut w = FaultWalk::new();
            for p in pages {
                let a = w.fault(p);
                prop_assert!(a.around <= MAX_AROUND);
                prop_assert_eq!(a.push_from.is_some(), a.around > 0);
                if let Some(f) = a.push_from {
                    prop_assert_eq!(f, p + 1 + a.around);
                }
            }
        }
    }
}
