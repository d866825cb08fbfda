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

mod routes;
use routes::RouteSync;

use crate::broker::message::{now_ms, Message};
use crate::broker::{Broker, Deferred, LINK_PUBLISHER};
use crate::cluster::state::Seen;
use crate::cluster::{Command, Outcome, Response};
use crate::config::{link_from_json, link_to_json, Config, LinkConfig};
use crate::mqtt::connection::{
    LINK_ACTOR_PROPERTY, LINK_INCARNATION_PROPERTY, LINK_PROPERTY, LINK_TARGET_PROPERTY, LINK_VERSION,
    LINK_VERSION_PROPERTY,
};
use crate::mqtt::packet::{Properties, QoS};
use crate::mqtt::topic;

/// Session expiry asked of the remote for the link's session: a week of outage.
const LINK_SESSION_EXPIRY: u32 = 7 * 24 * 3600;
/// User property of a message sent over a link: its sequence number in the sending cluster.
pub const LINK_SEQ_PROPERTY: &str = "strait-link-seq";
/// User property of a message sent over a link: the QoS it was published with.
pub const LINK_QOS_PROPERTY: &str = "strait-link-qos";
/// CONNACK user property (repeated) to a link client: one route its session holds.
pub const LINK_ROUTE_PROPERTY: &str = "strait-link-route";
/// Largest CONNACK (with its route list) a link client takes.
pub const LINK_MAX_CONNACK: u32 = 64 * 1024 * 1024;
/// CONNACK user property: the route list was cut short (it did not fit the packet).
pub const LINK_ROUTES_CUT_PROPERTY: &str = "strait-link-routes-cut";

/// The links in force: the config file's, overridden by the API's changes (committed through
/// Raft, or stored in sled on a single node), and their status.
pub struct Registry {
    me: String,
    file: Vec<LinkConfig>,
    inner: Mutex<RegistryState>,
    changed: watch::Sender<u64>,
    /// Serialises API changes on a single node.
    api: Mutex<()>,
}

#[derive(Default)]
struct RegistryState {
    overrides: BTreeMap<String, Option<String>>,
    effective: Arc<Vec<LinkConfig>>,
    statuses: BTreeMap<String, Arc<LinkStatus>>,
    /// Without a cluster: the remote sequence numbers seen per link (in memory).
    seen: BTreeMap<String, Seen>,
}

