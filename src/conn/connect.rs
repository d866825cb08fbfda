//! The CONNECT phase: wait for it, check it (link clients, credentials, will), attach the session, CONNACK.

use super::*;

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Conn<R, W> {
    /// Wait for CONNECT within the connect timeout. Refuses bad first packets.
    pub(super) async fn read_connect(&mut self) -> Option<Box<Connect>> {
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
    pub(super) async fn accept_connect(&mut self, c: Connect) -> Option<Live> {
        let cfg = &self.broker.mqtt;
        let v5 = c.protocol.is_v5();
        let mut assigned = None;
        let mut client_id = c.client_id.clone();
        let mut fail = None;
        // Why, for a 5.0 client (a link shows it in its status on the other side).
        let mut why: Option<String> = None;
        // Another cluster's link client names its cluster: cluster linking judges it.
        let reserved_by = self.broker.session(&client_id).and_then(|s| s.link_remote());
        let hello = LinkHello {
            user_properties: &c.properties.user_properties,
            username: c.username.as_deref(),
            password: c.password.as_deref(),
            client_id: &client_id,
            on_link_listener: self.link_only,
            reserved_by: reserved_by.as_deref(),
        };
        let admission = match self.broker.link_hooks() {
            _ if c.properties.authentication_method.is_some() => {
                Admission::Refused { code: reason::BAD_AUTHENTICATION_METHOD, why: None, bad_credentials: false }
            }
            Some(h) => h.admit(&hello),
            None if self.link_only => {
                Admission::Refused { code: reason::NOT_AUTHORIZED, why: None, bad_credentials: false }
            }
            None => Admission::Client,
        };
        let link_from = match admission {
            Admission::Client => None,
            Admission::Link { remote } => Some(remote),
            Admission::Refused { code, why: w, bad_credentials } => {
                if bad_credentials {
                    inc(&self.broker.metrics.auth_failures);
                }
                fail = Some(code);
                why = w;
                None
            }
        };
        if fail.is_none() {
            if client_id.starts_with(crate::broker::LINK_PUBLISHER) {
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
        }
        let link_auth = match (&fail, &link_from, self.broker.link_hooks()) {
            (None, Some(remote), Some(h)) => h.authenticate(remote, c.username.as_deref(), c.password.as_deref()),
            _ => LinkAuth::AsClient,
        };
        if let LinkAuth::Refused(w) = link_auth {
            inc(&self.broker.metrics.auth_failures);
            fail = Some(reason::BAD_USER_NAME_OR_PASSWORD);
            why = Some(w);
        } else if fail.is_none() && matches!(link_auth, LinkAuth::AsClient) {
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
        let n = negotiate(cfg, &c, link_from.is_some());
        let expiry = n.expiry;
        let attached = match self.broker.replica() {
            None => {
                if let Some(e) = self.broker.storage_failed().filter(|_| expiry > 0) {
                    // A session that must outlive the connection cannot be kept.
                    self.refuse_unavailable(&c, &client_id, &format!("storage failed: {e}")).await;
                    return None;
                }
                let a = self.broker.attach(&client_id, c.protocol, c.clean_start, expiry);
                self.broker.set_session_link(&a.session, link_from.as_deref());
                a
            }
            Some(r) => {
                // In a cluster the session's ownership is committed first; a node without a
                // leader (partitioned minority) refuses.
                let refused = if !r.available() {
                    Some("no leader with a valid lease".to_string())
                } else {
                    let op = Op::Connect {
                        client_id: client_id.clone(),
                        protocol: c.protocol,
                        clean_start: c.clean_start,
                        expiry_interval: expiry,
                        will: c.will.clone(),
                        link: link_from.clone(),
                    };
                    match r.commit(vec![op]).await {
                        Ok(outcomes) => {
                            let present = matches!(outcomes.first(), Some(Outcome::Connected { present: true }));
                            match self.broker.attach_committed(&client_id, c.protocol, expiry, present) {
                                Some(a) => {
                                    return Box::pin(self.connected(c, n, client_id, assigned, link_from, a)).await
                                }
                                None => Some("the session ended again".to_string()),
                            }
                        }
                        Err(e) => Some(e.to_string()),
                    }
                };
                self.refuse_unavailable(&c, &client_id, &refused.unwrap_or_default()).await;
                return None;
            }
        };
        Box::pin(self.connected(c, n, client_id, assigned, link_from, attached)).await
    }

    /// CONNACK "server unavailable" (0x88; 3 for 3.1.1), with why for a 5.0 client.
    async fn refuse_unavailable(&mut self, c: &Connect, client_id: &str, why: &str) {
        tracing::info!(peer = %self.peer, client_id, why, "conn.refused: server unavailable");
        inc(&self.broker.metrics.connections_refused);
        let mut properties = Properties::default();
        if c.protocol.is_v5() {
            properties.reason_string = Some(why.to_string());
        }
        let ack = ConnAck { session_present: false, code: reason::SERVER_UNAVAILABLE, properties };
        codec::encode(&Packet::ConnAck(ack), c.protocol, &mut self.outbuf);
        self.flush_now().await;
    }

    /// The session is attached: CONNACK (with a link client's route list).
    async fn connected(
        &mut self,
        c: Connect,
        n: Negotiated,
        client_id: String,
        assigned: Option<String>,
        link_from: Option<String>,
        attached: Attached,
    ) -> Option<Live> {
        let cfg = &self.broker.mqtt;
        let v5 = c.protocol.is_v5();
        let Negotiated { requested, expiry, keep_alive, server_keep_alive, client_window, max_out } = n;
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
        if let (true, Some(_), Some(h)) = (v5, &link_from, self.broker.link_hooks()) {
            // A link client learns the routes its session holds here (its route bootstrap),
            // within its maximum packet size (less room for the rest of the CONNACK).
            let st = attached.session.lock();
            let mut routes: Vec<&Arc<str>> = st.subscriptions.keys().collect();
            routes.sort();
            let budget = max_out.min(h.max_connack()).saturating_sub(1024);
            let present = attached.session_present;
            props.user_properties.extend(h.accepted(
                &client_id,
                &c.properties.user_properties,
                present,
                &routes,
                budget,
            ));
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
            held: 0,
        };
        if attached.session_present {
            self.resend_inflight(&live);
        }
        Some(live)
    }

    /// On session resume: PUBLISH (DUP) every unacknowledged message, PUBREL every released one.
    pub(super) fn resend_inflight(&mut self, live: &Live) {
        let is_link = live.session.link.load(std::sync::atomic::Ordering::Relaxed);
        let hooks = self.broker.link_hooks().filter(|_| is_link).map(|h| &**h);
        let st = live.session.lock();
        for (pkid, inf) in &st.inflight {
            if inf.released {
                codec::encode(&Packet::PubRel(PubResp::new(*pkid, 0)), live.protocol, &mut self.outbuf);
            } else {
                encode_delivery(&inf.delivery, *pkid, true, hooks, live.protocol, now_ms(), &mut self.outbuf);
            }
        }
    }
}

/// What a CONNECT and our configuration settle between them.
pub(super) struct Negotiated {
    /// The session expiry the client asked for, and the one it gets.
    requested: u32,
    expiry: u32,
    keep_alive: Option<Duration>,
    server_keep_alive: Option<u16>,
    client_window: u16,
    max_out: usize,
}

fn negotiate(cfg: &crate::config::MqttConfig, c: &Connect, link: bool) -> Negotiated {
    let v5 = c.protocol.is_v5();
    let max_expiry = cfg.session_expiry_interval.as_secs().min(u64::from(u32::MAX)) as u32;
    let requested = if v5 {
        c.properties.session_expiry_interval.unwrap_or(0)
    } else if c.clean_start {
        0
    } else {
        max_expiry
    };
    let server_keep_alive = cfg.server_keepalive;
    let ka_secs = if v5 { server_keep_alive.unwrap_or(c.keep_alive) } else { c.keep_alive };
    // A link client's window is its own (`links[].max_inflight` of the other side): it commits
    // each message before acknowledging, so it needs more in flight than a client.
    let cap = if link { u16::MAX } else { cfg.max_inflight };
    Negotiated {
        requested,
        expiry: requested.min(max_expiry),
        keep_alive: (ka_secs > 0).then(|| Duration::from_secs_f64(f64::from(ka_secs) * cfg.keepalive_multiplier)),
        server_keep_alive,
        client_window: c.properties.receive_maximum.unwrap_or(u16::MAX).min(cap).max(1),
        max_out: c.properties.maximum_packet_size.map(|m| m as usize).unwrap_or(usize::MAX),
    }
}
