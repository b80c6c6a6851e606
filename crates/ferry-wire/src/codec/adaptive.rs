//! Adaptive compression: per batch, compress with lz4 or not, from measured ratio and speed.
//!
//! The decision is a plain state machine over numbers so it can be tested without timing:
//! [`AdaptivePolicy::decide`] says what to do with the next batch, and
//! [`AdaptivePolicy::observe`] feeds back what compressing a batch achieved.
//!
//! Compressing pays when it both shrinks the data (ratio ≤ `max_ratio`) and keeps up with the
//! link (input bytes per second ≥ `link_bytes_per_sec`): with compression pipelined against
//! sending, throughput is `min(compress_speed, link / ratio)`, which beats `link` only then.
//! While it does not pay, one batch in `probe_interval` is compressed anyway to notice when the
//! guest's memory turns compressible again. Only lz4 is considered: zstd is far slower per byte
//! and is for callers who know their link is slow and ask for it explicitly.

/// Tunables for [`Compression::Adaptive`](super::Compression::Adaptive).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptivePolicy {
    /// Keep compressing only while compressed/raw stays at or below this.
    pub max_ratio: f64,
    /// Keep compressing only while lz4 consumes input at least this fast (bytes/s).
    pub link_bytes_per_sec: f64,
    /// While not compressing, compress one batch in this many to re-measure.
    pub probe_interval: u32,
    /// Weight of the newest sample in the moving averages (0..=1).
    pub ewma_weight: f64,
}

impl Default for AdaptivePolicy {
    fn default() -> Self {
        Self {
            max_ratio: 0.9,
            // 10 Gbit/s.
            link_bytes_per_sec: 1.25e9,
            probe_interval: 16,
            ewma_weight: 0.25,
        }
    }
}

/// What to do with the next batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdaptiveDecision {
    /// Store the data section raw.
    Raw,
    /// Compress it with lz4 (then [`AdaptivePolicy::observe`] the result).
    Lz4,
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

/// Running state of the adaptive decision; one per encoder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveState {
    /// Whether batches are currently compressed.
    pub compressing: bool,
    /// Moving average of compressed/raw.
    pub ratio: f64,
    /// Moving average of compressor input speed, bytes/s.
    pub bytes_per_sec: f64,
    /// Batches sent raw since the last probe.
    pub since_probe: u32,
}

impl Default for AdaptiveState {
    /// Starts with a probe due, so the first batch measures and sets the averages outright.
    fn default() -> Self {
        Self {
            compressing: false,
            ratio: 1.0,
            bytes_per_sec: 0.0,
            since_probe: u32::MAX,
        }
    }
}

impl AdaptivePolicy {
    /// Decides how to treat the next batch, advancing the probe counter when not compressing.
    pub fn decide(&self, state: &mut AdaptiveState) -> AdaptiveDecision {
        if state.compressing {
            return AdaptiveDecision::Lz4;
        }
        state.since_probe = state.since_probe.saturating_add(1);
        if state.since_probe >= self.probe_interval.max(1) {
            state.since_probe = 0;
            AdaptiveDecision::Lz4
        } else {
            AdaptiveDecision::Raw
        }
    }

    /// Folds in the result of compressing a batch and decides whether to keep compressing.
    pub fn observe(&self, state: &mut AdaptiveState, sample: CompressionSample) {
        if sample.input_len == 0 {
            return;
        }
        let ratio = sample.output_len.min(sample.input_len) as f64 / sample.input_len as f64;
        let speed = sample.input_len as f64 * 1e9 / sample.nanos.max(1) as f64;
        if state.compressing {
            let w = self.ewma_weight.clamp(0.0, 1.0);
            state.ratio = w * ratio + (1.0 - w) * state.ratio;
            state.bytes_per_sec = w * speed + (1.0 - w) * state.bytes_per_sec;
        } else {
            // A probe after a raw stretch: the old averages describe memory that has since changed.
            state.ratio = ratio;
            state.bytes_per_sec = speed;
        }
        state.compressing =
            state.ratio <= self.max_ratio && state.bytes_per_sec >= self.link_bytes_per_sec;
        if state.compressing {
            state.since_probe = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: u64 = 1_000; // 1 MB in 1 µs: far faster than any link

    fn sample(ratio: f64, nanos: u64) -> CompressionSample {
        CompressionSample {
            input_len: 1_000_000,
            output_len: (1_000_000.0 * ratio) as usize,
            nanos,
        }
    }

    #[test]
    fn starts_compressing_and_keeps_on_good_ratio() {
        let p = AdaptivePolicy::default();
        let mut s = AdaptiveState::default();
        for _ in 0..10 {
            assert_eq!(p.decide(&mut s), AdaptiveDecision::Lz4);
            p.observe(&mut s, sample(0.4, FAST));
        }
        assert!(s.compressing);
        assert!((s.ratio - 0.4).abs() < 0.05);
    }

    #[test]
    fn stops_on_poor_ratio_then_probes_periodically() {
        let p = AdaptivePolicy::default();
        let mut s = AdaptiveState::default();
        assert_eq!(p.decide(&mut s), AdaptiveDecision::Lz4);
        p.observe(&mut s, sample(1.0, FAST));
        assert!(!s.compressing);
        let decisions: Vec<_> = (0..32).map(|_| p.decide(&mut s)).collect();
        let probes: Vec<_> = decisions
            .iter()
            .enumerate()
            .filter(|(_, d)| **d == AdaptiveDecision::Lz4)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(probes, [15, 31]);
    }

    #[test]
    fn a_good_probe_resumes_compression() {
        let p = AdaptivePolicy::default();
        let mut s = AdaptiveState {
            compressing: false,
            ratio: 1.0,
            bytes_per_sec: 1e10,
            since_probe: 0,
        };
        p.observe(&mut s, sample(0.3, FAST));
        assert!(s.compressing);
        assert_eq!(p.decide(&mut s), AdaptiveDecision::Lz4);
    }

    #[test]
    fn first_sample_sets_the_averages() {
        let p = AdaptivePolicy::default();
        let mut s = AdaptiveState::default();
        assert_eq!(p.decide(&mut s), AdaptiveDecision::Lz4);
        p.observe(&mut s, sample(0.7, FAST));
        assert!(s.compressing);
        assert!((s.ratio - 0.7).abs() < 1e-9);
    }

    #[test]
    fn stops_when_compressor_is_slower_than_the_link() {
        let p = AdaptivePolicy::default();
        let mut s = AdaptiveState::default();
        // 1 MB in 10 ms = 100 MB/s, far below 1.25 GB/s: not worth it despite the ratio.
        p.observe(&mut s, sample(0.3, 10_000_000));
        assert!(!s.compressing);
        // On a slow link the same compressor pays.
        let slow_link = AdaptivePolicy {
            link_bytes_per_sec: 50e6,
            ..p
        };
        let mut s = AdaptiveState::default();
        slow_link.observe(&mut s, sample(0.3, 10_000_000));
        assert!(s.compressing);
    }

    #[test]
    fn one_bad_batch_does_not_flip_a_good_average() {
        let p = AdaptivePolicy::default();
        let mut s = AdaptiveState::default();
        for _ in 0..8 {
            p.observe(&mut s, sample(0.3, FAST));
        }
        p.observe(&mut s, sample(1.0, FAST));
        assert!(s.compressing, "ewma ratio {}", s.ratio);
        // An empty sample changes nothing.
        let before = s;
        p.observe(
            &mut s,
            CompressionSample {
                input_len: 0,
                output_len: 0,
                nanos: 0,
            },
        );
        assert_eq!(s, before);
    }
}
