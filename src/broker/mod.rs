//! The broker of one node: sessions, router, retained messages, wills and session expiry.
//!
//! Shared by every connection task through `Arc<Broker>`. Lock order: `sessions` map, then a
//! session's state, then the router; the retained map is never held with another lock.
//! No lock is held across an `.await`.

pub mod message;
pub mod retained;
pub mod router;
pub mod session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::{Acl, AclAction, PasswordFile};
use crate::cluster::state::{Change, SessionMeta, Snapshot};
use crate::cluster::{Cluster, Command, Target};
use crate::config::{Config, MqttConfig, Overflow};
use crate::metrics::{inc, Metrics};
use crate::mqtt::packet::{Protocol, QoS, SubOptions, Will};
use crate::mqtt::topic;
use crate::storage::{Storage, StorageError};

use message::{now_ms, Delivery, Message};
use router::{Router, Subscriber};
use session::{ConnHandle, Kick, QueueBound, Session, SessionRecord, Subscription};

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
    cluster: OnceLock<Weak<Cluster>>,
    /// Woken whenever the router changes (link route sync).
    pub routes_changed: tokio::sync::Notify,
    /// The links in force (config file and API changes) and their status.
    pub links: crate::link::Registry,
    /// Without a cluster: the next sequence number for a delivery to a link session, and the
    /// end of the block reserved on disk (numbers never repeat across restarts).
    link_seq: Mutex<(u64, u64)>,
}

/// Something a publisher must wait for before it reads on (flow control instead of drops).
pub enum Congestion {
    /// A connected local subscriber past half its queue bound.
    Session(Arc<Session>),
    /// The data-plane queue to another node past half its bound.
    Peer(Arc<strait_raft::net::peer::PeerSender>),
    /// A connected persistent session's replicated queue past half its bound (in a cluster):
    /// wait until it is at `low` or below, or the session is no longer connected.
    Durable { client_id: String, low: u32 },
}

impl Congestion {
    /// Wait, at most `max`, until it has drained below a quarter.
    pub async fn wait(&self, broker: &Broker, max: Duration) {
        match self {
            Congestion::Session(s) => broker.wait_drained(s, max).await,
            Congestion::Peer(p) => p.wait_drained(max).await,
            Congestion::Durable { client_id, low } => {
                let Some(c) = broker.cluster() else { return };
                // Re-read when this node's view moves (acks are applied through it): no polling.
                let mut view = c.view();
                let _ = tokio::time::timeout(max, async {
                    loop {
                        view.borrow_and_update();
                        let busy = c
                            .read(|s| {
                                s.sessions.get(client_id).is_some_and(|e| e.connected && e.queue.len() > *low as usize)
                            })
                            .await;
                        if !busy || view.changed().await.is_err() {
                            break;
                        }
                    }
                })
                .await;
            }
        }
    }

    pub fn is_session(&self, s: &Arc<Session>) -> bool {
        matches!(self, Congestion::Session(x) if Arc::ptr_eq(x, s))
    }
}

/// What a PUBLISH set in motion.
pub struct Published {
    /// What the publisher's connection must wait for before reading on, if anything.
    pub congested: Option<Congestion>,
    /// In a cluster: what must be committed before the publisher is acknowledged (the retained
    /// message, durable deliveries to persistent sessions).
    pub commands: Vec<Command>,
}

/// A delivery `publish_deferred` held back.
pub enum Deferred {
    /// To a session served here.
    Offer(Arc<Session>, Delivery),
    /// To a session served by node `.0`, over the data plane.
    Forward(u64, Arc<str>, Delivery),
}

impl Deferred {
    /// As a target of a replicated `Deliver`.
    pub fn into_target(self) -> Target {
        let (client_id, d) = match self {
            Deferred::Offer(s, d) => (s.client_id.to_string(), d),
            Deferred::Forward(_, id, d) => (id.to_string(), d),
        };
        Target { client_id, qos: d.qos, retain: d.retain, sub_ids: d.sub_ids, bound: None }
    }
}

