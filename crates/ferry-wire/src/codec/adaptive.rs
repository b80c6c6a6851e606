//! Adaptive compression: per batch, store raw, lz4 or zstd, from measured ratio, speed and link.
//!
//! The decision is a plain state machine over numbers so it can be tested without timing:
//! [`AdaptivePolicy::decide`] says what to do with the next batch, [`AdaptivePolicy::observe`]
//! feeds back what compressing a batch achieved, and [`AdaptivePolicy::observe_link`] what the
//! link carried between two batches.
//!
//! # Cost model
//!
//! One sender thread compresses a batch, then sends it, then compresses the next: the two take
//! turns. Compressing a byte costs `1 / speed` seconds and saves `(1 - ratio) / link` seconds of
//! sending, so a codec pays only when [`saving_per_byte`] is positive, i.e. when
//! `speed * (1 - ratio) > link`. On a fast link (loopback moves about 3 GB/s) that rules out zstd
//! on text that halves (zstd entropy-codes at about 1 GB/s here) while on 1 Gbit/s it pays
//! easily. Random data never pays (ratio 1), and a ratio above `max_ratio` is never worth the
//! destination's decompression either.
//!
//! # Probing
//!
//! While not compressing, one batch in `probe_interval` is compressed with lz4 to re-measure. If
//! lz4 does not shrink it (text with a small alphabet has no repeats for lz4 to find, but halves
//! under an entropy coder), the next batch probes zstd. A probe that finds nothing worth using
//! at least doubles the interval, and stretches it as far as the link would have to slow down for
//! the codec to pay (up to `max_probe_interval`), so incompressible memory, or a link too fast
//! for any codec, costs almost no compression time. While one codec is in use, now and then a
//! batch tries the other, and the one that saves more wins.
//!
//! # Link speed
//!
//! The encoder does not see the socket, but the time between the end of one batch's encoding and
//! the start of the next is what it took to send that batch (and gather the next). With
//! `measure_link`, those samples replace the assumed `link_bytes_per_sec`. A sample much slower
//! than the estimate (the wait at a round's end, an acknowledgement) is ignored unless several
//! come in a row, which means the link really slowed down (e.g. a bandwidth limit).

/// Tunables for [`Compression::Adaptive`](super::Compression::Adaptive).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptivePolicy {
    /// Use a codec only while compressed/raw stays at or below this.
    pub max_ratio: f64,
    /// Link speed (bytes/s through this encoder's channel) assumed until measured.
    pub link_bytes_per_sec: f64,
    /// Learn the link speed from the time between batches ([`AdaptivePolicy::observe_link`]).
    pub measure_link: bool,
    /// Batches between probes at first; fruitless probes double it.
    pub probe_interval: u32,
    /// Longest interval fruitless probes back off to.
    pub max_probe_interval: u32,
    /// Weight of the newest sample in the moving averages (0..=1).
    pub ewma_weight: f64,
    /// zstd level used when zstd is chosen.
    pub zstd_level: i32,
    /// Samples (compressor input, or payload for the link) smaller than this are not measured:
    /// fixed costs dominate them.
    pub min_sample_bytes: usize,
}

impl Default for AdaptivePolicy {
    fn default() -> Self {
        Self {
            max_ratio: 0.9,
            // 10 Gbit/s until measured.
            link_bytes_per_sec: 1.25e9,
            measure_link: true,
            probe_interval: 16,
            max_probe_interval: 256,
            ewma_weight: 0.25,
            // Negative (fast) levels were measured no faster on page data: with few repeats to
            // find, zstd's time goes into entropy coding, and they turn that off by default.
            zstd_level: 1,
            min_sample_bytes: 64 << 10,
        }
    }
}

/// What to do with the next batch (and, in [`AdaptiveState`], the codec in use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdaptiveDecision {
    /// Store the data section raw.
    #[default]
    Raw,
    /// Compress it with lz4 (then [`AdaptivePolicy::observe`] the result).
    Lz4,
    /// Compress it with zstd at the policy's level (then observe the result).
    Zstd,
}

/// Outcome of compressing one batch's data section.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompressionSample {
    /// Bytes given to the compressor.
    pub input_len: usize,
    /// Bytes it produced (`input_len` if it did not shrink the data).
    pub output_len: usize,
    /// Time it took.
    pub nanos: u64,
}

