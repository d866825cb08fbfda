//! Routing one message to every matching session: here (queued, flow-controlled), to the node
//! that owns the session (forwarded), or through the cluster (durable: committed before the
//! publisher is acknowledged). Queue bounds and wills.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::control::{Congestion, Op, Target};
use super::message::{now_ms, Delivery, Message};
use super::session::{QueueBound, Session};
use super::{Broker, LINK_PUBLISHER};
use crate::config::Overflow;
use crate::metrics::inc;
use crate::mqtt::packet::{QoS, Will};

/// What a PUBLISH set in motion.
pub struct Published {
    /// What the publisher's connection must wait for before reading on, if anything.
    pub congested: Option<Congestion>,
    /// In a cluster: what must be committed before the publisher is acknowledged (the retained
    /// message, durable deliveries to persistent sessions).
    pub ops: Vec<Op>,
}

/// A delivery `publish_deferred` held back.
pub enum Deferred {
    /// To a session served here.
    Offer(Arc<Session>, Delivery),
    /// To a session served by node `.0`, over the data plane.
    Forward(u64, Arc<str>, Delivery),
}

impl Deferred {
    /// As a target of a replicated `Deliver`.
    pub fn into_target(self) -> Target {
        let (client_id, d) = match self {
            Deferred::Offer(s, d) => (s.client_id.to_string(), d),
            Deferred::Forward(_, id, d) => (id.to_string(), d),
        };
        Target { client_id, qos: d.qos, retain: d.retain, sub_ids: d.sub_ids, bound: None }
    }
}

impl Broker {
    /// Route a message to every matching session (and store/clear it when retained).
    /// Returns the fullest connected session whose queue is past half its bound, if any: the
    /// publisher's connection then waits for it to drain (flow control instead of drops).
    pub fn publish(&self, msg: Arc<Message>) -> Published {
        self.publish_inner(msg, None)
    }

    /// Like `publish`, but the deliveries to connected sessions (here or forwarded to their
    /// node) are returned instead of made: a message over a link is delivered only once its
    /// deduplication record is committed (`run_deferred`).
    pub fn publish_deferred(&self, msg: Arc<Message>) -> (Published, Vec<Deferred>) {
        let mut deferred = Vec::new();
        let published = self.publish_inner(msg, Some(&mut deferred));
        (published, deferred)
    }

    /// Make the deliveries `publish_deferred` held back; what the caller must wait for.
    pub fn run_deferred(&self, deferred: Vec<Deferred>) -> Option<Congestion> {
        let half = self.mqtt.max_mqueue_len / 2;
        let replica = self.replica();
        let mut congested: Option<(usize, Arc<Session>)> = None;
        let mut remote = None;
        for d in deferred {
            match d {
                Deferred::Offer(session, d) => self.offer_noting(&session, d, half, &mut congested),
                Deferred::Forward(owner, client_id, d) => {
                    if let Some(c) = replica.as_ref().and_then(|r| r.forward(owner, &client_id, &d)) {
                        remote = Some(c);
                    }
                }
            }
        }
        congested.map(|(_, s)| Congestion::Session(s)).or(remote)
    }

    fn publish_inner(&self, msg: Arc<Message>, mut defer: Option<&mut Vec<Deferred>>) -> Published {
        let replica = self.replica();
        let mut ops = Vec::new();
        if msg.retain {
            match &replica {
                Some(_) => ops.push(Op::Retain { msg: (*msg).clone() }),
                None => self.retain(&msg),
            }
        }
        let mut matches = Vec::new();
        self.router.matches(&msg.topic, &mut matches);
        if matches.is_empty() {
            inc(&self.metrics.messages_no_subscribers);
            return Published { congested: None, ops };
        }
        let mut targets: Vec<Target> = Vec::new();
        let mut remote = None;
        // Overlapping non-shared subscriptions of one session yield one delivery with the
        // highest QoS and all subscription identifiers (MQTT-3.3.4-2/-3/-5).
        matches.sort_by_key(|m| (Arc::as_ptr(&m.session) as usize, m.shared));
        let mut congested: Option<(usize, Arc<Session>)> = None;
        let half = self.mqtt.max_mqueue_len / 2;
        let from_link = msg.publisher.starts_with(LINK_PUBLISHER);
        let mut i = 0;
        while i < matches.len() {
            let m = &matches[i];
            let mut opts = m.opts;
            let mut ids: Vec<u32> = m.id.into_iter().collect();
            let mut j = i + 1;
            if !m.shared {
                while j < matches.len() && !matches[j].shared && Arc::ptr_eq(&matches[j].session, &m.session) {
                    let o = &matches[j];
                    opts.qos = opts.qos.max(o.opts.qos);
                    opts.retain_as_published |= o.opts.retain_as_published;
                    opts.no_local &= o.opts.no_local;
                    ids.extend(o.id);
                    j += 1;
                }
            }
            let skip = (opts.no_local && !m.shared && *m.session.client_id == *msg.publisher)
                || (from_link && m.session.link.load(Ordering::Relaxed));
            i = j;
            if skip {
                continue;
            }
            let d = Delivery::live(&msg, &opts, ids);
            if let Some(r) = &replica {
                // QoS>=1 to a persistent session, wherever it lives: through the cluster.
                if d.qos != QoS::AtMostOnce && m.session.lock().is_persistent() {
                    targets.push(Target {
                        client_id: m.session.client_id.to_string(),
                        qos: d.qos,
                        retain: d.retain,
                        sub_ids: d.sub_ids,
                        // A link's outbox has the link's own (larger) bound.
                        bound: self.outbox_bound_of(&m.session),
                    });
                    continue;
                }
                let owner = m.session.owner.load(Ordering::Acquire);
                if owner != r.node() {
                    if let Some(v) = defer.as_deref_mut() {
                        v.push(Deferred::Forward(owner, m.session.client_id.clone(), d));
                    } else if let Some(c) = r.forward(owner, &m.session.client_id, &d) {
                        remote = Some(c);
                    }
                    continue;
                }
            }
            match defer.as_deref_mut() {
                Some(v) => v.push(Deferred::Offer(m.session.clone(), d)),
                None => self.offer_noting(&m.session, d, half, &mut congested),
            }
        }
        if !targets.is_empty() {
            ops.push(Op::Enqueue { msg: (*msg).clone(), targets, bound: self.queue_bound() });
        }
        let congested = congested.map(|(_, s)| Congestion::Session(s)).or(remote);
        Published { congested, ops }
    }

