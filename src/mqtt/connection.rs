//! One MQTT client connection: CONNECT handshake, the packet loop, keep-alive, outbound
//! delivery from the session queue, takeover and shutdown.
//!
//! ```text
//!  accept ──▶ awaiting CONNECT ──(CONNACK 0)──▶ connected ──▶ closing (DISCONNECT/close) ──▶ detach
//!                 │ timeout / bad packet / refused                   ▲ kick (takeover, admin,
//!                 └──────────────────────────────▶ closed            │       shutdown), error
//! ```
//! Owned by the listener's accept loop (one task per connection). The task owns the socket; it
//! takes the session lock briefly to move messages between the session queue and its write buffer.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::Instrument;

use crate::auth::AclAction;
use crate::broker::message::{now_ms, Delivery, Message};
use crate::broker::session::{Inflight, Kick, Session};
use crate::broker::{granted_qos, Broker};
use crate::cluster::{Command, Response};
use crate::metrics::inc;
use crate::mqtt::codec::{self, CodecError};
use crate::mqtt::packet::{reason, *};
use crate::mqtt::topic;

/// Stop pulling from the session queue while this much is waiting to be written.
const HIGH_WATER: usize = 64 * 1024;
/// Read buffer of an idle connection; a connection whose reads fill it gets `BUSY_READ`.
const IDLE_READ: usize = 512;
const BUSY_READ: usize = 16 * 1024;
/// A read this large means traffic (a PINGREQ is 2 bytes, a PUBACK 4).
const BUSY_MARK: usize = 64;
/// CONNECT user property by which another cluster's link client names its cluster.
pub const LINK_PROPERTY: &str = "strait-link";
/// CONNECT user property carrying the link protocol version; a link client of another version
/// is refused (0x84) with the reason in its link status.
pub const LINK_VERSION_PROPERTY: &str = "strait-link-version";
pub const LINK_VERSION: &str = "1";
/// CONNECT user property naming the cluster a link client means to reach (its link's name):
/// a link pointed at the wrong cluster is refused (0x87) instead of pulling its messages.
pub const LINK_TARGET_PROPERTY: &str = "strait-link-target";
/// CONNECT user properties naming the node that holds the link and its Raft term (logged by
/// the accepting side, shown in its API).
pub const LINK_ACTOR_PROPERTY: &str = "strait-link-actor";
pub const LINK_INCARNATION_PROPERTY: &str = "strait-link-incarnation";

/// Acknowledgements waiting for a cluster commit before this connection stops reading.
const PENDING_MAX: usize = 256;

type Commit = oneshot::Receiver<Result<Vec<Response>, String>>;

/// An acknowledgement in the order MQTT requires (the order of the packets it answers).
enum Pending {
    Ready(Box<Packet>),
    /// Waiting for a cluster commit; then `then` is sent.
    Wait(Commit, After),
}

enum After {
    /// PUBACK / PUBREC for an inbound PUBLISH (QoS 2: awaiting PUBREL from then on).
    Publish {
        pkid: u16,
        qos: QoS,
        code: u8,
    },
    /// SUBACK; `committed` are the positions whose subscriptions were proposed, `retained`
    /// what to send after it (filter, granted QoS, subscription id, only if new).
    SubAck {
        packet_id: u16,
        codes: Vec<u8>,
        committed: Vec<usize>,
        retained: Vec<(String, QoS, Option<u32>)>,
    },
    UnsubAck {
        packet_id: u16,
        codes: Vec<u8>,
        committed: Vec<usize>,
    },
    /// PUBREL for an outbound QoS 2 delivery, once its durable copy's removal is committed.
    PubRel {
        pkid: u16,
    },
}

/// Why the packet loop ended.
enum Close {
    /// Client sent DISCONNECT; `keep_will` for v5 reason 0x04.
    Normal {
        keep_will: bool,
    },
    /// Network closed or failed without DISCONNECT.
    Abnormal,
    /// We end the connection with this reason (DISCONNECT sent to v5 clients).
    Server(u8, &'static str),
    Kicked(Kick),
}

/// Serve one connection from accept to close. Never panics on client input.
pub async fn serve<R, W>(rd: R, wr: W, peer: SocketAddr, broker: Arc<Broker>, link_only: bool)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let span = tracing::info_span!("conn", %peer, client_id = tracing::field::Empty);
    async move {
        broker.metrics.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        inc(&broker.metrics.connections_total);
        let mut conn = Conn {
            rd,
            wr,
            // Small until used: an idle connection costs a 512-byte read buffer and an empty
            // write buffer (it grows on the first write); see `grow_inbuf` for busy ones.
            inbuf: BytesMut::with_capacity(IDLE_READ),
            outbuf: BytesMut::new(),
            busy_read: false,
            peer,
            broker: broker.clone(),
            link_only,
        };
        conn.run().await;
        broker.metrics.connections.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
    .instrument(span)
    .await
}

struct Conn<R, W> {
    rd: R,
    wr: W,
    inbuf: BytesMut,
    outbuf: BytesMut,
    peer: SocketAddr,
    broker: Arc<Broker>,
    /// The link listener: only other clusters' link clients are accepted.
    link_only: bool,
    /// The read buffer was switched to `BUSY_READ` (see `grow_inbuf`).
    busy_read: bool,
}

/// State of a connection after a successful CONNECT.
struct Live {
    session: Arc<Session>,
    conn_id: u64,
    kick_rx: mpsc::Receiver<Kick>,
    protocol: Protocol,
    client_id: Arc<str>,
    username: Option<String>,
    /// Boxed: most connections have none, and `Live` lives as long as the connection.
    will: Option<Box<Will>>,
    keep_alive: Option<Duration>,
    aliases: HashMap<u16, String>,
    /// Client's Maximum Packet Size (v5), u32::MAX when not given.
    max_out: usize,
    /// Client asked not to get reason strings / user properties on errors.
    problem_info: bool,
    connect_expiry: u32,
    /// A connected subscriber whose queue this connection's publishes filled past half: stop
    /// reading until it drains (TCP backpressure on the publisher instead of drops).
    throttle: Option<crate::broker::Congestion>,
    /// Acknowledgements in order, some waiting for cluster commits.
    pending: VecDeque<Pending>,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Conn<R, W> {
    async fn run(&mut self) {
        let connect = match Box::pin(self.read_connect()).await {
            Some(c) => c,
            None => return,
        };
        // The CONNECT phases run boxed: their state would otherwise widen the connection's
        // task for its whole life (the task is one allocation sized for its largest state).
        let Some(mut live) = Box::pin(self.accept_connect(*connect)).await else { return };
        tracing::Span::current().record("client_id", &*live.client_id);
        tracing::debug!(protocol = ?live.protocol, "conn.connected");
        let close = self.packet_loop(&mut live).await;
        let will = match &close {
            Close::Normal { keep_will: false } => None,
            _ => live.will.take().map(|w| *w),
        };
        match close {
            Close::Server(code, why) => {
                tracing::info!(peer = %self.peer, reason = code, why, "conn.closed_by_server");
                Box::pin(self.send_disconnect(&live, code, Some(why))).await;
            }
            Close::Kicked(k) => {
                let (code, why) = match k {
                    Kick::TakenOver => (reason::SESSION_TAKEN_OVER, None),
                    Kick::Admin => (reason::ADMINISTRATIVE_ACTION, None),
                    Kick::Shutdown => (reason::SERVER_SHUTTING_DOWN, None),
                    Kick::Unavailable => (reason::SERVER_UNAVAILABLE, Some("this node is cut off from its cluster")),
                };
                Box::pin(self.send_disconnect(&live, code, why)).await;
            }
            Close::Normal { .. } | Close::Abnormal => {}
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.wr.shutdown()).await;
        self.broker.detach(&live.session, live.conn_id, will);
        tracing::debug!("conn.closed");
    }

    /// Wait for CONNECT within the connect timeout. Refuses bad first packets.
    async fn read_connect(&mut self) -> Option<Box<Connect>> {
        let deadline = Instant::now() + self.broker.mqtt.connect_timeout;
        let max = self.broker.mqtt.max_packet_size as usize;
        loop {
            match codec::decode_limited(&mut self.inbuf, None, max, self.broker.mqtt.max_user_properties) {
                Ok(Some(Packet::Connect(c))) => return Some(c),
                Ok(Some(_)) => {
                    inc(&self.broker.metrics.protocol_errors);
                    tracing::info!(peer = %self.peer, "conn.refused: first packet is not CONNECT");
                    return None;
                }
                Ok(None) => {}
                Err(CodecError::UnsupportedProtocol(level)) => {
                    tracing::info!(peer = %self.peer, level, "conn.refused: unsupported protocol version");
                    inc(&self.broker.metrics.connections_refused);
                    let code = if level >= 5 { reason::UNSUPPORTED_PROTOCOL_VERSION } else { 1 };
                    // 3.1.1-shaped CONNACK: understood by clients of every version.
                    self.outbuf.extend_from_slice(&[0x20, 0x02, 0x00, if level >= 5 { 0x01 } else { code }]);
                    self.flush_now().await;
                    return None;
                }
                Err(e) => {
                    inc(&self.broker.metrics.malformed_packets);
                    tracing::info!(peer = %self.peer, error = %e, "conn.refused: bad CONNECT");
                    return None;
                }
            }
            let read = tokio::select! {
                r = self.rd.read_buf(&mut self.inbuf) => r,
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::info!(peer = %self.peer, "conn.closed: no CONNECT within the connect timeout");
                    return None;
                }
                _ = self.broker.shutdown.cancelled() => return None,
            };
            match read {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.broker.metrics.bytes_in.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed),
            };
        }
    }