/// What the link carried between two batches: the earlier payload and the time until the next
/// batch's encoding started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkSample {
    /// Payload bytes of the earlier batch.
    pub bytes: usize,
    /// Time from the end of its encoding to the start of the next one.
    pub nanos: u64,
}

/// Measured ratio and speed of one codec.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CodecEstimate {
    /// Moving average of compressed/raw.
    pub ratio: f64,
    /// Moving average of compressor input speed, bytes/s.
    pub bytes_per_sec: f64,
}

/// Running state of the adaptive decision; one per encoder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveState {
    /// Codec in use: [`AdaptiveDecision::Raw`] while not compressing.
    pub codec: AdaptiveDecision,
    /// Last measurement of lz4, if any.
    pub lz4: Option<CodecEstimate>,
    /// Last measurement of zstd, if any.
    pub zstd: Option<CodecEstimate>,
    /// Moving averages of payload bytes and of the time they took to leave, per link sample
    /// (their quotient is the link speed; `None` until the first usable sample).
    pub link: Option<(f64, f64)>,
    /// Consecutive link samples far slower than the estimate (ignored until there are enough).
    pub slow_link_samples: u32,
    /// Batches since the last probe.
    pub since_probe: u32,
    /// Current probe interval (backs off from the policy's up to its maximum).
    pub probe_interval: u32,
    /// Probe zstd with the next batch (lz4 just failed to shrink one).
    pub probe_zstd_next: bool,
}

impl Default for AdaptiveState {
    /// Starts with a probe due, so the first batch measures lz4 at once.
    fn default() -> Self {
        Self {
            codec: AdaptiveDecision::Raw,
            lz4: None,
            zstd: None,
            link: None,
            slow_link_samples: 0,
            since_probe: u32::MAX,
            probe_interval: 0,
            probe_zstd_next: false,
        }
    }
}

impl AdaptiveState {
    /// Whether batches are currently compressed.
    pub fn compressing(&self) -> bool {
        self.codec != AdaptiveDecision::Raw
    }

    /// The measured link speed in bytes/s, if any.
    pub fn link_bytes_per_sec(&self) -> Option<f64> {
        self.link.map(|(bytes, nanos)| bytes * 1e9 / nanos.max(1.0))
    }
}

/// Seconds saved per input byte by compressing at `bytes_per_sec` down to `ratio` before sending
/// over `link_bytes_per_sec`, when compressing and sending take turns; positive means it pays.
pub fn saving_per_byte(ratio: f64, bytes_per_sec: f64, link_bytes_per_sec: f64) -> f64 {
    (1.0 - ratio) / link_bytes_per_sec.max(1.0) - 1.0 / bytes_per_sec.max(1.0)
}

/// Link samples this many times slower than the estimate are outliers until they persist.
const SLOW_OUTLIER: f64 = 4.0;
/// Consecutive slow samples after which the link is taken to have slowed down.
const SLOW_SAMPLES_TO_ACCEPT: u32 = 3;

impl AdaptivePolicy {
    /// The link speed decisions use: measured if allowed and known, else the assumed one.
    pub fn link(&self, state: &AdaptiveState) -> f64 {
        match state.link_bytes_per_sec() {
            Some(l) if self.measure_link => l,
            _ => self.link_bytes_per_sec,
        }
    }

    /// Seconds per input byte that `est` saves on the current link, if it is worth using at all.
    fn saving(&self, state: &AdaptiveState, est: Option<CodecEstimate>) -> Option<f64> {
        let est = est.filter(|e| e.ratio <= self.max_ratio)?;
        Some(saving_per_byte(
            est.ratio,
            est.bytes_per_sec,
            self.link(state),
        ))
        .filter(|&s| s > 0.0)
    }

    fn base_interval(&self) -> u32 {
        self.probe_interval.max(1)
    }

    /// Doubles the probe interval after a probe that changed nothing.
    fn back_off(&self, state: &mut AdaptiveState) {
        let max = self.max_probe_interval.max(self.base_interval());
        state.probe_interval = state
            .probe_interval
            .max(self.base_interval())
            .saturating_mul(2)
            .min(max);
    }

    /// Decides how to treat the next batch, advancing the probe counters.
    pub fn decide(&self, state: &mut AdaptiveState) -> AdaptiveDecision {
        use AdaptiveDecision::*;
        state.since_probe = state.since_probe.saturating_add(1);
        let probe_due = state.since_probe >= state.probe_interval.max(self.base_interval());
        match state.codec {
            // While one codec is in use, now and then try the other.
            Lz4 | Zstd if probe_due => {
                state.since_probe = 0;
                if state.codec == Lz4 {
                    Zstd
                } else {
                    Lz4
                }
            }
            Lz4 | Zstd => state.codec,
            Raw if state.probe_zstd_next => {
                state.probe_zstd_next = false;
                state.since_probe = 0;
                Zstd
            }
            Raw if probe_due => {
                state.since_probe = 0;
                Lz4
            }
            Raw => Raw,
        }
    }