impl Registry {
    pub fn new(cfg: &Config) -> Registry {
        let state = RegistryState { effective: Arc::new(cfg.cluster.links.clone()), ..Default::default() };
        Registry {
            me: cfg.cluster.name.clone(),
            file: cfg.cluster.links.clone(),
            inner: Mutex::new(state),
            changed: watch::Sender::new(0),
            api: Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RegistryState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The API's changes, all of them (from the replicated state or sled).
    pub fn set_overrides(&self, overrides: BTreeMap<String, Option<String>>) {
        if self.lock().overrides == overrides {
            return;
        }
        let mut eff = self.file.clone();
        for (name, spec) in &overrides {
            let parsed = spec.as_ref().map(|s| {
                serde_json::from_str::<serde_json::Value>(s)
                    .map_err(|e| e.to_string())
                    .and_then(|v| link_from_json(&v, &self.me))
            });
            match parsed {
                None => eff.retain(|l| &l.name != name),
                Some(Ok((l, _))) => match eff.iter_mut().find(|x| &x.name == name) {
                    Some(x) => *x = l,
                    None => eff.push(l),
                },
                Some(Err(e)) => tracing::error!(link = %name, "a stored link change is invalid, ignored: {e}"),
            }
        }
        let mut st = self.lock();
        st.overrides = overrides;
        st.effective = Arc::new(eff);
        drop(st);
        self.changed.send_modify(|v| *v += 1);
    }

    /// Held across one API change on a single node (check, store, apply).
    pub fn api_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.api.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One API change applied to the current overrides (single node).
    pub fn set_override(&self, name: &str, spec: Option<String>) {
        let mut all = self.lock().overrides.clone();
        all.insert(name.to_string(), spec);
        self.set_overrides(all);
    }

    /// Whether this node's config file has a link named `name`.
    pub fn in_file(&self, name: &str) -> bool {
        self.file.iter().any(|l| l.name == name)
    }

    /// This cluster's name.
    pub fn cluster_name(&self) -> &str {
        &self.me
    }

    pub fn effective(&self) -> Arc<Vec<LinkConfig>> {
        self.lock().effective.clone()
    }

    pub fn get(&self, name: &str) -> Option<LinkConfig> {
        self.lock().effective.iter().find(|l| l.name == name).cloned()
    }

    /// The outbox bound of link `name` (`max_outbox`, `max_outbox_bytes`) without copying the
    /// link's configuration (read for every message queued for a link client).
    pub fn outbox_of(&self, name: &str) -> Option<(usize, u64)> {
        self.lock().effective.iter().find(|l| l.name == name).map(|l| (l.max_outbox, l.max_outbox_bytes))
    }

    /// Whether cluster `remote`'s link client may connect: a link to it is configured and
    /// enabled here.
    pub fn accepts(&self, remote: &str) -> bool {
        self.configured(remote) == Some(true)
    }

    /// Whether a link to cluster `remote` is configured here (Some), and enabled (Some(true)).
    pub fn configured(&self, remote: &str) -> Option<bool> {
        self.lock().effective.iter().find(|l| l.name == remote).map(|l| l.enable)
    }

    /// The status of every link in force, in configuration order.
    pub fn statuses(&self) -> Vec<Arc<LinkStatus>> {
        let st = self.lock();
        st.effective
            .iter()
            .map(|l| {
                st.statuses
                    .get(&l.name)
                    .filter(|s| s.config == *l)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(LinkStatus::new(l)))
            })
            .collect()
    }

    fn set_statuses(&self, statuses: BTreeMap<String, Arc<LinkStatus>>) {
        self.lock().statuses = statuses;
    }

    /// Without a cluster: record `seq` of `link`; false if seen before.
    fn seen_insert(&self, link: &str, seq: u64) -> bool {
        self.lock().seen.entry(link.to_string()).or_default().insert(seq)
    }

    fn seen_reset(&self, link: &str) {
        self.lock().seen.remove(link);
    }
}

/// What the API shows of one link.
pub struct LinkStatus {
    pub config: LinkConfig,
    state: Mutex<State>,
    pub received: AtomicU64,
    pub published: AtomicU64,
    pub duplicates: AtomicU64,
    pub dropped: AtomicU64,
    pub connects: AtomicU64,
}

#[derive(Clone, Default)]
struct State {
    status: &'static str,
    server: Option<String>,
    since_ms: u64,
    last_error: Option<String>,
    routes: Vec<String>,
    /// Refused by the remote (the first 100, with why) and how many in all.
    refused: Vec<(String, String)>,
    refused_count: usize,
    /// Routes on their way (to send, or sent and not acknowledged).
    routes_pending: usize,
    /// Routes this cluster wants there.
    routes_wanted: usize,
    inflight: usize,
}

impl LinkStatus {
    fn new(l: &LinkConfig) -> LinkStatus {
        LinkStatus {
            config: l.clone(),
            state: Mutex::new(State {
                status: if l.enable { "starting" } else { "disabled" },
                since_ms: now_ms(),
                ..State::default()
            }),
            received: AtomicU64::new(0),
            published: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            connects: AtomicU64::new(0),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    fn set(&self, status: &'static str, server: Option<String>, error: Option<String>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.status != status || st.server != server {
            st.since_ms = now_ms();
        }
        st.status = status;
        st.server = server;
        if error.is_some() {
            st.last_error = error;
        }
    }

    /// The route sync's state: what the remote holds, refused, and on its way.
    fn set_route_sync(&self, sync: &RouteSync) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.routes = sync.held().iter().cloned().collect();
        st.refused = sync.refused().iter().take(100).map(|(r, why)| (r.clone(), why.clone())).collect();
        st.refused_count = sync.refused().len();
        st.routes_pending = sync.pending();
        st.routes_wanted = sync.wanted_len();
    }

