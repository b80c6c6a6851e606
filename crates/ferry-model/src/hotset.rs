//! The hot set: pages the guest is writing, which pre-copy leaves writable instead of
//! write-protecting them round after round (issue 12 item 6).
//!
//! While a page is write-protected for the dirty log, the guest's first write to it is a VM exit
//! (27-200 us here, depending on the host's load), so a guest that writes many distinct pages
//! crawls while pre-copy tracks them: a sequential writer here made a thousandth of its progress.
//! KVM's manual log clearing lets the engine choose which pages it arms, so pages it knows the
//! guest is writing stay writable: the guest runs at full speed, and those pages are owed until the
//! switch-over (sent in the pause, pushed after it, or tracked the classic way after all: see
//! [`endgame`]).
//!
//! To find the hot set without arming everything, one *probe* page per [`PROBE_STRIDE`]-page
//! region is armed: a probe that shows written marks its region hot. A probe costs the guest one
//! exit per write pass over its region, 1/64 of the classic cost (measured: a sequential writer
//! went from 5.3 to 7.9 ms per 1024 pages with probes, 145 ms with every page armed). Probes also
//! show where the guest is going: a run of consecutive probes written since they were last armed
//! is a walk, and its end is where the walk goes next ([`HotSet::heads`]), and runs long against
//! their count mean a sequential writer ([`HotSet::locality`]).

use crate::bitmap::DirtyBitmap;

/// Pages per probe region (256 KiB).
pub const PROBE_STRIDE: u64 = 64;

/// Probe samples without a new hot region after which the hot set counts as found.
const SETTLE_QUIET_SAMPLES: u32 = 2;
/// New hot regions in a sample below this share of the hot regions found so far count as none.
const SETTLE_NEW_SHARE: f64 = 0.01;
/// Mean probes per run of consecutive written probes from which the writer counts as walking
/// memory in order (a sequential writer: tens to hundreds; a random one: about 1; a writer of
/// 64-page runs from random places: 1-2).
pub const SEQUENTIAL_LOCALITY: f64 = 4.0;

/// The probe pages for `owed` (pages that hold data): the first owed page of each
/// [`PROBE_STRIDE`]-page region that has one.
pub fn probes(owed: &DirtyBitmap) -> DirtyBitmap {
    let mut probes = DirtyBitmap::new(owed.pages());
    let mut next = 0;
    while let Some(p) = owed.next_set_from(next) {
        probes.set(p);
        next = (p / PROBE_STRIDE + 1) * PROBE_STRIDE;
    }
    probes
}

/// The runs of consecutive written probe regions in `hits` (region numbers, ascending), as
/// (first region, regions in the run). A run that reaches the last region and one that starts at
/// region 0 are one run (a walk that wrapped around).
fn runs(hits: &DirtyBitmap) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for region in hits.iter().map(|p| p / PROBE_STRIDE) {
        match runs.last_mut() {
            Some((first, n)) if *first + *n == region => *n += 1,
            Some((first, n)) if *first + *n > region => {} // two hits in one region
            _ => runs.push((region, 1)),
        }
    }
    let regions = hits.pages().div_ceil(PROBE_STRIDE);
    if runs.len() > 1 {
        let (first, n) = runs[runs.len() - 1];
        if first + n == regions && runs[0].0 == 0 {
            let (_, n0) = runs.remove(0);
            if let Some(last) = runs.last_mut() {
                last.1 += n0;
            }
        }
    }
    runs
}

/// What the engine knows of the pages the guest writes.
#[derive(Clone, Debug)]
pub struct HotSet {
    /// Pages left writable: owed to the destination until the switch-over.
    hot: DirtyBitmap,
    /// The armed probe pages (one per region with data).
    probes: DirtyBitmap,
    /// Pages that may hold data (the hot set never leaves them).
    owed: DirtyBitmap,
    /// Pages neither armed nor hot yet: they read as written whatever the guest does, so a read
    /// of the log says nothing about them ([`HotSet::arm_cold`] ends this).
    undecided: DirtyBitmap,
    /// Samples in a row that found no new hot region.
    quiet: u32,
    /// Samples taken.
    samples: u32,
    /// Runs of written probes in the last sample that had hits, for [`HotSet::heads`].
    last_runs: Vec<(u64, u64)>,
    /// Probes and runs over the samples so far that hit fewer than 90 % of the regions hot
    /// before them, for [`HotSet::locality`].
    probe_hits: u64,
    probe_runs: u64,
    /// Regions with a hot page.
    hot_regions: u64,
}

