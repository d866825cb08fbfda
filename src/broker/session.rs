//! Session state: subscriptions, the outbound queue and inflight window, inbound QoS 2 state.
//!
//! A `Session` outlives connections (persistent sessions). Its state sits behind one mutex,
//! taken briefly by the publisher's task to enqueue and by the owning connection task to send
//! and acknowledge; never held across an `.await`. The owning connection is woken through
//! `notify`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};

use crate::mqtt::packet::{Protocol, QoS, SubOptions, Will};

use super::message::Delivery;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub opts: SubOptions,
    /// The subscription identifier (MQTT 5 forbids 0): 4 bytes, not 8, in the replicated
    /// state and in every session's map (written as a plain u32 all the same).
    pub id: Option<std::num::NonZeroU32>,
}

/// An outbound QoS≥1 message sent and not yet completed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inflight {
    pub delivery: Delivery,
    /// QoS 2: PUBREC received, PUBREL sent, waiting for PUBCOMP.
    pub released: bool,
}

/// Why a session's live connection must end (sent by another task to the connection task).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// Another connection took the session over (DISCONNECT 0x8E).
    TakenOver,
    /// Administrative kick through the API (0x98).
    Admin,
    /// The node is shutting down (0x8B).
    Shutdown,
    /// This node lost the cluster (no leader lease for a while): the client should go to
    /// another node (0x88).
    Unavailable,
}

pub struct ConnHandle {
    pub conn_id: u64,
    pub kick: mpsc::Sender<Kick>,
}

/// What offering a message to a session's queue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offered {
    /// The new message is queued (false: it was dropped).
    pub queued: bool,
    /// Queued QoS 0 messages evicted to make room.
    pub evicted_qos0: u64,
    /// Queued messages evicted oldest first (`mqueue_overflow = drop_oldest`).
    pub evicted_oldest: u64,
    /// The queue's depth after it.
    pub depth: usize,
}

/// What a queued delivery counts against a byte bound: topic and payload (what a client
/// would receive), plus a fixed overhead per message.
pub fn queued_size(d: &Delivery) -> u64 {
    (d.msg.topic.len() + d.msg.payload.len() + 64) as u64
}

/// The bound of a session's replicated queue and what happens to a message that finds it full.
/// Applies to offline and online sessions alike; an online one is also throttled (its
/// publishers wait) once past half, so it rarely reaches the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueBound {
    pub max_len: u32,
    /// 0: no byte bound.
    pub max_bytes: u64,
    /// Full: evict the oldest message (true) or refuse the new one (false).
    pub drop_oldest: bool,
}

pub use super::mqueue::Mqueue;

pub struct SessionState {
    pub protocol: Protocol,
    /// Filters are shared with the cluster's replicated state (one allocation per filter).
    pub subscriptions: HashMap<Arc<str>, Subscription>,
    pub queue: Mqueue,
    pub inflight: BTreeMap<u16, Inflight>,
    /// Inbound QoS 2 packet ids received (PUBREC sent) and not yet released.
    pub awaiting_rel: HashSet<u16>,
    next_pkid: u16,
    pub conn: Option<ConnHandle>,
    /// Session expiry interval in seconds (u32::MAX = never).
    pub expiry_interval: u32,
    /// Wall clock ms at which the last connection ended, for expiry.
    pub disconnected_at_ms: Option<u64>,
    /// Will to publish when the will delay passes while the client is still away (v5).
    pub pending_will: Option<(Will, u64)>,
    /// Client's Receive Maximum, capped by our max_inflight.
    pub window: u16,
    /// Client's Maximum Packet Size.
    pub max_packet_size: u32,
    pub username: Option<String>,
    /// Changed since last persisted.
    pub dirty: bool,
    /// The storage keys of the queue's entries as last written (single node); None: unknown,
    /// the next write replaces them all.
    pub stored: Option<Vec<u64>>,
    /// Storage may hold a record of it (restored from there, or written once): its end
    /// removes it. A session never written costs its end no storage write.
    pub on_disk: bool,
}

impl SessionState {
    /// End the live connection, if any (another takes the session over, or it is ended):
    /// its task gets `why`. Whether there was one.
    pub fn kick(&mut self, why: Kick) -> bool {
        match self.conn.take() {
            Some(c) => {
                let _ = c.kick.try_send(why);
                true
            }
            None => false,
        }
    }
}

pub struct Session {
    pub client_id: Arc<str>,
    state: Mutex<SessionState>,
    pub notify: Notify,
    /// Woken when the queue drains below a quarter of its bound (publisher flow control).
    pub drained: Notify,
    connected: AtomicBool,
    pub created_at_ms: u64,
    pub dropped: AtomicU64,
    /// In a cluster: the node that owns the session (serves its connection); 0 outside a
    /// cluster. A session owned by another node is a stub: its subscriptions route messages
    /// here, its deliveries go to the owner.
    pub owner: AtomicU64,
    /// In a cluster: the epoch of the CONNECT that made the current owner's connection.
    pub epoch: AtomicU64,
    /// The session of another cluster's link client: messages that came in over a link are
    /// not sent back out over one (no loops, no transit).
    pub link: AtomicBool,
    /// With `link`: the name of that cluster.
    pub link_from: Mutex<Option<Arc<str>>>,
}