    fn set_inflight(&self, n: usize) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).inflight = n;
    }

    pub fn route_count(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).routes.len()
    }

    pub fn status(&self) -> &'static str {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).status
    }

    /// The status as the API shows it, with at most `max_routes` of its routes listed.
    pub fn to_json(&self, max_routes: usize) -> serde_json::Value {
        // Read under the lock, no copy: the route list can be long.
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut v = link_to_json(&self.config, false);
        v["status"] = json!(st.status);
        v["connected_server"] = json!(st.server);
        v["status_since_ms"] = json!(st.since_ms);
        v["last_error"] = json!(st.last_error);
        v["route_count"] = json!(st.routes.len());
        v["routes"] = json!(st.routes.iter().take(max_routes).collect::<Vec<_>>());
        v["routes_truncated"] = json!(st.routes.len() > max_routes);
        v["routes_refused_count"] = json!(st.refused_count);
        v["routes_refused"] = st.refused.iter().map(|(r, why)| json!({"route": r, "reason": why})).collect();
        v["routes_pending"] = json!(st.routes_pending);
        v["routes_wanted"] = json!(st.routes_wanted);
        v["inflight"] = json!(st.inflight);
        v["messages_received"] = json!(self.received.load(Ordering::Relaxed));
        v["messages_published"] = json!(self.published.load(Ordering::Relaxed));
        v["messages_duplicate"] = json!(self.duplicates.load(Ordering::Relaxed));
        v["messages_dropped"] = json!(self.dropped.load(Ordering::Relaxed));
        v["connects"] = json!(self.connects.load(Ordering::Relaxed));
        v
    }
}

/// Start the node's link manager: it runs one actor per enabled link in force (each acts only
/// while this node leads) and follows the API's changes.
pub fn start(cfg: &Config, broker: Arc<Broker>, cancel: CancellationToken, tracker: &TaskTracker) {
    for l in cfg.cluster.links.iter().filter(|l| l.enable && l.password.is_none()) {
        tracing::warn!(link = %l.name,
            "link without a password: any client that reaches a link listener here can claim to be that cluster; \
             set the same username and password on both sides' link (and TLS)");
    }
    let ctx = Ctx { broker, cancel, tracker: tracker.clone(), me: cfg.cluster.name.clone() };
    tracker.spawn(manage(ctx).instrument(tracing::info_span!("links")));
}

fn is_leader(broker: &Broker) -> bool {
    match broker.cluster() {
        None => true,
        Some(c) => c.leadership().is_leader_with_lease(),
    }
}

/// What a link's tasks share with the node.
#[derive(Clone)]
struct Ctx {
    broker: Arc<Broker>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    /// This cluster's name.
    me: String,
}

