//! [`RaftNode`]: one member of a Raft group, as the application sees it.
//!
//! - `propose(cmd)`: concurrent proposals are batched into one log entry (group commit: while
//!   [`RaftConfig::max_in_flight`] entries are being committed, new proposals wait and go
//!   together in the next one), in the order they were made. Each proposal has a request id; a proposal retried after a lost
//!   answer is applied once (`dedup`). A proposal made on a follower is forwarded to the leader
//!   over gRPC and answered from there; leader changes are retried until `propose_timeout`.
//! - `read(f)`: the locally applied state.
//! - `leadership()`: a watch of [`Leadership`]. On the leader, `lease` is true while a quorum
//!   acknowledged a heartbeat sent less than `lease` ago (election timeout minus one heartbeat,
//!   so a leader cut off by a partition knows it before a new leader can be elected); on a
//!   follower, while it heard from a leader that recently.
//! - Membership: bootstrap from the static seed list (every seed node initializes with the same
//!   membership when its store is pristine: idempotent across restarts and start orders), add a
//!   learner, promote, remove; forwarded to the leader from any node.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::{BasicNode, Instant as _, RaftMetrics, ServerState, SnapshotPolicy};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::dedup::{Applied, Proposal, RequestId};
use crate::net::{self, AdminRequest, Faults, Identity, Network, ProbeReply, RaftHandle, WriteResult};
use crate::store::{self, StateMachineStore};
use crate::{decode, decode_raft, encode, encode_raft, Request, StateMachine, TypeConfig};

type C = TypeConfig;

mod forwarder;
mod join;
mod pipeline;
mod tasks;
use pipeline::*;
use tasks::*;

/// Timing and identity of one node.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// This node's id (unique in the cluster, never reused).
    pub id: u64,
    /// The cluster's name: RPCs from nodes of another cluster are refused.
    pub cluster: String,
    /// The address peers reach this node's gRPC server at (`host:port`).
    pub advertise: String,
    /// The static seed voters (id → address). A seed node with a pristine store initializes
    /// the cluster with exactly this membership; a node not in the list waits to be added.
    pub seeds: BTreeMap<u64, String>,
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    /// Build a snapshot after this many applied entries (the log before it is purged).
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot (a follower lagging less catches up by log).
    pub keep_after_snapshot: u64,
    /// How long `propose` and membership calls look for a leader before giving up.
    pub propose_timeout: Duration,
    /// Proposals per entry at most.
    pub max_batch: usize,
    /// Entries this node has being committed at once when it leads (the rest wait and batch;
    /// a follower forwards one at a time). Order is kept either way: entries enter the log in
    /// the order their proposals were made (`node::pipeline`).
    pub max_in_flight: usize,
    /// The cluster's shared secret: every RPC proves it, and one that does not is refused
    /// before anything else is looked at. None: unauthenticated (tests, loopback only).
    pub secret: Option<Secret>,
    /// Node-to-node TLS, mutual (Raft and the data plane); None: plain HTTP/2.
    pub tls: Option<net::TlsFiles>,
}

/// A secret that never shows in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            id: 1,
            cluster: "strait".into(),
            advertise: "127.0.0.1:7101".into(),
            seeds: BTreeMap::new(),
            heartbeat: Duration::from_millis(50),
            election_min: Duration::from_millis(150),
            election_max: Duration::from_millis(300),
            snapshot_every: 10_000,
            keep_after_snapshot: 1_000,
            propose_timeout: Duration::from_secs(5),
            max_batch: 1024,
            max_in_flight: 4,
            secret: None,
            tls: None,
        }
    }
}

impl RaftConfig {
    /// The lease a leader keeps after a quorum acknowledged it (see the module doc).
    pub fn lease(&self) -> Duration {
        self.election_min.saturating_sub(self.heartbeat).max(self.heartbeat)
    }

    fn openraft(&self) -> Result<openraft::Config, StartError> {
        let election_min = self.election_min.as_millis() as u64;
        let cfg = openraft::Config {
            cluster_name: self.cluster.clone(),
            // openraft checks its timers every `heartbeat_interval * 13 / 64` (20 ms for our
            // 100 ms heartbeat: 50 wake-ups a second on every idle node, most of its idle CPU).
            // Heartbeats are sent by `heartbeats` at `self.heartbeat` instead, and openraft's
            // interval is stretched to 7/8 of the election timeout: its tick becomes ~50 ms
            // (an election starts at most one tick after its timeout), and it is also the
            // deadline of a replication RPC (more lenient than one heartbeat interval).
            heartbeat_interval: (election_min * 7 / 8).max(self.heartbeat.as_millis() as u64).min(election_min - 1),
            election_timeout_min: self.election_min.as_millis() as u64,
            election_timeout_max: self.election_max.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every.max(1)),
            max_in_snapshot_log_to_keep: self.keep_after_snapshot,
            install_snapshot_timeout: 10_000,
            enable_pre_vote: Some(true),
            // Replicate an entry while the leader is still flushing it (the leader and
            // follower fsyncs overlap instead of adding up).
            broadcast_submitted_on_append: Some(true),
            ..Default::default()
        };
        cfg.validate().map_err(|e| StartError::Config(e.to_string()))
    }
}