    /// Folds in the result of compressing a batch with `codec` and decides which codec to use next.
    pub fn observe(
        &self,
        state: &mut AdaptiveState,
        codec: AdaptiveDecision,
        sample: CompressionSample,
    ) {
        use AdaptiveDecision::*;
        if codec == Raw || sample.input_len == 0 {
            return;
        }
        if sample.input_len < self.min_sample_bytes {
            // Too small to time: a probe on it proves nothing, so probe again with the next batch.
            if state.codec == Raw {
                if codec == Zstd {
                    state.probe_zstd_next = true;
                } else {
                    state.since_probe = u32::MAX;
                }
            }
            return;
        }
        let ratio = sample.output_len.min(sample.input_len) as f64 / sample.input_len as f64;
        let speed = sample.input_len as f64 * 1e9 / sample.nanos.max(1) as f64;
        let continuing = state.codec == codec;
        let slot = match codec {
            Lz4 => &mut state.lz4,
            _ => &mut state.zstd,
        };
        let est = match *slot {
            Some(old) if continuing => {
                let w = self.ewma_weight.clamp(0.0, 1.0);
                CodecEstimate {
                    ratio: w * ratio + (1.0 - w) * old.ratio,
                    bytes_per_sec: w * speed + (1.0 - w) * old.bytes_per_sec,
                }
            }
            // A probe: older numbers describe memory that has since changed.
            _ => CodecEstimate {
                ratio,
                bytes_per_sec: speed,
            },
        };
        *slot = Some(est);
        let this = self.saving(state, Some(est));
        match state.codec {
            Raw => match this {
                Some(_) => {
                    state.codec = codec;
                    state.probe_interval = self.base_interval();
                    state.since_probe = 0;
                }
                // lz4 found no repeats to shrink: an entropy coder may still halve the data.
                None if codec == Lz4 && ratio > self.max_ratio => state.probe_zstd_next = true,
                None => {
                    // Probe again the sooner, the closer it came to paying: a codec that would
                    // need a link ten times slower is not re-tried for ten times as long.
                    let pays_below = if est.ratio <= self.max_ratio {
                        est.bytes_per_sec * (1.0 - est.ratio)
                    } else {
                        0.0
                    };
                    let factor = self.link(state) / pays_below.max(1.0);
                    self.back_off(state);
                    let wait = (f64::from(self.base_interval()) * factor)
                        .min(f64::from(self.max_probe_interval));
                    state.probe_interval = state.probe_interval.max(wait as u32);
                }
            },
            current if current == codec => {
                if this.is_none() {
                    state.codec = Raw;
                    state.since_probe = 0;
                    state.probe_interval = self.base_interval();
                }
            }
            current => {
                // A cross-probe: switch if the other codec saves more than the one in use.
                let in_use = self.saving(
                    state,
                    if current == Lz4 {
                        state.lz4
                    } else {
                        state.zstd
                    },
                );
                if this.unwrap_or(0.0) > in_use.unwrap_or(0.0) {
                    state.codec = codec;
                    state.probe_interval = self.base_interval();
                } else {
                    self.back_off(state);
                }
            }
        }
    }

    /// Folds in one link measurement (see the module docs).
    pub fn observe_link(&self, state: &mut AdaptiveState, sample: LinkSample) {
        if !self.measure_link || sample.bytes < self.min_sample_bytes || sample.nanos == 0 {
            return;
        }
        let (bytes, nanos) = (sample.bytes as f64, sample.nanos as f64);
        let Some(old) = state.link_bytes_per_sec() else {
            state.link = Some((bytes, nanos));
            return;
        };
        if bytes * 1e9 / nanos * SLOW_OUTLIER < old {
            state.slow_link_samples += 1;
            if state.slow_link_samples >= SLOW_SAMPLES_TO_ACCEPT {
                // Not a hiccup: the link is this slow now. Probes that found nothing on the
                // faster link may well find something now: probe again at once.
                state.link = Some((bytes, nanos));
                state.slow_link_samples = 0;
                state.probe_interval = self.base_interval();
                if state.codec == AdaptiveDecision::Raw {
                    state.since_probe = u32::MAX;
                }
            }
            return;
        }
        state.slow_link_samples = 0;
        // Averaging bytes and time separately (not their quotient) keeps a batch that left at
        // once, into an empty socket buffer, from counting as a very fast link.
        let w = self.ewma_weight.clamp(0.0, 1.0);
        state.link = state
            .link
            .map(|(b, n)| (w * bytes + (1.0 - w) * b, w * nanos + (1.0 - w) * n));
    }
}

