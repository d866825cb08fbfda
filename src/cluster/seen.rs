//! Exactly once for a sender that may redeliver (a remote cluster's link): the sequence
//! numbers already applied, in bounded memory.

use serde::{Deserialize, Serialize};

/// Seqs of a link's messages remembered for deduplication beyond the floor.
/// Twice the largest link window (`links[].max_inflight` <= 4096): a redelivery after a
/// reconnect comes in packet id order, which may put up to a window of newer numbers ahead of
/// older unseen ones; the window keeps the older ones above the floor.
pub(super) const DEDUPE_WINDOW: usize = 8192;

/// Sequence numbers seen on one link: all below `floor`, and those in `recent`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Seen {
    pub floor: u64,
    pub recent: std::collections::BTreeSet<u64>,
}

impl Seen {
    pub fn contains(&self, seq: u64) -> bool {
        seq < self.floor || self.recent.contains(&seq)
    }

    /// Record `seq`; false if it was seen already.
    pub fn insert(&mut self, seq: u64) -> bool {
        if self.contains(seq) {
            return false;
        }
        self.recent.insert(seq);
        while self.recent.len() > DEDUPE_WINDOW {
            if let Some(low) = self.recent.pop_first() {
                self.floor = self.floor.max(low + 1);
            }
        }
        true
    }
}
