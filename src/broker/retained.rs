//! The retained messages of one node, ordered by topic so that a wildcard subscription reads
//! only the topics under its literal prefix (`sensors/42/+/t` looks at `sensors/42/...`, not at
//! every retained message), with a count and a byte total for the configured bounds.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use super::message::Message;
use crate::mqtt::topic;

/// What a retained message counts against `mqtt.max_retained_bytes`.
pub fn retained_size(m: &Message) -> u64 {
    (m.topic.len() + m.payload.len() + 64) as u64
}

#[derive(Default)]
pub struct Retained {
    by_topic: BTreeMap<Arc<str>, Arc<Message>>,
    bytes: u64,
}

impl Retained {
    pub fn len(&self) -> usize {
        self.by_topic.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_topic.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn insert(&mut self, topic: Arc<str>, msg: Arc<Message>) {
        self.bytes += retained_size(&msg);
        if let Some(old) = self.by_topic.insert(topic, msg) {
            self.bytes = self.bytes.saturating_sub(retained_size(&old));
        }
    }

    pub fn remove(&mut self, topic: &str) {
        if let Some(old) = self.by_topic.remove(topic) {
            self.bytes = self.bytes.saturating_sub(retained_size(&old));
        }
    }

    pub fn clear(&mut self) {
        self.by_topic.clear();
        self.bytes = 0;
    }

    /// Whether storing `msg` (a new topic, or a replacement) would go past `max_count`
    /// messages or `max_bytes` (0: no bound).
    pub fn would_exceed(&self, msg: &Message, max_count: usize, max_bytes: u64) -> bool {
        let old = self.by_topic.get(&msg.topic).map(|m| retained_size(m));
        let count = self.by_topic.len() + usize::from(old.is_none());
        let bytes = self.bytes - old.unwrap_or(0) + retained_size(msg);
        (max_count > 0 && count > max_count) || (max_bytes > 0 && bytes > max_bytes)
    }

    /// The unexpired messages matching `filter`: an exact lookup for a topic name, a range
    /// over the literal prefix (up to the first wildcard level) otherwise.
    pub fn matching(&self, filter: &str, now_ms: u64) -> Vec<Arc<Message>> {
        let live = |m: &&Arc<Message>| !m.is_expired(now_ms);
        if !filter.contains(['+', '#']) {
            return self.by_topic.get(filter).filter(live).cloned().into_iter().collect();
        }
        // `a/b/+/c` → prefix `a/b/`; `a/#` → `a/` (and `a` itself, which `a/#` matches too).
        let wild = filter.find(['+', '#']).unwrap_or(filter.len());
        let prefix = &filter[..wild];
        let mut out: Vec<Arc<Message>> = Vec::new();
        if let Some(parent) = prefix.strip_suffix('/').filter(|p| !p.is_empty() && filter[wild..].starts_with('#')) {
            out.extend(self.by_topic.get(parent).filter(live).filter(|m| topic::matches(filter, &m.topic)).cloned());
        }
        let range = self.by_topic.range::<str, _>((Bound::Included(prefix), Bound::Unbounded));
        for (t, m) in range {
            if !t.starts_with(prefix) {
                break;
            }
            if topic::matches(filter, t) && live(&m) {
                out.push(m.clone());
            }
        }
        out
    }
}

impl super::Broker {
    pub(super) fn retain(&self, msg: &Arc<Message>) {
        let mut retained = self.retained.write().unwrap_or_else(|e| e.into_inner());
        let res = if msg.payload.is_empty() {
            retained.remove(&msg.topic);
            self.storage.as_ref().map(|s| s.remove_retained(&msg.topic))
        } else {
            retained.insert(msg.topic.clone(), msg.clone());
            self.storage.as_ref().map(|s| s.put_retained(msg))
        };
        self.metrics.retained.store(retained.len() as i64, std::sync::atomic::Ordering::Relaxed);
        drop(retained);
        if let Some(Err(e)) = res {
            tracing::warn!(topic = %msg.topic, error = %e, "storage.retained failed");
        }
    }

    /// Retained messages matching `filter`, in topic order (a wildcard reads only the topics
    /// under its literal prefix).
    pub fn retained_matching(&self, filter: &str) -> Vec<Arc<Message>> {
        self.retained.read().unwrap_or_else(|e| e.into_inner()).matching(filter, super::message::now_ms())
    }

    /// Whether retaining `msg` would go past `mqtt.max_retained_messages` or
    /// `max_retained_bytes` (a replacement of a retained topic is measured by its growth).
    pub fn retained_full(&self, msg: &Message) -> bool {
        let (count, bytes) = (self.mqtt.max_retained_messages, self.mqtt.max_retained_bytes);
        !msg.payload.is_empty()
            && self.retained.read().unwrap_or_else(|e| e.into_inner()).would_exceed(msg, count, bytes)
    }

    pub fn set_retained(&self, topic: Arc<str>, msg: Option<Arc<Message>>) {
        let mut retained = self.retained.write().unwrap_or_else(|e| e.into_inner());
        match msg {
            Some(m) => {
                retained.insert(topic, m);
            }
            None => {
                retained.remove(&topic);
            }
        }
        self.metrics.retained.store(retained.len() as i64, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn retained_count(&self) -> usize {
        self.retained.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Replace every retained message (a cluster's snapshot restore).
    pub fn reset_retained(&self, all: impl IntoIterator<Item = (String, Message)>) {
        let mut retained = self.retained.write().unwrap_or_else(|e| e.into_inner());
        retained.clear();
        for (t, m) in all {
            retained.insert(t.into(), Arc::new(m));
        }
        self.metrics.retained.store(retained.len() as i64, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::packet::{Properties, QoS};

    fn msg(t: &str) -> Arc<Message> {
        Arc::new(Message {
            topic: Arc::from(t),
            payload: bytes::Bytes::from_static(b"v"),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Properties::default(),
            publisher: Arc::from(""),
            expires_at_ms: None,
        })
    }

    fn topics(r: &Retained, f: &str) -> Vec<String> {
        let mut v: Vec<String> = r.matching(f, 0).iter().map(|m| m.topic.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn wildcards_match_as_a_full_scan_would() {
        let mut r = Retained::default();
        let all = ["a", "a/b", "a/b/c", "a/bc", "ab", "b/a", "/a", "$SYS/x", "a/b/c/d", ""];
        for t in all.iter().filter(|t| !t.is_empty()) {
            r.insert(Arc::from(*t), msg(t));
        }
        for f in ["#", "a/#", "a/+", "a/b/#", "+/a", "+", "/#", "+/+", "a/+/c", "$SYS/#", "a/b", "nope/#", "+/#"] {
            let mut want: Vec<String> =
                all.iter().filter(|t| !t.is_empty() && topic::matches(f, t)).map(|t| t.to_string()).collect();
            want.sort();
            assert_eq!(topics(&r, f), want, "filter {f}");
        }
    }

    #[test]
    fn bounds_count_new_topics_and_bytes() {
        let mut r = Retained::default();
        r.insert(Arc::from("a"), msg("a"));
        assert_eq!(r.bytes(), retained_size(&msg("a")));
        assert!(!r.would_exceed(&msg("a"), 1, 0), "a replacement fits");
        assert!(r.would_exceed(&msg("b"), 1, 0), "a new topic does not");
        assert!(r.would_exceed(&msg("b"), 0, r.bytes() + 10), "nor past the byte bound");
        r.remove("a");
        assert_eq!((r.len(), r.bytes()), (0, 0));
    }
}