    /// Validate CONNECT, authenticate, attach the session and send CONNACK.
    async fn accept_connect(&mut self, c: Connect) -> Option<Live> {
        let cfg = &self.broker.mqtt;
        let v5 = c.protocol.is_v5();
        let mut assigned = None;
        let mut client_id = c.client_id.clone();
        let mut fail = None;
        // Why, for a 5.0 client (a link shows it in its status on the other side).
        let mut why: Option<String> = None;
        // Another cluster's link client names its cluster; it must be a configured link.
        let prop = |k: &str| c.properties.user_properties.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
        let link_from = prop(LINK_PROPERTY).map(str::to_string);
        if c.properties.authentication_method.is_some() {
            fail = Some(reason::BAD_AUTHENTICATION_METHOD);
        } else if self.link_only && link_from.is_none() {
            tracing::info!(peer = %self.peer, "conn.refused: the link listener accepts only cluster-link clients");
            fail = Some(reason::NOT_AUTHORIZED);
        } else if !self.link_only && link_from.is_some() {
            tracing::warn!(peer = %self.peer, remote = ?link_from,
                "conn.refused: a cluster-link client on a listener that is not a link listener (tcp.clink / ssl.clink)");
            fail = Some(reason::USE_ANOTHER_SERVER);
            why = Some("this is not a link listener: link to the remote's tcp.clink / ssl.clink".into());
        } else if let Some(owner) =
            self.broker.session(&client_id).and_then(|s| s.link_remote()).filter(|r| link_from.as_deref() != Some(&**r))
        {
            // A link session's client id is reserved for that link: taking it over would drain
            // the messages meant for the other region.
            tracing::warn!(peer = %self.peer, client_id = %client_id, link = %owner,
                "conn.refused: the client id belongs to another cluster's link session");
            fail = Some(reason::CLIENT_IDENTIFIER_NOT_VALID);
        } else if let Some(remote) = link_from.as_deref().filter(|r| *r == self.broker.links.cluster_name()) {
            tracing::warn!(peer = %self.peer, remote = %remote, "conn.refused: a link from a cluster with this cluster's own name");
            fail = Some(reason::SERVER_MOVED);
            why = Some(format!("this cluster is also named {remote}: two linked clusters need distinct names"));
        } else if let Some(target) = link_from
            .as_ref()
            .and_then(|_| prop(LINK_TARGET_PROPERTY))
            .filter(|t| *t != self.broker.links.cluster_name())
        {
            tracing::warn!(peer = %self.peer, target = %target, me = %self.broker.links.cluster_name(),
                "conn.refused: a link meant for another cluster");
            fail = Some(reason::SERVER_MOVED);
            why = Some(format!(
                "this is cluster {}, not {target}: a link's name must be the remote's cluster.name",
                self.broker.links.cluster_name()
            ));
        } else if let Some((remote, enabled)) =
            link_from.as_deref().map(|r| (r, self.broker.links.configured(r))).filter(|(_, e)| *e != Some(true))
        {
            if enabled.is_none() {
                tracing::warn!(peer = %self.peer, remote = %remote, "conn.refused: link from a cluster with no link configured here");
                fail = Some(reason::NOT_AUTHORIZED);
                why = Some(format!("cluster {} has no link named {remote}", self.broker.links.cluster_name()));
            } else {
                tracing::info!(peer = %self.peer, remote = %remote, "conn.refused: the link to this cluster is disabled here");
                fail = Some(reason::BANNED);
                why = Some(format!("the link {remote} is disabled on cluster {}", self.broker.links.cluster_name()));
            }
        } else if link_from.is_some() && prop(LINK_VERSION_PROPERTY) != Some(LINK_VERSION) {
            let theirs = prop(LINK_VERSION_PROPERTY);
            tracing::warn!(peer = %self.peer, theirs = ?theirs, ours = LINK_VERSION, "conn.refused: link protocol version mismatch");
            fail = Some(reason::UNSUPPORTED_PROTOCOL_VERSION);
            why = Some(format!("link protocol {LINK_VERSION} here, {} there", theirs.unwrap_or("none")));
        } else if client_id.starts_with(crate::broker::LINK_PUBLISHER) {
            // (`$link:` names the origin of messages that came over a cluster link.)
            fail = Some(reason::CLIENT_IDENTIFIER_NOT_VALID);
        } else if client_id.len() > cfg.max_clientid_len {
            self.broker.metrics.limit_hit(crate::metrics::Limit::ClientIdLength);
            fail = Some(reason::CLIENT_IDENTIFIER_NOT_VALID);
        } else if client_id.is_empty() {
            if !v5 && !c.clean_start {
                fail = Some(reason::CLIENT_IDENTIFIER_NOT_VALID);
            } else {
                client_id = format!("strait-{:016x}", rand::random::<u64>());
                if v5 {
                    assigned = Some(client_id.clone());
                }
            }
        }
        // A link with a password expects the other cluster's link client to present the same
        // username and password (the pair is configured on both sides); a link without one is
        // authenticated like any client (and warned about at startup).
        let link_secret = link_from.as_deref().and_then(|r| self.broker.links.get(r)).filter(|l| l.password.is_some());
        if let (None, Some(l)) = (fail, &link_secret) {
            let pass_ok = crate::auth::ct_eq(
                c.password.as_deref().unwrap_or_default(),
                l.password.as_deref().unwrap_or_default().as_bytes(),
            );
            if c.username != l.username || !pass_ok {
                tracing::warn!(peer = %self.peer, link = %l.name, "conn.refused: a link client without this link's credentials");
                inc(&self.broker.metrics.auth_failures);
                fail = Some(reason::BAD_USER_NAME_OR_PASSWORD);
                why = Some(format!(
                    "the link {} on cluster {} has another username/password",
                    l.name,
                    self.broker.links.cluster_name()
                ));
            }
        } else if fail.is_none() {
            let user = c.username.as_deref();
            let ip = self.peer.ip();
            if user.is_none() && c.password.is_none() && !self.broker.authenticate_connect(ip, None, None).await {
                fail = Some(reason::NOT_AUTHORIZED);
            } else if !self.broker.authenticate_connect(ip, user, c.password.as_deref()).await {
                fail = Some(reason::BAD_USER_NAME_OR_PASSWORD);
            }
            if fail.is_some() {
                inc(&self.broker.metrics.auth_failures);
            }
        }
        if let (None, Some(w)) = (fail, &c.will) {
            if !topic::valid_topic_name(&w.topic) {
                fail = Some(reason::TOPIC_NAME_INVALID);
            } else if w.qos.as_u8() > cfg.max_qos_allowed {
                fail = Some(reason::QOS_NOT_SUPPORTED);
            } else if w.retain && !cfg.retain_available {
                fail = Some(reason::RETAIN_NOT_SUPPORTED);
            } else if !self.broker.authorize(&client_id, c.username.as_deref(), AclAction::Publish, &w.topic) {
                fail = Some(reason::NOT_AUTHORIZED);
            }
        }
        if let Some(code) = fail {
            inc(&self.broker.metrics.connections_refused);
            tracing::info!(peer = %self.peer, client_id = %c.client_id, reason = code, "conn.refused");
            let mut properties = Properties::default();
            if v5 {
                properties.reason_string = why;
            }
            let ack = ConnAck { session_present: false, code, properties };
            codec::encode(&Packet::ConnAck(ack), c.protocol, &mut self.outbuf);
            self.flush_now().await;
            return None;
        }
        let max_expiry = cfg.session_expiry_interval.as_secs().min(u64::from(u32::MAX)) as u32;
        let requested = if v5 {
            c.properties.session_expiry_interval.unwrap_or(0)
        } else if c.clean_start {
            0
        } else {
            max_expiry
        };
        let expiry = requested.min(max_expiry);
        let server_keep_alive = cfg.server_keepalive;
        let ka_secs = if v5 { server_keep_alive.unwrap_or(c.keep_alive) } else { c.keep_alive };
        let keep_alive = (ka_secs > 0).then(|| Duration::from_secs_f64(f64::from(ka_secs) * cfg.keepalive_multiplier));
        // A link client's window is its own (`links[].max_inflight` of the other side): it
        // commits each message before acknowledging, so it needs more in flight than a client.
        let cap = if link_from.is_some() { u16::MAX } else { cfg.max_inflight };
        let client_window = c.properties.receive_maximum.unwrap_or(u16::MAX).min(cap).max(1);
        let max_out = c.properties.maximum_packet_size.map(|m| m as usize).unwrap_or(usize::MAX);

        let attached = match self.broker.cluster() {
            None => {
                let a = self.broker.attach(&client_id, c.protocol, c.clean_start, expiry);
                self.broker.set_session_link(&a.session, link_from.as_deref());
                a
            }
            Some(cluster) => {
                // In a cluster the session's ownership is committed first; a node without a
                // leader (partitioned minority) refuses.
                let refuse = |why: String| {
                    tracing::info!(peer = %self.peer, client_id = %client_id, why, "conn.refused: server unavailable");
                };
                let mut present = false;
                let mut ok = cluster.available();
                if !ok {
                    refuse("no leader with a valid lease".into());
                } else {
                    let cmd = Command::Connect {
                        client_id: client_id.clone(),
                        node: cluster.id,
                        protocol: c.protocol,
                        clean_start: c.clean_start,
                        expiry_interval: expiry,
                        will: c.will.clone(),
                        link: link_from.clone(),
                    };
                    match cluster.commit_wait(vec![cmd]).await {
                        Ok(rs) => {
                            if let Some(crate::cluster::Outcome::Connected { present: p, .. }) =
                                rs.into_iter().next().map(|r| r.outcome)
                            {
                                present = p;
                            }
                        }
                        Err(e) => {
                            ok = false;
                            refuse(e);
                        }
                    }
                }
                let attached = if ok { self.broker.attach_cluster(&client_id, c.protocol, expiry) } else { None };
                match attached {
                    Some(mut a) => {
                        a.session_present = present;
                        a
                    }
                    None => {
                        inc(&self.broker.metrics.connections_refused);
                        let ack = ConnAck {
                            session_present: false,
                            code: reason::SERVER_UNAVAILABLE,
                            properties: Properties::default(),
                        };
                        codec::encode(&Packet::ConnAck(ack), c.protocol, &mut self.outbuf);
                        self.flush_now().await;
                        return None;
                    }
                }
            }
        };
        {
            let mut st = attached.session.lock();
            st.window = client_window;
            st.max_packet_size = c.properties.maximum_packet_size.unwrap_or(u32::MAX);
            st.username = c.username.clone();
        }
        let mut props = Properties::default();
        if v5 {
            props.receive_maximum = Some(cfg.max_inflight);
            props.maximum_packet_size = Some(cfg.max_packet_size);
            props.topic_alias_maximum = Some(cfg.max_topic_alias);
            props.assigned_client_identifier = assigned;
            if cfg.max_qos_allowed < 2 {
                props.maximum_qos = Some(cfg.max_qos_allowed);
            }
            if !cfg.retain_available {
                props.retain_available = Some(0);
            }
            if !cfg.wildcard_subscription {
                props.wildcard_subscription_available = Some(0);
            }
            if !cfg.shared_subscription {
                props.shared_subscription_available = Some(0);
            }
            props.subscription_identifier_available = Some(1);
            if requested != expiry {
                props.session_expiry_interval = Some(expiry);
            }
            props.server_keep_alive = server_keep_alive;
        }
        if v5 && link_from.is_some() {
            tracing::info!(
                remote = ?link_from,
                actor = prop(LINK_ACTOR_PROPERTY).unwrap_or("?"),
                incarnation = prop(LINK_INCARNATION_PROPERTY).unwrap_or("?"),
                session_present = attached.session_present,
                "link.accepted"
            );
            // A link client learns the routes its session holds here (its route bootstrap).
            let st = attached.session.lock();
            let mut routes: Vec<&String> = st.subscriptions.keys().collect();
            routes.sort();
            // Within the client's maximum packet size (less room for the rest of the CONNACK);
            // routes left off stay until the session ends.
            let mut budget = (max_out.min(crate::link::LINK_MAX_CONNACK as usize)).saturating_sub(1024);
            let key = crate::link::LINK_ROUTE_PROPERTY;
            for f in routes {
                let cost = 5 + key.len() + f.len();
                if cost > budget {
                    tracing::warn!(client_id = %client_id, "link.routes: the route list does not fit the CONNACK; cut short");
                    props.user_properties.push((crate::link::LINK_ROUTES_CUT_PROPERTY.to_string(), String::new()));
                    break;
                }
                budget -= cost;
                props.user_properties.push((key.to_string(), f.clone()));
            }
        }
        let ack = ConnAck { session_present: attached.session_present, code: reason::SUCCESS, properties: props };
        codec::encode(&Packet::ConnAck(ack), c.protocol, &mut self.outbuf);
        let live = Live {
            session: attached.session,
            conn_id: attached.conn_id,
            kick_rx: attached.kick_rx,
            protocol: c.protocol,
            client_id: client_id.into(),
            username: c.username,
            will: c.will.map(Box::new),
            keep_alive,
            aliases: HashMap::new(),
            max_out,
            problem_info: c.properties.request_problem_information != Some(0),
            connect_expiry: expiry,
            throttle: None,
            pending: VecDeque::new(),
        };
        if attached.session_present {
            self.resend_inflight(&live);
        }
        Some(live)
    }

