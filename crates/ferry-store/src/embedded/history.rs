//! Recent events of the embedded store, so a watch can start at a past revision.

use std::collections::VecDeque;

use crate::error::StoreError;
use crate::types::{Revision, WatchEvent};

/// The last events, complete for every revision from `oldest` on.
#[derive(Debug)]
pub(super) struct History {
    events: VecDeque<WatchEvent>,
    oldest: Revision,
    capacity: usize,
}

impl History {
    /// An empty history for a store now at `revision`: watches can start after it.
    pub(super) fn new(revision: Revision, capacity: usize) -> Self {
        Self {
            events: VecDeque::new(),
            oldest: revision.next(),
            capacity,
        }
    }

    /// Appends one commit's events, dropping whole old revisions beyond the capacity.
    pub(super) fn push(&mut self, events: &[WatchEvent]) {
        self.events.extend(events.iter().cloned());
        while let Some(front) = self.events.front() {
            if self.events.len() > self.capacity || front.revision() < self.oldest {
                self.oldest = self.oldest.max(front.revision().next());
                self.events.pop_front();
            } else {
                break;
            }
        }
    }

    /// The kept events at or after `start`, or [`StoreError::Compacted`] if some are gone.
    pub(super) fn since(&self, start: Revision) -> Result<Vec<WatchEvent>, StoreError> {
        if start < self.oldest {
            return Err(StoreError::Compacted {
                requested: start,
                oldest: self.oldest,
            });
        }
        Ok(self
            .events
            .iter()
            .filter(|e| e.revision() >= start)
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn del(key: &str, rev: u64) -> WatchEvent {
        WatchEvent::Delete {
            key: key.into(),
            revision: Revision(rev),
        }
    }

    #[test]
    fn keeps_whole_revisions_and_reports_compaction() {
        let mut h = History::new(Revision(10), 3);
        assert!(h.since(Revision(11)).unwrap().is_empty());
        assert!(matches!(
            h.since(Revision(10)),
            Err(StoreError::Compacted { .. })
        ));
        h.push(&[del("a", 11), del("b", 11)]);
        h.push(&[del("c", 12)]);
        assert_eq!(h.since(Revision(11)).unwrap().len(), 3);
        // A fourth event evicts revision 11 entirely, not just its first event.
        h.push(&[del("d", 13)]);
        assert_eq!(
            h.since(Revision(12)).unwrap(),
            vec![del("c", 12), del("d", 13)]
        );
        match h.since(Revision(11)) {
            Err(StoreError::Compacted { oldest, .. }) => assert_eq!(oldest, Revision(12)),
            other => panic!("expected compaction, got {other:?}"),
        }
    }
}