/// Who leads, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    pub leader: Option<u64>,
    pub term: u64,
    pub state: ServerState,
    /// Leader: a quorum acknowledged it within the lease. Follower: it heard from the leader
    /// within the lease. A node without a lease must not act on behalf of the cluster.
    pub lease: bool,
}

impl Leadership {
    /// Leads, with or without a lease.
    pub fn is_leader(&self) -> bool {
        self.state == ServerState::Leader
    }

    pub fn is_leader_with_lease(&self) -> bool {
        self.state == ServerState::Leader && self.lease
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("raft config: {0}")]
    Config(String),
    #[error("raft storage at {dir}: {source}")]
    Storage { dir: String, source: std::io::Error },
    #[error("raft: {0}")]
    Raft(String),
    #[error(
        "this node's store is empty, but the cluster (node {peer}: term {term}, last log index {last:?}) still \
         counts this node (id {id}) as a member: its data was lost or is not where it was. Restore the data \
         directory, or rejoin as a new member: remove this node on a running one (DELETE \
         /api/v5/cluster/nodes/<name>), start it again (it waits to be added), then add it (POST \
         /api/v5/cluster/nodes)"
    )]
    Amnesia { id: u64, peer: u64, term: u64, last: Option<u64> },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    #[error("no leader reachable within {0:?}")]
    Unavailable(Duration),
    #[error("this raft node is shut down")]
    Shutdown,
    #[error("cannot encode the proposal: {0}")]
    Encode(String),
    #[error("raft: {0}")]
    Fatal(String),
    #[error("membership change refused: {0}")]
    Membership(String),
    #[error("applied long ago; its response was pruned")]
    Expired,
}

struct Pending<S: StateMachine> {
    prop: Proposal<S::Command>,
    at: Instant,
    tx: oneshot::Sender<Result<S::Response, ProposeError>>,
}

enum Call {
    Write(Bytes),
    Admin(AdminRequest),
}

struct Inner<S: StateMachine> {
    cfg: RaftConfig,
    raft: RaftHandle<S>,
    sm: StateMachineStore<S>,
    me: Identity,
    faults: Arc<Faults>,
    leadership: watch::Receiver<Leadership>,
    proposals: mpsc::Sender<Pending<S>>,
    origin: u64,
    seq: AtomicU64,
    peers: Mutex<HashMap<u64, (String, net::pb::raft_client::RaftClient<tonic::transport::Channel>)>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    /// Why this node stopped for good (a store that lost its data), once it did.
    fatal: watch::Sender<Option<String>>,
    /// What a pristine member commits before it takes Raft traffic (`join_or_bootstrap`).
    registration: Option<S::Command>,
}

/// A running Raft member. Cheap to clone; `shutdown` stops it.
pub struct RaftNode<S: StateMachine> {
    inner: Arc<Inner<S>>,
}

impl<S: StateMachine> Clone for RaftNode<S> {
    fn clone(&self) -> Self {
        RaftNode { inner: self.inner.clone() }
    }
}

impl<S: StateMachine> RaftNode<S> {
    /// Open the store in `dir`, serve gRPC on `listener` (plus the application's `extra`
    /// services), join or bootstrap the cluster.
    pub async fn start(
        cfg: RaftConfig,
        dir: &Path,
        listener: tokio::net::TcpListener,
        extra: Option<tonic::service::Routes>,
    ) -> Result<RaftNode<S>, StartError> {
        Self::start_with(cfg, dir, listener, extra, None, Arc::new(Faults::default()), None).await
    }

