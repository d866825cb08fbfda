//! The broker of one node: sessions, router, retained messages, wills and session expiry.
//!
//! Shared by every connection task through `Arc<Broker>`. Lock order: `sessions` map, then a
//! session's state, then the router; the retained map is never held with another lock.
//! No lock is held across an `.await`.
//!
//! The broker is the bottom of the node's stateful layers: it knows MQTT, its config and its
//! sled store, and nothing of Raft or cluster links. What a cluster or a link adds comes in
//! through the traits of [`control`], installed by `node.rs`.
//!
//! - `access.rs`: authentication and authorization;
//! - `sessions.rs`: attach, take over, detach, end; subscriptions and the router;
//! - `publish.rs`: routing a message to its subscribers, queue bounds, wills;
//! - `flow.rs`: what a publisher waits for;
//! - `retained.rs`, `expiry.rs`: retained messages; session expiry and delayed wills;
//! - `view.rs`: following the state a cluster committed.

pub mod access;
pub mod control;
pub mod expiry;
pub mod flow;
pub mod message;
pub mod mqueue;
pub mod publish;
pub mod retained;
pub mod router;
pub mod session;
pub mod sessions;
pub mod storage;
pub mod view;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

use tokio_util::sync::CancellationToken;

use crate::auth::{Acl, PasswordFile};
use crate::config::{Config, MqttConfig};
use crate::metrics::Metrics;
use crate::mqtt::packet::QoS;

pub use control::{Congestion, LinkHooks, Replica};
use message::now_ms;
pub use publish::{Deferred, Published};
use router::Router;
use session::{Session, Subscription};
pub use sessions::Attached;
use storage::{Storage, StorageError};

/// Topic prefix reserved for cluster links: no ordinary client may publish or subscribe.
pub const LINK_PREFIX: &str = "$LINK/";
/// Publisher id of a message that came in over a cluster link: `$link:<remote cluster>`.
pub const LINK_PUBLISHER: &str = "$link:";

pub struct Broker {
    pub mqtt: MqttConfig,
    pub router: Router,
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    retained: RwLock<retained::Retained>,
    pub metrics: Metrics,
    storage: Option<Storage>,
    passwords: Option<PasswordFile>,
    /// Failed logins per client address (count, last) for the login throttle.
    login_failures: Mutex<HashMap<std::net::IpAddr, (u32, std::time::Instant)>>,
    allow_anonymous: bool,
    acl: Option<Acl>,
    conn_ids: AtomicU64,
    pub shutdown: CancellationToken,
    /// The cluster that replicates this broker (none: a single node).
    replica: OnceLock<Weak<dyn Replica>>,
    /// What cluster linking adds to connections (none: no link client is accepted).
    links: OnceLock<Arc<dyn LinkHooks>>,
    /// Woken whenever the router changes (link route sync).
    pub routes_changed: tokio::sync::Notify,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Auth(#[from] crate::auth::AuthError),
}

impl Broker {
    /// Build the broker, loading persisted sessions and retained messages when `storage` is given.
    pub fn new(
        cfg: &Config,
        storage: Option<Storage>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Broker>, BrokerError> {
        let passwords = match &cfg.authentication.password_file {
            Some(p) => Some(PasswordFile::load(p, cfg.authentication.allow_sha512_hashes)?),
            None => None,
        };
        let acl = match &cfg.authorization.acl_file {
            Some(p) => Some(Acl::load(p, cfg.authorization.no_match)?),
            None => None,
        };
        let broker = Arc::new(Broker {
            mqtt: cfg.mqtt.clone(),
            router: Router::default(),
            sessions: Mutex::new(HashMap::new()),
            retained: RwLock::new(retained::Retained::default()),
            metrics: Metrics::default(),
            storage,
            passwords,
            login_failures: Mutex::new(HashMap::new()),
            allow_anonymous: cfg.authentication.allow_anonymous,
            acl,
            conn_ids: AtomicU64::new(1),
            shutdown,
            replica: OnceLock::new(),
            links: OnceLock::new(),
            routes_changed: tokio::sync::Notify::new(),
        });
        broker.load()?;
        Ok(broker)
    }

    fn load(&self) -> Result<(), StorageError> {
        let Some(storage) = &self.storage else { return Ok(()) };
        let now = now_ms();
        let mut retained = self.retained.write().unwrap_or_else(|e| e.into_inner());
        for msg in storage.load_retained()? {
            if msg.is_expired(now) {
                storage.remove_retained(&msg.topic)?;
                continue;
            }
            retained.insert(msg.topic.clone(), Arc::new(msg));
        }
        self.metrics.retained.store(retained.len() as i64, Ordering::Relaxed);
        drop(retained);
        let mut sessions = self.lock_sessions();
        for (mut rec, entries) in storage.load_sessions()? {
            // A session that was connected when the node died counts as disconnected now.
            let since = *rec.disconnected_at_ms.get_or_insert(now);
            if rec.expiry_interval != u32::MAX && since + u64::from(rec.expiry_interval) * 1000 <= now {
                storage.remove_session(&rec.client_id)?;
                continue;
            }
            let session = rec.restore(entries);
            let subs: Vec<(Arc<str>, Subscription)> =
                session.lock().subscriptions.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            for (filter, sub) in subs {
                self.route_add(&session, &filter, &sub);
            }
            sessions.insert(session.client_id.clone(), session);
        }
        self.metrics.sessions.store(sessions.len() as i64, Ordering::Relaxed);
        tracing::info!(
            sessions = sessions.len(),
            retained = self.metrics.retained.load(Ordering::Relaxed),
            "storage.loaded"
        );
        Ok(())
    }

    /// Install the cluster that replicates this broker (once, before anything connects).
    pub fn set_replica(&self, r: Weak<dyn Replica>) {
        let _ = self.replica.set(r);
    }

    /// The cluster that replicates this broker; None on a single node (or once it is gone).
    pub fn replica(&self) -> Option<Arc<dyn Replica>> {
        self.replica.get().and_then(Weak::upgrade)
    }

    /// This node's id in its cluster (0 on a single node).
    pub fn node_id(&self) -> u64 {
        self.replica().map_or(0, |r| r.node())
    }

    /// Install cluster linking's hooks (once, before anything connects).
    pub fn set_link_hooks(&self, h: Arc<dyn LinkHooks>) {
        let _ = self.links.set(h);
    }

    pub fn link_hooks(&self) -> Option<&Arc<dyn LinkHooks>> {
        self.links.get()
    }

    /// The single-node store (None in a cluster, where Raft is the store).
    /// Why this node's own store stopped taking writes (a single node), if it did.
    pub fn storage_failed(&self) -> Option<String> {
        self.storage.as_ref().and_then(|s| s.failed()).map(str::to_string)
    }

    pub fn storage(&self) -> Option<&Storage> {
        self.storage.as_ref()
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sessions known to this node (connected or persistent).
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.lock_sessions().values().cloned().collect()
    }

    pub fn session(&self, client_id: &str) -> Option<Arc<Session>> {
        self.lock_sessions().get(client_id).cloned()
    }

    /// Total queued and inflight messages over all sessions (for metrics).
    pub fn queue_depths(&self) -> (usize, usize) {
        self.sessions().iter().fold((0, 0), |(q, i), s| {
            let st = s.lock();
            (q + st.queue.len(), i + st.inflight.len())
        })
    }
}

/// QoS a broker grants: the requested one capped by `max_qos_allowed`.
pub fn granted_qos(requested: QoS, max: u8) -> QoS {
    QoS::from_u8(requested.as_u8().min(max)).unwrap_or(QoS::AtMostOnce)
}
