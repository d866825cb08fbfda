//! Who may connect, publish and subscribe: passwords (with a login throttle) and the ACL.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{Broker, LINK_PREFIX};
use crate::auth::AclAction;
use crate::mqtt::topic;

impl Broker {
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
}