#[cfg(test)]
mod tests {
    use super::AdaptiveDecision::*;
    use super::*;

    const FAST: u64 = 1_000; // 1 MB in 1 µs: far faster than any link

    fn sample(ratio: f64, nanos: u64) -> CompressionSample {
        CompressionSample {
            input_len: 1_000_000,
            output_len: (1_000_000.0 * ratio) as usize,
            nanos,
        }
    }

    /// 1 MB compressed at `gb_per_sec` GB/s.
    fn at(ratio: f64, gb_per_sec: f64) -> CompressionSample {
        sample(ratio, (1e6 / gb_per_sec) as u64)
    }

    fn link(gb_per_sec: f64) -> AdaptivePolicy {
        AdaptivePolicy {
            link_bytes_per_sec: gb_per_sec * 1e9,
            measure_link: false,
            ..AdaptivePolicy::default()
        }
    }

    /// Feeds `n` batches: every compressed one reports `result(codec)`.
    fn run(
        p: &AdaptivePolicy,
        s: &mut AdaptiveState,
        n: usize,
        result: impl Fn(AdaptiveDecision) -> CompressionSample,
    ) -> Vec<AdaptiveDecision> {
        (0..n)
            .map(|_| {
                let d = p.decide(s);
                if d != Raw {
                    p.observe(s, d, result(d));
                }
                d
            })
            .collect()
    }

    #[test]
    fn saving_model() {
        // Halving at 1 GB/s saves 0.5 ns of a 1 GB/s link's 1 ns per byte, but costs 1 ns.
        assert!(saving_per_byte(0.5, 1e9, 1e9) < 0.0);
        // On 1 Gbit/s (125 MB/s) it saves 4 ns per byte for 1 ns of compression.
        assert!((saving_per_byte(0.5, 1e9, 125e6) - 3e-9).abs() < 1e-12);
        // Incompressible data never pays, however fast the compressor.
        assert!(saving_per_byte(1.0, 1e12, 1e6) < 0.0);
        // Degenerate inputs do not divide by zero.
        assert!(saving_per_byte(0.5, 0.0, 0.0).is_finite());
    }

    #[test]
    fn starts_compressing_and_keeps_on_good_ratio() {
        let p = AdaptivePolicy::default();
        let mut s = AdaptiveState::default();
        let d = run(&p, &mut s, 10, |_| sample(0.4, FAST));
        assert!(d.iter().all(|&d| d == Lz4), "{d:?}");
        assert!(s.compressing());
        assert!((s.lz4.unwrap().ratio - 0.4).abs() < 0.05);
    }

    #[test]
    fn random_data_backs_off_to_rare_probes() {
        // lz4 runs and cannot shrink: zstd gets one try, fails too, probes back off.
        let p = link(1.0);
        let mut s = AdaptiveState::default();
        let d = run(&p, &mut s, 1000, |_| sample(1.0, FAST));
        let probes: Vec<usize> = d
            .iter()
            .enumerate()
            .filter(|(_, d)| **d != Raw)
            .map(|(i, _)| i)
            .collect();
        // Random data would not pay on any link: straight to the longest interval.
        assert_eq!(&probes[..4], [0, 1, 257, 258], "{probes:?}");
        assert!(!s.compressing());
        // Backed off to the maximum: about 2 probes per 256 batches.
        assert_eq!(s.probe_interval, p.max_probe_interval);
        assert!(probes.len() < 20, "{} probes in 1000 batches", probes.len());
    }

    #[test]
    fn zstd_when_lz4_cannot_shrink_and_the_link_is_slow() {
        // Text with a 16-letter alphabet: lz4 finds nothing, zstd halves it at 1 GB/s.
        let text = |d| match d {
            Lz4 => at(1.0, 3.0),
            _ => at(0.5, 1.0),
        };
        let p = link(0.125);
        let mut s = AdaptiveState::default();
        let d = run(&p, &mut s, 40, text);
        assert_eq!(&d[..3], [Lz4, Zstd, Zstd]);
        assert_eq!(s.codec, Zstd);
        // While zstd is in use, lz4 is re-tried now and then but does not take over.
        assert!(d.iter().filter(|&&d| d == Lz4).count() >= 2);
        assert_eq!(d.last(), Some(&Zstd));
    }