    pub(super) fn publish_will(&self, client_id: &str, will: Will) {
        inc(&self.metrics.wills_published);
        tracing::debug!(client_id, topic = %will.topic, "will.published");
        let mut properties = will.properties;
        properties.will_delay_interval = None;
        let expires_at_ms = properties.message_expiry_interval.take().map(|s| now_ms() + u64::from(s) * 1000);
        let msg = Message {
            topic: will.topic.into(),
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            properties,
            publisher: client_id.into(),
            expires_at_ms,
        };
        let p = self.publish(Arc::new(msg));
        if let Some(r) = self.replica() {
            if !p.ops.is_empty() {
                r.commit_detached(p.ops);
            }
        }
    }

    /// Publish the will of a session whose node died (called by the cluster leader).
    pub fn publish_will_cluster(&self, client_id: &str, will: Will) {
        self.publish_will(client_id, will);
    }

    /// The bound of a session's queue (`mqtt.max_mqueue_len`, `max_mqueue_bytes`,
    /// `mqueue_overflow`).
    pub fn queue_bound(&self) -> QueueBound {
        QueueBound {
            max_len: self.mqtt.max_mqueue_len.min(u32::MAX as usize) as u32,
            max_bytes: self.mqtt.max_mqueue_bytes,
            drop_oldest: self.mqtt.mqueue_overflow == Overflow::DropOldest,
        }
    }

    /// A link client's session is an outbox, bounded by our link to that cluster; None for
    /// every other session. (The flag first: the name is behind a lock, and this is read for
    /// every delivery.)
    pub fn outbox_bound_of(&self, session: &Session) -> Option<QueueBound> {
        if !session.link.load(Ordering::Relaxed) {
            return None;
        }
        let hooks = self.link_hooks()?;
        session.link_remote().map(|l| hooks.outbox_bound(&l))
    }

    /// The bound of `session`'s queue: its outbox bound, or `queue_bound`.
    pub fn bound_of(&self, session: &Session) -> QueueBound {
        self.outbox_bound_of(session).unwrap_or_else(|| self.queue_bound())
    }

    /// Offer one delivery to a session under the slow-consumer policy; returns the queue
    /// depth after it.
    pub fn offer(&self, session: &Arc<Session>, mut d: Delivery) -> usize {
        if d.seq.is_none()
            && d.qos != QoS::AtMostOnce
            && session.link.load(Ordering::Relaxed)
            && self.replica().is_none()
        {
            // A single node numbers what it sends over a link itself (a cluster uses its Raft
            // sequence): the receiving cluster dedupes by it, so QoS 2 stays exactly once.
            d.seq = self.link_hooks().and_then(|h| h.next_seq());
        }
        let o = session.enqueue(d, &self.bound_of(session), self.mqtt.mqueue_store_qos0);
        if !o.queued {
            inc(&self.metrics.messages_dropped);
        }
        self.metrics.messages_dropped_qos0_evicted.fetch_add(o.evicted_qos0, Ordering::Relaxed);
        self.metrics.messages_dropped_oldest.fetch_add(o.evicted_oldest, Ordering::Relaxed);
        o.depth
    }

    /// `offer`, keeping in `fullest` the connected session past `half` with the deepest queue
    /// (the one a publisher then waits for).
    fn offer_noting(
        &self,
        session: &Arc<Session>,
        d: Delivery,
        half: usize,
        fullest: &mut Option<(usize, Arc<Session>)>,
    ) {
        let depth = self.offer(session, d);
        if depth > half && session.is_connected() && fullest.as_ref().is_none_or(|(f, _)| depth > *f) {
            *fullest = Some((depth, session.clone()));
        }
    }
}
