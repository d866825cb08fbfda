//! Cluster linking (the seed's quick start): this cluster receives what is published in a
//! remote cluster, where subscribers here want it.
//!
//! A link `{ name = <remote cluster>, server = <its link listener>, clientid, topics }` means:
//! this cluster accepts the link client of that cluster, and is interested in that cluster's
//! messages matching `topics`. The link is one MQTT 5 connection, owned by this cluster's Raft
//! leader (a single node is its own leader), to the remote's link listener, with a persistent
//! session (clean start false): the remote's replicated queue of that session is the outbox,
//! committed there before its publisher's PUBACK, so messages wait there while the link is
//! down or changes hands:
//!
//! - Route sync ([`routes`]): the link subscribes, in the remote cluster, to the intersection
//!   of every filter subscribed here (on any node of this cluster) with the link's `topics`,
//!   and unsubscribes what is no longer wanted (these are the route deltas, in batches; the
//!   remote commits each to its Raft log before it acknowledges; a refusal is retried and shown
//!   in the status). On every connection the remote lists the routes it holds for the link in
//!   its CONNACK (`strait-link-route` user properties, up to [`LINK_MAX_CONNACK`] bytes): the
//!   bootstrap diffs against that, so a route removed while the link was down is removed there
//!   too. Propagation is asynchronous: a message published there before the route arrived is
//!   not forwarded.
//! - Messages: the remote stamps each durable message with its sequence number and original
//!   QoS (`strait-link-seq`, `strait-link-qos`). Here it is committed as `FromLink` (applied once
//!   per sequence number: a redelivery after a lost acknowledgement is a duplicate) carrying its
//!   deliveries (`Enqueue` for persistent sessions, `Deliver` for the others, made by each
//!   owner node when it applies the entry), and acknowledged to the remote after the commit.
//!   So QoS 2 stays exactly once end to end, QoS 1 is not duplicated by link failovers either,
//!   and a link holder killed right after a commit loses nothing.
//! - No loops, no transit: a message that came in over a link is never sent out over one.
//! - Leader change: the old leader drops its link connections when its lease ends; the new
//!   leader connects with the same client id (the remote takes the session over: 0x8E fences a
//!   stale leader) and resumes the session with everything not yet acknowledged.
//! - Changes at runtime (HTTP API, committed through Raft as `LinkSet`): the link's actor is
//!   restarted with the new configuration (a changed `topics` re-bootstraps the routes). A
//!   deleted or disabled link ends its session at the remote (a clean, expiring connection:
//!   the remote drops its routes and queue) and here (the remote's link client is disconnected
//!   and its session and routes removed).
//!
//! The remote side accepts a link client only if it has a link configured to this cluster's
//! name (the client names its cluster in a CONNECT user property).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Packet as RPacket, Publish as RPublish};
use rumqttc::v5::mqttbytes::QoS as RQoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::json;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

mod accept;
pub mod metrics;
pub mod protocol;
mod routes;
pub use protocol::*;
use routes::RouteSync;

use crate::broker::control::CommitError;
use crate::broker::message::{now_ms, Message};
use crate::broker::session::Kick;
use crate::broker::storage::{Storage, StorageError};
use crate::broker::{Broker, Deferred, LINK_PUBLISHER};
use crate::cluster::state::Seen;
use crate::cluster::{Cluster, Command, Outcome, Response};
use crate::config::{link_from_json, link_to_json, Config, LinkConfig};
use crate::mqtt::packet::{Properties, QoS};
use crate::mqtt::topic;

/// Session expiry asked of the remote for the link's session: a week of outage.
const LINK_SESSION_EXPIRY: u32 = 7 * 24 * 3600;

mod client;
mod inbound;
mod registry;
mod status;
mod tls;

use client::*;
use inbound::*;
pub use registry::Registry;
pub use status::LinkStatus;
pub use tls::tls_client_config;