    #[test]
    fn zstd_is_not_worth_its_cpu_on_a_fast_link() {
        // The same text over loopback (3 GB/s): halving at 1 GB/s loses time.
        let text = |d| match d {
            Lz4 => at(1.0, 3.0),
            _ => at(0.5, 1.0),
        };
        let p = link(3.0);
        let mut s = AdaptiveState::default();
        let mut d = run(&p, &mut s, 2, text);
        assert_eq!(d, [Lz4, Zstd]);
        // zstd would pay only on a link 6 times slower: the next probe waits 6 base intervals.
        assert_eq!(s.probe_interval, 6 * p.probe_interval);
        d.extend(run(&p, &mut s, 198, text));
        assert!(!s.compressing());
        let compressed = d.iter().filter(|&&d| d != Raw).count();
        assert!(compressed <= 4, "{compressed} of 200 batches compressed");
    }

    #[test]
    fn lz4_wins_over_zstd_when_it_saves_more() {
        // Highly repetitive data: lz4 gets 0.3 at 3 GB/s, zstd 0.25 at 0.5 GB/s.
        let p = link(0.125);
        let mut s = AdaptiveState::default();
        let d = run(&p, &mut s, 64, |d| match d {
            Lz4 => at(0.3, 3.0),
            _ => at(0.25, 0.5),
        });
        assert_eq!(s.codec, Lz4);
        assert_eq!(d[0], Lz4);
        // zstd is cross-probed (every probe interval) but never kept.
        assert!(d.windows(2).all(|w| !(w[0] == Zstd && w[1] == Zstd)));
    }

    #[test]
    fn a_better_codec_takes_over_after_a_cross_probe() {
        let p = link(0.05);
        let mut s = AdaptiveState {
            codec: Lz4,
            lz4: Some(CodecEstimate {
                ratio: 0.85,
                bytes_per_sec: 3e9,
            }),
            since_probe: 0,
            ..AdaptiveState::default()
        };
        // lz4 barely compresses; zstd halves the data and the link is slow.
        let d = run(&p, &mut s, 20, |d| match d {
            Lz4 => at(0.85, 3.0),
            _ => at(0.5, 1.0),
        });
        assert_eq!(d[15], Zstd);
        assert_eq!(s.codec, Zstd);
    }

    #[test]
    fn stops_when_the_data_turns_incompressible() {
        let p = link(0.125);
        let mut s = AdaptiveState::default();
        run(&p, &mut s, 4, |_| sample(0.4, FAST));
        assert_eq!(s.codec, Lz4);
        // Enough bad batches pull the average over max_ratio.
        run(&p, &mut s, 12, |_| sample(1.0, FAST));
        assert!(!s.compressing());
        assert_eq!(s.probe_interval, p.probe_interval);
    }

    #[test]
    fn one_bad_batch_does_not_flip_a_good_average() {
        let p = AdaptivePolicy::default();
        let mut s = AdaptiveState::default();
        for _ in 0..8 {
            let d = p.decide(&mut s);
            p.observe(&mut s, d, sample(0.3, FAST));
        }
        p.observe(&mut s, Lz4, sample(1.0, FAST));
        assert!(s.compressing(), "ewma ratio {:?}", s.lz4);
        // An empty sample, or one for Raw, changes nothing.
        let before = s;
        p.observe(
            &mut s,
            Lz4,
            CompressionSample {
                input_len: 0,
                output_len: 0,
                nanos: 0,
            },
        );
        p.observe(&mut s, Raw, sample(0.1, FAST));
        assert_eq!(s, before);
    }

    #[test]
    fn stops_when_compressor_is_slower_than_the_link_can_use() {
        let p = AdaptivePolicy::default();
        let mut s = AdaptiveState::default();
        // 1 MB in 10 ms = 100 MB/s, far below 1.25 GB/s: not worth it despite the ratio.
        p.observe(&mut s, Lz4, sample(0.3, 10_000_000));
        assert!(!s.compressing());
        // On a slow link the same compressor pays.
        let slow_link = link(0.05);
        let mut s = AdaptiveState::default();
        slow_link.observe(&mut s, Lz4, sample(0.3, 10_000_000));
        assert!(s.compressing());
    }