struct Running {
    status: Arc<LinkStatus>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Keep one actor per enabled link in force; restart an actor whose configuration changed;
/// end the remote session of a deleted or disabled link.
async fn manage(ctx: Ctx) {
    let broker = ctx.broker.clone();
    let mut changed = broker.links.changed.subscribe();
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    loop {
        changed.borrow_and_update();
        let eff = broker.links.effective();
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
            if old.enable && gone && is_leader(&broker) {
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
        broker.links.set_statuses(running.iter().map(|(k, r)| (k.clone(), r.status.clone())).collect());
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

async fn supervise(link: LinkConfig, ctx: Ctx, status: Arc<LinkStatus>) {
    let (broker, cancel) = (&ctx.broker, &ctx.cancel);
    let servers = link.server.len().max(1);
    let mut next_server = 0usize;
    // Failed attempts since the last connection or backoff: a whole round of the servers is
    // tried at once, one after the other, before waiting `retry_interval`.
    let mut failed_in_round = 0usize;
    let mut last_logged: Option<String> = None;
    let mut leadership = broker.cluster().map(|c| c.raft.leadership());
    loop {
        if cancel.is_cancelled() {
            break;
        }
        if !is_leader(broker) {
            status.set("standby", None, None);
            // Woken when leadership changes here: no polling while another node holds the link.
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = leadership_changed(&mut leadership) => {}
            }
            continue;
        }
        let Some(server) = link.server.get(next_server % servers) else {
            status.set("error", None, Some("no server configured".into()));
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(link.retry_interval) => {}
            }
            continue;
        };
        let addr = format!("{}:{}", server.host, server.port);
        status.set("connecting", Some(addr.clone()), None);
        match run(&link, &ctx, &status, &server.host, server.port).await {
            Ok(()) => {
                status.set("standby", None, None);
                last_logged = None;
                failed_in_round = 0;
                continue;
            }
            Err((e, was_connected)) => {
                // Logged once per change of error, not once per retry.
                if last_logged.as_deref() != Some(e.as_str()) {
                    tracing::warn!(server = %addr, "link connection: {e}");
                    last_logged = Some(e.clone());
                }
                status.set("disconnected", Some(addr), Some(e));
                // The next server at once: the one that just failed (or dropped us) is the
                // least likely to answer now.
                next_server += 1;
                failed_in_round = if was_connected { 0 } else { failed_in_round + 1 };
                if failed_in_round < servers {
                    continue;
                }
                failed_in_round = 0;
            }
        }
        // Every server failed in a row: back off, with jitter so that links restarting together
        // do not retry in step.
        let jitter = link.retry_interval.mul_f64(rand::random::<f64>() * 0.2);
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(link.retry_interval.max(Duration::from_millis(100)) + jitter) => {}
        }
    }
}

/// Resolves at `at`; never without one.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves when this node's view of the Raft leadership changes (never without a cluster).
async fn leadership_changed(l: &mut Option<tokio::sync::watch::Receiver<strait_raft::Leadership>>) {
    if let Some(l) = l.as_mut() {
        if l.changed().await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

/// MQTT options of the link client for `host:port`.
fn options(link: &LinkConfig, ctx: &Ctx, host: &str, port: u16, clean: bool) -> Result<MqttOptions, String> {
    let mut opts = MqttOptions::new(link.clientid.clone(), host, port);
    opts.set_clean_start(clean);
    opts.set_session_expiry_interval(Some(if clean { 0 } else { LINK_SESSION_EXPIRY }));
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_manual_acks(true);
    opts.set_receive_maximum(Some(link.max_inflight.max(1)));
    let (actor, term) = match ctx.broker.cluster() {
        Some(c) => (c.node_name.clone(), c.raft.metrics().current_term),
        None => (ctx.me.clone(), 0),
    };
    opts.set_user_properties(vec![
        (LINK_PROPERTY.to_string(), ctx.me.clone()),
        (LINK_VERSION_PROPERTY.to_string(), LINK_VERSION.to_string()),
        (LINK_TARGET_PROPERTY.to_string(), link.name.clone()),
        (LINK_ACTOR_PROPERTY.to_string(), actor),
        (LINK_INCARNATION_PROPERTY.to_string(), term.to_string()),
    ]);
    // Room for the remote's CONNACK route list (one user property per route: ~1.5 million
    // routes of 20 bytes fit); publishes are bounded by the remote's own max_packet_size.
    opts.set_max_packet_size(Some(ctx.broker.mqtt.max_packet_size.max(LINK_MAX_CONNACK)));
    if let Some(u) = &link.username {
        opts.set_credentials(u.clone(), link.password.clone().unwrap_or_default());
    }
    if link.ssl.enable {
        let tls = tls_client_config(link).map_err(|e| format!("TLS configuration: {e}"))?;
        opts.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::new(tls))));
    }
    Ok(opts)
}