impl HotSet {
    /// Nothing hot yet; probes over the pages of `owed` (pages that may hold data: the others are
    /// zero wherever the destination has not been sent them).
    pub fn new(owed: &DirtyBitmap) -> Self {
        let probes = probes(owed);
        let mut undecided = owed.clone();
        undecided.and_not(&probes);
        Self {
            hot: DirtyBitmap::new(owed.pages()),
            probes,
            owed: owed.clone(),
            undecided,
            quiet: 0,
            samples: 0,
            last_runs: Vec::new(),
            probe_hits: 0,
            probe_runs: 0,
            hot_regions: 0,
        }
    }

    /// The probe pages (re-arm those a read found written).
    pub fn probes(&self) -> &DirtyBitmap {
        &self.probes
    }

    /// Pages to arm when tracking starts: every page but the undecided ones (probes, and pages
    /// without data, whose writes must show like any other).
    pub fn armed_at_start(&self) -> DirtyBitmap {
        let mut armed = DirtyBitmap::full(self.owed.pages());
        armed.and_not(&self.undecided);
        armed
    }

    /// Ends the search: the undecided pages that are not hot are cold, to be armed and sent now.
    pub fn arm_cold(&mut self) -> DirtyBitmap {
        let mut cold = std::mem::replace(&mut self.undecided, DirtyBitmap::new(self.owed.pages()));
        cold.and_not(&self.hot);
        cold
    }

    /// Pages neither armed nor hot yet (leave them writable until [`HotSet::arm_cold`]).
    pub fn undecided(&self) -> &DirtyBitmap {
        &self.undecided
    }

    /// Pages to leave writable.
    pub fn hot(&self) -> &DirtyBitmap {
        &self.hot
    }

    /// Records one read of the log: `written` holds what it showed (hot and undecided pages
    /// always show; only armed pages, probes among them, tell something new). Probes written make
    /// their regions hot, other armed pages written become hot themselves (the engine leaves them
    /// writable from now on). Returns the probes found written (arm them again).
    pub fn observe(&mut self, written: &DirtyBitmap) -> DirtyBitmap {
        let mut hits = written.clone();
        hits.and(&self.probes);
        let mut news = written.clone();
        news.and_not(&self.hot);
        news.and_not(&self.undecided);
        news.and_not(&self.probes);
        let hot_before = self.hot.count();
        self.hot.or(&news);
        // Each written probe's region, as far as it holds data.
        for p in hits.iter() {
            let first = p / PROBE_STRIDE * PROBE_STRIDE;
            for q in first..(first + PROBE_STRIDE).min(self.owed.pages()) {
                if self.undecided.get(q) {
                    self.hot.set(q);
                }
            }
        }
        let runs = runs(&hits);
        if !runs.is_empty() {
            // A sample that hit (nearly) every region hot before it says nothing about order: a
            // random writer covering its working set makes one long run too.
            let regions_before = self.hot_regions;
            if hits.count() * 10 < regions_before * 9 {
                self.probe_hits += hits.count();
                self.probe_runs += runs.len() as u64;
            }
            self.last_runs = runs;
        }
        self.hot_regions = self.hot_regions.max(
            self.hot
                .iter()
                .map(|p| p / PROBE_STRIDE)
                .fold((0u64, u64::MAX), |(n, last), r| {
                    (n + u64::from(r != last), r)
                })
                .0,
        );
        let added = self.hot.count() - hot_before;
        self.samples += 1;
        if (added as f64) < SETTLE_NEW_SHARE * hot_before as f64 || added == 0 {
            self.quiet += 1;
        } else {
            self.quiet = 0;
        }
        hits
    }

    /// Whether the probes have found the hot set: the last samples added (next to) nothing.
    pub fn settled(&self) -> bool {
        self.quiet >= SETTLE_QUIET_SAMPLES
    }

