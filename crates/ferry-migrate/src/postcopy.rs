//! Post-copy: the destination runs the guest before all pages have arrived. Pages it lacks are
//! *missing*; a fault on one is requested from the source and served ahead of the background push,
//! and the push continues next to the latest fault (a guest that faulted on page p will likely want
//! p + 1 next).

use std::collections::VecDeque;
use std::time::Duration;

use ferry_model::bitmap::{AtomicBitmap, DirtyBitmap};
use ferry_wire::WireError;

use crate::MigrateError;

/// The destination's RAM as post-copy needs it.
pub trait PostcopyTarget: Send + Sync {
    /// Makes `pages` missing (drops stale copies from earlier rounds).
    fn discard(&self, pages: &DirtyBitmap) -> Result<(), MigrateError>;
    /// Starts trapping accesses to missing pages.
    fn arm(&self) -> Result<(), MigrateError>;
    /// Stops trapping.
    fn disarm(&self) -> Result<(), MigrateError>;
    /// Waits up to `timeout` for an access to a missing page.
    fn next_fault(&self, timeout: Duration) -> Result<Option<u64>, MigrateError>;
    /// Installs pages `page..` (`data` holds whole pages) atomically and wakes whoever waits for
    /// them; a present page is left alone.
    fn place(&self, page: u64, data: &[u8]) -> Result<(), MigrateError>;
}

/// PostcopyStart flag: the destination resumes the guest as soon as the state is loaded, without
/// the Ready/Go exchange. That saves a round trip of pause on a long link; the price is that a
/// destination failing while it loads leaves the outcome unknown (the guest stays paused on the
/// source, recoverable) where Ready/Go would have let the source resume. Post-copy accepts that
/// state after any failure anyway; the source sets the flag only when the link is slow
/// ([`FAST_COMMIT_RTT`]).
pub const START_RUNS: u8 = 1;

/// Round-trip time from which post-copy commits without Ready/Go ([`START_RUNS`]).
pub const FAST_COMMIT_RTT: Duration = Duration::from_millis(2);

/// Picks the next pages to push: pages the guest asked for first, then the hot pages (written just
/// before the pause), then needed pages from the push cursor on (wrapping), skipping what was
/// already sent. Marks them sent and moves the cursor.
pub fn next_push_batch(
    needed: &DirtyBitmap,
    sent: &AtomicBitmap,
    cursor: &mut u64,
    urgent: &mut VecDeque<u64>,
    hot: &mut VecDeque<u64>,
    max: usize,
) -> Vec<u64> {
    let mut batch = Vec::with_capacity(max);
    while batch.len() < max {
        let Some(p) = urgent.pop_front() else { break };
        if needed.get(p) && sent.test_and_set(p) {
            batch.push(p);
            *cursor = p + 1;
        }
    }
    // After an urgent request, top up with its neighbours (in a small batch, to keep the latency
    // of the next request low); otherwise fill the batch.
    let fill = if batch.is_empty() {
        max
    } else {
        batch.len() + 8.min(max - batch.len())
    };
    if batch.is_empty() {
        while batch.len() < fill {
            let Some(p) = hot.pop_front() else { break };
            if needed.get(p) && sent.test_and_set(p) {
                batch.push(p);
            }
        }
    }
    let mut wrapped = false;
    while batch.len() < fill {
        match needed.next_set_from(*cursor) {
            Some(p) => {
                *cursor = p + 1;
                if sent.test_and_set(p) {
                    batch.push(p);
                }
            }
            None if !wrapped => {
                wrapped = true;
                *cursor = 0;
            }
            None => break,
        }
    }
    batch
}

/// Payload of the PostcopyStart frame: the last pre-copy round, the pages the destination lacks
/// (every other page it holds is current, or is zero if it never arrived), and the device state.
pub fn encode_start(final_round: u32, needed: &DirtyBitmap, state: &[u8]) -> Vec<u8> {
    let words = needed.words();
    let mut v = Vec::with_capacity(16 + words.len() * 8 + state.len());
    v.extend_from_slice(&final_round.to_le_bytes());
    v.extend_from_slice(&needed.pages().to_le_bytes());
    for w in words {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v.extend_from_slice(state);
    v
}

/// Decodes a PostcopyStart payload for a VM of `pages` pages.
pub fn decode_start(b: &[u8], pages: u64) -> Result<(u32, DirtyBitmap, &[u8]), WireError> {
    let bad = || WireError::Malformed("post-copy start frame");
    let round = u32::from_le_bytes(b.get(0..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    let n = u64::from_le_bytes(
        b.get(4..12)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    );
    if n != pages {
        return Err(WireError::Malformed(
            "post-copy bitmap does not match the VM's size",
        ));
    }
    let nwords = n.div_ceil(64) as usize;
    let end = 12 + nwords * 8;
    let raw = b.get(12..end).ok_or_else(bad)?;
    let words: Vec<u64> = raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();
    let needed = DirtyBitmap::from_words(pages, &words).ok_or_else(bad)?;
    Ok((round, needed, &b[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bitmap(pages: u64, set: &[u64]) -> DirtyBitmap {
        let mut b = DirtyBitmap::new(pages);
        for &p in set {
            b.set(p);
        }
        b
    }

    #[test]
    fn urgent_pages_go_first_then_their_neighbours() {
        let needed = DirtyBitmap::full(1000);
        let sent = AtomicBitmap::new(1000);
        let (mut cursor, mut urgent) = (0, VecDeque::from([500, 7]));
        let b = next_push_batch(
            &needed,
            &sent,
            &mut cursor,
            &mut urgent,
            &mut VecDeque::new(),
            64,
        );
        assert_eq!(&b[..2], &[500, 7]);
        assert_eq!(&b[2..4], &[8, 9], "push continues after the latest fault");
        assert_eq!(b.len(), 10, "a batch answering a fault stays small");
    }

    #[test]
    fn faults_overtake_hot_pages() {
        let needed = DirtyBitmap::full(100);
        let sent = AtomicBitmap::new(100);
        let (mut cursor, mut urgent) = (0, VecDeque::new());
        let mut hot = VecDeque::from([10, 11, 12]);
        let b = next_push_batch(&needed, &sent, &mut cursor, &mut urgent, &mut hot, 2);
        assert_eq!(b, vec![10, 11]);
        urgent.push_back(50);
        let b = next_push_batch(&needed, &sent, &mut cursor, &mut urgent, &mut hot, 2);
        assert_eq!(b[0], 50, "a fault goes before the remaining hot page");
    }

    #[test]
    fn every_needed_page_is_pushed_exactly_once() {
        let needed = bitmap(300, &[1, 2, 3, 100, 200, 299]);
        let sent = AtomicBitmap::new(300);
        let (mut cursor, mut urgent) = (150, VecDeque::from([2, 2, 5]));
        let mut all = vec![];
        loop {
            let b = next_push_batch(
                &needed,
                &sent,
                &mut cursor,
                &mut urgent,
                &mut VecDeque::new(),
                2,
            );
            if b.is_empty() {
                break;
            }
            all.extend(b);
        }
        all.sort_unstable();
        assert_eq!(all, vec![1, 2, 3, 100, 200, 299]);
    }

    #[test]
    fn start_frame_round_trips_and_checks_size() {
        let needed = bitmap(130, &[0, 64, 129]);
        let p = encode_start(4, &needed, b"state");
        let (r, n, s) = decode_start(&p, 130).unwrap();
        assert_eq!((r, &n, s), (4, &needed, &b"state"[..]));
        assert!(decode_start(&p, 131).is_err());
        assert!(decode_start(&p[..10], 130).is_err());
    }
}
