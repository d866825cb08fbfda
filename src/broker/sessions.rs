//! Sessions: a connection attaches (taking the session over from the one before), detaches, or
//! the session ends; subscriptions and the router entries that follow them.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::control::Op;
use super::message::now_ms;
use super::router::Subscriber;
use super::session::{ConnHandle, Kick, Session, SessionRecord, SessionState, Subscription};
use super::Broker;
use crate::mqtt::packet::{Protocol, SubOptions, Will};
use crate::mqtt::topic;

/// Result of attaching a new connection to a session.
pub struct Attached {
    pub session: Arc<Session>,
    pub session_present: bool,
    pub conn_id: u64,
    pub kick_rx: mpsc::Receiver<Kick>,
}

impl Broker {
    /// Attach a new connection to `client_id`'s session on a single node: resume it, or with
    /// `clean_start` discard it and start a new one. A live connection is taken over.
    pub fn attach(&self, client_id: &str, protocol: Protocol, clean_start: bool, expiry_interval: u32) -> Attached {
        let mut sessions = self.lock_sessions();
        let (session, present) = match sessions.get(client_id).cloned() {
            Some(old) if !clean_start => (old, true),
            old => {
                if let Some(old) = old {
                    if old.lock().kick(Kick::TakenOver) {
                        tracing::info!(client_id, "session.taken_over");
                    }
                    self.discard(&old);
                }
                let s = Session::new(client_id.into(), protocol, now_ms());
                sessions.insert(s.client_id.clone(), s.clone());
                (s, false)
            }
        };
        self.metrics.sessions.store(sessions.len() as i64, Ordering::Relaxed);
        drop(sessions);
        // No storage write here: every persisted session is in the map (loaded at start), and a
        // replaced one was deleted by `discard`, so a new session has no record to remove.
        self.connect_to(session, protocol, expiry_interval, present)
    }

    /// In a cluster: attach to the session a committed CONNECT prepared (fresh or resumed,
    /// owned here). None if it is gone again.
    pub fn attach_committed(
        &self,
        client_id: &str,
        protocol: Protocol,
        expiry_interval: u32,
        present: bool,
    ) -> Option<Attached> {
        let session = self.session(client_id)?;
        Some(self.connect_to(session, protocol, expiry_interval, present))
    }

    /// The one takeover: the session's live connection (if any) is kicked, the new one holds it.
    fn connect_to(&self, session: Arc<Session>, protocol: Protocol, expiry_interval: u32, present: bool) -> Attached {
        let conn_id = self.conn_ids.fetch_add(1, Ordering::Relaxed);
        let (kick_tx, kick_rx) = mpsc::channel(2);
        {
            let mut st = session.lock();
            if st.kick(Kick::TakenOver) {
                tracing::info!(client_id = %session.client_id, "session.taken_over");
            }
            st.protocol = protocol;
            st.conn = Some(ConnHandle { conn_id, kick: kick_tx });
            st.expiry_interval = expiry_interval;
            st.disconnected_at_ms = None;
            st.pending_will = None;
            st.dirty = true;
        }
        session.set_connected(true);
        Attached { session, session_present: present, conn_id, kick_rx }
    }

    /// Remove a session's subscriptions from the router and its record from storage.
    pub(super) fn discard(&self, session: &Arc<Session>) {
        // After a write in progress (`persist` holds the writer from its check that the
        // session is current to the end of its write), so `on_disk` is final here.
        let writer = self.storage.as_ref().map(|s| s.writer());
        let (subs, on_disk) = {
            let mut st = session.lock();
            let subs: Vec<Arc<str>> = st.subscriptions.drain().map(|(k, _)| k).collect();
            (subs, st.on_disk)
        };
        for f in &subs {
            self.route_remove(session, f);
        }
        let _writer = writer;
        if let (Some(storage), true) = (&self.storage, on_disk) {
            if let Err(e) = storage.remove_session(&session.client_id) {
                tracing::warn!(client_id = %session.client_id, error = %e, "storage.remove_session failed");
            }
        }
    }

    /// The one way a session ends: if `client_id`'s registered session passes `cond` (checked
    /// under its lock), it leaves the map, its connection gets `why`, its subscriptions and
    /// stored record go and its pending will is published. Whether it ended.
    pub(super) fn end_if(
        &self,
        client_id: &str,
        cond: impl FnOnce(&Arc<Session>, &SessionState) -> bool,
        why: Kick,
    ) -> bool {
        let mut sessions = self.lock_sessions();
        let Some(s) = sessions.get(client_id).cloned() else { return false };
        let will = {
            let mut st = s.lock();
            if !cond(&s, &st) {
                return false;
            }
            st.kick(why);
            st.pending_will.take()
        };
        sessions.remove(client_id);
        self.metrics.sessions.store(sessions.len() as i64, Ordering::Relaxed);
        // Under the map, as `attach` does: a reconnect cannot make and store a new session
        // before this one's stored record is removed (it would be removed with it).
        self.discard(&s);
        drop(sessions);
        if let Some((w, _)) = will {
            self.publish_will(client_id, w);
        }
        true
    }