/// A connection error as the link status shows it: a refusal says what the remote refused
/// (each cause has its own CONNACK code; a 5.0 reason string says the same there).
fn describe(e: &rumqttc::v5::ConnectionError, remote: &str) -> String {
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as C;
    let rumqttc::v5::ConnectionError::ConnectionRefused(code) = e else { return e.to_string() };
    let why = match code {
        C::NotAuthorized => format!("cluster {remote} has no link named after this cluster (cluster.links there)"),
        C::Banned => format!("the link to this cluster is disabled on cluster {remote}"),
        C::ServerMoved => {
            format!("the server is not cluster {remote} (a link's name must be the remote's cluster.name)")
        }
        C::BadUserNamePassword => format!("cluster {remote} does not take this link's username/password"),
        C::UseAnotherServer => "the server is not a link listener (tcp.clink / ssl.clink)".to_string(),
        C::UnsupportedProtocolVersion => "the remote speaks another link protocol version".to_string(),
        C::ServerUnavailable => "the remote node cannot reach its cluster's majority".to_string(),
        C::ClientIdentifierNotValid => "the remote refused this link's client id".to_string(),
        other => return format!("refused by the remote: {other:?}"),
    };
    format!("refused: {why}")
}

/// End this cluster's session at the remote (a deleted or disabled link): a clean connection
/// whose session expires with it, so the remote drops the link's routes and queued messages.
async fn farewell(link: LinkConfig, ctx: Ctx) {
    for server in &link.server {
        let Ok(opts) = options(&link, &ctx, &server.host, server.port, true) else { return };
        let (client, mut el) = AsyncClient::new(opts, 16);
        let done = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(RPacket::ConnAck(_))) => {
                        let _ = client.try_disconnect();
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        })
        .await;
        if done == Ok(true) {
            tracing::info!(server = %server, "link: session at the remote ended");
            return;
        }
    }
    tracing::warn!("link: could not end the session at the remote (its routes expire with it)");
}

/// A message from the remote on its way here, in arrival order.
struct Inbound {
    p: RPublish,
    /// Its commit (the dedup record, and what needs Raft), if any.
    wait: Option<oneshot::Receiver<Result<Vec<Response>, String>>>,
    /// Deliveries to make once committed.
    deferred: Vec<Deferred>,
    /// Known duplicate (no cluster) or not wanted: acknowledge only.
    skip: bool,
}

