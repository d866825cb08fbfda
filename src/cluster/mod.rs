//! One broker across N nodes: the node's membership in its regional cluster.
//!
//! - `state.rs`: the replicated state (membership, session registry with subscriptions and
//!   durable queues, retained messages) and its `Command`s, on `strait-raft`.
//! - Every node keeps a full view of the registry in its broker: sessions owned here are served
//!   by local connections; sessions owned elsewhere are stubs whose subscriptions sit in the
//!   local router, so a PUBLISH on any node matches every subscriber of the cluster exactly as on
//!   one node (QoS, retain flags, subscription ids, no-local; a shared group picks one member of
//!   the whole cluster).
//! - Delivery: to a session owned by another node over the data plane (one gRPC stream per peer,
//!   batched, in publisher order); QoS>=1 to a persistent session through Raft (`Enqueue`,
//!   committed before the publisher's ack; the owner delivers on apply; the client's ack is
//!   committed as `Ack`), so an acknowledged message is never only in one node's memory.
//! - The leader expires sessions and, when a node stays unreachable, marks its sessions
//!   disconnected and publishes their wills.

mod duties;
pub mod metrics;
mod replica;
mod seen;
pub mod state;
pub mod view;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use strait_raft::net::peer::{self, PeerHandler, PeerSender};
use strait_raft::net::Identity;
pub use strait_raft::Leadership;
use strait_raft::{Faults, ProposeError, RaftConfig, RaftNode, ServerState};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::broker::control::CommitError;
use crate::broker::message::{now_ms, Delivery};
use crate::broker::Broker;
use crate::config::{node_id, Config, Seed};

use duties::{announce, leader_duties, shed_links_without_lease};
pub use state::{ClusterState, Command, NodeInfo, Outcome, Response, SessionMeta, Target};
pub use view::LinksListener;

type ProposalFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, ProposeError>> + Send + 'static>>;

/// Deliveries queued per peer; past half, publishers wait (a deeper queue only adds latency).
const PEER_QUEUE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster.static.seeds: {0}")]
    Seeds(String),
    #[error("cluster.raft.bind: cannot bind {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Raft(#[from] strait_raft::StartError),
}

/// Counters for /metrics.
#[derive(Default)]
pub struct ClusterMetrics {
    pub proposals: AtomicU64,
    pub proposal_failures: AtomicU64,
    pub commit_latency_us_sum: AtomicU64,
    pub leader_changes: AtomicU64,
    pub forwarded: AtomicU64,
    pub forward_dropped: AtomicU64,
    pub received: AtomicU64,
    pub enqueued: AtomicU64,
    pub acks: AtomicU64,
}

