//! The replicated state of one regional cluster and its one command type.
//!
//! `apply` is pure and deterministic: time comes inside the commands, nothing is read from the
//! clock, nothing random. What an applied command changed is also sent, in order, to the node's
//! applier (`events`, not replicated): the broker of every node keeps its sessions, router and
//! retained messages as a view of this state, updated only from these changes. Every command
//! advances `view`; a connection that made a change waits until its node's view has reached it
//! before it acknowledges (read-your-writes on the local view).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use crate::broker::control::Target;
use crate::broker::message::{Delivery, Message};
use crate::broker::session::Subscription;
pub use crate::broker::session::{queued_size, QueueBound};
pub use crate::broker::view::SessionMeta;
use crate::mqtt::packet::{Protocol, Will};

/// Format of `Command`s and snapshots (behind strait-raft's own version byte).
pub const STATE_FORMAT: u8 = 5;

pub use super::seen::Seen;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: u64,
    pub name: String,
    pub raft: String,
    pub mqtt: Vec<String>,
    pub api: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionEntry {
    /// Node whose connection serves (or last served) the session.
    pub owner: u64,
    /// Incremented by every CONNECT: changes made for an older connection are ignored.
    pub epoch: u64,
    /// The epoch of the CONNECT that created this session (new, or clean start): what an
    /// older connection did belonged to a session that is gone.
    pub created: u64,
    pub connected: bool,
    pub protocol: Protocol,
    /// Seconds; 0 = the session ends with its connection; u32::MAX = never expires.
    pub expiry_interval: u32,
    pub disconnected_at_ms: Option<u64>,
    /// The live connection's will (published by the leader when the owner node dies).
    pub will: Option<Will>,
    /// The session of another cluster's link client: that cluster's name.
    pub link: Option<String>,
    /// Filters as `Arc<str>`: the broker's view of the session shares them (bincode and
    /// serde write them as strings, so the format is unchanged).
    pub subscriptions: BTreeMap<Arc<str>, Subscription>,
    /// Durable QoS>=1 deliveries not yet acknowledged by the client, by sequence number.
    pub queue: BTreeMap<u64, Delivery>,
    /// Messages this session's queue bound made us drop (oldest evicted or newest refused).
    pub dropped: u64,
    /// Bytes in `queue` (by `queued_size`); derived, recomputed on restore.
    #[serde(skip)]
    pub queue_bytes: u64,
    /// Packet ids of inbound QoS 2 messages applied and not yet released (PUBREL): a resend
    /// to any node is recognised (at most 65,535, the packet id space).
    pub received: BTreeSet<u16>,
}

impl SessionEntry {
    pub fn persistent(&self) -> bool {
        self.expiry_interval > 0
    }