    /// On session resume: PUBLISH (DUP) every unacknowledged message, PUBREL every released one.
    fn resend_inflight(&mut self, live: &Live) {
        let is_link = live.session.link.load(std::sync::atomic::Ordering::Relaxed);
        let st = live.session.lock();
        for (pkid, inf) in &st.inflight {
            if inf.released {
                codec::encode(&Packet::PubRel(PubResp::new(*pkid, 0)), live.protocol, &mut self.outbuf);
            } else {
                encode_delivery(&inf.delivery, *pkid, true, is_link, live.protocol, now_ms(), &mut self.outbuf);
            }
        }
    }

    async fn packet_loop(&mut self, live: &mut Live) -> Close {
        let max = self.broker.mqtt.max_packet_size as usize;
        let far = Duration::from_secs(86400 * 365);
        let ka = live.keep_alive.unwrap_or(far);
        let keepalive = tokio::time::sleep(ka);
        tokio::pin!(keepalive);
        // Output beyond which the client's input is no longer read (replies to what it sends,
        // PINGRESPs included, would otherwise pile up without bound), and how long its socket
        // may accept nothing while we have bytes for it.
        let read_limit = self.broker.mqtt.max_send_buffer;
        let send_timeout = self.broker.mqtt.send_timeout;
        let stalled = tokio::time::sleep(far);
        tokio::pin!(stalled);
        let mut sending = false;
        // Packets that arrived together with CONNECT.
        if let Some(close) = self.process_input(live, max) {
            return close;
        }
        loop {
            if let Some(slow) = live.throttle.take() {
                // Our own PUBACKs wait too: that is what slows the publisher down.
                Box::pin(slow.wait(&self.broker, Duration::from_millis(500))).await;
                // Packets already read but not handled because of the throttle.
                if let Some(close) = self.process_input(live, max) {
                    return close;
                }
                if live.throttle.is_some() {
                    continue;
                }
            }
            if self.outbuf.len() < HIGH_WATER {
                self.fill_outbound(live);
            }
            let waiting = matches!(live.pending.front(), Some(Pending::Wait(..)));
            // A client that does not read what we send is not read from either: what it makes
            // us buffer stays bounded (its writes stall, its keep-alive runs out).
            let reading = live.pending.len() < PENDING_MAX && self.outbuf.len() < read_limit;
            if self.outbuf.is_empty() {
                sending = false;
            } else if !sending {
                sending = true;
                stalled.as_mut().reset(Instant::now() + send_timeout);
            }
            tokio::select! {
                biased;
                k = live.kick_rx.recv() => return Close::Kicked(k.unwrap_or(Kick::TakenOver)),
                r = front_commit(&mut live.pending), if waiting => {
                    if let Some(close) = self.resolve_front(live, r) {
                        return close;
                    }
                    if let Some(close) = self.process_input(live, max) {
                        return close;
                    }
                }
                r = self.wr.write_buf(&mut self.outbuf), if !self.outbuf.is_empty() => match r {
                    Ok(0) | Err(_) => return Close::Abnormal,
                    Ok(n) => {
                        self.broker.metrics.bytes_out.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                        stalled.as_mut().reset(Instant::now() + send_timeout);
                    }
                },
                r = self.rd.read_buf(&mut self.inbuf), if reading => match r {
                    Ok(0) | Err(_) => return Close::Abnormal,
                    Ok(n) => {
                        self.broker.metrics.bytes_in.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                        if n >= BUSY_MARK {
                            self.grow_inbuf(n);
                        }
                        keepalive.as_mut().reset(Instant::now() + ka);
                        if let Some(close) = self.process_input(live, max) {
                            return close;
                        }
                    }
                },
                _ = live.session.notify.notified(), if self.outbuf.len() < HIGH_WATER => {}
                _ = &mut stalled, if sending => {
                    // It reads nothing of what we send: its buffers are released, its session
                    // (inflight included) stays for when it comes back.
                    inc(&self.broker.metrics.send_timeouts);
                    tracing::info!(peer = %self.peer, queued = self.outbuf.len(), "conn.send_timeout");
                    return Close::Abnormal;
                }
                _ = &mut keepalive => {
                    inc(&self.broker.metrics.keepalive_timeouts);
                    tracing::info!(peer = %self.peer, "conn.keepalive_timeout");
                    return Close::Server(reason::KEEP_ALIVE_TIMEOUT, "keep alive timeout");
                }
            }
        }
    }