/// Wait for the commit of the front message; whether it was a duplicate.
async fn front_done(pending: &mut VecDeque<Inbound>) -> Result<bool, String> {
    let Some(f) = pending.front_mut() else { return std::future::pending().await };
    match f.wait.as_mut() {
        None => Ok(f.skip),
        Some(rx) => match rx.await {
            Ok(Ok(rs)) => Ok(rs.iter().any(|r| matches!(r.outcome, Outcome::Duplicate))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("node shutting down".into()),
        },
    }
}

/// One link connection, until it fails (Err, with whether it had connected), or this node
/// stops leading or the link stops (Ok).
async fn run(
    link: &LinkConfig,
    ctx: &Ctx,
    status: &Arc<LinkStatus>,
    host: &str,
    port: u16,
) -> Result<(), (String, bool)> {
    let (broker, cancel) = (&ctx.broker, &ctx.cancel);
    if let Some(c) = broker.cluster() {
        // A new leader's view may lag the log: read through a committed barrier first, or the
        // route bootstrap would remove routes at the remote that subscribers here still want.
        if !c.is_ready() {
            return Err(("this node has not caught up with the cluster yet".into(), false));
        }
        c.commit_wait(vec![Command::Barrier]).await.map_err(|e| (format!("read barrier: {e}"), false))?;
    }
    let opts = options(link, ctx, host, port, false).map_err(|e| (e, false))?;
    let (client, mut el) = AsyncClient::new(opts, 1024.max(2 * usize::from(link.max_inflight)));
    // rumqttc's `poll` is not cancel-safe while it connects (a poll dropped mid-handshake
    // connects again, and the remote sees the link session taken over): it runs in a task of
    // its own and its events come over a channel.
    let (ev_tx, mut events) = tokio::sync::mpsc::channel::<Result<Event, String>>(64);
    let remote_name = link.name.clone();
    let mut poller = ctx.tracker.spawn(async move {
        loop {
            let ev = el.poll().await.map_err(|e| describe(&e, &remote_name));
            let end = ev.is_err();
            if ev_tx.send(ev).await.is_err() || end {
                break;
            }
        }
    });
    let addr = format!("{host}:{port}");
    let mut connected = false;
    let mut routes = RouteSync::new(&link.topics, link.retry_interval.max(Duration::from_millis(100)));
    let mut pending: VecDeque<Inbound> = VecDeque::new();
    let mut leadership = broker.cluster().map(|c| c.raft.leadership());
    // Armed before the route table is read, re-armed before it is read again: no change is
    // missed between two reads.
    let mut routes_changed = Box::pin(broker.routes_changed.notified());
    routes_changed.as_mut().enable();
    routes.follow(&broker.router);
    let mut status_at = tokio::time::Instant::now();
    let result = loop {
        if connected && routes.has_work() {
            if let Err(e) = routes.send(&client) {
                break Err(e);
            }
            if routes.pending() == 0 || status_at.elapsed() >= Duration::from_millis(500) {
                status.set_route_sync(&routes);
                status_at = tokio::time::Instant::now();
            }
        }
        status.set_inflight(pending.len());
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            _ = &mut routes_changed => {
                routes_changed.set(broker.routes_changed.notified());
                routes_changed.as_mut().enable();
                routes.follow(&broker.router);
            }
            _ = sleep_until_some(routes.retry_at()) => {
                routes.retry();
            }
            _ = leadership_changed(&mut leadership) => {
                if !is_leader(broker) {
                    tracing::info!("link: no longer the leader; handing the link over");
                    break Ok(());
                }
            }
            done = front_done(&mut pending), if !pending.is_empty() => {
                let Some(f) = pending.pop_front() else { continue };
                match done {
                    Ok(true) => {
                        if !f.skip {
                            status.duplicates.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(pkid = f.p.pkid, topic = %String::from_utf8_lossy(&f.p.topic), "link: a redelivery already applied here (acknowledged again)");
                        }
                    }
                    Ok(false) => {
                        status.published.fetch_add(1, Ordering::Relaxed);
                        if let Some(c) = broker.run_deferred(f.deferred) {
                            c.wait(broker, Duration::from_millis(500)).await;
                        }
                    }
                    // Not acknowledged: the remote redelivers it (and what follows) on the
                    // next link connection, where the dedup record sorts out what was applied.
                    Err(e) => break Err(format!("commit here failed: {e}")),
                }
                if let Err(e) = client.try_ack(&f.p) {
                    break Err(format!("ack: {e}"));
                }
            }
            ev = events.recv() => match ev.unwrap_or_else(|| Err("event loop ended".into())) {
                Ok(Event::Incoming(RPacket::ConnAck(a))) => {
                    connected = true;
                    status.connects.fetch_add(1, Ordering::Relaxed);
                    // The remote lists the routes it holds for us: the bootstrap is the
                    // difference to what we want.
                    let held: BTreeSet<String> = a
                        .properties
                        .iter()
                        .flat_map(|p| p.user_properties.iter())
                        .filter(|(k, _)| k == LINK_ROUTE_PROPERTY)
                        .map(|(_, v)| v.clone())
                        .collect();
                    if a.properties.iter().flat_map(|p| p.user_properties.iter()).any(|(k, _)| k == LINK_ROUTES_CUT_PROPERTY) {
                        tracing::warn!("link: the remote's route list did not fit its CONNACK: routes removed here while the link was down may stay there");
                    }
                    routes.connected(held, a.properties.as_ref().and_then(|p| p.max_packet_size));
                    if !a.session_present {
                        // A new session there: its sequence numbers start over.
                        reset_seen(link, broker);
                    }
                    // What the remote holds is what the status shows until the next sync
                    // (a sync that finds nothing to change does not touch it).
                    status.set_route_sync(&routes);
                    tracing::info!(server = %addr, session_present = a.session_present, routes = routes.held().len(), "link: connected");
                    status.set("connected", Some(addr.clone()), None);
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Subscribe(pkid))) => routes.subscribe_sent(pkid),
                Ok(Event::Outgoing(rumqttc::Outgoing::Unsubscribe(pkid))) => routes.unsubscribe_sent(pkid),
                Ok(Event::Incoming(RPacket::SubAck(a))) => {
                    let why = a.properties.as_ref().and_then(|p| p.reason_string.as_deref());
                    routes.suback(a.pkid, &a.return_codes, why);
                    if routes.pending() == 0 || status_at.elapsed() >= Duration::from_millis(500) {
                        status.set_route_sync(&routes);
                        status_at = tokio::time::Instant::now();
                    }
                }
                Ok(Event::Incoming(RPacket::UnsubAck(a))) => {
                    routes.unsuback(a.pkid, &a.reasons);
                    if routes.pending() == 0 || status_at.elapsed() >= Duration::from_millis(500) {
                        status.set_route_sync(&routes);
                        status_at = tokio::time::Instant::now();
                    }
                }
                Ok(Event::Incoming(RPacket::Publish(p))) => {
                    pending.push_back(on_publish(link, ctx, status, p));
                }
                Ok(Event::Incoming(RPacket::Disconnect(d))) => {
                    break Err(format!("disconnected by the remote: {:?}", d.reason_code));
                }
                Ok(_) => {}
                Err(e) => break Err(e),
            },
        }
    };
    let _ = client.try_disconnect();
    // The poller sends the DISCONNECT, then finds the channel closed and ends.
    drop(events);
    if tokio::time::timeout(Duration::from_millis(500), &mut poller).await.is_err() {
        poller.abort();
    }
    // Messages whose commit went through are delivered here even though their acknowledgement
    // can no longer be sent (the redelivery will be a duplicate).
    // (Without a cluster a message is accepted when it arrives: its sequence number is
    // recorded then, so it is delivered even though the link is stopping.)
    for f in pending {
        let ok = match f.wait {
            None => !f.skip,
            Some(_) if cancel.is_cancelled() => false,
            Some(rx) => matches!(rx.await, Ok(Ok(rs)) if !rs.iter().any(|r| matches!(r.outcome, Outcome::Duplicate))),
        };
        if ok {
            broker.run_deferred(f.deferred);
        }
    }
    status.set_inflight(0);
    result.map_err(|e| (e, connected))
}

