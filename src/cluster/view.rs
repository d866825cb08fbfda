//! This node's broker as a view of the replicated state: what each committed command changed,
//! applied in commit order (by the applier task, and nothing else).

use std::collections::BTreeMap;

use super::state::{Change, Snapshot};
use super::SessionMeta;
use crate::broker::Broker;

/// Told of the API's link changes (all of them, each time they change): the link registry.
pub type LinksListener = Box<dyn Fn(BTreeMap<String, Option<String>>) + Send + Sync>;

/// Apply committed changes to `broker` (this node is `me`).
pub fn apply(broker: &Broker, me: u64, changes: Vec<Change>, links: &LinksListener) {
    for c in changes {
        match c {
            Change::Reset(snap) => {
                links(snap.links.clone());
                reset(broker, me, *snap);
            }
            Change::Nodes(_) => {}
            Change::Links(overrides) => links(overrides),
            Change::Live { client_id, owner, delivery } => {
                if owner == me {
                    if let Some(s) = broker.session(&client_id) {
                        broker.offer(&s, delivery);
                    }
                }
            }
            Change::Session { client_id, entry, fresh, queue } => {
                broker.apply_session(me, &client_id, entry, fresh, queue)
            }
            Change::Subscription { client_id, filter, sub } => broker.apply_subscription(&client_id, filter, sub),
            Change::Retained { topic, msg } => broker.set_retained(topic, msg),
            Change::Queued { client_id, owner, delivery, evicted, .. } => {
                if owner == me {
                    broker.apply_queued(&client_id, delivery, &evicted);
                }
            }
            Change::Refused { client_id, owner } => {
                if owner == me {
                    broker.apply_refused(&client_id);
                }
            }
        }
    }
}

/// The whole state was replaced (a snapshot restore): the view follows.
fn reset(broker: &Broker, me: u64, snap: Snapshot) {
    tracing::info!(view = snap.view, sessions = snap.sessions.len(), "cluster: view reset from a snapshot");
    for s in broker.sessions() {
        if !snap.sessions.contains_key(&*s.client_id) {
            broker.apply_session(me, &s.client_id, None, false, Vec::new());
        }
    }
    for (id, e) in &snap.sessions {
        let queue = e.queue.iter().map(|(k, v)| (*k, v.clone())).collect();
        broker.apply_session(me, id, Some(SessionMeta::from(e)), false, queue);
        broker.reset_subscriptions(id, &e.subscriptions);
    }
    broker.reset_retained(snap.retained);
}
