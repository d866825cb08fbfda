//! The connected phase: the packet loop and what each packet from the client does.

use super::*;

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Conn<R, W> {
    pub(super) async fn packet_loop(&mut self, live: &mut Live) -> Close {
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
    pub(super) fn process_input(&mut self, live: &mut Live, max: usize) -> Option<Close> {
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

    pub(super) fn handle(&mut self, live: &mut Live, p: Packet) -> Option<Close> {
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
                match (code, seq, self.broker.replica()) {
                    (Some(reason::SUCCESS), Some(seq), Some(c)) => {
                        let rx = c.commit(vec![Op::Ack { client_id: live.client_id.to_string(), seqs: vec![seq] }]);
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
                if let Some(c) = self.broker.replica() {
                    // PUBCOMP lets the client reuse the packet id: only once no node would
                    // take its next message under that id for a resend.
                    let epoch = live.session.epoch.load(std::sync::atomic::Ordering::Acquire);
                    let op = Op::Released { client_id: live.client_id.to_string(), epoch, pkid: r.packet_id };
                    let rx = c.commit(vec![op]);
                    live.pending.push_back(Pending::Wait(rx, After::PubComp { pkid: r.packet_id, found }));
                    return None;
                }
                let code = if found { reason::SUCCESS } else { reason::PACKET_IDENTIFIER_NOT_FOUND };
                self.send(live, Packet::PubComp(PubResp::new(r.packet_id, code)));
            }
            Packet::Subscribe(s) => return self.on_subscribe(live, s),
            Packet::Unsubscribe(u) => {
                if let Some(c) = self.broker.replica() {
                    let epoch = live.session.epoch.load(std::sync::atomic::Ordering::Acquire);
                    let mut codes = Vec::new();
                    let mut committed = Vec::new();
                    let mut cmds = Vec::new();
                    for f in &u.filters {
                        if live.session.lock().subscriptions.contains_key(f.as_str()) {
                            committed.push(codes.len());
                            codes.push(reason::SUCCESS);
                            cmds.push(Op::Unsubscribe {
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

    pub(super) fn on_publish(&mut self, live: &mut Live, mut p: Publish) -> Option<Close> {
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
        if qos != QoS::AtMostOnce {
            if let Some(e) = self.broker.storage_failed() {
                // Nothing that would have to be stored is acknowledged: a 5.0 publisher is
                // told (0x97), a 3.1.1 one (no way to tell it) is disconnected unacknowledged.
                tracing::debug!(topic = %p.topic, error = %e, "publish refused: storage failed");
                if !live.protocol.is_v5() {
                    return Some(Close::Server(reason::SERVER_UNAVAILABLE, "storage failed"));
                }
                let ack = PubResp::new(pkid, reason::QUOTA_EXCEEDED);
                self.send(live, if qos == QoS::AtLeastOnce { Packet::PubAck(ack) } else { Packet::PubRec(ack) });
                return None;
            }
        }
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
                if qos == QoS::ExactlyOnce {
                    if let Some(c) = self.broker.replica() {
                        self.publish_exactly_once(live, &*c, Arc::new(msg), pkid, code);
                        return None;
                    }
                }
                let published = if live.held > 0 {
                    // Behind a QoS 2 message still being committed: delivered after it.
                    let (published, deferred) = self.broker.publish_deferred(Arc::new(msg));
                    if !deferred.is_empty() {
                        live.pending.push_back(Pending::Route(deferred));
                        live.held += 1;
                    }
                    published
                } else {
                    self.broker.publish(Arc::new(msg))
                };
                if let Some(slow) = published.congested {
                    // Never wait on our own queue: only this task drains it.
                    if !slow.is_session(&live.session) {
                        live.throttle = Some(slow);
                    }
                }
                if !published.ops.is_empty() {
                    if let Some(c) = self.broker.replica() {
                        if qos == QoS::AtMostOnce {
                            c.commit_detached(published.ops);
                        } else {
                            // Acknowledged only once committed (and in order with other acks).
                            let rx = c.commit(published.ops);
                            let after = After::Publish { pkid, qos, code, deferred: Vec::new() };
                            live.pending.push_back(Pending::Wait(rx, after));
                            return None;
                        }
                    }
                }
                if qos != QoS::AtMostOnce && self.broker.storage_failed().is_some() {
                    // Its retained copy could not be stored (the store failed just now).
                    if !live.protocol.is_v5() {
                        return Some(Close::Server(reason::SERVER_UNAVAILABLE, "storage failed"));
                    }
                    code = reason::QUOTA_EXCEEDED;
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

    /// A QoS 2 message in a cluster: committed once per packet id of the session (queued for
    /// persistent sessions, retained), so a resend after this node died (DUP, to another node)
    /// is not routed twice. Its deliveries to connected sessions (here, or over the data plane
    /// to their node) are made once that commit says it was no resend; they share the path of
    /// this connection's QoS 0 and 1 messages, so a subscriber sees them in publisher order.
    /// (A connected session's copy is as durable as that session: best effort if this node
    /// dies between the commit and the delivery, as for QoS 1.)
    fn publish_exactly_once(&mut self, live: &mut Live, c: &dyn Replica, msg: Arc<Message>, pkid: u16, code: u8) {
        let (published, deferred) = self.broker.publish_deferred(msg);
        // Counted against the Receive Maximum from now on (and a resend on this connection
        // waits behind this acknowledgement); taken back if the commit fails.
        live.session.lock().awaiting_rel.insert(pkid);
        let epoch = live.session.epoch.load(std::sync::atomic::Ordering::Acquire);
        let ops = published.ops;
        let rx = c.commit(vec![Op::Received { client_id: live.client_id.to_string(), epoch, pkid, ops }]);
        if !deferred.is_empty() {
            live.held += 1;
        }
        let after = After::Publish { pkid, qos: QoS::ExactlyOnce, code, deferred };
        live.pending.push_back(Pending::Wait(rx, after));
    }

    pub(super) fn on_subscribe(&mut self, live: &mut Live, s: Subscribe) -> Option<Close> {
        let cfg = self.broker.mqtt.clone();
        let v5 = live.protocol.is_v5();
        let sub_id = s.properties.subscription_identifiers.first().copied();
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        let cluster = self.broker.replica();
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
                st.subscriptions.len() >= m && !st.subscriptions.contains_key(f.filter.as_str())
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
                        let new = !live.session.lock().subscriptions.contains_key(f.filter.as_str());
                        let sub = crate::broker::session::Subscription {
                            opts,
                            id: sub_id.and_then(std::num::NonZeroU32::new),
                        };
                        cmds.push(Op::Subscribe {
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
}

pub(super) fn static_reason(e: &CodecError) -> &'static str {
    match e {
        CodecError::TooLarge { .. } => "packet too large",
        CodecError::TooMany(_) => "too many user properties in one packet",
        CodecError::Malformed(s) | CodecError::Protocol(s) => s,
        _ => "protocol error",
    }
}