    /// Decode and handle every complete packet in the input buffer.
    fn process_input(&mut self, live: &mut Live, max: usize) -> Option<Close> {
        loop {
            match codec::decode_limited(&mut self.inbuf, Some(live.protocol), max, self.broker.mqtt.max_user_properties)
            {
                Ok(Some(p)) => {
                    if let Some(close) = self.handle(live, p) {
                        return Some(close);
                    }
                    if live.throttle.is_some() || live.pending.len() >= PENDING_MAX {
                        // Leave the rest in the buffer until the slow subscriber drains (or
                        // the cluster commits what is pending).
                        return None;
                    }
                }
                Ok(None) => return None,
                Err(e) => {
                    let code = e.reason_code();
                    match &e {
                        CodecError::TooMany(_) => self.broker.metrics.limit_hit(crate::metrics::Limit::UserProperties),
                        CodecError::TooLarge { .. } => self.broker.metrics.limit_hit(crate::metrics::Limit::PacketSize),
                        _ => {}
                    }
                    if code == reason::MALFORMED_PACKET {
                        inc(&self.broker.metrics.malformed_packets);
                    } else {
                        inc(&self.broker.metrics.protocol_errors);
                    }
                    tracing::info!(peer = %self.peer, error = %e, "conn.bad_packet");
                    return Some(Close::Server(code, static_reason(&e)));
                }
            }
        }
    }