    /// `start` with a sink for the state machine's events (what each applied batch changed,
    /// in apply order, restores included), a shared fault injector, and the command that
    /// registers this node (it records in the state that the node ran as a member; see
    /// `StateMachine::registered`): a member whose store is new commits it before it takes any
    /// Raft traffic.
    pub async fn start_with(
        cfg: RaftConfig,
        dir: &Path,
        listener: tokio::net::TcpListener,
        extra: Option<tonic::service::Routes>,
        events: Option<mpsc::UnboundedSender<S::Event>>,
        faults: Arc<Faults>,
        registration: Option<S::Command>,
    ) -> Result<RaftNode<S>, StartError> {
        let span = tracing::info_span!("raft", node = cfg.id);
        let ocfg = Arc::new(cfg.openraft()?);
        let (log, sm) = store::open_with::<S>(dir, events)
            .map_err(|source| StartError::Storage { dir: dir.display().to_string(), source })?;
        let me =
            Identity::new(&cfg.cluster, cfg.id, cfg.secret.as_ref().map(|s| s.0.as_str())).with_tls(cfg.tls.clone());
        let network = Network { me: me.clone(), faults: faults.clone(), connect_timeout: cfg.election_min };
        let raft = openraft::Raft::new(cfg.id, ocfg, network, log, sm.clone())
            .instrument(span.clone())
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;

        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let initialized = raft.is_initialized().await.map_err(|e| StartError::Raft(e.to_string()))?;
        // A pristine store takes no Raft traffic (appends, votes, snapshots) until it is known
        // not to be a member that lost its data (`join_or_bootstrap`): fed by the leader first,
        // it would look like a member that holds the log.
        let open = Arc::new(std::sync::atomic::AtomicBool::new(initialized));

        // gRPC server.
        let svc = net::RaftServer::new(net::Service {
            raft: raft.clone(),
            sm: sm.clone(),
            me: me.clone(),
            faults: faults.clone(),
            open: open.clone(),
        })
        .max_decoding_message_size(net::MAX_MESSAGE)
        .max_encoding_message_size(net::MAX_MESSAGE);
        let routes = extra.unwrap_or_default().add_service(svc);
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let stop = cancel.clone();
        let mut server = tonic::transport::Server::builder();
        if let Some(t) = &cfg.tls {
            server = server.tls_config(t.server()).map_err(|e| StartError::Config(format!("raft TLS: {e}")))?;
        }
        tracker.spawn(
            async move {
                let r = server.add_routes(routes).serve_with_incoming_shutdown(incoming, stop.cancelled()).await;
                if let Err(e) = r {
                    tracing::error!("raft gRPC server stopped: {e}");
                }
            }
            .instrument(span.clone()),
        );

        // Leadership watch.
        let initial = Leadership { leader: None, term: 0, state: ServerState::Learner, lease: false };
        let (ltx, lrx) = watch::channel(initial);
        // Set once this node stops for good on its own (`failed`).
        let fatal = watch::channel(None).0;
        tracker.spawn(
            watch_leadership(raft.clone(), cfg.clone(), ltx, fatal.clone(), cancel.clone()).instrument(span.clone()),
        );
        raft.runtime_config().heartbeat(false);
        tracker.spawn(heartbeats(raft.clone(), cfg.heartbeat, lrx.clone(), cancel.clone()).instrument(span.clone()));

        let (ptx, prx) = mpsc::channel(cfg.max_batch * 16);
        let inner = Arc::new(Inner {
            cfg: cfg.clone(),
            raft: raft.clone(),
            sm,
            me,
            faults,
            leadership: lrx,
            proposals: ptx,
            origin: rand::random(),
            seq: AtomicU64::new(0),
            peers: Mutex::new(HashMap::new()),
            cancel: cancel.clone(),
            tracker: tracker.clone(),
            fatal,
            registration,
        });
        tracker.spawn(batcher(inner.clone(), prx).instrument(span.clone()));

        let node = RaftNode { inner };
        if !initialized {
            // In the background: a seed waits for a majority of the seeds; what it finds can
            // be fatal (`failed`).
            let n = node.clone();
            tracker.spawn(
                async move {
                    let r = n.join_or_bootstrap().await;
                    if r.is_ok() {
                        open.store(true, Ordering::Release);
                    }
                    if let Err(e) = r {
                        tracing::error!("{e}");
                        n.inner.fatal.send_replace(Some(e.to_string()));
                        n.inner.cancel.cancel();
                        let _ = n.inner.raft.shutdown().await;
                    }
                }
                .instrument(span.clone()),
            );
        }
        Ok(node)
    }

    pub fn id(&self) -> u64 {
        self.inner.cfg.id
    }

    pub fn config(&self) -> &RaftConfig {
        &self.inner.cfg
    }

    /// The openraft handle (metrics, low-level calls).
    pub fn raft(&self) -> &RaftHandle<S> {
        &self.inner.raft
    }