pub struct Cluster {
    pub id: u64,
    pub node_name: String,
    pub cluster_name: String,
    pub raft: RaftNode<ClusterState>,
    view: watch::Receiver<u64>,
    peers: Mutex<HashMap<u64, Arc<PeerSender>>>,
    acks: mpsc::UnboundedSender<(Arc<str>, u64)>,
    pub commit_timeout: Duration,
    node_down_after: Duration,
    me: Identity,
    faults: Arc<Faults>,
    broker: Arc<Broker>,
    pub metrics: ClusterMetrics,
    /// Set once this node has re-registered after its start (see `announce`).
    ready: std::sync::atomic::AtomicBool,
    /// This cluster itself (for what outlives a call: a publisher's wait on a queue).
    this: Weak<Cluster>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// The data plane's receiving side: deliveries for sessions owned here.
struct Receiver {
    broker: Weak<Broker>,
}

impl PeerHandler for Receiver {
    fn on_item(&self, from: u64, item: Bytes) -> Option<peer::Wait> {
        let broker = self.broker.upgrade()?;
        match bincode::serde::decode_from_slice::<(String, Delivery), _>(&item, bincode::config::standard()) {
            Ok(((client_id, d), _)) => {
                // A subscriber past half its queue: stop reading this peer until it drains
                // (the sending node's publishers then slow down, as on one node).
                let slow = broker.deliver_forwarded(&client_id, d)?;
                Some(Box::pin(async move { broker.wait_drained(&slow, Duration::from_millis(500)).await }))
            }
            Err(e) => {
                tracing::warn!(from, "undecodable data-plane item: {e}");
                None
            }
        }
    }
}

/// `cluster.raft.ssl` as the Raft crate takes it.
fn raft_tls(t: Option<&crate::config::TlsFiles>) -> Option<strait_raft::TlsFiles> {
    t.map(|t| strait_raft::TlsFiles { cert: t.cert.clone(), key: t.key.clone(), ca: t.ca.clone() })
}

/// This node's seed list as Raft ids and addresses, and its own advertised address.
pub fn seeds(cfg: &Config) -> Result<(BTreeMap<u64, String>, String), ClusterError> {
    let mut map = BTreeMap::new();
    for s in &cfg.cluster.seeds {
        let seed = Seed::parse(s).map_err(ClusterError::Seeds)?;
        map.insert(node_id(&seed.name), seed.raft_addr);
    }
    let me = node_id(&cfg.node.name);
    let advertise = match map.get(&me) {
        Some(a) => a.clone(),
        None => {
            let host = cfg.node.name.split_once('@').map(|(_, h)| h).unwrap_or("127.0.0.1");
            format!("{host}:{}", cfg.cluster.raft.bind.port())
        }
    };
    Ok((map, advertise))
}

impl Cluster {
    /// Join (or bootstrap) the cluster and start serving the node's part of it.
    pub async fn start(
        cfg: &Config,
        broker: Arc<Broker>,
        mqtt: Vec<String>,
        api: Option<String>,
        links: LinksListener,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let id = node_id(&cfg.node.name);
        let (seed_map, advertise) = seeds(cfg)?;
        let t = &cfg.cluster.raft;
        let rcfg = RaftConfig {
            id,
            cluster: cfg.cluster.name.clone(),
            advertise: advertise.clone(),
            seeds: seed_map,
            heartbeat: t.heartbeat_interval,
            election_min: t.election_timeout,
            // openraft's followers refuse a (pre-)vote until `election_max` after they last
            // heard from the leader, and a refused round waits a whole new timeout: a failover
            // takes about two timeouts. 1.5 x keeps that under a second with the shipped 300 ms
            // (it was up to 2 x 600 with max = 2 x min). 1.2 x was faster still, but a loaded
            // 2-core CI machine then saw elections from heartbeats delayed by ~400 ms.
            election_max: (t.election_timeout * 3 / 2).max(t.election_timeout + Duration::from_millis(1)),
            snapshot_every: t.snapshot_every,
            keep_after_snapshot: 1_000,
            propose_timeout: t.commit_timeout,
            secret: t.secret.as_ref().map(|s| strait_raft::Secret(s.0.clone())),
            tls: raft_tls(t.tls.as_ref()),
            ..Default::default()
        };
        let listener = tokio::net::TcpListener::bind(t.bind)
            .await
            .map_err(|source| ClusterError::Bind { addr: t.bind, source })?;
        let me = Identity::new(&cfg.cluster.name, id, t.secret.as_ref().map(|s| s.0.as_str()))
            .with_tls(raft_tls(t.tls.as_ref()));
        let faults = Arc::new(Faults::default());
        let routes = peer::routes(me.clone(), Arc::new(Receiver { broker: Arc::downgrade(&broker) }), faults.clone());
        let (etx, erx) = mpsc::unbounded_channel();
        let raft_dir = cfg.node.data_dir.join("raft");
        let info = NodeInfo { id, name: cfg.node.name.clone(), raft: advertise, mqtt, api };
        let registration = Some(Command::Join(info.clone()));
        let raft =
            RaftNode::start_with(rcfg, &raft_dir, listener, Some(routes), Some(etx), faults.clone(), registration)
                .await?;
        let (view_tx, view_rx) = watch::channel(0u64);
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let cluster = Arc::new_cyclic(|this| Cluster {
            id,
            node_name: cfg.node.name.clone(),
            cluster_name: cfg.cluster.name.clone(),
            raft,
            view: view_rx,
            peers: Mutex::new(HashMap::new()),
            acks: ack_tx,
            commit_timeout: t.commit_timeout,
            node_down_after: t.node_down_after,
            me,
            faults,
            broker: broker.clone(),
            metrics: ClusterMetrics::default(),
            ready: std::sync::atomic::AtomicBool::new(false),
            this: this.clone(),
            cancel: cancel.clone(),
            tracker: tracker.clone(),
        });
        let weak: Weak<dyn crate::broker::Replica> = Arc::downgrade(&cluster) as Weak<dyn crate::broker::Replica>;
        broker.set_replica(weak);
        let span = tracing::info_span!("cluster", node = %cfg.node.name);
        tracker.spawn(applier(broker.clone(), id, erx, view_tx, links, cancel.clone()).instrument(span.clone()));
        tracker.spawn(ack_batcher(cluster.clone(), ack_rx).instrument(span.clone()));
        tracker.spawn(announce(cluster.clone(), info).instrument(span.clone()));
        tracker.spawn(leader_duties(cluster.clone()).instrument(span.clone()));
        // A node that finds its store lost (the cluster still counts it) must not serve at all:
        // it says why and exits 2, like a bad config.
        let (failed, stop) = (cluster.raft.clone(), cancel.clone());
        let store = raft_dir.display().to_string();
        tracker.spawn(async move {
            tokio::select! {
                e = failed.failed() => {
                    // (Raft stopped on a storage error: the store is as last flushed; the
                    // other members go on without this node.)
                    if e.contains("os error 28") {
                        eprintln!("strait: {e}\nstrait: the disk of {store} is full: free space there and start the node again (it catches up from the others)");
                    } else {
                        eprintln!("strait: {e}");
                    }
                    std::process::exit(2);
                }
                _ = stop.cancelled() => {}
            }
        });
        tracker.spawn(shed_links_without_lease(cluster.clone()).instrument(span));
        tracing::info!(node = %cfg.node.name, id, cluster = %cfg.cluster.name, "cluster.started");
        Ok(cluster)
    }

