//! The state machine as strait-raft runs it: apply a batch, write and restore snapshots.
//!
//! Snapshot formats: 5 (current); 4 (before sessions recorded the epoch they were created
//! in; read, as created at epoch 0: every connection's QoS 2 ids count, as they did); 3 (before
//! sessions kept the packet ids of QoS 2 messages received and not yet released; read,
//! converted with none).

use super::*;

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| format!("cluster state snapshot: {e}"))
}

impl strait_raft::StateMachine for ClusterState {
    type Command = Command;
    type Response = Response;
    /// The view reached and what the batch changed.
    type Event = (u64, Vec<Change>);

    fn apply(&mut self, batch: Vec<Command>, events: &mut Vec<(u64, Vec<Change>)>) -> Vec<Response> {
        let mut responses = Vec::with_capacity(batch.len());
        let mut changes = Vec::new();
        for cmd in batch {
            let (outcome, mut c) = self.apply_one(cmd);
            self.s.view += 1;
            changes.append(&mut c);
            responses.push(Response { view: self.s.view, outcome });
        }
        events.push((self.s.view, changes));
        responses
    }

    fn snapshot(&self) -> Result<Vec<u8>, String> {
        let mut out = vec![STATE_FORMAT];
        let body = bincode::serde::encode_to_vec(&self.s, bincode::config::standard())
            .map_err(|e| format!("cluster state snapshot: {e}"))?;
        out.extend(body);
        Ok(out)
    }

    fn restore(&mut self, bytes: &[u8], events: &mut Vec<(u64, Vec<Change>)>) -> Result<(), String> {
        let s: Snapshot = match bytes.split_first() {
            Some((&STATE_FORMAT, rest)) => decode(rest)?,
            Some((4, rest)) => decode::<old::Snapshot<old::V4>>(rest)?.into(),
            Some((3, rest)) => decode::<old::Snapshot<old::V3>>(rest)?.into(),
            Some((v, _)) => return Err(format!("cluster state snapshot: unknown format {v}")),
            None => return Err("cluster state snapshot: empty".into()),
        };
        self.s = s;
        for e in self.s.sessions.values_mut() {
            e.recount();
        }
        events.push((self.s.view, vec![Change::Reset(Box::new(self.s.clone()))]));
        Ok(())
    }

    /// A node registers (`Join`) after every start, and before it takes Raft traffic on a
    /// first start into an existing cluster; `Leave` (its removal) forgets it.
    fn registered(&self, id: u64) -> bool {
        self.s.nodes.contains_key(&id)
    }
}

/// Formats 3 and 4, read only.
mod old {
    use std::collections::{BTreeMap, BTreeSet};

    use serde::Deserialize;

    use super::super::{Seen, SessionEntry, Snapshot as Current};
    use super::*;

    /// A session as format 3 wrote it.
    #[derive(Deserialize)]
    pub struct V3 {
        owner: u64,
        epoch: u64,
        connected: bool,
        protocol: Protocol,
        expiry_interval: u32,
        disconnected_at_ms: Option<u64>,
        will: Option<Will>,
        link: Option<String>,
        subscriptions: BTreeMap<String, Subscription>,
        queue: BTreeMap<u64, Delivery>,
        dropped: u64,
    }

    /// Format 4: format 3's fields, then the QoS 2 packet ids received (bincode writes a
    /// struct's fields one after the other, a nested struct's inline, so this reads them).
    #[derive(Deserialize)]
    pub struct V4 {
        v3: V3,
        received: BTreeSet<u16>,
    }

    impl From<V3> for SessionEntry {
        fn from(e: V3) -> SessionEntry {
            SessionEntry {
                owner: e.owner,
                epoch: e.epoch,
                created: 0,
                connected: e.connected,
                protocol: e.protocol,
                expiry_interval: e.expiry_interval,
                disconnected_at_ms: e.disconnected_at_ms,
                will: e.will,
                link: e.link,
                subscriptions: e.subscriptions.into_iter().map(|(k, v)| (Arc::from(k), v)).collect(),
                queue: e.queue,
                dropped: e.dropped,
                queue_bytes: 0,
                received: Default::default(),
            }
        }
    }

    impl From<V4> for SessionEntry {
        fn from(e: V4) -> SessionEntry {
            SessionEntry { received: e.received, ..e.v3.into() }
        }
    }

    #[derive(Deserialize)]
    pub struct Snapshot<E> {
        view: u64,
        next_seq: u64,
        nodes: BTreeMap<u64, NodeInfo>,
        sessions: BTreeMap<String, E>,
        retained: BTreeMap<String, Message>,
        links: BTreeMap<String, Option<String>>,
        link_seen: BTreeMap<String, Seen>,
    }

    impl<E: Into<SessionEntry>> From<Snapshot<E>> for Current {
        fn from(s: Snapshot<E>) -> Current {
            Current {
                view: s.view,
                next_seq: s.next_seq,
                nodes: s.nodes,
                sessions: s.sessions.into_iter().map(|(k, e)| (k, e.into())).collect(),
                retained: s.retained,
                links: s.links,
                link_seen: s.link_seen,
            }
        }
    }
}

/// A digest of the replicated state (its snapshot encoding): replicas at the same view agree
/// on it, or they diverged. For checks (jepsen), not for security.
pub fn digest(s: &Snapshot) -> Result<u64, String> {
    use std::hash::Hasher;
    let bytes = bincode::serde::encode_to_vec(s, bincode::config::standard()).map_err(|e| e.to_string())?;
    let mut h = std::hash::DefaultHasher::new();
    h.write(&bytes);
    Ok(h.finish())
}
