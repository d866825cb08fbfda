//! What the broker asks of the layer above it, as traits defined here and installed by
//! `node.rs`: the broker knows nothing of Raft or of cluster links.
//!
//! - [`Replica`]: a regional cluster that replicates the broker's state (implemented by
//!   `cluster`). Without one the node runs alone and commits to its own sled store.
//! - [`LinkHooks`]: what cluster linking adds to a connection (implemented by `link`): who may
//!   connect as another cluster's link client, the route list in its CONNACK, the outbox bound
//!   and the sequence stamp of what is sent to it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::message::{Delivery, Message};
use super::session::{QueueBound, Session, Subscription};
use crate::mqtt::packet::{Properties, Protocol, QoS, Will};

/// A change of the broker's state that a cluster commits before it takes effect.
#[derive(Debug, Clone)]
pub enum Op {
    /// CONNECT on this node: it owns the session from now on.
    Connect {
        client_id: String,
        protocol: Protocol,
        clean_start: bool,
        expiry_interval: u32,
        will: Option<Will>,
        /// The session of another cluster's link client: that cluster's name.
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
    /// A QoS>=1 message for persistent sessions, each queue bounded by `bound` (or the
    /// target's own).
    Enqueue {
        msg: Message,
        targets: Vec<Target>,
        bound: QueueBound,
    },
    /// The client completed these durable deliveries.
    Ack {
        client_id: String,
        seqs: Vec<u64>,
    },
    /// An inbound QoS 2 message (`ops`: its Enqueue, Retain): applied only if the
    /// session has not received `pkid` before; else `Outcome::Duplicate`.
    /// `epoch`: the connection's (what it sent belongs to the session it was part of).
    Received {
        client_id: String,
        epoch: u64,
        pkid: u16,
        ops: Vec<Op>,
    },
    /// PUBREL of `pkid`: `Outcome::Stale` if the session did not hold it.
    Released {
        client_id: String,
        epoch: u64,
        pkid: u16,
    },
}

/// One session a message goes to (in `Enqueue`, and in the cluster's `Deliver`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Target {
    pub client_id: String,
    pub qos: QoS,
    pub retain: bool,
    pub sub_ids: Vec<u32>,
    /// For `Enqueue`: this target's own bound (a link's outbox), instead of the command's.
    pub bound: Option<QueueBound>,
}

/// What a committed `Op` did.
pub enum Outcome {
    Done,
    /// `Connect`: whether a session was resumed.
    Connected {
        present: bool,
    },
    /// A change for an older connection or a missing session: nothing happened.
    Stale,
    /// `Enqueue`: a connected target (its client id) past half its queue bound, for the
    /// publisher to wait on.
    Enqueued {
        congested: Option<(String, Congestion)>,
    },
    /// Seen before (a redelivery over a link, a QoS 2 resend), nothing happened.
    Duplicate,
}

/// Why a commit failed. The proposer's detail is kept.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// No leader could take the proposal (or it was lost in a leader change).
    #[error("{0}")]
    Unavailable(String),
    /// Committed, but this node's view did not apply it in time.
    #[error("local view did not reach {view} within {within:?}")]
    Lagging { view: u64, within: Duration },
    #[error("node shutting down")]
    ShuttingDown,
}

pub type Commit = Pin<Box<dyn Future<Output = Result<Vec<Outcome>, CommitError>> + Send + Sync + 'static>>;

/// The cluster that replicates this broker. Commits are proposed when called, in call order
/// (one connection's packets never swap); the returned future resolves once this node's view
/// has applied them.
pub trait Replica: Send + Sync + 'static {
    /// This node's id in the cluster.
    fn node(&self) -> u64;
    /// Whether this node can commit now (it knows a leader with a valid lease).
    fn available(&self) -> bool;
    fn commit(&self, ops: Vec<Op>) -> Commit;
    /// Commit without waiting (a failure is logged).
    fn commit_detached(&self, ops: Vec<Op>);
    /// Send a delivery to the node that owns `client_id`'s session (best effort, in order per
    /// node). Some when that path is congested: the publisher should wait on it.
    fn forward(&self, owner: u64, client_id: &str, d: &Delivery) -> Option<Congestion>;
    /// The client completed durable delivery `seq` (committed in batches).
    fn ack(&self, client_id: &Arc<str>, seq: u64);
}

/// Something a publisher must wait for before it reads on (flow control instead of drops).
pub enum Congestion {
    /// A connected local subscriber past half its queue bound.
    Session(Arc<Session>),
    /// Elsewhere: another node's data-plane queue, a replicated queue.
    Remote(Arc<dyn Drain>),
}

/// A queue somewhere else that a publisher waits on.
pub trait Drain: Send + Sync {
    /// Resolves when it has drained enough (or after `max`).
    fn drained(&self, max: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// What the link layer reads of a CONNECT.
pub struct LinkHello<'a> {
    pub user_properties: &'a [(String, String)],
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    /// The client id it asks for.
    pub client_id: &'a str,
    /// It came to a link listener.
    pub on_link_listener: bool,
    /// The remote cluster whose link session holds that client id here, if any.
    pub reserved_by: Option<&'a str>,
}

/// How the link layer answers a CONNECT.
pub enum Admission {
    /// Not a link client: authenticate it like any client.
    Client,
    /// Cluster `remote`'s link client (its credentials are checked by `authenticate`).
    Link { remote: String },
    /// Refused with this CONNACK code; `why` for a 5.0 client; `bad_credentials` counts as
    /// an authentication failure.
    Refused { code: u8, why: Option<String>, bad_credentials: bool },
}

/// How a link client's credentials fare.
pub enum LinkAuth {
    /// The link has no password: the client is authenticated like any client.
    AsClient,
    Accepted,
    /// Refused (CONNACK 0x86), with why for a 5.0 client.
    Refused(String),
}

/// What cluster linking adds to connections. Installed once by `node.rs` (a broker built
/// without it, as in unit tests, treats every client as an ordinary one and refuses every
/// client on a link listener).
pub trait LinkHooks: Send + Sync + 'static {
    /// Judge a CONNECT for its link fields.
    fn admit(&self, hello: &LinkHello<'_>) -> Admission;
    /// Check a link client's username and password against its link's.
    fn authenticate(&self, remote: &str, username: Option<&str>, password: Option<&[u8]>) -> LinkAuth;
    /// A link client was accepted: the CONNACK user properties that tell it the routes its
    /// session holds here (sorted), within `budget` bytes.
    fn accepted(
        &self,
        client_id: &str,
        user_properties: &[(String, String)],
        session_present: bool,
        routes: &[&Arc<str>],
        budget: usize,
    ) -> Vec<(String, String)>;
    /// The largest CONNACK a link client takes.
    fn max_connack(&self) -> usize;
    /// The bound of the outbox (the link session here) of cluster `remote`'s link client.
    fn outbox_bound(&self, remote: &str) -> QueueBound;
    /// Stamp a durable delivery to a link client with its sequence number and first QoS.
    fn stamp(&self, seq: u64, qos: QoS, props: &mut Properties);
    /// Without a cluster: the next sequence number of a delivery to a link session (None:
    /// none could be reserved; it goes at least once).
    fn next_seq(&self) -> Option<u64>;
}