    #[test]
    fn link_is_measured_and_outliers_are_ignored() {
        let p = AdaptivePolicy::default();
        let mut s = AdaptiveState::default();
        let mb_in = |micros: u64| LinkSample {
            bytes: 1 << 20,
            nanos: micros * 1000,
        };
        assert_eq!(p.link(&s), p.link_bytes_per_sec);
        // 1 MiB in 350 µs: about 3 GB/s.
        p.observe_link(&mut s, mb_in(350));
        let l = p.link(&s);
        assert!((2.9e9..3.1e9).contains(&l), "{l}");
        // Small payloads and a single long wait (a round's end) do not move it.
        p.observe_link(
            &mut s,
            LinkSample {
                bytes: 4096,
                nanos: 1_000_000,
            },
        );
        p.observe_link(&mut s, mb_in(50_000));
        assert_eq!(p.link(&s), l);
        p.observe_link(&mut s, mb_in(350));
        let l = p.link(&s);
        // A sustained slowdown does: three slow samples in a row.
        p.observe_link(&mut s, mb_in(8_000));
        p.observe_link(&mut s, mb_in(8_000));
        assert_eq!(p.link(&s), l);
        s.probe_interval = 256;
        p.observe_link(&mut s, mb_in(8_000));
        assert!(p.link(&s) < 0.2e9, "{}", p.link(&s));
        // ... and makes the next batch a probe.
        assert_eq!(s.probe_interval, p.probe_interval);
        assert_eq!(p.decide(&mut s), Lz4);
        // A batch that left at once (an empty socket buffer, a full token bucket) counts for its
        // time, not its speed: it does not make a 125 MB/s link look fast.
        let mut s = AdaptiveState::default();
        for _ in 0..8 {
            p.observe_link(&mut s, mb_in(8_400));
        }
        p.observe_link(&mut s, mb_in(10));
        assert!(p.link(&s) < 0.2e9, "{}", p.link(&s));
        // Without measuring, the assumed speed holds.
        let fixed = link(1.0);
        let mut s = AdaptiveState::default();
        fixed.observe_link(&mut s, mb_in(350));
        assert_eq!(fixed.link(&s), 1e9);
    }

    #[test]
    fn cross_probes_back_off_while_the_codec_in_use_stays_best() {
        let p = link(0.125);
        let mut s = AdaptiveState::default();
        let d = run(&p, &mut s, 1000, |d| match d {
            Lz4 => at(1.0, 3.0),
            _ => at(0.5, 1.0),
        });
        let lz4 = d.iter().filter(|&&d| d == Lz4).count();
        assert!(lz4 <= 10, "{lz4} lz4 batches in 1000");
        assert_eq!(s.probe_interval, p.max_probe_interval);
    }

    #[test]
    fn a_probe_too_small_to_time_is_repeated() {
        let p = link(0.125);
        let mut s = AdaptiveState::default();
        let tiny = CompressionSample {
            input_len: 4096,
            output_len: 100,
            nanos: 1_000_000,
        };
        assert_eq!(p.decide(&mut s), Lz4);
        p.observe(&mut s, Lz4, tiny);
        assert_eq!(s.lz4, None, "not measured");
        assert_eq!(p.decide(&mut s), Lz4, "probed again at once");
        p.observe(&mut s, Lz4, at(1.0, 3.0));
        assert_eq!(p.decide(&mut s), Zstd);
        p.observe(&mut s, Zstd, tiny);
        assert_eq!(p.decide(&mut s), Zstd, "zstd probed again at once");
        p.observe(&mut s, Zstd, at(0.5, 1.0));
        assert_eq!(s.codec, Zstd);
    }

    #[test]
    fn a_measured_slow_link_turns_zstd_on() {
        let p = AdaptivePolicy::default();
        let mut s = AdaptiveState::default();
        for _ in 0..4 {
            // 1 MiB every 8.4 ms: 1 Gbit/s.
            p.observe_link(
                &mut s,
                LinkSample {
                    bytes: 1 << 20,
                    nanos: 8_400_000,
                },
            );
        }
        let d = run(&p, &mut s, 4, |d| match d {
            Lz4 => at(1.0, 3.0),
            _ => at(0.5, 1.0),
        });
        assert_eq!(d, [Lz4, Zstd, Zstd, Zstd]);
    }
}
