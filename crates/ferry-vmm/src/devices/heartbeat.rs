//! Host-side timing of the guest's heartbeat bytes (guest ABI: a byte with the top bit set,
//! carrying a 7-bit sequence number). A guest sends one either every heartbeat interval
//! (`time:US`) or after every N pages written (`pages:N`, a progress byte); the host times both
//! the same way, and a gap between two of them is time in which the guest showed no sign of life
//! (time) or made no progress (pages). Plain-text progress (`dots:N`, or any other guest's
//! console output) is text, not timed here. Nothing a guest writes can make these functions panic:
//! an empty log, one entry, bytes with any sequence, all give an answer or `None`.

use std::collections::VecDeque;

/// How many heartbeat timestamps are kept (about a minute at 1 kHz).
const KEEP: usize = 1 << 16;

/// True when a COM1 byte is a heartbeat rather than console text.
pub fn is_heartbeat(byte: u8) -> bool {
    byte & 0x80 != 0
}

/// The last heartbeat seen, carried across a migration so the destination can time the gap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeartbeatSnapshot {
    /// Heartbeats seen so far (over the VM's whole life, across hosts).
    pub count: u64,
    /// 7-bit sequence of the last one.
    pub last_seq: u8,
    /// Host monotonic time of the last one, in ns (0 if none yet).
    pub last_ns: u64,
}

/// Timestamps of recent heartbeats plus continuity checks.
#[derive(Debug, Default)]
pub struct HeartbeatLog {
    last: HeartbeatSnapshot,
    times: VecDeque<u64>,
    /// Heartbeats whose sequence did not follow the previous one (lost, not just late).
    pub seq_breaks: u64,
    /// Gap between the heartbeat carried in from a migration source and the first one here.
    pub arrival_gap_ns: Option<u64>,
    /// Whether the first heartbeat after arrival continued the source's sequence.
    pub arrival_seq_ok: Option<bool>,
}

impl HeartbeatLog {
    /// A log that continues from a migration source's last heartbeat.
    pub fn continuing(from: HeartbeatSnapshot) -> Self {
        Self {
            last: from,
            ..Self::default()
        }
    }

    /// Records one heartbeat byte seen at `now_ns`.
    pub fn record(&mut self, byte: u8, now_ns: u64) {
        let seq = byte & 0x7f;
        if self.last.count > 0 {
            let in_order = seq == (self.last.last_seq.wrapping_add(1) & 0x7f);
            if !in_order {
                self.seq_breaks += 1;
            }
            if self.times.is_empty() && self.last.last_ns != 0 {
                self.arrival_gap_ns = Some(now_ns.saturating_sub(self.last.last_ns));
                self.arrival_seq_ok = Some(in_order);
            }
        }
        self.last = HeartbeatSnapshot {
            count: self.last.count.saturating_add(1),
            last_seq: seq,
            last_ns: now_ns,
        };
        if self.times.len() == KEEP {
            self.times.pop_front();
        }
        self.times.push_back(now_ns);
    }

    /// The last heartbeat, to hand to a migration destination.
    pub fn snapshot(&self) -> HeartbeatSnapshot {
        self.last
    }

    /// Largest gap between consecutive heartbeats seen at or after `since_ns` (the gap that
    /// ends at the first such heartbeat counts too).
    pub fn max_gap_since(&self, since_ns: u64) -> Option<u64> {
        let start = self.times.partition_point(|&t| t < since_ns);
        let from = start.saturating_sub(1);
        self.times
            .iter()
            .skip(from)
            .zip(self.times.iter().skip(from + 1))
            .map(|(a, b)| b.saturating_sub(*a))
            .max()
    }

    /// Median gap over the log (the guest's actual heartbeat period).
    pub fn median_gap(&self) -> Option<u64> {
        let mut gaps: Vec<u64> = self
            .times
            .iter()
            .zip(self.times.iter().skip(1))
            .map(|(a, b)| b.saturating_sub(*a))
            .collect();
        if gaps.is_empty() {
            return None;
        }
        let mid = gaps.len() / 2;
        Some(*gaps.select_nth_unstable(mid).1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_and_sequence_breaks() {
        let mut log = HeartbeatLog::default();
        for i in 0..10u64 {
            log.record(0x80 | (i as u8 & 0x7f), 1_000 + i * 1_000);
        }
        log.record(0x80 | 10, 50_000);
        assert_eq!(log.max_gap_since(0), Some(40_000));
        assert_eq!(log.max_gap_since(20_000), Some(40_000));
        assert_eq!(log.median_gap(), Some(1_000));
        assert_eq!(log.seq_breaks, 0);
        log.record(0x80 | 12, 51_000);
        assert_eq!(log.seq_breaks, 1);
    }

    #[test]
    fn an_empty_or_single_entry_log_has_no_gap() {
        let mut log = HeartbeatLog::default();
        assert_eq!(log.max_gap_since(0), None);
        assert_eq!(log.max_gap_since(u64::MAX), None);
        assert_eq!(log.median_gap(), None);
        log.record(0x80, 5_000);
        assert_eq!(log.max_gap_since(0), None);
        assert_eq!(log.max_gap_since(10_000), None);
    }

    #[test]
    fn any_byte_sequence_is_recorded_without_panic() {
        // Garbage: every top-bit value, sequence jumps, repeated and even backwards timestamps.
        let mut log = HeartbeatLog::continuing(HeartbeatSnapshot {
            count: u64::MAX - 3,
            last_seq: 200,
            last_ns: u64::MAX,
        });
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for i in 0..(KEEP as u64 + 500) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let t = if i % 97 == 0 { 0 } else { i * 10 + (x & 7) };
            log.record(0x80 | (x as u8), t);
        }
        assert!(log.seq_breaks > 0);
        assert!(log.max_gap_since(0).is_some());
        let _ = log.max_gap_since(u64::MAX);
        assert!(log.median_gap().is_some());
        assert_eq!(
            log.arrival_gap_ns,
            Some(0),
            "a clock behind the source's saturates"
        );
        assert_eq!(log.times.len(), KEEP);
    }

    #[test]
    fn progress_bytes_are_timed_like_heartbeats() {
        // pages:N guests send the same bytes as time:US ones; a slow stretch of writes is a gap.
        let mut log = HeartbeatLog::default();
        let mut t = 0;
        for i in 0..20u64 {
            t += if i == 10 { 28_000_000 } else { 1_100_000 };
            log.record(0x80 | i as u8, t);
        }
        assert_eq!(log.max_gap_since(0), Some(28_000_000));
        assert_eq!(log.median_gap(), Some(1_100_000));
        assert_eq!(log.seq_breaks, 0);
    }

    #[test]
    fn continuing_log_times_the_arrival_gap() {
        let src = HeartbeatSnapshot {
            count: 5,
            last_seq: 127,
            last_ns: 10_000,
        };
        let mut log = HeartbeatLog::continuing(src);
        log.record(0x80, 13_500);
        assert_eq!(log.arrival_gap_ns, Some(3_500));
        assert_eq!(log.arrival_seq_ok, Some(true));
        assert_eq!(log.snapshot().count, 6);
    }
}