/// Result of attaching a new connection to a session.
pub struct Attached {
    pub session: Arc<Session>,
    pub session_present: bool,
    pub conn_id: u64,
    pub kick_rx: mpsc::Receiver<Kick>,
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
            cluster: OnceLock::new(),
            routes_changed: tokio::sync::Notify::new(),
            links: crate::link::Registry::new(cfg),
            link_seq: Mutex::new((0, 0)),
        });
        broker.load()?;
        Ok(broker)
    }

    fn load(&self) -> Result<(), StorageError> {
        let Some(storage) = &self.storage else { return Ok(()) };
        self.links.set_overrides(storage.load_links()?);
        let limit = storage.link_seq_limit()?;
        *self.link_seq.lock().unwrap_or_else(|e| e.into_inner()) = (limit, limit);
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
        for mut rec in storage.load_sessions()? {
            // A session that was connected when the node died counts as disconnected now.
            let since = *rec.disconnected_at_ms.get_or_insert(now);
            if rec.expiry_interval != u32::MAX && since + u64::from(rec.expiry_interval) * 1000 <= now {
                storage.remove_session(&rec.client_id)?;
                continue;
            }
            let session = rec.restore();
            let subs: Vec<(String, Subscription)> =
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

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn authenticate(&self, username: Option<&str>, password: Option<&[u8]>) -> bool {
        match (username, &self.passwords) {
            (Some(u), Some(pw)) => password.is_some_and(|p| pw.verify(u, p)),
            (Some(_), None) => self.allow_anonymous,
            (None, _) => self.allow_anonymous,
        }
    }

    /// `authenticate` for a CONNECT: a check that needs the full password hash (about 30 ms
    /// of CPU at 100,000 iterations) runs on the blocking pool, not on an async worker; after
    /// failures from the same address the answer is held back (0.1 s doubling up to 5 s, for
    /// the 4th and later failure within a minute), so guessing is slow and cheap for us.
    pub async fn authenticate_connect(
        self: &Arc<Self>,
        peer: std::net::IpAddr,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> bool {
        let heavy = match (&self.passwords, username, password) {
            (Some(pw), Some(u), Some(p)) => !pw.is_cached(u, p),
            _ => false,
        };
        let ok = if heavy {
            let (b, u, p) = (self.clone(), username.map(String::from), password.map(<[u8]>::to_vec));
            tokio::task::spawn_blocking(move || b.authenticate(u.as_deref(), p.as_deref())).await.unwrap_or(false)
        } else {
            self.authenticate(username, password)
        };
        if !ok {
            let delay = {
                let mut f = self.login_failures.lock().unwrap_or_else(|e| e.into_inner());
                let now = std::time::Instant::now();
                if f.len() > 10_000 {
                    f.retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(60));
                }
                let e = f.entry(peer).or_insert((0, now));
                if now.duration_since(e.1) >= Duration::from_secs(60) {
                    *e = (0, now);
                }
                e.0 += 1;
                e.1 = now;
                match e.0 {
                    0..=3 => Duration::ZERO,
                    n => Duration::from_millis(100u64 << (n - 4).min(6)).min(Duration::from_secs(5)),
                }
            };
            if !delay.is_zero() {
                self.metrics.logins_throttled.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(delay).await;
            }
        }
        ok
    }

    /// Whether a message on `topic` may go to this subscriber (read access, per delivered
    /// message: a subscription allowed as written can reach topics a deny rule covers).
    pub fn may_read(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool {
        self.acl.as_ref().is_none_or(|a| !a.checks_reads() || a.may_read(client_id, username, topic))
    }

    /// Authorization for a PUBLISH topic or SUBSCRIBE filter (already stripped of `$share`).
    pub fn authorize(&self, client_id: &str, username: Option<&str>, action: AclAction, topic: &str) -> bool {
        if topic.starts_with(LINK_PREFIX) || (action == AclAction::Publish && topic.starts_with("$SYS/")) {
            return false;
        }
        if action == AclAction::Subscribe && topic::intersects(topic, "$LINK/#") && topic.starts_with('$') {
            return false;
        }
        self.acl.as_ref().is_none_or(|acl| acl.check(client_id, username, action, topic))
    }

    /// Attach a new connection to `client_id`'s session: take over a live connection (it gets
    /// `Kick::TakenOver`), resume or discard the old session per `clean_start`.
    pub fn attach(&self, client_id: &str, protocol: Protocol, clean_start: bool, expiry_interval: u32) -> Attached {
        let conn_id = self.conn_ids.fetch_add(1, Ordering::Relaxed);
        let (kick_tx, kick_rx) = mpsc::channel(2);
        let mut sessions = self.lock_sessions();
        let existing = sessions.get(client_id).cloned();
        let (session, present) = match existing {
            Some(old) => {
                if let Some(conn) = old.lock().conn.take() {
                    let _ = conn.kick.try_send(Kick::TakenOver);
                    tracing::info!(client_id, "session.taken_over");
                }
                if clean_start {
                    self.discard(&old);
                    let s = Session::new(client_id.into(), protocol, now_ms());
                    sessions.insert(s.client_id.clone(), s.clone());
                    (s, false)
                } else {
                    (old, true)
                }
            }
            None => {
                let s = Session::new(client_id.into(), protocol, now_ms());
                sessions.insert(s.client_id.clone(), s.clone());
                (s, false)
            }
        };
        self.metrics.sessions.store(sessions.len() as i64, Ordering::Relaxed);
        drop(sessions);
        {
            let mut st = session.lock();
            st.protocol = protocol;
            st.conn = Some(ConnHandle { conn_id, kick: kick_tx });
            st.expiry_interval = expiry_interval;
            st.disconnected_at_ms = None;
            st.pending_will = None;
            st.dirty = true;
        }
        // No storage write here: every persisted session is in the map (loaded at start), and a
        // replaced one was deleted by `discard`, so a new session has no record to remove.
        session.set_connected(true);
        Attached { session, session_present: present, conn_id, kick_rx }
    }

    /// Remove a session's subscriptions from the router and its record from storage.
    fn discard(&self, session: &Arc<Session>) {
        let subs: Vec<String> = session.lock().subscriptions.drain().map(|(k, _)| k).collect();
        for f in &subs {
            self.route_remove(session, f);
        }
        if let Some(storage) = &self.storage {
            if let Err(e) = storage.remove_session(&session.client_id) {
                tracing::warn!(client_id = %session.client_id, error = %e, "storage.remove_session failed");
            }
        }
    }

    /// Called by the connection task when its connection ends. `will` is the will still in
    /// force (None after a normal DISCONNECT).
    pub fn detach(&self, session: &Arc<Session>, conn_id: u64, will: Option<Will>) {
        let now = now_ms();
        let mut end_session = false;
        let mut publish_now = None;
        let ours = {
            let mut st = session.lock();
            let ours = st.conn.as_ref().is_some_and(|c| c.conn_id == conn_id);
            if ours {
                st.conn = None;
                session.set_connected(false);
                st.disconnected_at_ms = Some(now);
                st.dirty = true;
                if st.expiry_interval == 0 {
                    end_session = true;
                }
            }
            if let Some(will) = will {
                let delay = will.properties.will_delay_interval.unwrap_or(0);
                if delay == 0 || end_session {
                    publish_now = Some(will);
                } else if ours {
                    let wait = delay.min(st.expiry_interval);
                    st.pending_will = Some((will, now + u64::from(wait) * 1000));
                }
                // Taken over by a connection that resumed the session: the client came back
                // within the will delay, so the delayed will is not sent.
            }
            ours
        };
        if let Some(c) = self.cluster() {
            let owner = session.owner.load(Ordering::Acquire);
            if owner != c.id {
                // Taken over by another node: the session lives on there; our object is its stub.
                end_session = false;
            } else if ours {
                // Only the connection that still holds the session says it is gone: one taken
                // over on this node would otherwise commit a Disconnect under the new
                // connection's epoch, and the new connection would be put out.
                let (expiry, epoch) = (session.lock().expiry_interval, session.epoch.load(Ordering::Acquire));
                c.commit_detached(vec![Command::Disconnect {
                    client_id: session.client_id.to_string(),
                    epoch,
                    at_ms: now,
                    expiry_interval: expiry,
                }]);
            }
        }
        if end_session {
            let mut sessions = self.lock_sessions();
            if sessions.get(&session.client_id).is_some_and(|s| Arc::ptr_eq(s, session)) {
                sessions.remove(&session.client_id);
            }
            self.metrics.sessions.store(sessions.len() as i64, Ordering::Relaxed);
            drop(sessions);
            self.discard(session);
        } else {
            self.persist(session);
        }
        if let Some(will) = publish_now {
            self.publish_will(&session.client_id, will);
        }
    }

    fn publish_will(&self, client_id: &str, will: Will) {
        inc(&self.metrics.wills_published);
        tracing::debug!(client_id, topic = %will.topic, "will.published");
        let mut properties = will.properties;
        properties.will_delay_interval = None;
        let expires_at_ms = properties.message_expiry_interval.take().map(|s| now_ms() + u64::from(s) * 1000);
        let msg = Message {
            topic: will.topic.into(),
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            properties,
            publisher: client_id.into(),
            expires_at_ms,
        };
        let p = self.publish(Arc::new(msg));
        if let Some(c) = self.cluster() {
            if !p.commands.is_empty() {
                c.commit_detached(p.commands);
            }
        }
    }

    /// Publish the will of a session whose node died (called by the cluster leader).
    pub fn publish_will_cluster(&self, client_id: &str, will: Will) {
        self.publish_will(client_id, will);
    }

    /// Whether `session` is still the registered session of its client id (not replaced by a
    /// clean-start takeover or expired).
    fn is_current(&self, session: &Arc<Session>) -> bool {
        self.lock_sessions().get(&session.client_id).is_some_and(|s| Arc::ptr_eq(s, session))
    }

    fn persist(&self, session: &Arc<Session>) {
        let Some(storage) = &self.storage else { return };
        if !self.is_current(session) {
            return;
        }
        let rec = {
            let mut st = session.lock();
            if !st.is_persistent() || !st.dirty {
                return;
            }
            st.dirty = false;
            SessionRecord::capture(session, &st)
        };
        if let Err(e) = storage.put_session(&rec) {
            tracing::warn!(client_id = %session.client_id, error = %e, "storage.put_session failed");
        }
    }

    /// Route a message to every matching session (and store/clear it when retained).
    /// Returns the fullest connected session whose queue is past half its bound, if any: the
    /// publisher's connection then waits for it to drain (flow control instead of drops).
    pub fn publish(&self, msg: Arc<Message>) -> Published {
        self.publish_inner(msg, None)
    }

    /// Like `publish`, but the deliveries to connected sessions (here or forwarded to their
    /// node) are returned instead of made: a message over a link is delivered only once its
    /// deduplication record is committed (`run_deferred`).
    pub fn publish_deferred(&self, msg: Arc<Message>) -> (Published, Vec<Deferred>) {
        let mut deferred = Vec::new();
        let published = self.publish_inner(msg, Some(&mut deferred));
        (published, deferred)
    }

    /// Make the deliveries `publish_deferred` held back; what the caller must wait for.
    pub fn run_deferred(&self, deferred: Vec<Deferred>) -> Option<Congestion> {
        let half = self.mqtt.max_mqueue_len / 2;
        let cluster = self.cluster();
        let mut congested: Option<(usize, Arc<Session>)> = None;
        let mut peer_congested = None;
        for d in deferred {
            match d {
                Deferred::Offer(session, d) => self.offer_noting(&session, d, half, &mut congested),
                Deferred::Forward(owner, client_id, d) => {
                    if let Some(c) = &cluster {
                        if let Some(p) = c.forward(owner, &client_id, &d) {
                            peer_congested = Some(p);
                        }
                    }
                }
            }
        }
        congested.map(|(_, s)| Congestion::Session(s)).or(peer_congested.map(Congestion::Peer))
    }

    fn publish_inner(&self, msg: Arc<Message>, mut defer: Option<&mut Vec<Deferred>>) -> Published {
        let cluster = self.cluster();
        let mut commands = Vec::new();
        if msg.retain {
            match &cluster {
                Some(_) => commands.push(Command::Retain { msg: (*msg).clone() }),
                None => self.retain(&msg),
            }
        }
        let mut matches = Vec::new();
        self.router.matches(&msg.topic, &mut matches);
        if matches.is_empty() {
            inc(&self.metrics.messages_no_subscribers);
            return Published { congested: None, commands };
        }
        let mut targets: Vec<Target> = Vec::new();
        let mut peer_congested = None;
        // Overlapping non-shared subscriptions of one session yield one delivery with the
        // highest QoS and all subscription identifiers (MQTT-3.3.4-2/-3/-5).
        matches.sort_by_key(|m| (Arc::as_ptr(&m.session) as usize, m.shared));
        let mut congested: Option<(usize, Arc<Session>)> = None;
        let half = self.mqtt.max_mqueue_len / 2;
        let mut i = 0;
        while i < matches.len() {
            let m = &matches[i];
            let mut opts = m.opts;
            let mut ids: Vec<u32> = m.id.into_iter().collect();
            let mut j = i + 1;
            if !m.shared {
                while j < matches.len() && !matches[j].shared && Arc::ptr_eq(&matches[j].session, &m.session) {
                    let o = &matches[j];
                    opts.qos = opts.qos.max(o.opts.qos);
                    opts.retain_as_published |= o.opts.retain_as_published;
                    opts.no_local &= o.opts.no_local;
                    ids.extend(o.id);
                    j += 1;
                }
            }
            let from_link = msg.publisher.starts_with(LINK_PUBLISHER);
            let skip = (opts.no_local && !m.shared && *m.session.client_id == *msg.publisher)
                || (from_link && m.session.link.load(Ordering::Relaxed));
            if !skip {
                let d = Delivery::live(&msg, &opts, ids);
                if let Some(c) = &cluster {
                    // QoS>=1 to a persistent session, wherever it lives: through Raft.
                    if d.qos != QoS::AtMostOnce && m.session.lock().is_persistent() {
                        // A link's outbox has the link's own (larger) bound.
                        let bound = self.outbox_bound_of(&m.session);
                        targets.push(Target {
                            client_id: m.session.client_id.to_string(),
                            qos: d.qos,
                            retain: d.retain,
                            sub_ids: d.sub_ids,
                            bound,
                        });
                        i = j;
                        continue;
                    }
                    let owner = m.session.owner.load(Ordering::Acquire);
                    if owner != c.id {
                        if let Some(v) = defer.as_deref_mut() {
                            v.push(Deferred::Forward(owner, m.session.client_id.clone(), d));
                        } else if let Some(p) = c.forward(owner, &m.session.client_id, &d) {
                            peer_congested = Some(p);
                        }
                        i = j;
                        continue;
                    }
                }
                if let Some(v) = defer.as_deref_mut() {
                    v.push(Deferred::Offer(m.session.clone(), d));
                    i = j;
                    continue;
                }
                self.offer_noting(&m.session, d, half, &mut congested);
            }
            i = j;
        }
        if !targets.is_empty() {
            if let Some(c) = &cluster {
                c.metrics.enqueued.fetch_add(targets.len() as u64, Ordering::Relaxed);
            }
            commands.push(Command::Enqueue { msg: (*msg).clone(), targets, bound: self.queue_bound() });
        }
        let congested = congested.map(|(_, s)| Congestion::Session(s)).or(peer_congested.map(Congestion::Peer));
        Published { congested, commands }
    }

    /// The bound of a session's queue (`mqtt.max_mqueue_len`, `max_mqueue_bytes`,
    /// `mqueue_overflow`).
    pub fn queue_bound(&self) -> QueueBound {
        QueueBound {
            max_len: self.mqtt.max_mqueue_len.min(u32::MAX as usize) as u32,
            max_bytes: self.mqtt.max_mqueue_bytes,
            drop_oldest: self.mqtt.mqueue_overflow == Overflow::DropOldest,
        }
    }

    /// The bound of the outbox of cluster `remote`'s link client here (`links[].max_outbox`
    /// of our link to it; the defaults when we have none).
    pub fn outbox_bound(&self, remote: &str) -> QueueBound {
        let (len, bytes) = self
            .links
            .outbox_of(remote)
            .unwrap_or((crate::config::DEFAULT_LINK_OUTBOX, crate::config::DEFAULT_LINK_OUTBOX_BYTES));
        QueueBound { max_len: len.min(u32::MAX as usize) as u32, max_bytes: bytes, drop_oldest: true }
    }

    /// A link client's session is an outbox, bounded by our link to that cluster; None for
    /// every other session. (The flag first: the name is behind a lock, and this is read for
    /// every delivery.)
    pub fn outbox_bound_of(&self, session: &Session) -> Option<QueueBound> {
        if !session.link.load(Ordering::Relaxed) {
            return None;
        }
        session.link_remote().map(|l| self.outbox_bound(&l))
    }

    /// The bound of `session`'s queue: its outbox bound, or `queue_bound`.
    pub fn bound_of(&self, session: &Session) -> QueueBound {
        self.outbox_bound_of(session).unwrap_or_else(|| self.queue_bound())
    }

    /// Wait (bounded by `max`) until `session`'s queue is below a quarter of its bound.
    pub async fn wait_drained(&self, session: &Session, max: Duration) {
        let low = self.mqtt.max_mqueue_len / 4;
        let _ = tokio::time::timeout(max, async {
            loop {
                let notified = session.drained.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if session.lock().queue.len() <= low || !session.is_connected() {
                    break;
                }
                notified.await;
            }
        })
        .await;
    }

    /// Offer one delivery to a session under the slow-consumer policy; returns the queue
    /// depth after it.
    pub fn offer(&self, session: &Arc<Session>, mut d: Delivery) -> usize {
        if d.seq.is_none()
            && d.qos != QoS::AtMostOnce
            && session.link.load(Ordering::Relaxed)
            && self.cluster().is_none()
        {
            // A single node numbers what it sends over a link itself (a cluster uses its Raft
            // sequence): the receiving cluster dedupes by it, so QoS 2 stays exactly once.
            d.seq = self.next_link_seq();
        }
        let o = session.enqueue(d, &self.bound_of(session), self.mqtt.mqueue_store_qos0);
        if !o.queued {
            inc(&self.metrics.messages_dropped);
        }
        self.metrics.messages_dropped_qos0_evicted.fetch_add(o.evicted_qos0, Ordering::Relaxed);
        self.metrics.messages_dropped_oldest.fetch_add(o.evicted_oldest, Ordering::Relaxed);
        o.depth
    }

    /// `offer`, keeping in `fullest` the connected session past `half` with the deepest queue
    /// (the one a publisher then waits for).
    fn offer_noting(
        &self,
        session: &Arc<Session>,
        d: Delivery,
        half: usize,
        fullest: &mut Option<(usize, Arc<Session>)>,
    ) {
        let depth = self.offer(session, d);
        if depth > half && session.is_connected() && fullest.as_ref().is_none_or(|(f, _)| depth > *f) {
            *fullest = Some((depth, session.clone()));
        }
    }

    /// Next link sequence number; None (no number, at least once) if storage fails.
    fn next_link_seq(&self) -> Option<u64> {
        const BLOCK: u64 = 100_000;
        let mut g = self.link_seq.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 >= g.1 {
            let limit = g.0 + BLOCK;
            if let Some(storage) = &self.storage {
                if let Err(e) = storage.set_link_seq_limit(limit) {
                    tracing::warn!(error = %e, "storage: cannot reserve link sequence numbers");
                    return None;
                }
            }
            g.1 = limit;
        }
        let seq = g.0;
        g.0 += 1;
        Some(seq)
    }

    fn retain(&self, msg: &Arc<Message>) {
        let mut retained = self.retained.write().unwrap_or_else(|e| e.into_inner());
        let res = if msg.payload.is_empty() {
            retained.remove(&msg.topic);
            self.storage.as_ref().map(|s| s.remove_retained(&msg.topic))
        } else {
            retained.insert(msg.topic.clone(), msg.clone());
            self.storage.as_ref().map(|s| s.put_retained(msg))
        };
        self.metrics.retained.store(retained.len() as i64, Ordering::Relaxed);
        drop(retained);
        if let Some(Err(e)) = res {
            tracing::warn!(topic = %msg.topic, error = %e, "storage.retained failed");
        }
    }

    /// Retained messages matching `filter`, in topic order (a wildcard reads only the topics
    /// under its literal prefix).
    pub fn retained_matching(&self, filter: &str) -> Vec<Arc<Message>> {
        self.retained.read().unwrap_or_else(|e| e.into_inner()).matching(filter, now_ms())
    }

    /// Whether retaining `msg` would go past `mqtt.max_retained_messages` or
    /// `max_retained_bytes` (a replacement of a retained topic is measured by its growth).
    pub fn retained_full(&self, msg: &Message) -> bool {
        let (count, bytes) = (self.mqtt.max_retained_messages, self.mqtt.max_retained_bytes);
        !msg.payload.is_empty()
            && self.retained.read().unwrap_or_else(|e| e.into_inner()).would_exceed(msg, count, bytes)
    }

    /// Add (or replace) a subscription of `session`. Returns whether it is new.
    pub fn subscribe(&self, session: &Arc<Session>, filter: &str, opts: SubOptions, id: Option<u32>) -> bool {
        let sub = Subscription { opts, id };
        let new = {
            let mut st = session.lock();
            st.dirty = true;
            st.subscriptions.insert(filter.to_string(), sub.clone()).is_none()
        };
        self.route_add(session, filter, &sub);
        self.persist(session);
        new
    }

    /// Remove a subscription; returns whether it existed.
    pub fn unsubscribe(&self, session: &Arc<Session>, filter: &str) -> bool {
        let existed = {
            let mut st = session.lock();
            st.dirty = true;
            st.subscriptions.remove(filter).is_some()
        };
        if existed {
            self.route_remove(session, filter);
            self.persist(session);
        }
        existed
    }

    /// Mark (or unmark) `session` as cluster `remote`'s link session. Its subscriptions move
    /// out of (or into) the route table the cluster links follow.
    pub fn set_session_link(&self, session: &Arc<Session>, remote: Option<&str>) {
        if session.link.load(Ordering::Acquire) == remote.is_some() {
            session.set_link(remote);
            return;
        }
        let subs: Vec<(String, Subscription)> =
            session.lock().subscriptions.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (f, _) in &subs {
            self.route_remove(session, f);
        }
        session.set_link(remote);
        for (f, sub) in &subs {
            self.route_add(session, f, sub);
        }
    }

    /// (The links are told after the router changed: one woken before would read the route
    /// table without the change and then sleep through it.)
    fn route_add(&self, session: &Arc<Session>, filter: &str, sub: &Subscription) {
        let local = !session.link.load(Ordering::Relaxed);
        let subscriber = Subscriber { session: session.clone(), opts: sub.opts, id: sub.id, local };
        match topic::parse_shared(filter) {
            Some(Ok((group, inner))) => self.router.subscribe(inner, Some(group), subscriber),
            _ => self.router.subscribe(filter, None, subscriber),
        };
        self.routes_changed.notify_waiters();
    }

    fn route_remove(&self, session: &Arc<Session>, filter: &str) {
        match topic::parse_shared(filter) {
            Some(Ok((group, inner))) => self.router.unsubscribe(inner, Some(group), session),
            _ => self.router.unsubscribe(filter, None, session),
        };
        self.routes_changed.notify_waiters();
    }

    /// Sessions known to this node (connected or persistent).
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.lock_sessions().values().cloned().collect()
    }

    pub fn session(&self, client_id: &str) -> Option<Arc<Session>> {
        self.lock_sessions().get(client_id).cloned()
    }

    /// Ask a connected client's connection to close (API kick). False when not connected.
    pub fn kick(&self, client_id: &str, why: Kick) -> bool {
        let Some(s) = self.session(client_id) else { return false };
        let st = s.lock();
        match &st.conn {
            Some(c) => c.kick.try_send(why).is_ok(),
            None => false,
        }
    }

    /// Discard an offline session (API DELETE): its subscriptions, queue and stored record.
    /// A pending delayed will is published, as when the session expires. False when there is
    /// no such offline session.
    pub fn remove_offline_session(&self, client_id: &str) -> bool {
        let mut sessions = self.lock_sessions();
        let Some(s) = sessions.get(client_id).cloned() else { return false };
        let will = {
            let mut st = s.lock();
            if st.conn.is_some() {
                return false;
            }
            st.pending_will.take()
        };
        sessions.remove(client_id);
        self.metrics.sessions.store(sessions.len() as i64, Ordering::Relaxed);
        drop(sessions);
        self.discard(&s);
        if let Some((w, _)) = will {
            self.publish_will(client_id, w);
        }
        tracing::info!(client_id, "session.removed");
        true
    }

    /// Expire sessions and send due delayed wills. Called once a second by the housekeeping task.
    pub fn housekeeping(&self) {
        let now = now_ms();
        let mut expired = Vec::new();
        let mut wills = Vec::new();
        for s in self.sessions() {
            let mut st = s.lock();
            if st.conn.is_some() {
                continue;
            }
            if let Some((_, at)) = &st.pending_will {
                if *at <= now {
                    if let Some((w, _)) = st.pending_will.take() {
                        wills.push((s.client_id.clone(), w));
                    }
                }
            }
            if let Some(since) = st.disconnected_at_ms.filter(|_| self.cluster.get().is_none()) {
                // (In a cluster the leader expires sessions, once, through Raft.)
                if st.expiry_interval != u32::MAX && since + u64::from(st.expiry_interval) * 1000 <= now {
                    if let Some((w, _)) = st.pending_will.take() {
                        wills.push((s.client_id.clone(), w));
                    }
                    expired.push(s.clone());
                }
            }
        }
        for s in expired {
            let mut sessions = self.lock_sessions();
            if sessions.get(&s.client_id).is_some_and(|x| Arc::ptr_eq(x, &s)) && s.lock().conn.is_none() {
                sessions.remove(&s.client_id);
                self.metrics.sessions.store(sessions.len() as i64, Ordering::Relaxed);
                drop(sessions);
                self.discard(&s);
                tracing::info!(client_id = %s.client_id, "session.expired");
            }
        }
        for (id, w) in wills {
            self.publish_will(&id, w);
        }
        self.checkpoint(false);
    }

    /// Write dirty persistent sessions (all of them when `all`) and flush when `all`.
    pub fn checkpoint(&self, all: bool) {
        let Some(storage) = &self.storage else { return };
        for s in self.sessions() {
            if all {
                s.lock().dirty = true;
            }
            self.persist(&s);
        }
        if all {
            if let Err(e) = storage.flush() {
                tracing::error!(error = %e, "storage.flush failed");
            }
        }
    }

    /// Total queued and inflight messages over all sessions (for metrics).
    pub fn queue_depths(&self) -> (usize, usize) {
        self.sessions().iter().fold((0, 0), |(q, i), s| {
            let st = s.lock();
            (q + st.queue.len(), i + st.inflight.len())
        })
    }

    pub fn retained_count(&self) -> usize {
        self.retained.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Periodic housekeeping until shutdown.
    pub async fn run_housekeeping(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = tick.tick() => self.housekeeping(),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster view: the broker's sessions, router and retained messages follow the replicated state.
// ---------------------------------------------------------------------------------------------

impl Broker {
    /// Without a cluster: apply (and store) one API change of a link; with `drop_sessions`
    /// end the session of that cluster's link client here (and so its routes).
    /// `expect`: whether the link must exist (false when it did not hold: nothing changed).
    pub fn set_link_local(
        &self,
        name: &str,
        spec: Option<String>,
        drop_sessions: bool,
        expect: bool,
    ) -> Result<bool, StorageError> {
        // One change at a time: the check, the store and the in-memory set belong together.
        let _one = self.links.api_lock();
        if self.links.get(name).is_some() != expect {
            return Ok(false);
        }
        if let Some(storage) = &self.storage {
            storage.put_link(name, spec.as_deref())?;
        }
        self.links.set_override(name, spec);
        if drop_sessions {
            for s in self.sessions() {
                if s.link_remote().as_deref() == Some(name) && self.end_session(&s.client_id, Kick::Admin) {
                    tracing::info!(client_id = %s.client_id, link = name, "link session ended: the link was deleted or disabled");
                }
            }
        }
        Ok(true)
    }

    /// End a session now, connected or not: its connection is kicked with `why`, its routes
    /// go, a pending will is published. False if there was no such session.
    fn end_session(&self, client_id: &str, why: Kick) -> bool {
        let mut sessions = self.lock_sessions();
        let Some(s) = sessions.remove(client_id) else { return false };
        self.metrics.sessions.store(sessions.len() as i64, Ordering::Relaxed);
        drop(sessions);
        let will = {
            let mut st = s.lock();
            if let Some(conn) = st.conn.take() {
                let _ = conn.kick.try_send(why);
            }
            st.pending_will.take()
        };
        self.discard(&s);
        if let Some((w, _)) = will {
            self.publish_will(client_id, w);
        }
        true
    }

    pub fn set_cluster(&self, c: &Arc<Cluster>) {
        let _ = self.cluster.set(Arc::downgrade(c));
    }

    pub fn cluster(&self) -> Option<Arc<Cluster>> {
        self.cluster.get().and_then(Weak::upgrade)
    }

    /// Apply committed changes (called by the cluster's applier task, in commit order).
    pub fn cluster_apply(&self, changes: Vec<Change>) {
        let Some(me) = self.cluster().map(|c| c.id) else { return };
        for c in changes {
            match c {
                Change::Reset(snap) => {
                    self.links.set_overrides(snap.links.clone());
                    self.cluster_reset(*snap, me)
                }
                Change::Nodes(_) => {}
                Change::Links(overrides) => self.links.set_overrides(overrides),
                Change::Live { client_id, owner, delivery } => {
                    if owner == me {
                        if let Some(s) = self.session(&client_id) {
                            self.offer(&s, delivery);
                        }
                    }
                }
                Change::Session { client_id, entry, fresh, queue } => {
                    self.apply_session(&client_id, entry, fresh, queue, me);
                }
                Change::Subscription { client_id, filter, sub } => {
                    let Some(s) = self.session(&client_id) else { continue };
                    match sub {
                        Some(sub) => {
                            s.lock().subscriptions.insert(filter.clone(), sub.clone());
                            self.route_add(&s, &filter, &sub);
                        }
                        None => {
                            if s.lock().subscriptions.remove(&filter).is_some() {
                                self.route_remove(&s, &filter);
                            }
                        }
                    }
                }
                Change::Retained { topic, msg } => self.set_retained(topic, msg),
                Change::Queued { client_id, owner, delivery, evicted, .. } => {
                    if owner == me {
                        if let Some(s) = self.session(&client_id) {
                            if !evicted.is_empty() {
                                s.evict_durable(&evicted);
                                self.metrics.messages_dropped_oldest.fetch_add(evicted.len() as u64, Ordering::Relaxed);
                            }
                            // Durable: bounded by the replicated queue's limit, not dropped here.
                            session_offer_durable(&s, delivery);
                        }
                    }
                }
                Change::Refused { client_id, owner } => {
                    if owner == me {
                        inc(&self.metrics.messages_dropped);
                        if let Some(s) = self.session(&client_id) {
                            s.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    }

    fn set_retained(&self, topic: Arc<str>, msg: Option<Arc<Message>>) {
        let mut retained = self.retained.write().unwrap_or_else(|e| e.into_inner());
        match msg {
            Some(m) => {
                retained.insert(topic, m);
            }
            None => {
                retained.remove(&topic);
            }
        }
        self.metrics.retained.store(retained.len() as i64, Ordering::Relaxed);
    }

    fn apply_session(
        &self,
        client_id: &str,
        entry: Option<SessionMeta>,
        fresh: bool,
        queue: Vec<(u64, Delivery)>,
        me: u64,
    ) {
        let Some(meta) = entry else {
            // The session ended (expired, removed, or a non-persistent session disconnected).
            self.end_session(client_id, Kick::TakenOver);
            return;
        };
        let s = {
            let mut sessions = self.lock_sessions();
            let s = match sessions.get(client_id).cloned() {
                Some(old) if fresh => {
                    if let Some(conn) = old.lock().conn.take() {
                        let _ = conn.kick.try_send(Kick::TakenOver);
                    }
                    self.discard(&old);
                    let s = Session::new(client_id.into(), meta.protocol, now_ms());
                    sessions.insert(s.client_id.clone(), s.clone());
                    s
                }
                Some(old) => old,
                None => {
                    let s = Session::new(client_id.into(), meta.protocol, now_ms());
                    sessions.insert(s.client_id.clone(), s.clone());
                    s
                }
            };
            self.metrics.sessions.store(sessions.len() as i64, Ordering::Relaxed);
            s
        };
        let prev_owner = s.owner.swap(meta.owner, Ordering::AcqRel);
        s.epoch.store(meta.epoch, Ordering::Release);
        self.set_session_link(&s, meta.link.as_deref());
        let mut st = s.lock();
        st.protocol = meta.protocol;
        if meta.owner != me {
            // A stub: the owner node holds the connection, queue and inflight window.
            st.expiry_interval = meta.expiry_interval;
            s.set_connected(meta.connected);
            if let Some(conn) = st.conn.take() {
                let _ = conn.kick.try_send(Kick::TakenOver);
                tracing::info!(client_id, owner = meta.owner, "session.taken_over_by_another_node");
            }
            st.queue.clear();
            st.inflight.clear();
            st.awaiting_rel.clear();
            st.pending_will = None;
        } else if !meta.connected && st.conn.is_some() && s.epoch.load(Ordering::Acquire) == meta.epoch {
            // The cluster declared this node's connection gone (it was cut off from the
            // majority): the client must reconnect and register again.
            if let Some(conn) = st.conn.take() {
                let _ = conn.kick.try_send(Kick::TakenOver);
                tracing::info!(client_id, "session.disconnected_by_cluster");
            }
        } else if prev_owner != me {
            // Ours now: what the client has not acknowledged comes from the replicated queue.
            st.expiry_interval = meta.expiry_interval;
            st.inflight.clear();
            st.queue = queue.into_iter().map(|(_, d)| d).collect();
            drop(st);
            s.notify.notify_one();
        }
    }

    fn cluster_reset(&self, snap: Snapshot, me: u64) {
        tracing::info!(view = snap.view, sessions = snap.sessions.len(), "cluster: view reset from a snapshot");
        let gone: Vec<String> = self
            .sessions()
            .iter()
            .filter(|s| !snap.sessions.contains_key(&*s.client_id))
            .map(|s| s.client_id.to_string())
            .collect();
        for id in gone {
            self.apply_session(&id, None, false, Vec::new(), me);
        }
        for (id, e) in &snap.sessions {
            let queue = e.queue.iter().map(|(k, v)| (*k, v.clone())).collect();
            self.apply_session(id, Some(SessionMeta::from(e)), false, queue, me);
            let Some(s) = self.session(id) else { continue };
            let current: Vec<String> = s.lock().subscriptions.keys().cloned().collect();
            for f in current {
                if !e.subscriptions.contains_key(&f) {
                    s.lock().subscriptions.remove(&f);
                    self.route_remove(&s, &f);
                }
            }
            for (f, sub) in &e.subscriptions {
                s.lock().subscriptions.insert(f.clone(), sub.clone());
                self.route_add(&s, f, sub);
            }
        }
        let mut retained = self.retained.write().unwrap_or_else(|e| e.into_inner());
        retained.clear();
        for (t, m) in snap.retained {
            retained.insert(t.into(), Arc::new(m));
        }
        self.metrics.retained.store(retained.len() as i64, Ordering::Relaxed);
    }

    /// A delivery forwarded by another node for a session owned here. Returns the session when
    /// it is connected and its queue is past half its bound (the data plane then waits).
    pub fn deliver_forwarded(&self, client_id: &str, d: Delivery) -> Option<Arc<Session>> {
        let s = self.session(client_id)?;
        let me = self.cluster().map(|c| c.id).unwrap_or(0);
        if s.owner.load(Ordering::Acquire) != me {
            return None;
        }
        let depth = self.offer(&s, d);
        (depth > self.mqtt.max_mqueue_len / 2 && s.is_connected()).then_some(s)
    }

    /// Attach a connection to a session whose CONNECT was committed (the applier prepared the
    /// session object: fresh or resumed, owned here).
    pub fn attach_cluster(&self, client_id: &str, protocol: Protocol, expiry_interval: u32) -> Option<Attached> {
        let session = self.session(client_id)?;
        let conn_id = self.conn_ids.fetch_add(1, Ordering::Relaxed);
        let (kick_tx, kick_rx) = mpsc::channel(2);
        {
            let mut st = session.lock();
            if let Some(conn) = st.conn.take() {
                let _ = conn.kick.try_send(Kick::TakenOver);
                tracing::info!(client_id, "session.taken_over");
            }
            st.protocol = protocol;
            st.conn = Some(ConnHandle { conn_id, kick: kick_tx });
            st.expiry_interval = expiry_interval;
            st.disconnected_at_ms = None;
            st.pending_will = None;
        }
        session.set_connected(true);
        Some(Attached { session, session_present: false, conn_id, kick_rx })
    }
}

fn session_offer_durable(s: &Arc<Session>, d: Delivery) {
    let unbounded = QueueBound { max_len: u32::MAX, max_bytes: 0, drop_oldest: false };
    let _ = s.enqueue(d, &unbounded, true);
}

/// QoS a broker grants: the requested one capped by `max_qos_allowed`.
pub fn granted_qos(requested: QoS, max: u8) -> QoS {
    QoS::from_u8(requested.as_u8().min(max)).unwrap_or(QoS::AtMostOnce)
}