    /// Send an acknowledgement: now, or behind those still waiting for a commit.
    fn send(&mut self, live: &mut Live, p: Packet) {
        if live.pending.is_empty() {
            codec::encode(&p, live.protocol, &mut self.outbuf);
        } else {
            live.pending.push_back(Pending::Ready(Box::new(p)));
        }
    }

    /// A durable (cluster-queued) delivery was completed by the client: commit its ack.
    fn durable_done(&self, live: &Live, seq: Option<u64>) {
        if let (Some(seq), Some(c)) = (seq, self.broker.cluster()) {
            c.ack(&live.client_id, seq);
        }
    }

    /// The commit at the front of the pending queue finished: send its acknowledgement and
    /// everything ready behind it.
    fn resolve_front(&mut self, live: &mut Live, r: Result<Vec<Response>, String>) -> Option<Close> {
        let Some(Pending::Wait(_, after)) = live.pending.pop_front() else { return None };
        let failed = r.as_ref().err().cloned();
        match after {
            After::Publish { pkid, qos, code } => {
                if let Some(e) = failed {
                    // Not acknowledged: the client must resend it (to a node that can commit).
                    tracing::info!(peer = %self.peer, error = %e, "publish not committed");
                    return Some(Close::Server(reason::SERVER_UNAVAILABLE, "cluster unavailable"));
                }
                // A connected persistent subscriber's replicated queue past half its bound:
                // this publisher waits before reading on (flow control for a slow reader; an
                // offline session never congests, its queue bound drops instead).
                if let Ok(rs) = &r {
                    for resp in rs {
                        if let crate::cluster::Outcome::Enqueued { congested: Some((cid, low)) } = &resp.outcome {
                            if live.throttle.is_none() && **cid != *live.client_id {
                                live.throttle =
                                    Some(crate::broker::Congestion::Durable { client_id: cid.clone(), low: *low });
                            }
                        }
                    }
                }
                match qos {
                    QoS::AtLeastOnce => {
                        codec::encode(&Packet::PubAck(PubResp::new(pkid, code)), live.protocol, &mut self.outbuf)
                    }
                    _ => {
                        {
                            let mut st = live.session.lock();
                            st.awaiting_rel.insert(pkid);
                            st.dirty = true;
                        }
                        codec::encode(&Packet::PubRec(PubResp::new(pkid, code)), live.protocol, &mut self.outbuf);
                    }
                }
            }
            After::SubAck { packet_id, mut codes, committed, retained } => {
                if failed.is_some() {
                    for i in committed {
                        codes[i] = reason::UNSPECIFIED_ERROR;
                    }
                }
                let ack = SubAck { packet_id, codes, properties: Properties::default() };
                codec::encode(&Packet::SubAck(ack), live.protocol, &mut self.outbuf);
                if failed.is_none() {
                    for (inner, granted, sub_id) in retained {
                        for m in self.broker.retained_matching(&inner) {
                            let qos = m.qos.min(granted);
                            let d = Delivery {
                                msg: m,
                                qos,
                                retain: true,
                                sub_ids: sub_id.into_iter().collect(),
                                seq: None,
                            };
                            self.broker.offer(&live.session, d);
                        }
                    }
                }
            }
            After::PubRel { pkid } => {
                if let Some(e) = failed {
                    // Not released: the client keeps the packet id, and whichever node serves
                    // the session next sends the message again under it.
                    tracing::info!(peer = %self.peer, error = %e, "QoS 2 completion not committed");
                    return Some(Close::Server(reason::SERVER_UNAVAILABLE, "cluster unavailable"));
                }
                codec::encode(&Packet::PubRel(PubResp::new(pkid, reason::SUCCESS)), live.protocol, &mut self.outbuf);
            }
            After::UnsubAck { packet_id, mut codes, committed } => {
                if failed.is_some() {
                    for i in committed {
                        codes[i] = reason::UNSPECIFIED_ERROR;
                    }
                }
                let ack = UnsubAck { packet_id, codes, properties: Properties::default() };
                codec::encode(&Packet::UnsubAck(ack), live.protocol, &mut self.outbuf);
            }
        }
        while let Some(Pending::Ready(_)) = live.pending.front() {
            if let Some(Pending::Ready(p)) = live.pending.pop_front() {
                codec::encode(&p, live.protocol, &mut self.outbuf);
            }
        }
        None
    }