impl Session {
    pub fn new(client_id: Arc<str>, protocol: Protocol, created_at_ms: u64) -> Arc<Session> {
        Arc::new(Session {
            client_id,
            state: Mutex::new(SessionState {
                protocol,
                subscriptions: HashMap::new(),
                queue: Mqueue::default(),
                inflight: BTreeMap::new(),
                awaiting_rel: HashSet::new(),
                next_pkid: 1,
                conn: None,
                expiry_interval: 0,
                disconnected_at_ms: None,
                pending_will: None,
                window: 32,
                max_packet_size: u32::MAX,
                username: None,
                dirty: false,
                stored: None,
                on_disk: false,
            }),
            notify: Notify::new(),
            drained: Notify::new(),
            connected: AtomicBool::new(false),
            created_at_ms,
            dropped: AtomicU64::new(0),
            owner: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            link: AtomicBool::new(false),
            link_from: Mutex::new(None),
        })
    }

    /// Mark (or unmark) this as the session of cluster `remote`'s link client.
    pub fn set_link(&self, remote: Option<&str>) {
        self.link.store(remote.is_some(), Ordering::Release);
        *self.link_from.lock().unwrap_or_else(|e| e.into_inner()) = remote.map(Arc::from);
    }

    /// The cluster whose link client this session belongs to.
    pub fn link_remote(&self) -> Option<Arc<str>> {
        self.link_from.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub fn set_connected(&self, v: bool) {
        self.connected.store(v, Ordering::Release);
    }

    /// Offer a delivery under the queue's bound: at most `bound.max_len` messages and
    /// `bound.max_bytes` bytes. When full, QoS 0 goes first: queued QoS 0 messages are evicted,
    /// oldest first, and a new QoS 0 message never evicts a QoS≥1 one (it is dropped instead).
    /// Then, by `bound.drop_oldest`, the oldest messages are evicted or the new one is dropped.
    /// QoS 0 for an offline session is kept only when `store_qos0`.
    pub fn enqueue(&self, d: Delivery, bound: &QueueBound, store_qos0: bool) -> Offered {
        let offered = {
            let mut st = self.lock();
            let online = st.conn.is_some();
            let size = queued_size(&d);
            let fits = bound.max_len > 0 && (bound.max_bytes == 0 || size <= bound.max_bytes);
            let full = |q: &Mqueue| {
                q.len() >= bound.max_len as usize || (bound.max_bytes > 0 && q.bytes() + size > bound.max_bytes)
            };
            let mut o = Offered { queued: false, evicted_qos0: 0, evicted_oldest: 0, depth: 0 };
            let wanted = fits && (d.qos != QoS::AtMostOnce || online || store_qos0);
            // A new QoS 0 message may make room only among QoS 0 messages, and only when the
            // policy evicts (drop_newest drops it).
            if wanted && (d.qos != QoS::AtMostOnce || bound.drop_oldest) {
                while full(&st.queue) {
                    let Some(pos) = st.queue.iter().position(|q| q.qos == QoS::AtMostOnce) else { break };
                    st.queue.remove(pos);
                    o.evicted_qos0 += 1;
                }
                if bound.drop_oldest && d.qos != QoS::AtMostOnce {
                    while full(&st.queue) && st.queue.pop_front().is_some() {
                        o.evicted_oldest += 1;
                    }
                }
            }
            if wanted && !full(&st.queue) {
                st.queue.push_back(d);
                o.queued = true;
            }
            if o.queued || o.evicted_qos0 + o.evicted_oldest > 0 {
                st.dirty = true;
            }
            o.depth = st.queue.len();
            o
        };
        let lost = offered.evicted_qos0 + offered.evicted_oldest + u64::from(!offered.queued);
        if lost > 0 {
            self.dropped.fetch_add(lost, Ordering::Relaxed);
        }
        if offered.queued {
            self.notify.notify_one();
        }
        offered
    }

    /// In a cluster, on the owner node: durable deliveries the replicated queue evicted
    /// (drop-oldest) leave the local queue too, unless already sent.
    pub fn evict_durable(&self, seqs: &[u64]) {
        self.lock().queue.remove_seqs(seqs);
        self.dropped.fetch_add(seqs.len() as u64, Ordering::Relaxed);
    }
}

impl SessionState {
    /// The packet id for an outbound delivery; `None` while it is taken (or all are).
    /// A durable delivery's id follows from its replicated sequence number `seq`: a node that
    /// takes the session over after a crash sends it again under the same id, so a QoS 2
    /// receiver that already has it (waiting for its PUBREL) does not deliver it twice
    /// (jepsen kill-leader-qos2 caught the duplicate when the new owner picked fresh ids).
    /// Other deliveries get the next free id.
    pub fn pkid_for(&mut self, seq: Option<u64>) -> Option<u16> {
        match seq {
            Some(seq) => {
                let id = (seq % u64::from(u16::MAX)) as u16 + 1;
                (!self.inflight.contains_key(&id)).then_some(id)
            }
            None => self.alloc_pkid(),
        }
    }

