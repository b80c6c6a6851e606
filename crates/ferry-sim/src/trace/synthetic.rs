//! Seeded synthetic utilisation: diurnal wave + per-VM noise + occasional bursts.
//!
//! Every sample is a pure function of (seed, VM, sample index), so traces of any size cost
//! no memory and a run is reproducible from its seed.

/// Parameters of the synthetic generator.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SyntheticParams {
    /// Number of distinct VM rows.
    pub vms: usize,
    /// Simulated days.
    pub days: f64,
    /// Seconds between samples.
    pub interval_s: f64,
    /// Seed.
    pub seed: u64,
    /// Mean utilisation (fraction).
    pub mean: f64,
    /// Amplitude of the daily wave (fraction).
    pub diurnal: f64,
    /// Standard deviation-like noise level (fraction).
    pub noise: f64,
    /// Probability that a VM bursts in a given hour.
    pub burst_prob: f64,
    /// Extra utilisation during a burst (fraction).
    pub burst: f64,
}

impl Default for SyntheticParams {
    fn default() -> Self {
        Self {
            vms: 1000,
            days: 1.0,
            interval_s: 300.0,
            seed: 1,
            mean: 0.25,
            diurnal: 0.15,
            noise: 0.08,
            burst_prob: 0.02,
            burst: 0.5,
        }
    }
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51afd7ed558ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ceb9fe1a85ec53);
    x ^ (x >> 33)
}

fn unit(seed: u64, a: u64, b: u64, salt: u64) -> f64 {
    let h = mix(seed ^ mix(a.wrapping_mul(0x9e3779b97f4a7c15) ^ mix(b ^ salt.rotate_left(17))));
    (h >> 11) as f64 / (1u64 << 53) as f64
}

impl SyntheticParams {
    /// Samples per VM row over the whole run.
    pub fn samples(&self) -> usize {
        ((self.days * 86_400.0 / self.interval_s).round() as usize).max(1)
    }

    /// Sample `k` of `row` (fraction in [0, 1]).
    pub fn sample(&self, row: usize, k: usize) -> f64 {
        let (r, kk) = (row as u64, k as u64);
        let base = self.mean * (0.4 + 1.2 * unit(self.seed, r, 0, 1));
        let phase = unit(self.seed, r, 0, 2) * 0.25;
        let day_frac = (k as f64 * self.interval_s / 86_400.0) + phase;
        let wave = self.diurnal * (std::f64::consts::TAU * (day_frac - 0.25)).sin();
        let noise =
            self.noise * (unit(self.seed, r, kk, 3) + unit(self.seed, r, kk, 4) - 1.0) * 1.7;
        let hour = (k as f64 * self.interval_s / 3600.0) as u64;
        let burst = if unit(self.seed, r, hour, 5) < self.burst_prob {
            self.burst
        } else {
            0.0
        };
        (base + wave + noise + burst).clamp(0.0, 1.0)
    }
}