    /// End a session now, connected or not: its connection is kicked with `why`, its routes
    /// go, a pending will is published. False if there was no such session.
    pub fn end_session(&self, client_id: &str, why: Kick) -> bool {
        self.end_if(client_id, |_, _| true, why)
    }

    /// Discard an offline session (API DELETE): its subscriptions, queue and stored record.
    /// A pending delayed will is published, as when the session expires. False when there is
    /// no such offline session.
    pub fn remove_offline_session(&self, client_id: &str) -> bool {
        let removed = self.end_if(client_id, |_, st| st.conn.is_none(), Kick::Admin);
        if removed {
            tracing::info!(client_id, "session.removed");
        }
        removed
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
        if let Some(r) = self.replica() {
            if session.owner.load(Ordering::Acquire) != r.node() {
                // Taken over by another node: the session lives on there; our object is its stub.
                end_session = false;
            } else if ours {
                // Only the connection that still holds the session says it is gone: one taken
                // over on this node would otherwise commit a Disconnect under the new
                // connection's epoch, and the new connection would be put out.
                let (expiry, epoch) = (session.lock().expiry_interval, session.epoch.load(Ordering::Acquire));
                r.commit_detached(vec![Op::Disconnect {
                    client_id: session.client_id.to_string(),
                    epoch,
                    at_ms: now,
                    expiry_interval: expiry,
                }]);
            }
        }
        if end_session {
            self.end_if(&session.client_id, |s, st| Arc::ptr_eq(s, session) && st.conn.is_none(), Kick::TakenOver);
        } else {
            self.persist(session);
        }
        if let Some(will) = publish_now {
            self.publish_will(&session.client_id, will);
        }
    }

    /// Write a dirty persistent session: its record, and of its queue only the entries added
    /// and removed since the last write.
    pub(super) fn persist(&self, session: &Arc<Session>) {
        let Some(storage) = self.storage.as_ref().filter(|s| s.failed().is_none()) else { return };
        // One writer at a time: two writes of one session applied out of order could bring
        // back an entry the later one removed. Locks in the order sessions map, writer, session
        // (`attach` discards a session while it holds the map): the writer is taken while the
        // map says the session is current, and held to the end of the write, so a `discard`
        // comes after it and sees `on_disk`.
        let _writer = {
            let sessions = self.lock_sessions();
            if !sessions.get(&session.client_id).is_some_and(|s| Arc::ptr_eq(s, session)) {
                return;
            }
            storage.writer()
        };
        let (rec, put, del, replace) = {
            let mut st = session.lock();
            if !st.is_persistent() || !st.dirty {
                return;
            }
            st.dirty = false;
            let rec = SessionRecord::capture(session, &st);
            let (put, del, replace) = match &st.stored {
                Some(stored) => {
                    let (put, del) = super::mqueue::diff(&st.queue, stored);
                    (put.into_iter().map(|(k, d)| (k, d.clone())).collect::<Vec<_>>(), del, false)
                }
                None => (st.queue.keyed().map(|(k, d)| (k, d.clone())).collect(), Vec::new(), true),
            };
            st.stored = Some(st.queue.keyed().map(|(k, _)| k).collect());
            st.on_disk = true;
            (rec, put, del, replace)
        };
        if let Err(e) = storage.write_session(&rec, &put, &del, replace) {
            tracing::warn!(client_id = %session.client_id, error = %e, "storage.write_session failed");
            let mut st = session.lock();
            st.stored = None;
            st.dirty = true;
        }
    }

    /// Add (or replace) a subscription of `session`. Returns whether it is new.
    pub fn subscribe(&self, session: &Arc<Session>, filter: &str, opts: SubOptions, id: Option<u32>) -> bool {
        let sub = Subscription { opts, id: id.and_then(std::num::NonZeroU32::new) };
        let new = {
            let mut st = session.lock();
            st.dirty = true;
            st.subscriptions.insert(Arc::from(filter), sub.clone()).is_none()
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
        let subs: Vec<(Arc<str>, Subscription)> =
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
    pub(super) fn route_add(&self, session: &Arc<Session>, filter: &str, sub: &Subscription) {
        let local = !session.link.load(Ordering::Relaxed);
        let subscriber = Subscriber::new(session.clone(), sub.opts, sub.id, local);
        match topic::parse_shared(filter) {
            Some(Ok((group, inner))) => self.router.subscribe(inner, Some(group), subscriber),
            _ => self.router.subscribe(filter, None, subscriber),
        };
        self.routes_changed.notify_waiters();
    }

    pub(super) fn route_remove(&self, session: &Arc<Session>, filter: &str) {
        match topic::parse_shared(filter) {
            Some(Ok((group, inner))) => self.router.unsubscribe(inner, Some(group), session),
            _ => self.router.unsubscribe(filter, None, session),
        };
        self.routes_changed.notify_waiters();
    }
}
