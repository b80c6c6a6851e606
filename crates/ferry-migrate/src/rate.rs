//! A bandwidth limit shared by every channel of a migration, changeable while it runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bytes a sender may burst ahead of the rate: small, so any 1 s window stays within a few percent.
const BURST: Duration = Duration::from_millis(10);

/// A token bucket in bytes per second (0 = unlimited).
#[derive(Debug)]
pub struct RateLimit {
    rate: AtomicU64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new(0)
    }
}

impl RateLimit {
    /// A limit of `bytes_per_sec` (0 = unlimited).
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            rate: AtomicU64::new(bytes_per_sec),
            state: Mutex::new(Bucket {
                tokens: 0.0,
                last: Instant::now(),
            }),
        }
    }

    /// Changes the limit (takes effect with the next frame on every channel).
    pub fn set(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::Relaxed);
    }

    /// The current limit in bytes per second (0 = unlimited).
    pub fn get(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// How long a sender must wait before putting `bytes` on the wire now; the bytes are charged.
    pub fn charge(&self, bytes: usize, now: Instant) -> Duration {
        let rate = self.get();
        if rate == 0 {
            return Duration::ZERO;
        }
        let Ok(mut b) = self.state.lock() else {
            return Duration::ZERO;
        };
        let rate = rate as f64;
        let burst = rate * BURST.as_secs_f64();
        b.tokens =
            (b.tokens + rate * now.saturating_duration_since(b.last).as_secs_f64()).min(burst);
        b.last = now;
        // Going into debt lets one frame larger than the burst through, then makes everyone wait it off.
        b.tokens -= bytes as f64;
        if b.tokens < 0.0 {
            Duration::from_secs_f64(-b.tokens / rate)
        } else {
            Duration::ZERO
        }
    }

    /// Waits as long as the limit requires before sending `bytes`.
    pub fn acquire(&self, bytes: usize) {
        let wait = self.charge(bytes, Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_waits() {
        assert_eq!(
            RateLimit::new(0).charge(1 << 30, Instant::now()),
            Duration::ZERO
        );
    }

    #[test]
    fn a_steady_sender_is_held_to_the_rate() {
        // Simulated clock: send 1 MiB frames as fast as allowed for 10 s at 10 MB/s.
        let r = RateLimit::new(10_000_000);
        let t0 = Instant::now();
        let mut now = t0;
        let mut sent = 0u64;
        while now.duration_since(t0) < Duration::from_secs(10) {
            now += r.charge(1 << 20, now);
            sent += 1 << 20;
        }
        let rate = sent as f64 / now.duration_since(t0).as_secs_f64();
        assert!((rate - 10e6).abs() / 10e6 < 0.05, "{rate}");
    }

    #[test]
    fn the_limit_can_change_mid_stream() {
        let r = RateLimit::new(1_000_000);
        let now = Instant::now();
        assert!(r.charge(2_000_000, now) > Duration::from_millis(1500));
        r.set(0);
        assert_eq!(r.charge(1 << 30, now), Duration::ZERO);
    }
}