    fn handle(&mut self, live: &mut Live, p: Packet) -> Option<Close> {
        match p {
            Packet::Publish(p) => return self.on_publish(live, p),
            Packet::PubAck(r) => {
                let done = {
                    let mut st = live.session.lock();
                    if st.inflight.get(&r.packet_id).is_some_and(|i| i.delivery.qos == QoS::AtLeastOnce) {
                        st.dirty = true;
                        st.inflight.remove(&r.packet_id).and_then(|i| i.delivery.seq)
                    } else {
                        None
                    }
                };
                self.durable_done(live, done);
            }
            Packet::PubRec(r) => {
                let (code, seq) = {
                    let mut st = live.session.lock();
                    st.dirty = true;
                    match st.inflight.get_mut(&r.packet_id) {
                        Some(i) if i.delivery.qos == QoS::ExactlyOnce => {
                            let seq = i.delivery.seq;
                            if r.code >= 0x80 {
                                st.inflight.remove(&r.packet_id);
                                (None, seq)
                            } else {
                                i.released = true;
                                (Some(reason::SUCCESS), seq)
                            }
                        }
                        _ => (Some(reason::PACKET_IDENTIFIER_NOT_FOUND), None),
                    }
                };
                // The client has the message: its durable copy is removed, and PUBREL (which
                // lets the client forget the packet id) goes out only once that is committed.
                // Sent earlier, a node taking the session over after a crash could send the
                // message again to a client that no longer knows it (jepsen kill-leader-qos2
                // found exactly that duplicate).
                match (code, seq, self.broker.cluster()) {
                    (Some(reason::SUCCESS), Some(seq), Some(c)) => {
                        let rx = c.commit(vec![crate::cluster::Command::Ack {
                            client_id: live.client_id.to_string(),
                            seqs: vec![seq],
                        }]);
                        live.pending.push_back(Pending::Wait(rx, After::PubRel { pkid: r.packet_id }));
                    }
                    (code, seq, _) => {
                        self.durable_done(live, seq);
                        if let Some(code) = code {
                            self.send(live, Packet::PubRel(PubResp::new(r.packet_id, code)));
                        }
                    }
                }
            }
            Packet::PubComp(r) => {
                let mut st = live.session.lock();
                if st.inflight.get(&r.packet_id).is_some_and(|i| i.released) {
                    st.inflight.remove(&r.packet_id);
                    st.dirty = true;
                }
            }
            Packet::PubRel(r) => {
                let found = {
                    let mut st = live.session.lock();
                    st.dirty = true;
                    st.awaiting_rel.remove(&r.packet_id)
                };
                let code = if found { reason::SUCCESS } else { reason::PACKET_IDENTIFIER_NOT_FOUND };
                self.send(live, Packet::PubComp(PubResp::new(r.packet_id, code)));
            }
            Packet::Subscribe(s) => return self.on_subscribe(live, s),
            Packet::Unsubscribe(u) => {
                if let Some(c) = self.broker.cluster() {
                    let epoch = live.session.epoch.load(std::sync::atomic::Ordering::Acquire);
                    let mut codes = Vec::new();
                    let mut committed = Vec::new();
                    let mut cmds = Vec::new();
                    for f in &u.filters {
                        if live.session.lock().subscriptions.contains_key(f) {
                            committed.push(codes.len());
                            codes.push(reason::SUCCESS);
                            cmds.push(Command::Unsubscribe {
                                client_id: live.client_id.to_string(),
                                epoch,
                                filter: f.clone(),
                            });
                        } else {
                            codes.push(reason::NO_SUBSCRIPTION_EXISTED);
                        }
                    }
                    if !cmds.is_empty() {
                        let rx = c.commit(cmds);
                        live.pending
                            .push_back(Pending::Wait(rx, After::UnsubAck { packet_id: u.packet_id, codes, committed }));
                        return None;
                    }
                    let ack = UnsubAck { packet_id: u.packet_id, codes, properties: Properties::default() };
                    self.send(live, Packet::UnsubAck(ack));
                    return None;
                }
                let codes = u
                    .filters
                    .iter()
                    .map(|f| {
                        if self.broker.unsubscribe(&live.session, f) {
                            reason::SUCCESS
                        } else {
                            reason::NO_SUBSCRIPTION_EXISTED
                        }
                    })
                    .collect();
                self.send(
                    live,
                    Packet::UnsubAck(UnsubAck { packet_id: u.packet_id, codes, properties: Properties::default() }),
                );
            }
            Packet::PingReq => self.send(live, Packet::PingResp),
            Packet::Disconnect(d) => {
                if let Some(exp) = d.properties.session_expiry_interval {
                    if live.connect_expiry == 0 && exp != 0 {
                        return Some(Close::Server(
                            reason::PROTOCOL_ERROR,
                            "session expiry set on DISCONNECT after 0 on CONNECT",
                        ));
                    }
                    let max = self.broker.mqtt.session_expiry_interval.as_secs().min(u64::from(u32::MAX)) as u32;
                    live.session.lock().expiry_interval = exp.min(max);
                }
                return Some(Close::Normal { keep_will: d.code == reason::DISCONNECT_WITH_WILL });
            }
            Packet::Connect(_) => return Some(Close::Server(reason::PROTOCOL_ERROR, "second CONNECT")),
            Packet::Auth(_) => {
                return Some(Close::Server(reason::PROTOCOL_ERROR, "AUTH without an authentication method"))
            }
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                return Some(Close::Server(reason::PROTOCOL_ERROR, "server-to-client packet sent by a client"));
            }
        }
        None
    }

    fn on_publish(&mut self, live: &mut Live, mut p: Publish) -> Option<Close> {
        let cfg = &self.broker.mqtt;
        if live.session.link.load(std::sync::atomic::Ordering::Relaxed) {
            // A link client only subscribes (routes) and receives: messages flow the other way.
            return Some(Close::Server(reason::NOT_AUTHORIZED, "a cluster-link client may not publish"));
        }
        if p.qos.as_u8() > cfg.max_qos_allowed {
            return Some(Close::Server(reason::QOS_NOT_SUPPORTED, "QoS not supported"));
        }
        if p.retain && !cfg.retain_available {
            return Some(Close::Server(reason::RETAIN_NOT_SUPPORTED, "retain not supported"));
        }
        if let Some(alias) = p.properties.topic_alias {
            if alias == 0 || alias > cfg.max_topic_alias {
                self.broker.metrics.limit_hit(crate::metrics::Limit::TopicAlias);
                return Some(Close::Server(reason::TOPIC_ALIAS_INVALID, "topic alias out of range"));
            }
            if p.topic.is_empty() {
                match live.aliases.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    None => return Some(Close::Server(reason::PROTOCOL_ERROR, "unknown topic alias")),
                }
            } else {
                live.aliases.insert(alias, p.topic.clone());
            }
        }
        if !topic::valid_topic_name(&p.topic) || p.topic.split('/').count() > cfg.max_topic_levels {
            return Some(Close::Server(reason::TOPIC_NAME_INVALID, "invalid topic name"));
        }
        inc(&self.broker.metrics.messages_in[p.qos.as_u8() as usize]);
        let qos = p.qos;
        let pkid = p.packet_id;
        if qos == QoS::ExactlyOnce {
            let st = live.session.lock();
            if st.awaiting_rel.contains(&pkid) {
                drop(st);
                self.send(live, Packet::PubRec(PubResp::new(pkid, reason::SUCCESS)));
                return None;
            }
            // A 5.0 client was told our Receive Maximum (max_inflight) in CONNACK and is held
            // to it; a 3.1.1 client, never told, to max_awaiting_rel.
            let limit = if live.protocol.is_v5() {
                usize::from(cfg.max_inflight)
            } else {
                usize::from(cfg.max_inflight).max(cfg.max_awaiting_rel)
            };
            if st.awaiting_rel.len() >= limit {
                self.broker.metrics.limit_hit(crate::metrics::Limit::ReceiveMaximum);
                return Some(Close::Server(
                    reason::RECEIVE_MAXIMUM_EXCEEDED,
                    "too many QoS 2 messages awaiting PUBREL",
                ));
            }
        }
        let mut code = reason::SUCCESS;
        if !self.broker.authorize(&live.client_id, live.username.as_deref(), AclAction::Publish, &p.topic) {
            inc(&self.broker.metrics.messages_denied);
            tracing::debug!(topic = %p.topic, "publish.denied");
            if live.protocol.is_v5() {
                code = reason::NOT_AUTHORIZED;
            }
        } else if p.properties.payload_format_indicator == Some(1) && std::str::from_utf8(&p.payload).is_err() {
            code = reason::PAYLOAD_FORMAT_INVALID;
        } else {
            let topic: Arc<str> = p.topic.as_str().into();
            let mut msg = Message::from_publish(p, topic, live.client_id.clone());
            // Past the retained bounds (`max_retained_messages`, `max_retained_bytes`).
            let unretainable = msg.retain && self.broker.retained_full(&msg);
            if unretainable {
                inc(&self.broker.metrics.retained_refused);
            }
            if unretainable && qos != QoS::AtMostOnce && live.protocol.is_v5() {
                // A 5.0 publisher is told (0x97) and nothing is published.
                code = reason::QUOTA_EXCEEDED;
            } else {
                // A client that cannot be told: delivered, not retained.
                msg.retain &= !unretainable;
                let published = self.broker.publish(Arc::new(msg));
                if let Some(slow) = published.congested {
                    // Never wait on our own queue: only this task drains it.
                    if !slow.is_session(&live.session) {
                        live.throttle = Some(slow);
                    }
                }
                if !published.commands.is_empty() {
                    if let Some(c) = self.broker.cluster() {
                        if qos == QoS::AtMostOnce {
                            c.commit_detached(published.commands);
                        } else {
                            // Acknowledged only once committed (and in order with other acks).
                            let rx = c.commit(published.commands);
                            live.pending.push_back(Pending::Wait(rx, After::Publish { pkid, qos, code }));
                            return None;
                        }
                    }
                }
            }
        }
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(live, Packet::PubAck(PubResp::new(pkid, code))),
            QoS::ExactlyOnce => {
                if code < 0x80 {
                    let mut st = live.session.lock();
                    st.awaiting_rel.insert(pkid);
                    st.dirty = true;
                }
                self.send(live, Packet::PubRec(PubResp::new(pkid, code)));
            }
        }
        None
    }

    fn on_subscribe(&mut self, live: &mut Live, s: Subscribe) -> Option<Close> {
        let cfg = self.broker.mqtt.clone();
        let v5 = live.protocol.is_v5();
        let sub_id = s.properties.subscription_identifiers.first().copied();
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        let cluster = self.broker.cluster();
        let epoch = live.session.epoch.load(std::sync::atomic::Ordering::Acquire);
        let mut cmds = Vec::new();
        let mut committed = Vec::new();
        let mut after_retained = Vec::new();
        for f in &s.filters {
            let shared = topic::parse_shared(&f.filter);
            let inner = match shared {
                Some(Ok((_, inner))) => inner,
                Some(Err(_)) => {
                    codes.push(reason::TOPIC_FILTER_INVALID);
                    continue;
                }
                None => f.filter.as_str(),
            };
            if shared.is_some() && f.options.no_local {
                return Some(Close::Server(reason::PROTOCOL_ERROR, "no local on a shared subscription"));
            }
            let code = if shared.is_some() && !cfg.shared_subscription {
                reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED
            } else if !topic::valid_filter(inner) || inner.split('/').count() > cfg.max_topic_levels {
                reason::TOPIC_FILTER_INVALID
            } else if inner.contains(['+', '#']) && !cfg.wildcard_subscription {
                reason::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED
            } else if !self.broker.authorize(&live.client_id, live.username.as_deref(), AclAction::Subscribe, inner) {
                reason::NOT_AUTHORIZED
            } else if cfg.max_subscriptions.is_some_and(|m| {
                // A link session's routes are the other cluster's subscriptions: bounded there.
                if live.session.link.load(std::sync::atomic::Ordering::Relaxed) {
                    return false;
                }
                let st = live.session.lock();
                st.subscriptions.len() >= m && !st.subscriptions.contains_key(&f.filter)
            }) {
                self.broker.metrics.limit_hit(crate::metrics::Limit::Subscriptions);
                reason::QUOTA_EXCEEDED
            } else {
                let granted = granted_qos(f.options.qos, cfg.max_qos_allowed);
                let opts = SubOptions { qos: granted, ..f.options };
                let new = match &cluster {
                    None => self.broker.subscribe(&live.session, &f.filter, opts, sub_id),
                    Some(_) => {
                        // Committed before SUBACK; the router follows from the commit.
                        let new = !live.session.lock().subscriptions.contains_key(&f.filter);
                        let sub = crate::broker::session::Subscription { opts, id: sub_id };
                        cmds.push(Command::Subscribe {
                            client_id: live.client_id.to_string(),
                            epoch,
                            filter: f.filter.clone(),
                            sub,
                        });
                        committed.push(codes.len());
                        new
                    }
                };
                let send_retained =
                    shared.is_none() && (opts.retain_handling == 0 || (opts.retain_handling == 1 && new));
                if send_retained && cluster.is_some() {
                    after_retained.push((inner.to_string(), granted, sub_id));
                } else if send_retained {
                    for m in self.broker.retained_matching(inner) {
                        let qos = m.qos.min(granted);
                        retained.push(Delivery {
                            msg: m,
                            qos,
                            retain: true,
                            sub_ids: sub_id.into_iter().collect(),
                            seq: None,
                        });
                    }
                }
                granted.as_u8()
            };
            if code >= 0x80 {
                tracing::debug!(filter = %f.filter, code, "subscribe.refused");
            }
            codes.push(if !v5 && code >= 0x80 { 0x80 } else { code });
        }
        if let Some(c) = cluster.filter(|_| !cmds.is_empty()) {
            let rx = c.commit(cmds);
            live.pending.push_back(Pending::Wait(
                rx,
                After::SubAck { packet_id: s.packet_id, codes, committed, retained: after_retained },
            ));
            return None;
        }
        self.send(live, Packet::SubAck(SubAck { packet_id: s.packet_id, codes, properties: Properties::default() }));
        for d in retained {
            self.broker.offer(&live.session, d);
        }
        None
    }

    /// Traffic on a connection that started idle: the first read of `BUSY_MARK` bytes or more
    /// switches to a read buffer *created* at 8 KiB (decoded packets are split off the buffer
    /// and shared, so later growth allocates blocks sized by the buffer's original capacity: a
    /// buffer born at 512 bytes kept reads small and cost 60 % of the QoS 1 throughput,
    /// strait-bench qos1-1to1 130k instead of 330k msgs/s); then a read that fills `IDLE_READ`
    /// makes room for `BUSY_READ`, as before.
    fn grow_inbuf(&mut self, n: usize) {
        if !self.busy_read {
            self.busy_read = true;
            let mut b = BytesMut::with_capacity(8 * 1024 + self.inbuf.len());
            b.extend_from_slice(&self.inbuf);
            self.inbuf = b;
        }
        if n >= IDLE_READ {
            self.inbuf.reserve(BUSY_READ);
        }
    }

    /// Move messages from the session queue to the write buffer within the inflight window.
    fn fill_outbound(&mut self, live: &Live) {
        let now = now_ms();
        let is_link = live.session.link.load(std::sync::atomic::Ordering::Relaxed);
        let mut st = live.session.lock();
        if st.conn.as_ref().is_none_or(|c| c.conn_id != live.conn_id) {
            // Taken over (its kick is on the way): the queue is the new connection's now. A
            // message moved into the inflight window here would be written to this dying
            // socket after the new connection resent the window, and wait there until the
            // client's next reconnect.
            return;
        }
        while self.outbuf.len() < HIGH_WATER {
            let Some(front) = st.queue.front() else { break };
            if front.qos != QoS::AtMostOnce && st.inflight.len() >= usize::from(st.window) {
                break;
            }
            let Some(d) = st.queue.pop_front() else { break };
            st.dirty = true;
            if st.queue.len() == self.broker.mqtt.max_mqueue_len / 4 {
                live.session.drained.notify_waiters();
            }
            if d.msg.is_expired(now) {
                inc(&self.broker.metrics.messages_expired);
                continue;
            }
            if !is_link && !self.broker.may_read(&live.client_id, live.username.as_deref(), &d.msg.topic) {
                // Read access is checked per message: discarded as if delivered.
                inc(&self.broker.metrics.messages_denied);
                if let (Some(seq), Some(c)) = (d.seq, self.broker.cluster()) {
                    c.ack(&live.client_id, seq);
                }
                continue;
            }
            let pkid = if d.qos == QoS::AtMostOnce {
                0
            } else {
                match st.pkid_for(d.seq) {
                    Some(id) => id,
                    None => {
                        st.queue.push_front(d);
                        break;
                    }
                }
            };
            let before = self.outbuf.len();
            encode_delivery(&d, pkid, false, is_link, live.protocol, now, &mut self.outbuf);
            if self.outbuf.len() - before > live.max_out {
                // Too large for this client (MQTT-3.1.2-25): discarded as if delivered.
                self.outbuf.truncate(before);
                inc(&self.broker.metrics.messages_dropped);
                continue;
            }
            inc(&self.broker.metrics.messages_out[d.qos.as_u8() as usize]);
            if d.qos != QoS::AtMostOnce {
                st.inflight.insert(pkid, Inflight { delivery: d, released: false });
            }
        }
    }

    async fn send_disconnect(&mut self, live: &Live, code: u8, why: Option<&'static str>) {
        if live.protocol.is_v5() {
            let mut d = Disconnect::new(code);
            if live.problem_info {
                d.properties.reason_string = why.map(str::to_string);
            }
            codec::encode(&Packet::Disconnect(d), live.protocol, &mut self.outbuf);
        }
        self.flush_now().await;
    }

    /// Write out the buffer, bounded to one second (the peer may not be reading).
    async fn flush_now(&mut self) {
        let wr = &mut self.wr;
        let buf = &mut self.outbuf;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while !buf.is_empty() {
                match wr.write_buf(buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let _ = wr.flush().await;
        })
        .await;
        self.outbuf.clear();
    }
}

