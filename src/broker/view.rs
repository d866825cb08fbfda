//! In a cluster the broker's sessions, router and retained messages are a view of the state
//! its cluster committed: the cluster's applier calls these, in commit order, and nothing else
//! changes that state.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::message::{now_ms, Delivery};
use super::session::{Kick, QueueBound, Session, Subscription};
use super::Broker;
use crate::metrics::inc;
use crate::mqtt::packet::Protocol;

/// What the cluster says of one session (its queue and subscriptions travel separately).
#[derive(Debug, Clone)]
pub struct SessionMeta {
    /// The node whose connection serves (or last served) it.
    pub owner: u64,
    /// Incremented by every CONNECT.
    pub epoch: u64,
    pub connected: bool,
    pub protocol: Protocol,
    pub expiry_interval: u32,
    /// The session of another cluster's link client: that cluster's name.
    pub link: Option<String>,
    /// Inbound QoS 2 packet ids received and not yet released.
    pub received: Vec<u16>,
}

impl Broker {
    /// A session's ownership or lifecycle changed: `fresh` when it started clean (what the view
    /// held for the client id goes), `queue` its replicated queue. None: the session is gone.
    /// (`me`: this node's id in the cluster.)
    pub fn apply_session(
        &self,
        me: u64,
        client_id: &str,
        entry: Option<SessionMeta>,
        fresh: bool,
        queue: Vec<(u64, Delivery)>,
    ) {
        let Some(meta) = entry else {
            // The session ended (expired, removed, or a non-persistent session disconnected).
            self.end_session(client_id, Kick::TakenOver);
            return;
        };
        let s = {
            let mut sessions = self.lock_sessions();
            let s = match sessions.get(client_id).cloned() {
                Some(old) if !fresh => old,
                old => {
                    if let Some(old) = old {
                        old.lock().kick(Kick::TakenOver);
                        self.discard(&old);
                    }
                    let s = Session::new(client_id.into(), meta.protocol, now_ms());
                    sessions.insert(s.client_id.clone(), s.clone());
                    s
                }
            };
            self.metrics.sessions.store(sessions.len() as i64, Ordering::Relaxed);
            s
        };
        let prev_owner = s.owner.swap(meta.owner, Ordering::AcqRel);
        s.epoch.store(meta.epoch, Ordering::Release);
        self.set_session_link(&s, meta.link.as_deref());
        let mut st = s.lock();
        st.protocol = meta.protocol;
        if meta.owner != me {
            // A stub: the owner node holds the connection, queue and inflight window.
            st.expiry_interval = meta.expiry_interval;
            s.set_connected(meta.connected);
            if st.kick(Kick::TakenOver) {
                tracing::info!(client_id, owner = meta.owner, "session.taken_over_by_another_node");
            }
            st.queue.clear();
            st.inflight.clear();
            st.awaiting_rel.clear();
            st.pending_will = None;
        } else if !meta.connected && st.conn.is_some() && s.epoch.load(Ordering::Acquire) == meta.epoch {
            // The cluster declared this node's connection gone (it was cut off from the
            // majority): the client must reconnect and register again.
            if st.kick(Kick::TakenOver) {
                tracing::info!(client_id, "session.disconnected_by_cluster");
            }
        } else if prev_owner != me {
            // Ours now: what the client has not acknowledged comes from the replicated queue.
            st.expiry_interval = meta.expiry_interval;
            st.inflight.clear();
            st.queue = queue.into_iter().map(|(_, d)| d).collect();
            // A QoS 2 message the client resends (DUP) is answered PUBREC, not routed again.
            st.awaiting_rel = meta.received.into_iter().collect();
            drop(st);
            s.notify.notify_one();
        }
    }

    /// A subscription was added (Some) or removed (None).
    pub fn apply_subscription(&self, client_id: &str, filter: Arc<str>, sub: Option<Subscription>) {
        let Some(s) = self.session(client_id) else { return };
        match sub {
            Some(sub) => {
                s.lock().subscriptions.insert(filter.clone(), sub.clone());
                self.route_add(&s, &filter, &sub);
            }
            None => {
                if s.lock().subscriptions.remove(&filter).is_some() {
                    self.route_remove(&s, &filter);
                }
            }
        }
    }

    /// Make `client_id`'s subscriptions exactly `subs` (a snapshot restore).
    pub fn reset_subscriptions(&self, client_id: &str, subs: &BTreeMap<Arc<str>, Subscription>) {
        let Some(s) = self.session(client_id) else { return };
        let current: Vec<Arc<str>> = s.lock().subscriptions.keys().cloned().collect();
        for f in current {
            if !subs.contains_key(&f) {
                s.lock().subscriptions.remove(&f);
                self.route_remove(&s, &f);
            }
        }
        for (f, sub) in subs {
            s.lock().subscriptions.insert(f.clone(), sub.clone());
            self.route_add(&s, f, sub);
        }
    }

    /// A durable delivery was queued for a session owned here (`evicted`: older ones the
    /// queue's bound pushed out).
    pub fn apply_queued(&self, client_id: &str, delivery: Delivery, evicted: &[u64]) {
        let Some(s) = self.session(client_id) else { return };
        if !evicted.is_empty() {
            s.evict_durable(evicted);
            self.metrics.messages_dropped_oldest.fetch_add(evicted.len() as u64, Ordering::Relaxed);
        }
        // Durable: bounded by the replicated queue's limit, not dropped here.
        let unbounded = QueueBound { max_len: u32::MAX, max_bytes: 0, drop_oldest: false };
        let _ = s.enqueue(delivery, &unbounded, true);
    }

    /// A durable delivery to a session owned here was refused by its full queue.
    pub fn apply_refused(&self, client_id: &str) {
        inc(&self.metrics.messages_dropped);
        if let Some(s) = self.session(client_id) {
            s.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A delivery forwarded by another node for a session owned here. Returns the session when
    /// it is connected and its queue is past half its bound (the data plane then waits).
    pub fn deliver_forwarded(&self, client_id: &str, d: Delivery) -> Option<Arc<Session>> {
        let s = self.session(client_id)?;
        if s.owner.load(Ordering::Acquire) != self.node_id() {
            return None;
        }
        let depth = self.offer(&s, d);
        (depth > self.mqtt.max_mqueue_len / 2 && s.is_connected()).then_some(s)
    }
}