    pub(super) fn recount(&mut self) {
        self.queue_bytes = self.queue.values().map(queued_size).sum();
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// A node announces (or updates) its addresses.
    Join(NodeInfo),
    /// A node left the cluster (removed by the operator).
    Leave {
        node: u64,
    },
    /// CONNECT on `node`: it owns the session from now on.
    Connect {
        client_id: String,
        node: u64,
        protocol: Protocol,
        clean_start: bool,
        expiry_interval: u32,
        will: Option<Will>,
        link: Option<String>,
    },
    /// The connection of `epoch` ended at `at_ms` (with `expiry_interval` in force then).
    Disconnect {
        client_id: String,
        epoch: u64,
        at_ms: u64,
        expiry_interval: u32,
    },
    Subscribe {
        client_id: String,
        epoch: u64,
        filter: String,
        sub: Subscription,
    },
    Unsubscribe {
        client_id: String,
        epoch: u64,
        filter: String,
    },
    /// Store (or, with an empty payload, clear) a retained message.
    Retain {
        msg: Message,
    },
    /// A QoS>=1 message for persistent sessions: committed before the publisher's ack. Each
    /// target's queue is bounded by `bound` (or the target's own): when full, the oldest
    /// message is evicted or the new one refused, and counted in the session's `dropped`.
    Enqueue {
        msg: Message,
        targets: Vec<Target>,
        bound: QueueBound,
    },
    /// The client completed these deliveries.
    Ack {
        client_id: String,
        seqs: Vec<u64>,
    },
    /// Session expiry (decided by the leader from `disconnected_at_ms`): applied only if the
    /// session is still the one of `epoch` and disconnected.
    Expire {
        client_id: String,
        epoch: u64,
    },
    /// Operator removal of an offline session (API DELETE).
    Remove {
        client_id: String,
    },
    /// `node` is unreachable: its connected sessions count as disconnected at `at_ms`.
    NodeDown {
        node: u64,
        at_ms: u64,
    },
    /// A link changed over the API: `spec` is its JSON (with the password), None deletes it
    /// (also one of the config file). With `drop_sessions`, the session of that cluster's
    /// link client here ends (its routes with it): the link was deleted or disabled.
    /// `expect`: Some(true) applies only if the link exists (PUT, DELETE), Some(false) only
    /// if it does not (POST); `in_file`: the proposing node's config file has it.
    LinkSet {
        name: String,
        spec: Option<String>,
        drop_sessions: bool,
        expect: Option<bool>,
        in_file: bool,
    },
    /// A message that came in over link `link` with the remote's sequence number `seq`:
    /// `cmds` apply only if `seq` was not seen before (a redelivery after a lost
    /// acknowledgement is a duplicate).
    FromLink {
        link: String,
        seq: u64,
        cmds: Vec<Command>,
    },
    /// The remote started a new link session (it lost the old one): its sequence numbers
    /// start over.
    LinkReset {
        link: String,
    },
    /// Nothing: a read barrier (once applied here, this node's view has everything committed
    /// before it).
    Barrier,
    /// A message over a link for sessions without a replicated queue (not persistent, or
    /// QoS 0): each owner node delivers it when it applies this, so a link holder that dies
    /// right after the commit loses nothing (and the dedup record keeps it from coming twice).
    Deliver {
        msg: Message,
        targets: Vec<Target>,
    },
    /// An inbound QoS 2 PUBLISH of `client_id` with `pkid`: `cmds` (its Enqueue and Retain;
    /// entries written before session 11 also carry a Deliver, the deliveries to connected
    /// sessions, which the publisher's connection now makes after the commit) apply only if
    /// the session has not received `pkid` already. A client that
    /// resends after its node died (DUP, to another node) gets it applied once.
    Received {
        client_id: String,
        pkid: u16,
        cmds: Vec<Command>,
    },
    /// PUBREL: the client may reuse `pkid`.
    Released {
        client_id: String,
        pkid: u16,
    },
    /// `Received` sent on the connection of `epoch`: recorded only in the session that
    /// connection belonged to (a clean start since then made a new one, whose packet ids
    /// are its own; `Received` and `Released` above are what format 4 wrote).
    ReceivedAt {
        client_id: String,
        epoch: u64,
        pkid: u16,
        cmds: Vec<Command>,
    },
    /// `Released` sent on the connection of `epoch`.
    ReleasedAt {
        client_id: String,
        epoch: u64,
        pkid: u16,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Outcome {
    Done,
    Connected {
        epoch: u64,
        present: bool,
    },
    /// A change for an older connection or a missing session: nothing happened.
    Stale,
    /// Sessions whose connection ended with a node: (client id, will) to publish.
    Orphaned {
        wills: Vec<(String, Will)>,
    },
    /// A durable message was queued. `congested`: the connected target whose queue is the
    /// fullest past half its bound (client id, the depth to wait for): the publisher waits
    /// until it drains (flow control for a reading consumer; an offline one never slows
    /// anybody, its bound drops instead).
    Enqueued {
        congested: Option<(String, u32)>,
    },
    /// A message over a link already applied: nothing happened.
    Duplicate,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    /// The view (count of applied commands) right after this command.
    pub view: u64,
    pub outcome: Outcome,
}

/// What a command changed, for the node's applier.
#[derive(Debug, Clone)]
pub enum Change {
    /// The whole state was replaced (snapshot restore).
    Reset(Box<Snapshot>),
    /// A session's ownership or lifecycle changed; `fresh` when it started clean (drop what
    /// the view held for the client id). None: the session is gone.
    Session {
        client_id: String,
        entry: Option<SessionMeta>,
        fresh: bool,
        queue: Vec<(u64, Delivery)>,
    },
    Subscription {
        client_id: String,
        filter: Arc<str>,
        sub: Option<Subscription>,
    },
    Retained {
        topic: Arc<str>,
        msg: Option<Arc<Message>>,
    },
    Queued {
        client_id: String,
        owner: u64,
        seq: u64,
        delivery: Delivery,
        /// Older messages evicted to make room (drop-oldest policy).
        evicted: Vec<u64>,
    },
    /// A message refused by a full queue (drop-newest policy, or larger than the byte bound).
    Refused {
        client_id: String,
        owner: u64,
    },
    Nodes(BTreeMap<u64, NodeInfo>),
    /// The API's link changes (name -> JSON spec, None = deleted), all of them.
    Links(BTreeMap<String, Option<String>>),
    /// A delivery that is not kept in the replicated state (`Deliver`): for the owner node.
    Live {
        client_id: String,
        owner: u64,
        delivery: Delivery,
    },
}

impl From<&SessionEntry> for SessionMeta {
    fn from(e: &SessionEntry) -> Self {
        SessionMeta {
            owner: e.owner,
            epoch: e.epoch,
            connected: e.connected,
            protocol: e.protocol,
            expiry_interval: e.expiry_interval,
            link: e.link.clone(),
            received: e.received.iter().copied().collect(),
        }
    }
}

/// Everything that is replicated.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub view: u64,
    pub next_seq: u64,
    pub nodes: BTreeMap<u64, NodeInfo>,
    pub sessions: BTreeMap<String, SessionEntry>,
    pub retained: BTreeMap<String, Message>,
    /// Links changed over the API: they override the config file's (None: deleted).
    pub links: BTreeMap<String, Option<String>>,
    /// Per link: the remote sequence numbers already applied.
    pub link_seen: BTreeMap<String, Seen>,
}

/// The state machine: the replicated snapshot. What a batch changed is returned with the view
/// it reached (the Raft crate hands it to the node's applier).
#[derive(Default)]
pub struct ClusterState {
    pub s: Snapshot,
}

impl ClusterState {
    /// Apply one command: its outcome and what it changed.
    pub fn apply_one(&mut self, cmd: Command) -> (Outcome, Vec<Change>) {
        let s = &mut self.s;
        let mut out = Vec::new();
        let outcome = match cmd {
            Command::Join(info) => {
                s.nodes.insert(info.id, info);
                out.push(Change::Nodes(s.nodes.clone()));
                Outcome::Done
            }
            Command::Leave { node } => {
                s.nodes.remove(&node);
                out.push(Change::Nodes(s.nodes.clone()));
                Outcome::Done
            }
            Command::Connect { client_id, node, protocol, clean_start, expiry_interval, will, link } => {
                let prev = s.sessions.remove(&client_id);
                let epoch = prev.as_ref().map(|p| p.epoch + 1).unwrap_or(1);
                let (present, mut entry) = match prev {
                    Some(p) if !clean_start => (true, p),
                    _ => (
                        false,
                        SessionEntry {
                            owner: node,
                            epoch,
                            created: epoch,
                            connected: true,
                            protocol,
                            expiry_interval,
                            disconnected_at_ms: None,
                            will: None,
                            link: None,
                            subscriptions: BTreeMap::new(),
                            queue: BTreeMap::new(),
                            dropped: 0,
                            queue_bytes: 0,
                            received: BTreeSet::new(),
                        },
                    ),
                };
                entry.owner = node;
                entry.epoch = epoch;
                entry.connected = true;
                entry.protocol = protocol;
                entry.expiry_interval = expiry_interval;
                entry.disconnected_at_ms = None;
                entry.will = will;
                entry.link = link;
                out.push(Change::Session {
                    client_id: client_id.clone(),
                    entry: Some(SessionMeta::from(&entry)),
                    fresh: !present,
                    queue: entry.queue.iter().map(|(k, v)| (*k, v.clone())).collect(),
                });
                s.sessions.insert(client_id, entry);
                Outcome::Connected { epoch, present }
            }
            Command::Disconnect { client_id, epoch, at_ms, expiry_interval } => match s.sessions.get_mut(&client_id) {
                Some(e) if e.epoch == epoch => {
                    e.expiry_interval = expiry_interval;
                    if expiry_interval == 0 {
                        s.sessions.remove(&client_id);
                        out.push(Change::Session { client_id, entry: None, fresh: false, queue: Vec::new() });
                    } else {
                        e.connected = false;
                        e.disconnected_at_ms = Some(at_ms);
                        e.will = None;
                        let meta = SessionMeta::from(&*e);
                        out.push(Change::Session { client_id, entry: Some(meta), fresh: false, queue: Vec::new() });
                    }
                    Outcome::Done
                }
                _ => Outcome::Stale,
            },
            Command::Subscribe { client_id, epoch, filter, sub } => match s.sessions.get_mut(&client_id) {
                Some(e) if e.epoch == epoch => {
                    let filter: Arc<str> = filter.into();
                    e.subscriptions.insert(filter.clone(), sub.clone());
                    out.push(Change::Subscription { client_id, filter, sub: Some(sub) });
                    Outcome::Done
                }
                _ => Outcome::Stale,
            },
            Command::Unsubscribe { client_id, epoch, filter } => match s.sessions.get_mut(&client_id) {
                Some(e) if e.epoch == epoch => {
                    if let Some((filter, _)) = e.subscriptions.remove_entry(filter.as_str()) {
                        out.push(Change::Subscription { client_id, filter, sub: None });
                        Outcome::Done
                    } else {
                        Outcome::Stale
                    }
                }
                _ => Outcome::Stale,
            },
            Command::Retain { msg } => {
                let topic = msg.topic.clone();
                if msg.payload.is_empty() {
                    s.retained.remove(&*topic);
                    out.push(Change::Retained { topic, msg: None });
                } else {
                    s.retained.insert(topic.to_string(), msg.clone());
                    out.push(Change::Retained { topic, msg: Some(Arc::new(msg)) });
                }
                Outcome::Done
            }
            Command::Enqueue { msg, targets, bound } => {
                let seq = s.next_seq;
                s.next_seq += 1;
                let msg = Arc::new(msg);
                // The connected target fullest relative to its bound, past half of it.
                let mut congested: Option<(String, u32, u64)> = None;
                for t in targets {
                    let Some(e) = s.sessions.get_mut(&t.client_id) else { continue };
                    if !e.persistent() {
                        continue;
                    }
                    let b = t.bound.unwrap_or(bound);
                    let delivery =
                        Delivery { msg: msg.clone(), qos: t.qos, retain: t.retain, sub_ids: t.sub_ids, seq: Some(seq) };
                    let size = queued_size(&delivery);
                    let full = |e: &SessionEntry| {
                        e.queue.len() >= b.max_len as usize || (b.max_bytes > 0 && e.queue_bytes + size > b.max_bytes)
                    };
                    let fits = b.max_len > 0 && (b.max_bytes == 0 || size <= b.max_bytes);
                    let mut evicted = Vec::new();
                    if fits && b.drop_oldest {
                        while full(e) {
                            let Some((k, old)) = e.queue.pop_first() else { break };
                            e.queue_bytes = e.queue_bytes.saturating_sub(queued_size(&old));
                            evicted.push(k);
                        }
                    }
                    if !fits || full(e) {
                        e.dropped += 1;
                        out.push(Change::Refused { client_id: t.client_id, owner: e.owner });
                        continue;
                    }
                    e.dropped += evicted.len() as u64;
                    e.queue_bytes += size;
                    e.queue.insert(seq, delivery.clone());
                    if e.connected {
                        // Depth relative to the bound, in thousandths.
                        let fill = (e.queue.len() as u64 * 1000) / u64::from(b.max_len.max(1));
                        if fill > 500 && congested.as_ref().is_none_or(|(_, _, f)| fill > *f) {
                            congested = Some((t.client_id.clone(), b.max_len / 4, fill));
                        }
                    }
                    out.push(Change::Queued { client_id: t.client_id, owner: e.owner, seq, delivery, evicted });
                }
                Outcome::Enqueued { congested: congested.map(|(c, low, _)| (c, low)) }
            }
            Command::Ack { client_id, seqs } => {
                if let Some(e) = s.sessions.get_mut(&client_id) {
                    for q in seqs {
                        if let Some(d) = e.queue.remove(&q) {
                            e.queue_bytes = e.queue_bytes.saturating_sub(queued_size(&d));
                        }
                    }
                }
                Outcome::Done
            }
            Command::Expire { client_id, epoch } => match s.sessions.get(&client_id) {
                Some(e) if e.epoch == epoch && !e.connected => {
                    s.sessions.remove(&client_id);
                    out.push(Change::Session { client_id, entry: None, fresh: false, queue: Vec::new() });
                    Outcome::Done
                }
                _ => Outcome::Stale,
            },
            Command::Remove { client_id } => match s.sessions.get(&client_id) {
                Some(e) if !e.connected => {
                    s.sessions.remove(&client_id);
                    out.push(Change::Session { client_id, entry: None, fresh: false, queue: Vec::new() });
                    Outcome::Done
                }
                _ => Outcome::Stale,
            },
            Command::NodeDown { node, at_ms } => {
                let mut wills = Vec::new();
                let ids: Vec<String> =
                    s.sessions.iter().filter(|(_, e)| e.owner == node && e.connected).map(|(k, _)| k.clone()).collect();
                for id in ids {
                    let Some(e) = s.sessions.get_mut(&id) else { continue };
                    if let Some(w) = e.will.take() {
                        wills.push((id.clone(), w));
                    }
                    if e.expiry_interval == 0 {
                        s.sessions.remove(&id);
                        out.push(Change::Session { client_id: id, entry: None, fresh: false, queue: Vec::new() });
                    } else {
                        e.connected = false;
                        e.disconnected_at_ms = Some(at_ms);
                        let meta = SessionMeta::from(&*e);
                        out.push(Change::Session { client_id: id, entry: Some(meta), fresh: false, queue: Vec::new() });
                    }
                }
                Outcome::Orphaned { wills }
            }
            Command::LinkSet { name, spec, drop_sessions, expect, in_file } => {
                let exists = match s.links.get(&name) {
                    Some(o) => o.is_some(),
                    None => in_file,
                };
                if expect.is_some_and(|e| e != exists) {
                    return (Outcome::Stale, out);
                }
                if drop_sessions {
                    let ids: Vec<String> = s
                        .sessions
                        .iter()
                        .filter(|(_, e)| e.link.as_deref() == Some(name.as_str()))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for id in ids {
                        s.sessions.remove(&id);
                        out.push(Change::Session { client_id: id, entry: None, fresh: false, queue: Vec::new() });
                    }
                    // (`link_seen` stays: the remote's sequence numbers never go back, and its
                    // session may outlive this change with messages already applied here.)
                }
                s.links.insert(name, spec);
                out.push(Change::Links(s.links.clone()));
                Outcome::Done
            }
            Command::FromLink { link, seq, cmds } => {
                if !self.s.link_seen.entry(link).or_default().insert(seq) {
                    return (Outcome::Duplicate, out);
                }
                let mut last = Outcome::Done;
                for c in cmds {
                    let (o, mut ch) = self.apply_one(c);
                    out.append(&mut ch);
                    last = o;
                }
                last
            }
            Command::LinkReset { link } => {
                s.link_seen.remove(&link);
                Outcome::Done
            }
            Command::Barrier => Outcome::Done,
            Command::Received { client_id, pkid, cmds } => return self.received(&client_id, None, pkid, cmds, out),
            Command::ReceivedAt { client_id, epoch, pkid, cmds } => {
                return self.received(&client_id, Some(epoch), pkid, cmds, out)
            }
            Command::Released { client_id, pkid } => released(s, &client_id, None, pkid),
            Command::ReleasedAt { client_id, epoch, pkid } => released(s, &client_id, Some(epoch), pkid),
            Command::Deliver { msg, targets } => {
                let msg = Arc::new(msg);
                for t in targets {
                    let Some(e) = s.sessions.get(&t.client_id) else { continue };
                    let delivery =
                        Delivery { msg: msg.clone(), qos: t.qos, retain: t.retain, sub_ids: t.sub_ids, seq: None };
                    out.push(Change::Live { client_id: t.client_id, owner: e.owner, delivery });
                }
                Outcome::Done
            }
        };
        (outcome, out)
    }
}

#[path = "format.rs"]
mod format;
#[path = "qos2.rs"]
mod qos2;
pub use format::digest;
use qos2::released;

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