/// The result of the commit at the front of the queue (never resolves if there is none).
async fn front_commit(pending: &mut VecDeque<Pending>) -> Result<Vec<Response>, String> {
    match pending.front_mut() {
        Some(Pending::Wait(rx, _)) => rx.await.unwrap_or_else(|_| Err("node shutting down".into())),
        _ => std::future::pending().await,
    }
}

fn static_reason(e: &CodecError) -> &'static str {
    match e {
        CodecError::TooLarge { .. } => "packet too large",
        CodecError::TooMany(_) => "too many user properties in one packet",
        CodecError::Malformed(s) | CodecError::Protocol(s) => s,
        _ => "protocol error",
    }
}

/// Encode one delivery as PUBLISH. The common cases (3.1.1, or 5.0 without properties) are
/// written directly without building a `Publish`.
/// With `link` (the session of another cluster's link client), a durable delivery carries its
/// sequence number and original QoS (the receiving cluster dedupes by them).
pub fn encode_delivery(
    d: &Delivery,
    pkid: u16,
    dup: bool,
    link: bool,
    protocol: Protocol,
    now: u64,
    out: &mut BytesMut,
) {
    let msg = &d.msg;
    let remaining_expiry = msg.remaining_secs(now);
    let stamp = d.seq.filter(|_| link && protocol.is_v5());
    let plain_props = msg.properties == Properties::default()
        && d.sub_ids.is_empty()
        && remaining_expiry.is_none()
        && stamp.is_none();
    if !protocol.is_v5() || plain_props {
        let topic = msg.topic.as_bytes();
        let mut len = 2 + topic.len() + msg.payload.len();
        if d.qos != QoS::AtMostOnce {
            len += 2;
        }
        if protocol.is_v5() {
            len += 1;
        }
        let mut b0 = 0x30 | (d.qos.as_u8() << 1);
        if dup && d.qos != QoS::AtMostOnce {
            b0 |= 0x08;
        }
        if d.retain {
            b0 |= 0x01;
        }
        out.reserve(len + 5);
        out.put_u8(b0);
        codec::put_varint(out, len);
        out.put_u16(topic.len() as u16);
        out.put_slice(topic);
        if d.qos != QoS::AtMostOnce {
            out.put_u16(pkid);
        }
        if protocol.is_v5() {
            out.put_u8(0);
        }
        out.put_slice(&msg.payload);
        return;
    }
    let mut properties = msg.properties.clone();
    properties.subscription_identifiers = d.sub_ids.clone();
    properties.message_expiry_interval = remaining_expiry;
    if let Some(seq) = stamp {
        properties.user_properties.push((crate::link::LINK_SEQ_PROPERTY.to_string(), seq.to_string()));
        properties.user_properties.push((crate::link::LINK_QOS_PROPERTY.to_string(), msg.qos.as_u8().to_string()));
    }
    let p = Publish {
        dup: dup && d.qos != QoS::AtMostOnce,
        qos: d.qos,
        retain: d.retain,
        topic: msg.topic.to_string(),
        packet_id: pkid,
        payload: msg.payload.clone(),
        properties,
    };
    codec::encode(&Packet::Publish(p), protocol, out);
}