    /// Injected faults for this node's RPCs (tests).
    pub fn faults(&self) -> &Arc<Faults> {
        &self.inner.faults
    }

    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.inner.leadership.clone()
    }

    /// Read the locally applied state.
    pub async fn read<T>(&self, f: impl FnOnce(&S) -> T) -> T {
        self.inner.sm.read(f).await
    }

    /// Queue `cmd` now (synchronously, so proposals made one after the other by one caller are
    /// committed in that order) and return the future of its response.
    pub fn propose_ordered(
        &self,
        cmd: S::Command,
    ) -> impl std::future::Future<Output = Result<S::Response, ProposeError>> + Send + 'static {
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        let prop = Proposal { id: RequestId { origin: self.inner.origin, seq }, cmd };
        let (tx, rx) = oneshot::channel();
        let proposals = self.inner.proposals.clone();
        let late = match proposals.try_send(Pending { prop, at: Instant::now(), tx }) {
            Ok(()) => None,
            // A full queue (overload): sent when there is room; order among such is kept too
            // only as far as the channel's waiters are served in order (tokio's are FIFO).
            Err(mpsc::error::TrySendError::Full(p)) => Some(p),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return futures_util::future::Either::Left(async { Err(ProposeError::Shutdown) })
            }
        };
        futures_util::future::Either::Right(async move {
            if let Some(p) = late {
                proposals.send(p).await.map_err(|_| ProposeError::Shutdown)?;
            }
            rx.await.map_err(|_| ProposeError::Shutdown)?
        })
    }

    /// Propose one command; resolves with its response once the entry is committed and applied
    /// (on the leader; on this node the apply may follow shortly after).
    pub async fn propose(&self, cmd: S::Command) -> Result<S::Response, ProposeError> {
        self.propose_ordered(cmd).await
    }

    /// Add `id` at `addr` as a learner (it receives the log, does not vote); returns when it
    /// has caught up.
    pub async fn add_learner(&self, id: u64, addr: String) -> Result<(), ProposeError> {
        self.inner.call(Call::Admin(AdminRequest::AddLearner { id, addr })).await.map(|_| ())
    }

    /// Make the voter set exactly `voters` (learners not named stay learners).
    pub async fn change_voters(&self, voters: BTreeSet<u64>) -> Result<(), ProposeError> {
        self.inner.call(Call::Admin(AdminRequest::ChangeMembership { voters, retain: false })).await.map(|_| ())
    }

    /// Promote a learner to voter.
    pub async fn promote(&self, id: u64) -> Result<(), ProposeError> {
        let mut voters = self.voters();
        voters.insert(id);
        self.change_voters(voters).await
    }

    /// Remove a node from the cluster (voter or learner).
    pub async fn remove(&self, id: u64) -> Result<(), ProposeError> {
        let mut voters = self.voters();
        voters.remove(&id);
        self.change_voters(voters).await
    }

    /// A copy of openraft's metrics for this node.
    pub fn metrics(&self) -> RaftMetrics<C> {
        self.inner.raft.metrics().borrow_watched().clone()
    }

    /// On the leader: how long ago each member last acknowledged a heartbeat (None: never).
    /// None when this node is not the leader.
    pub fn heartbeat_ages(&self) -> Option<BTreeMap<u64, Option<Duration>>> {
        let hb = self.inner.raft.metrics().borrow_watched().heartbeat.clone()?;
        Some(hb.into_iter().map(|(id, t)| (id, t.map(|t| t.elapsed()))).collect())
    }

    /// The current voters as this node knows them.
    pub fn voters(&self) -> BTreeSet<u64> {
        self.inner.raft.metrics().borrow_watched().membership_config.membership().voter_ids().collect()
    }

    /// Every member (voters and learners) with its address.
    pub fn members(&self) -> BTreeMap<u64, String> {
        let m = self.inner.raft.metrics().borrow_watched().membership_config.clone();
        m.membership().nodes().map(|(id, n)| (*id, n.addr.clone())).collect()
    }

    /// Resolves when this node has stopped for good on its own (the reason), or never.
    pub async fn failed(&self) -> String {
        let mut rx = self.inner.fatal.subscribe();
        loop {
            if let Some(e) = rx.borrow_and_update().clone() {
                return e;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Stop serving, stop Raft, wait for every task.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(node = self.inner.cfg.id, "raft shutdown: {e}");
        }
        self.inner.tracker.close();
        // Bounded: a peer holding an HTTP/2 connection open must not stall a shutdown.
        if tokio::time::timeout(Duration::from_secs(5), self.inner.tracker.wait()).await.is_err() {
            tracing::warn!(node = self.inner.cfg.id, "raft shutdown: tasks still running after 5 s");
        }
    }
}
