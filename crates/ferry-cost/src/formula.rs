//! The pre-copy formula: round `i` sends what the guest dirtied during round `i - 1`, at a
//! constant dirty rate, until what is left fits the downtime target or the rounds run out;
//! the rest is sent with the guest paused.

use crate::{Cost, MigrationInput};

/// Rounds at most (as the engine's default).
pub const MAX_ROUNDS: u32 = 30;
/// Downtime the engine aims for, ms.
pub const DOWNTIME_TARGET_MS: f64 = 300.0;

/// The formula's prediction.
pub fn precopy(m: &MigrationInput) -> Cost {
    let bw = m.bandwidth.max(1.0);
    let ratio = m.codec_ratio.clamp(0.01, 1.0);
    let wire_bw = bw / ratio; // raw bytes per second the link carries after codecs
    let r = m.dirty_rate.max(0.0) / wire_bw;
    let target = wire_bw * DOWNTIME_TARGET_MS / 1e3;
    let mut left = m.ram_bytes.max(0.0);
    let mut sent = 0.0;
    let mut t = 0.0;
    for _ in 0..MAX_ROUNDS {
        if left <= target {
            break;
        }
        let dt = left / wire_bw;
        sent += left;
        t += dt;
        // What the guest dirtied meanwhile, never more than its working set after round 1.
        let dirtied = m.dirty_rate * dt;
        let next = if sent > m.ram_bytes {
            dirtied.min(m.working_set_bytes.max(0.0))
        } else {
            dirtied.min(m.ram_bytes)
        };
        if next >= left && r >= 1.0 {
            left = next.min(m.working_set_bytes.max(0.0)).max(1.0);
            break;
        }
        left = next;
    }
    let pause = left / wire_bw * 1e3 + m.rtt_ms;
    sent += left;
    Cost {
        total_ms: t * 1e3 + pause,
        downtime_ms: pause,
        bytes: sent * ratio,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(ram: f64, dirty: f64) -> MigrationInput {
        MigrationInput {
            ram_bytes: ram,
            dirty_rate: dirty,
            working_set_bytes: dirty,
            bandwidth: 100e6,
            rtt_ms: 1.0,
            codec_ratio: 1.0,
        }
    }

    #[test]
    fn an_idle_guest_costs_one_pass() {
        let c = precopy(&input(1e9, 0.0));
        assert!((c.total_ms - 10_001.0).abs() < 1.0, "{c:?}");
        assert!((c.bytes - 1e9).abs() < 1.0);
        assert!(c.downtime_ms < 2.0);
    }

    #[test]
    fn dirtying_costs_more_rounds_and_bytes() {
        let idle = precopy(&input(1e9, 0.0));
        let busy = precopy(&input(1e9, 50e6));
        assert!(busy.total_ms > idle.total_ms * 1.5, "{busy:?}");
        assert!(busy.bytes > idle.bytes * 1.5);
        // Faster than the link: stops at the round limit or the working set.
        let hot = precopy(&input(1e9, 200e6));
        assert!(hot.downtime_ms > busy.downtime_ms);
    }

    #[test]
    fn compression_shortens_the_copy() {
        let mut i = input(1e9, 0.0);
        i.codec_ratio = 0.5;
        let c = precopy(&i);
        assert!((c.bytes - 0.5e9).abs() < 1.0);
        assert!((c.total_ms - 5_001.0).abs() < 1.0);
    }
}