    /// Written probes per run of consecutive ones, over the samples so far (None: no probe was
    /// written). A walk in address order makes long runs; random writes make runs of about one.
    pub fn locality(&self) -> Option<f64> {
        (self.probe_runs > 0).then(|| self.probe_hits as f64 / self.probe_runs as f64)
    }

    /// Whether the guest walks its memory in order ([`SEQUENTIAL_LOCALITY`]).
    pub fn sequential(&self) -> bool {
        self.locality().is_some_and(|l| l >= SEQUENTIAL_LOCALITY)
    }

    /// Where the guest's walks go next, longest walk first: the first page after the last
    /// region of each run of at least two written probes in the last sample with hits. For a
    /// sequential writer, the page it writes next (within a region).
    pub fn heads(&self) -> Vec<u64> {
        let mut runs: Vec<(u64, u64)> = self
            .last_runs
            .iter()
            .copied()
            .filter(|&(_, n)| n >= 2)
            .collect();
        runs.sort_by_key(|&(first, n)| (std::cmp::Reverse(n), first));
        let regions = self.owed.pages().div_ceil(PROBE_STRIDE);
        runs.iter()
            .map(|&(first, n)| ((first + n) % regions) * PROBE_STRIDE)
            .map(|p| p.min(self.owed.pages().saturating_sub(1)))
            .collect()
    }

    /// Where the guest's longest walk goes next, if it walks ([`HotSet::heads`]).
    pub fn head(&self) -> Option<u64> {
        self.heads().first().copied()
    }

    /// Drops the hot set (the engine tracks every page the classic way from now on).
    pub fn forget(&mut self) {
        self.hot.clear();
        self.last_runs.clear();
    }
}

/// How the pages left writable reach the destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endgame {
    /// Inside the pause, with the last dirty pages: they fit the downtime target.
    InPause,
    /// After the switch-over, pushed in the order the guest walks them (post-copy of the hot set).
    Postcopy,
}

