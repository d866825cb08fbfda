//! A session's outbound queue: deliveries in order, their size in bytes, and a storage key per
//! entry so that a single node writes what changed (entries added and removed), not the queue.

use std::collections::VecDeque;

use super::message::Delivery;
use super::session::queued_size;

/// Keys start in the middle of the range: `push_back` counts up, `push_front` down, so the
/// entries' keys ascend from front to back.
const MIDDLE: u64 = 1 << 63;

/// A session's outbound queue, with its size in bytes (`queued_size`) kept as it changes.
#[derive(Debug)]
pub struct Mqueue {
    items: VecDeque<Delivery>,
    /// The storage key of each item (ascending).
    keys: VecDeque<u64>,
    /// Next key at the front (exclusive) and at the back.
    lo: u64,
    hi: u64,
    bytes: u64,
}

impl Default for Mqueue {
    fn default() -> Self {
        Mqueue { items: VecDeque::new(), keys: VecDeque::new(), lo: MIDDLE, hi: MIDDLE, bytes: 0 }
    }
}

impl Mqueue {
    /// A queue read back from storage: (key, delivery) in ascending key order.
    pub fn from_stored(entries: Vec<(u64, Delivery)>) -> Mqueue {
        let mut q = Mqueue::default();
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            q.lo = first.0;
            q.hi = last.0.saturating_add(1);
        }
        for (k, d) in entries {
            q.bytes += queued_size(&d);
            q.keys.push_back(k);
            q.items.push_back(d);
        }
        q
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn front(&self) -> Option<&Delivery> {
        self.items.front()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Delivery> {
        self.items.iter()
    }

    /// The entries with their storage keys, front to back (keys ascending).
    pub fn keyed(&self) -> impl Iterator<Item = (u64, &Delivery)> {
        self.keys.iter().copied().zip(self.items.iter())
    }

    pub fn push_back(&mut self, d: Delivery) {
        self.bytes += queued_size(&d);
        self.keys.push_back(self.hi);
        self.hi += 1;
        self.items.push_back(d);
    }

    pub fn push_front(&mut self, d: Delivery) {
        self.bytes += queued_size(&d);
        self.lo -= 1;
        self.keys.push_front(self.lo);
        self.items.push_front(d);
    }

    pub fn pop_front(&mut self) -> Option<Delivery> {
        let d = self.items.pop_front()?;
        self.keys.pop_front();
        self.bytes = self.bytes.saturating_sub(queued_size(&d));
        Some(d)
    }

    pub fn remove(&mut self, pos: usize) -> Option<Delivery> {
        let d = self.items.remove(pos)?;
        self.keys.remove(pos);
        self.bytes = self.bytes.saturating_sub(queued_size(&d));
        Some(d)
    }

    /// Remove the durable deliveries whose replicated sequence number is in `seqs` (the oldest
    /// of the replicated queue, evicted by its bound). Durable deliveries sit here in sequence
    /// order, so the scan stops at the first one newer than all of `seqs`: near the front.
    pub fn remove_seqs(&mut self, seqs: &[u64]) {
        let Some(&newest) = seqs.iter().max() else { return };
        let mut i = 0;
        while i < self.items.len() {
            match self.items[i].seq {
                Some(s) if s > newest => break,
                Some(s) if seqs.contains(&s) => {
                    self.remove(i);
                }
                _ => i += 1,
            }
        }
    }

    /// Empty (keys are not reused: what storage still holds under old keys stays distinct).
    pub fn clear(&mut self) {
        self.items.clear();
        self.keys.clear();
        self.bytes = 0;
    }
}

impl FromIterator<Delivery> for Mqueue {
    fn from_iter<I: IntoIterator<Item = Delivery>>(iter: I) -> Self {
        let mut q = Mqueue::default();
        for d in iter {
            q.push_back(d);
        }
        q
    }
}

/// What changed in a queue since `stored` (its keys as last written, ascending): the entries
/// to write and the keys to remove. Both walks are in key order: O(n), no allocation beyond
/// the answer.
pub fn diff<'a>(q: &'a Mqueue, stored: &[u64]) -> (Vec<(u64, &'a Delivery)>, Vec<u64>) {
    let mut put = Vec::new();
    let mut del = Vec::new();
    let mut old = stored.iter().copied().peekable();
    for (k, d) in q.keyed() {
        while let Some(o) = old.next_if(|o| *o < k) {
            del.push(o);
        }
        if old.next_if_eq(&k).is_none() {
            put.push((k, d));
        }
    }
    del.extend(old);
    (put, del)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::message::Message;
    use crate::mqtt::packet::{Properties, QoS};
    use std::sync::Arc;

    fn d(n: u8) -> Delivery {
        let msg = Message {
            topic: "t".into(),
            payload: bytes::Bytes::from(vec![n]),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
            publisher: "p".into(),
            expires_at_ms: None,
        };
        Delivery { msg: Arc::new(msg), qos: QoS::AtLeastOnce, retain: false, sub_ids: vec![], seq: None }
    }

    fn keys(q: &Mqueue) -> Vec<u64> {
        q.keyed().map(|(k, _)| k).collect()
    }

    #[test]
    fn keys_ascend_front_to_back_and_the_diff_is_what_changed() {
        let mut q = Mqueue::default();
        for n in 0..5 {
            q.push_back(d(n));
        }
        let stored = keys(&q);
        assert!(stored.windows(2).all(|w| w[0] < w[1]));
        let (put, del) = diff(&q, &stored);
        assert!(put.is_empty() && del.is_empty(), "nothing changed");

        let first = q.pop_front().expect("front");
        q.remove(1);
        q.push_back(d(9));
        q.push_front(first);
        let now = keys(&q);
        assert!(now.windows(2).all(|w| w[0] < w[1]), "{now:?}");
        let (put, del) = diff(&q, &stored);
        let put: Vec<u64> = put.into_iter().map(|(k, _)| k).collect();
        assert_eq!(put, vec![now[0], now[4]], "the requeued front and the new back");
        assert_eq!(del, vec![stored[0], stored[2]], "the popped front and the removed one");

        let back = Mqueue::from_stored(q.keyed().map(|(k, d)| (k, d.clone())).collect());
        assert_eq!(keys(&back), now);
        assert_eq!(back.bytes(), q.bytes());
        let mut back = back;
        back.push_back(d(10));
        back.push_front(d(11));
        let k = keys(&back);
        assert!(k.windows(2).all(|w| w[0] < w[1]), "a restored queue keeps ascending: {k:?}");
        q.clear();
        assert_eq!(diff(&q, &now).1, now, "cleared: every stored entry goes");
    }
}