fn reset_seen(link: &LinkConfig, broker: &Broker) {
    match broker.cluster() {
        Some(c) => {
            // Queued ahead of every message of this connection.
            c.commit_detached(vec![Command::LinkReset { link: link.name.clone() }]);
        }
        None => broker.links.seen_reset(&link.name),
    }
}

/// Take in one message from the remote: publish it here (its deliveries held back until its
/// commit) and queue it for acknowledgement in arrival order.
fn on_publish(link: &LinkConfig, ctx: &Ctx, status: &Arc<LinkStatus>, p: RPublish) -> Inbound {
    let broker = &ctx.broker;
    status.received.fetch_add(1, Ordering::Relaxed);
    let skip = |p: RPublish| Inbound { p, wait: None, deferred: Vec::new(), skip: true };
    let topic_name = String::from_utf8_lossy(&p.topic).to_string();
    let wanted = topic::valid_topic_name(&topic_name) && link.topics.iter().any(|t| topic::matches(t, &topic_name));
    if !wanted {
        status.dropped.fetch_add(1, Ordering::Relaxed);
        return skip(p);
    }
    let mut qos = match p.qos {
        RQoS::AtMostOnce => QoS::AtMostOnce,
        RQoS::AtLeastOnce => QoS::AtLeastOnce,
        RQoS::ExactlyOnce => QoS::ExactlyOnce,
    };
    let mut properties = Properties::default();
    let mut expires_at_ms = None;
    let mut seq = None;
    if let Some(pp) = &p.properties {
        properties.payload_format_indicator = pp.payload_format_indicator;
        properties.content_type = pp.content_type.clone();
        properties.response_topic = pp.response_topic.clone();
        properties.correlation_data = pp.correlation_data.clone();
        for (k, v) in &pp.user_properties {
            match k.as_str() {
                LINK_SEQ_PROPERTY => seq = v.parse::<u64>().ok(),
                LINK_QOS_PROPERTY => {
                    // The publisher's QoS, within what this cluster allows.
                    if let Some(q) = v.parse::<u8>().ok().filter(|q| *q <= ctx.broker.mqtt.max_qos_allowed) {
                        qos = QoS::from_u8(q).unwrap_or(qos);
                    }
                }
                _ => properties.user_properties.push((k.clone(), v.clone())),
            }
        }
        expires_at_ms = pp.message_expiry_interval.map(|s| now_ms() + u64::from(s) * 1000);
    }
    if qos == QoS::ExactlyOnce && seq.is_none() {
        // Without the remote's sequence number a redelivery cannot be told apart: at least
        // once, so not delivered as QoS 2.
        qos = QoS::AtLeastOnce;
    }
    let cluster = broker.cluster();
    if cluster.is_none() {
        if let Some(s) = seq {
            if !broker.links.seen_insert(&link.name, s) {
                status.duplicates.fetch_add(1, Ordering::Relaxed);
                return skip(p);
            }
        }
    }
    let msg = Message {
        topic: topic_name.as_str().into(),
        payload: p.payload.clone(),
        qos,
        retain: false,
        properties,
        publisher: format!("{LINK_PUBLISHER}{}", link.name).into(),
        expires_at_ms,
    };
    let msg = Arc::new(msg);
    let (published, deferred) = broker.publish_deferred(msg.clone());
    match (cluster, seq) {
        (None, _) => Inbound { p, wait: None, deferred, skip: false },
        // Everything through Raft, in one entry applied once per sequence number: durable
        // deliveries (Enqueue), the others (Deliver, made by each owner node on apply).
        // Proposed now, in arrival order (the remote's publisher order).
        (Some(c), Some(seq)) => {
            let mut cmds = published.commands;
            if cmds.is_empty() && deferred.is_empty() {
                // Routes exist only for filters wanted here: worth a line when it happens.
                tracing::info!(seq, topic = %msg.topic, "link: a message matched no subscriber here");
            }
            let targets: Vec<_> = deferred.into_iter().map(Deferred::into_target).collect();
            if !targets.is_empty() {
                cmds.push(Command::Deliver { msg: (*msg).clone(), targets });
            }
            let wait = Some(c.commit(vec![Command::FromLink { link: link.name.clone(), seq, cmds }]));
            Inbound { p, wait, deferred: Vec::new(), skip: false }
        }
        (Some(c), None) => {
            let wait = (!published.commands.is_empty()).then(|| c.commit(published.commands));
            Inbound { p, wait, deferred, skip: false }
        }
    }
}