    /// How far this node's view has applied the log (changes whenever a batch is applied).
    pub fn view(&self) -> watch::Receiver<u64> {
        self.view.clone()
    }

    pub fn leadership(&self) -> Leadership {
        self.raft.leadership().borrow().clone()
    }

    /// Whether this node can act for the cluster: it leads with a valid lease or follows a
    /// leader it heard from within the lease.
    pub fn available(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.raft.leadership().borrow().lease
    }

    /// Whether this node has registered itself after its start (its view is being kept).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// Commit `cmds` (concurrently; each is its own proposal, batched by Raft) and wait until
    /// this node's view has applied them. Resolves on the returned receiver.
    pub fn commit(self: &Arc<Self>, cmds: Vec<Command>) -> oneshot::Receiver<Result<Vec<Response>, CommitError>> {
        let (tx, rx) = oneshot::channel();
        let me = self.clone();
        // Queued now, in the caller's order: one connection's commits apply in the order of its
        // packets (an UNSUBSCRIBE then SUBSCRIBE, or pipelined QoS 1 publishes, never swap).
        let pending = self.propose_all(cmds);
        self.tracker.spawn(async move {
            let _ = tx.send(me.finish(pending).await);
        });
        rx
    }

    pub async fn commit_wait(&self, cmds: Vec<Command>) -> Result<Vec<Response>, CommitError> {
        let pending = self.propose_all(cmds);
        self.finish(pending).await
    }

    fn propose_all(&self, cmds: Vec<Command>) -> (Instant, Vec<ProposalFuture>) {
        self.metrics.proposals.fetch_add(cmds.len() as u64, Ordering::Relaxed);
        (Instant::now(), cmds.into_iter().map(|c| Box::pin(self.raft.propose_ordered(c)) as ProposalFuture).collect())
    }