    /// Next free outbound packet id.
    fn alloc_pkid(&mut self) -> Option<u16> {
        for _ in 0..=u16::MAX {
            let id = self.next_pkid;
            self.next_pkid = if id == u16::MAX { 1 } else { id + 1 };
            if !self.inflight.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    pub fn is_persistent(&self) -> bool {
        self.expiry_interval > 0
    }
}

/// What is stored in sled for a persistent session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub client_id: String,
    pub protocol: Protocol,
    pub subscriptions: Vec<(String, Subscription)>,
    pub queue: Vec<Delivery>,
    pub inflight: Vec<(u16, Inflight)>,
    pub awaiting_rel: Vec<u16>,
    pub expiry_interval: u32,
    pub disconnected_at_ms: Option<u64>,
    pub created_at_ms: u64,
}

impl SessionRecord {
    pub fn capture(session: &Session, st: &SessionState) -> SessionRecord {
        SessionRecord {
            client_id: session.client_id.to_string(),
            protocol: st.protocol,
            subscriptions: st.subscriptions.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            // (Stored as entries of their own: `Storage::write_session`.)
            queue: Vec::new(),
            inflight: st.inflight.iter().map(|(k, v)| (*k, v.clone())).collect(),
            awaiting_rel: st.awaiting_rel.iter().copied().collect(),
            expiry_interval: st.expiry_interval,
            disconnected_at_ms: st.disconnected_at_ms,
            created_at_ms: session.created_at_ms,
        }
    }

    /// The session again, its queue from `entries` (key, delivery) as stored, or (a record of
    /// format 2, which held its queue) from the record, to be written anew.
    pub fn restore(self, entries: Option<Vec<(u64, Delivery)>>) -> Arc<Session> {
        let s = Session::new(self.client_id.into(), self.protocol, self.created_at_ms);
        {
            let mut st = s.lock();
            st.on_disk = true;
            st.subscriptions = self.subscriptions.into_iter().map(|(k, v)| (Arc::from(k), v)).collect();
            match entries {
                Some(entries) => {
                    st.queue = Mqueue::from_stored(entries);
                    st.stored = Some(st.queue.keyed().map(|(k, _)| k).collect());
                }
                None => {
                    st.queue = self.queue.into_iter().collect();
                    st.dirty = true;
                }
            }
            st.inflight = self.inflight.into_iter().collect();
            st.awaiting_rel = self.awaiting_rel.into_iter().collect();
            st.expiry_interval = self.expiry_interval;
            st.disconnected_at_ms = self.disconnected_at_ms;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::message::Message;
    use crate::mqtt::packet::Properties;

    fn d(qos: QoS, n: u8) -> Delivery {
        let msg = Message {
            topic: "t".into(),
            payload: bytes::Bytes::from(vec![n]),
            qos,
            retain: false,
            properties: Properties::default(),
            publisher: "p".into(),
            expires_at_ms: None,
        };
        Delivery { msg: Arc::new(msg), qos, retain: false, sub_ids: vec![], seq: None }
    }

    fn payloads(s: &Session) -> Vec<u8> {
        s.lock().queue.iter().map(|d| d.msg.payload[0]).collect()
    }

    #[test]
    fn a_full_queue_evicts_qos0_first_and_a_new_qos0_never_evicts_qos1() {
        let s = Session::new("c".into(), Protocol::V5, 0);
        let b = QueueBound { max_len: 3, max_bytes: 0, drop_oldest: true };
        for (q, n) in [(QoS::AtLeastOnce, 1), (QoS::AtMostOnce, 2), (QoS::AtLeastOnce, 3)] {
            assert!(s.enqueue(d(q, n), &b, true).queued);
        }
        let o = s.enqueue(d(QoS::AtLeastOnce, 4), &b, true);
        assert_eq!((o.queued, o.evicted_qos0, o.evicted_oldest), (true, 1, 0), "the QoS 0 one goes first");
        assert_eq!(payloads(&s), vec![1, 3, 4]);
        let o = s.enqueue(d(QoS::AtMostOnce, 5), &b, true);
        assert_eq!((o.queued, o.evicted_oldest), (false, 0), "a new QoS 0 does not push out QoS 1");
        let o = s.enqueue(d(QoS::AtLeastOnce, 6), &b, true);
        assert_eq!((o.queued, o.evicted_oldest), (true, 1));
        assert_eq!(payloads(&s), vec![3, 4, 6], "drop_oldest");
        let newest = QueueBound { drop_oldest: false, ..b };
        assert!(!s.enqueue(d(QoS::AtLeastOnce, 7), &newest, true).queued, "drop_newest");
        assert_eq!(payloads(&s), vec![3, 4, 6]);
        assert_eq!(s.dropped.load(Ordering::Relaxed), 4);
    }
}
