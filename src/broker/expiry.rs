//! Session expiry and delayed wills (once a second), and checkpoints of persistent sessions.

use std::sync::Arc;
use std::time::Duration;

use super::message::now_ms;
use super::session::Kick;
use super::Broker;

impl Broker {
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
            if let Some(since) = st.disconnected_at_ms.filter(|_| self.replica.get().is_none()) {
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
            if self.end_if(&s.client_id, |x, st| Arc::ptr_eq(x, &s) && st.conn.is_none(), Kick::TakenOver) {
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
        let r = if all { storage.flush() } else { storage.seal() };
        if let Err(e) = r {
            tracing::error!(error = %e, "storage.flush failed");
        }
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