/// How to send `hot_pages` pages owed at the switch-over, at `bytes_per_sec`, for a pause of at
/// most `downtime` (with post-copy available: without it they can only go in the pause).
pub fn endgame(
    hot_pages: u64,
    bytes_per_sec: f64,
    downtime: std::time::Duration,
    postcopy: bool,
) -> Endgame {
    let secs = (hot_pages * 4096) as f64 / bytes_per_sec.max(1.0);
    if !postcopy || secs <= downtime.as_secs_f64() / 2.0 {
        Endgame::InPause
    } else {
        Endgame::Postcopy
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
    fn few_hot_pages_go_in_the_pause_many_after_it() {
        let ms = std::time::Duration::from_millis;
        // 1 GB/s: 10 ms carry about 2400 pages; half the target is left for the rest of the pause.
        assert_eq!(endgame(1000, 1e9, ms(10), true), Endgame::InPause);
        assert_eq!(endgame(16384, 1e9, ms(10), true), Endgame::Postcopy);
        assert_eq!(endgame(16384, 1e9, ms(10), false), Endgame::InPause);
        assert_eq!(endgame(1, 0.0, ms(10), true), Endgame::Postcopy);
    }

    #[test]
    fn a_random_writer_covering_its_working_set_is_not_taken_for_a_walk() {
        let owed = DirtyBitmap::full(1 << 14);
        let mut h = HotSet::new(&owed);
        for _ in 0..10 {
            // Every probe written in every sample: one run, but no order to be seen.
            let mut shown = h.probes().clone();
            shown.or(&h.undecided.clone());
            shown.or(h.hot());
            h.observe(&shown);
        }
        assert_eq!(h.locality(), None);
        assert!(!h.sequential());
    }

    #[test]
    fn one_probe_per_region_with_data() {
        let owed = bitmap(1000, [3, 5, 64, 200, 999]);
        let p = probes(&owed);
        assert_eq!(p.iter().collect::<Vec<_>>(), vec![3, 64, 200, 999]);
        assert_eq!(probes(&DirtyBitmap::full(256)).count(), 4);
    }

    #[test]
    fn runs_join_across_the_wrap() {
        let hits = bitmap(640, [0, 64, 320, 512, 576]);
        assert_eq!(runs(&hits), vec![(5, 1), (8, 4)]);
        let hits = bitmap(640, [64, 128, 129, 192]);
        assert_eq!(runs(&hits), vec![(1, 3)]);
    }

    /// A sequential writer over pages [1024, 1024 + ws) of 4096, observed every `step` pages.
    fn sequential_sample(h: &mut HotSet, from: u64, step: u64, ws: u64) -> DirtyBitmap {
        let written = bitmap(4096, (from..from + step).map(|i| 1024 + i % ws));
        let mut shown = written;
        shown.and(h.probes()); // everything else is undecided or hot: it shows anyway
        shown.or(h.hot());
        shown.or(&h.undecided.clone());
        h.observe(&shown)
    }

    #[test]
    fn a_sequential_writer_is_found_walking_and_settles() {
        let owed = DirtyBitmap::full(4096);
        let mut h = HotSet::new(&owed);
        let ws = 2048;
        let mut at = 0;
        while !h.settled() {
            sequential_sample(&mut h, at, 300, ws);
            at += 300;
            assert!(at < 10 * ws, "never settled");
        }
        // Every region the writer walks is hot; nothing outside it.
        assert_eq!(h.hot().count() + ws / PROBE_STRIDE, ws);
        assert!(!h.hot().get(100) && !h.hot().get(1024 + ws + 70));
        assert!(h.sequential(), "locality {:?}", h.locality());
        // The last sample ended at page 1024 + (at - 1) % ws: the head is the next region.
        sequential_sample(&mut h, at, 300, ws);
        let end = 1024 + (at + 299) % ws;
        let head = h.heads()[0];
        assert!(
            head > end && head <= end + PROBE_STRIDE,
            "head {head}, end {end}"
        );
    }

    #[test]
    fn a_random_writer_is_not_sequential() {
        let owed = DirtyBitmap::full(1 << 16);
        let mut h = HotSet::new(&owed);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        // 40 samples of 3000 writes over 2^15 pages: a probe is written with probability
        // 1 - e^(-120000/32768), about 97 %.
        for _ in 0..40 {
            let mut written = bitmap(
                1 << 16,
                (0..3000).map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x % (1 << 15)
                }),
            );
            written.or(&h.undecided.clone());
            h.observe(&written);
        }
        let l = h.locality().unwrap();
        assert!(l < SEQUENTIAL_LOCALITY, "locality {l}");
        assert!(!h.sequential());
        // Most of the working set's regions are hot by now, nothing beyond it.
        assert!(h.hot().count() > (1 << 15) * 9 / 10, "{}", h.hot().count());
        assert_eq!(h.hot().next_set_from(1 << 15), None);
    }

    #[test]
    fn an_idle_guest_settles_at_once_with_nothing_hot() {
        let mut h = HotSet::new(&DirtyBitmap::full(1024));
        let shown = h.undecided.clone();
        h.observe(&shown);
        h.observe(&shown);
        assert!(h.settled());
        assert_eq!(h.hot().count(), 0);
        assert_eq!(h.locality(), None);
        assert!(h.heads().is_empty());
    }

    #[test]
    fn undecided_pages_say_nothing_until_armed() {
        let owed = bitmap(256, 0..128);
        let mut h = HotSet::new(&owed);
        // Armed at start: the probes and every page without data.
        let armed = h.armed_at_start();
        assert!(armed.get(0) && armed.get(64) && armed.get(200) && !armed.get(1));
        // Undecided pages read as written: that is no news. A page without data written is.
        let mut shown = bitmap(256, [200]);
        shown.or(&bitmap(256, (1..64).chain(65..128)));
        h.observe(&shown);
        assert_eq!(h.hot().iter().collect::<Vec<_>>(), vec![200]);
        // Probe 0 written: its region's data pages are hot, the probe itself stays armed.
        shown.set(0);
        h.observe(&shown);
        assert_eq!(h.hot().count(), 64);
        assert!(!h.hot().get(0) && h.hot().get(1) && h.hot().get(63));
        // The rest of the data is cold: armed and sent now; written later, it turns hot.
        let cold = h.arm_cold();
        assert_eq!(
            cold.iter().collect::<Vec<_>>(),
            (65..128).collect::<Vec<_>>()
        );
        let mut shown = h.hot().clone();
        shown.set(70);
        h.observe(&shown);
        assert!(h.hot().get(70));
        h.forget();
        assert_eq!(h.hot().count(), 0);
    }
}