/// The rustls client configuration of a TLS link (`links[].ssl`): trust anchors from
/// `cacertfile` (else the system's roots), a client certificate when `certfile`/`keyfile` are
/// set, and no server verification with `verify = verify_none`. Errors name the file.
pub fn tls_client_config(link: &LinkConfig) -> Result<tokio_rustls::rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let ssl = &link.ssl;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if ssl.verify_peer {
        let mut roots = rustls::RootCertStore::empty();
        match &ssl.cacertfile {
            Some(ca) => {
                let certs = CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
                for c in certs {
                    let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
                    roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!("{}: no certificate found", ca.display()));
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                for c in native.certs {
                    let _ = roots.add(c);
                }
                if roots.is_empty() {
                    return Err("no system root certificates found: set ssl.cacertfile".into());
                }
            }
        }
        builder.with_root_certificates(roots)
    } else {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    };
    match (&ssl.certfile, &ssl.keyfile) {
        (Some(cert), Some(key)) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("{}: {e}", cert.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: {e}", cert.display()))?;
            let k = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
            builder.with_client_auth_cert(certs, k).map_err(|e| format!("{}: {e}", key.display()))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// `verify = verify_none`: accepts any server certificate (signatures still checked).
#[derive(Debug)]
struct NoVerify(Arc<tokio_rustls::rustls::crypto::CryptoProvider>);

impl tokio_rustls::rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<tokio_rustls::rustls::client::danger::ServerCertVerified, tokio_rustls::rustls::Error> {
        Ok(tokio_rustls::rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<tokio_rustls::rustls::client::danger::HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        tokio_rustls::rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<tokio_rustls::rustls::client::danger::HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        tokio_rustls::rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<tokio_rustls::rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
