//! The accepting side of a link: which CONNECTs are another cluster's link client, whether
//! this cluster takes them (each refusal has its own code and a reason string the remote shows
//! in its link status), the route list in their CONNACK, their outbox bound and the sequence
//! stamp of what is sent to them. Installed into the broker as its `LinkHooks`.

use crate::broker::control::{Admission, LinkAuth, LinkHello, LinkHooks};
use crate::broker::session::QueueBound;
use crate::mqtt::packet::reason;

use super::*;

fn refuse(code: u8, why: Option<String>) -> Admission {
    Admission::Refused { code, why, bad_credentials: false }
}

impl LinkHooks for Registry {
    fn admit(&self, h: &LinkHello<'_>) -> Admission {
        let prop = |k: &str| h.user_properties.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
        let from = prop(LINK_PROPERTY);
        let me = self.cluster_name();
        let Some(remote) = from else {
            if h.on_link_listener {
                tracing::info!("conn.refused: the link listener accepts only cluster-link clients");
                return refuse(reason::NOT_AUTHORIZED, None);
            }
            if let Some(owner) = h.reserved_by {
                // A link session's client id is reserved for that link: taking it over would
                // drain the messages meant for the other region.
                tracing::warn!(client_id = %h.client_id, link = %owner,
                    "conn.refused: the client id belongs to another cluster's link session");
                return refuse(reason::CLIENT_IDENTIFIER_NOT_VALID, None);
            }
            return Admission::Client;
        };
        if !h.on_link_listener {
            tracing::warn!(
                remote,
                "conn.refused: a cluster-link client on a listener that is not a link listener (tcp.clink / ssl.clink)"
            );
            let why = "this is not a link listener: link to the remote's tcp.clink / ssl.clink";
            return refuse(reason::USE_ANOTHER_SERVER, Some(why.into()));
        }
        if let Some(owner) = h.reserved_by.filter(|o| *o != remote) {
            tracing::warn!(client_id = %h.client_id, link = %owner,
                "conn.refused: the client id belongs to another cluster's link session");
            return refuse(reason::CLIENT_IDENTIFIER_NOT_VALID, None);
        }
        if remote == me {
            tracing::warn!(remote, "conn.refused: a link from a cluster with this cluster's own name");
            let why = format!("this cluster is also named {remote}: two linked clusters need distinct names");
            return refuse(reason::SERVER_MOVED, Some(why));
        }
        if let Some(target) = prop(LINK_TARGET_PROPERTY).filter(|t| *t != me) {
            tracing::warn!(target, me, "conn.refused: a link meant for another cluster");
            let why = format!("this is cluster {me}, not {target}: a link's name must be the remote's cluster.name");
            return refuse(reason::SERVER_MOVED, Some(why));
        }
        match self.configured(remote) {
            None => {
                tracing::warn!(remote, "conn.refused: link from a cluster with no link configured here");
                return refuse(reason::NOT_AUTHORIZED, Some(format!("cluster {me} has no link named {remote}")));
            }
            Some(false) => {
                tracing::info!(remote, "conn.refused: the link to this cluster is disabled here");
                return refuse(reason::BANNED, Some(format!("the link {remote} is disabled on cluster {me}")));
            }
            Some(true) => {}
        }
        let theirs = prop(LINK_VERSION_PROPERTY);
        if theirs != Some(LINK_VERSION) {
            tracing::warn!(theirs = ?theirs, ours = LINK_VERSION, "conn.refused: link protocol version mismatch");
            let why = format!("link protocol {LINK_VERSION} here, {} there", theirs.unwrap_or("none"));
            return refuse(reason::UNSUPPORTED_PROTOCOL_VERSION, Some(why));
        }
        Admission::Link { remote: remote.to_string() }
    }

    /// A link with a password expects the other cluster's link client to present the same
    /// username and password (the pair is configured on both sides); a link without one is
    /// authenticated like any client (and warned about at startup).
    fn authenticate(&self, remote: &str, username: Option<&str>, password: Option<&[u8]>) -> LinkAuth {
        let Some(l) = self.get(remote).filter(|l| l.password.is_some()) else { return LinkAuth::AsClient };
        let pass_ok =
            crate::auth::ct_eq(password.unwrap_or_default(), l.password.as_deref().unwrap_or_default().as_bytes());
        if username != l.username.as_deref() || !pass_ok {
            tracing::warn!(link = %l.name, "conn.refused: a link client without this link's credentials");
            return LinkAuth::Refused(format!(
                "the link {} on cluster {} has another username/password",
                l.name,
                self.cluster_name()
            ));
        }
        LinkAuth::Accepted
    }

    fn accepted(
        &self,
        client_id: &str,
        user_properties: &[(String, String)],
        session_present: bool,
        routes: &[&Arc<str>],
        budget: usize,
    ) -> Vec<(String, String)> {
        let prop = |k: &str| user_properties.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
        tracing::info!(
            remote = prop(LINK_PROPERTY).unwrap_or("?"),
            actor = prop(LINK_ACTOR_PROPERTY).unwrap_or("?"),
            incarnation = prop(LINK_INCARNATION_PROPERTY).unwrap_or("?"),
            session_present,
            "link.accepted"
        );
        // A link client learns the routes its session holds here (its route bootstrap), within
        // its maximum packet size; routes left off stay until the session ends.
        let mut budget = budget;
        let mut out = Vec::with_capacity(routes.len());
        for f in routes {
            let cost = 5 + LINK_ROUTE_PROPERTY.len() + f.len();
            if cost > budget {
                tracing::warn!(client_id, "link.routes: the route list does not fit the CONNACK; cut short");
                out.push((LINK_ROUTES_CUT_PROPERTY.to_string(), String::new()));
                break;
            }
            budget -= cost;
            out.push((LINK_ROUTE_PROPERTY.to_string(), f.to_string()));
        }
        out
    }

    fn max_connack(&self) -> usize {
        LINK_MAX_CONNACK as usize
    }

    fn outbox_bound(&self, remote: &str) -> QueueBound {
        let (len, bytes) = self
            .outbox_of(remote)
            .unwrap_or((crate::config::DEFAULT_LINK_OUTBOX, crate::config::DEFAULT_LINK_OUTBOX_BYTES));
        QueueBound { max_len: len.min(u32::MAX as usize) as u32, max_bytes: bytes, drop_oldest: true }
    }

    fn stamp(&self, seq: u64, qos: QoS, props: &mut Properties) {
        props.user_properties.push((LINK_SEQ_PROPERTY.to_string(), seq.to_string()));
        props.user_properties.push((LINK_QOS_PROPERTY.to_string(), qos.as_u8().to_string()));
    }

    fn next_seq(&self) -> Option<u64> {
        self.next_local_seq()
    }
}