    async fn finish(&self, (start, pending): (Instant, Vec<ProposalFuture>)) -> Result<Vec<Response>, CommitError> {
        let results = futures_util::future::join_all(pending).await;
        let mut out = Vec::with_capacity(results.len());
        for r in results {
            match r {
                Ok(resp) => out.push(resp),
                Err(e) => {
                    self.metrics.proposal_failures.fetch_add(1, Ordering::Relaxed);
                    return Err(CommitError::Unavailable(describe(&e)));
                }
            }
        }
        let view = out.iter().map(|r| r.view).max().unwrap_or(0);
        self.wait_view(view).await?;
        self.metrics.commit_latency_us_sum.fetch_add(start.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(out)
    }

    /// Commit without waiting for the outcome (logged on failure).
    pub fn commit_detached(self: &Arc<Self>, cmds: Vec<Command>) {
        let me = self.clone();
        // Proposed now, in call order; only the wait runs in the background.
        let pending = self.propose_all(cmds);
        self.tracker.spawn(async move {
            if let Err(e) = me.finish(pending).await {
                tracing::warn!("cluster: background commit failed: {e}");
            }
        });
    }

    async fn wait_view(&self, view: u64) -> Result<(), CommitError> {
        let mut rx = self.view.clone();
        let r = tokio::time::timeout(self.commit_timeout, rx.wait_for(|v| *v >= view)).await;
        match r {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(CommitError::ShuttingDown),
            Err(_) => Err(CommitError::Lagging { view, within: self.commit_timeout }),
        }
    }

    /// Send a delivery for `client_id` to its owner node over the data plane (best effort).
    /// Returns the peer's sender when its queue is past half full: the publisher should wait.
    pub fn forward(&self, owner: u64, client_id: &str, d: &Delivery) -> Option<Arc<PeerSender>> {
        let item = match bincode::serde::encode_to_vec((client_id, d), bincode::config::standard()) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::warn!("data plane: cannot encode a delivery: {e}");
                return None;
            }
        };
        let Some(sender) = self.peer(owner) else {
            self.metrics.forward_dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        if sender.send(item) {
            self.metrics.forwarded.fetch_add(1, Ordering::Relaxed);
        } else {
            self.metrics.forward_dropped.fetch_add(1, Ordering::Relaxed);
        }
        sender.congested().then_some(sender)
    }

    fn peer(&self, node: u64) -> Option<Arc<PeerSender>> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = peers.get(&node) {
            return Some(p.clone());
        }
        let addr = self.raft.members().get(&node).cloned()?;
        let p = peer::spawn_sender(
            self.me.clone(),
            node,
            addr,
            self.faults.clone(),
            PEER_QUEUE,
            self.cancel.clone(),
            &self.tracker,
        );
        peers.insert(node, p.clone());
        Some(p)
    }

    /// The client completed a durable delivery: committed in batches.
    pub fn ack(&self, client_id: &Arc<str>, seq: u64) {
        let _ = self.acks.send((client_id.clone(), seq));
    }

    /// The replicated state, read locally.
    pub async fn read<T>(&self, f: impl FnOnce(&state::Snapshot) -> T) -> T {
        self.raft.read(|s| f(&s.s)).await
    }
}

fn describe(e: &ProposeError) -> String {
    match e {
        ProposeError::Unavailable(d) => format!("cluster unavailable: no leader reachable within {d:?}"),
        other => other.to_string(),
    }
}

/// Applies committed changes to the broker's view, in order, and publishes how far it got.
async fn applier(
    broker: Arc<Broker>,
    me: u64,
    mut rx: mpsc::UnboundedReceiver<(u64, Vec<state::Change>)>,
    view: watch::Sender<u64>,
    links: LinksListener,
    cancel: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => break,
            m = rx.recv() => m,
        };
        let Some((v, changes)) = next else { break };
        view::apply(&broker, me, changes, &links);
        view.send_if_modified(|cur| {
            if v > *cur || v == 0 {
                *cur = v;
                true
            } else {
                // A snapshot restore can move the view back to the snapshot's; take it.
                let moved = *cur != v;
                *cur = v;
                moved
            }
        });
    }
}

/// Collects client acknowledgements of durable deliveries into `Ack` commands.
async fn ack_batcher(cluster: Arc<Cluster>, mut rx: mpsc::UnboundedReceiver<(Arc<str>, u64)>) {
    loop {
        let first = tokio::select! {
            _ = cluster.cancel.cancelled() => break,
            m = rx.recv() => match m { Some(m) => m, None => break },
        };
        let mut by_client: BTreeMap<Arc<str>, Vec<u64>> = BTreeMap::new();
        by_client.entry(first.0).or_default().push(first.1);
        // A short linger gathers the acks of a burst into few commands.
        let until = tokio::time::Instant::now() + Duration::from_millis(5);
        while let Ok(Some((c, s))) = tokio::time::timeout_at(until, rx.recv()).await {
            by_client.entry(c).or_default().push(s);
        }
        let n: usize = by_client.values().map(Vec::len).sum();
        cluster.metrics.acks.fetch_add(n as u64, Ordering::Relaxed);
        let cmds: Vec<Command> =
            by_client.into_iter().map(|(c, seqs)| Command::Ack { client_id: c.to_string(), seqs }).collect();
        cluster.commit_detached(cmds);
    }
}