#[cfg(test)]
mod size_tests {
    /// An idle connection's cost is mostly its task: the future `serve` returns lives in one
    /// allocation for the connection's whole life. Keep it small (big rarely-used states go
    /// behind a Box).
    #[tokio::test]
    async fn the_connection_task_stays_small() {
        let cfg = crate::config::Config::default();
        let broker =
            crate::broker::Broker::new(&cfg, None, tokio_util::sync::CancellationToken::new()).expect("broker");
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let c = tokio::net::TcpStream::connect(l.local_addr().expect("addr")).await.expect("connect");
        let (rd, wr) = c.into_split();
        let peer = l.local_addr().expect("addr");
        let fut = super::serve(rd, wr, peer, broker, false);
        let size = std::mem::size_of_val(&fut);
        eprintln!(
            "connection future: {size} bytes (Live {}, Sleep {}, Will {}, Properties {}, Connect {})",
            std::mem::size_of::<super::Live>(),
            std::mem::size_of::<tokio::time::Sleep>(),
            std::mem::size_of::<crate::mqtt::packet::Will>(),
            std::mem::size_of::<crate::mqtt::packet::Properties>(),
            std::mem::size_of::<crate::mqtt::packet::Connect>(),
        );
        assert!(size <= 2048, "the connection future grew to {size} bytes (it was 1384)");
    }
}