/// Start the node's link manager: it runs one actor per enabled link in force (each acts only
/// while this node leads) and follows the API's changes.
pub fn start(
    cfg: &Config,
    broker: Arc<Broker>,
    cluster: Option<Arc<Cluster>>,
    registry: Arc<Registry>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) {
    for l in cfg.cluster.links.iter().filter(|l| l.enable && l.password.is_none()) {
        tracing::warn!(link = %l.name,
            "link without a password: any client that reaches a link listener here can claim to be that cluster; \
             set the same username and password on both sides' link (and TLS)");
    }
    let cluster = cluster.as_ref().map(Arc::downgrade);
    let ctx = Ctx { broker, cluster, registry, cancel, tracker: tracker.clone(), me: cfg.cluster.name.clone() };
    tracker.spawn(manage(ctx).instrument(tracing::info_span!("links")));
}

fn is_leader(ctx: &Ctx) -> bool {
    match ctx.cluster() {
        None => true,
        Some(c) => c.leadership().is_leader_with_lease(),
    }
}

/// What a link's tasks share with the node.
#[derive(Clone)]
struct Ctx {
    broker: Arc<Broker>,
    /// The cluster whose leader holds the link (None: a single node, its own leader). Weak:
    /// a link task that outlives the node's shutdown does not keep the cluster's store open.
    cluster: Option<std::sync::Weak<Cluster>>,
    registry: Arc<Registry>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    /// This cluster's name.
    me: String,
}

impl Ctx {
    fn cluster(&self) -> Option<Arc<Cluster>> {
        self.cluster.as_ref().and_then(std::sync::Weak::upgrade)
    }
}

struct Running {
    status: Arc<LinkStatus>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Keep one actor per enabled link in force; restart an actor whose configuration changed;
/// end the remote session of a deleted or disabled link.
async fn manage(ctx: Ctx) {
    let registry = ctx.registry.clone();
    let mut changed = registry.changed.subscribe();
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    loop {
        changed.borrow_and_update();
        let eff = registry.effective();
        let names: Vec<String> = running.keys().cloned().collect();
        for name in names {
            let new = eff.iter().find(|l| l.name == name);
            if running.get(&name).is_some_and(|r| Some(&r.status.config) == new) {
                continue;
            }
            let Some(r) = running.remove(&name) else { continue };
            r.stop.cancel();
            if let Some(t) = r.task {
                let _ = t.await;
            }
            let old = &r.status.config;
            // (Not for a changed server list: the same session at the same cluster, resumed
            // by the new actor with everything queued for it.)
            let gone = new.is_none_or(|n| !n.enable || n.clientid != old.clientid);
            if old.enable && gone && is_leader(&ctx) {
                tracing::info!(link = %name, "link: deleted, disabled or renamed; ending its session at the remote");
                // Awaited (bounded): a new actor with the same client id must not race it.
                farewell(old.clone(), ctx.clone()).instrument(tracing::info_span!("link", name = %name)).await;
            }
        }
        for l in eff.iter() {
            if running.contains_key(&l.name) {
                continue;
            }
            let status = Arc::new(LinkStatus::new(l));
            let stop = ctx.cancel.child_token();
            let task = l.enable.then(|| {
                let span = tracing::info_span!("link", name = %l.name);
                let c = Ctx { cancel: stop.clone(), ..ctx.clone() };
                ctx.tracker.spawn(supervise(l.clone(), c, status.clone()).instrument(span))
            });
            running.insert(l.name.clone(), Running { status, stop, task });
        }
        registry.set_statuses(running.iter().map(|(k, r)| (k.clone(), r.status.clone())).collect());
        tokio::select! {
            _ = ctx.cancel.cancelled() => break,
            r = changed.changed() => if r.is_err() { break },
        }
    }
    for (_, r) in running {
        r.stop.cancel();
        if let Some(t) = r.task {
            let _ = t.await;
        }
    }
}
