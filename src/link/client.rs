//! The link client: one actor per link on the node that leads, one connection at a time.

use super::*;

pub(super) async fn supervise(link: LinkConfig, ctx: Ctx, status: Arc<LinkStatus>) {
    let cancel = &ctx.cancel;
    let servers = link.server.len().max(1);
    let mut next_server = 0usize;
    // Failed attempts since the last connection or backoff: a whole round of the servers is
    // tried at once, one after the other, before waiting `retry_interval`.
    let mut failed_in_round = 0usize;
    let mut last_logged: Option<String> = None;
    let mut leadership = ctx.cluster().map(|c| c.raft.leadership());
    // The term in which this node last committed its read barrier (see `run`).
    let mut barrier = None;
    loop {
        if cancel.is_cancelled() {
            break;
        }
        if !is_leader(&ctx) {
            status.set("standby", None, None);
            // Woken when leadership changes here: no polling while another node holds the link.
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = leadership_changed(&mut leadership) => {}
            }
            continue;
        }
        let Some(server) = link.server.get(next_server % servers) else {
            status.set("error", None, Some("no server configured".into()));
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(link.retry_interval) => {}
            }
            continue;
        };
        let addr = format!("{}:{}", server.host, server.port);
        status.set("connecting", Some(addr.clone()), None);
        match run(&link, &ctx, &status, (&server.host, server.port), &mut barrier).await {
            Ok(()) => {
                status.set("standby", None, None);
                last_logged = None;
                failed_in_round = 0;
                continue;
            }
            Err((e, was_connected)) => {
                // Logged once per change of error, not once per retry.
                if last_logged.as_deref() != Some(e.as_str()) {
                    tracing::warn!(server = %addr, "link connection: {e}");
                    last_logged = Some(e.clone());
                }
                status.set("disconnected", Some(addr), Some(e));
                // The next server at once: the one that just failed (or dropped us) is the
                // least likely to answer now.
                next_server += 1;
                failed_in_round = if was_connected { 0 } else { failed_in_round + 1 };
                if failed_in_round < servers {
                    continue;
                }
                failed_in_round = 0;
            }
        }
        // Every server failed in a row: back off, with jitter so that links restarting together
        // do not retry in step.
        let jitter = link.retry_interval.mul_f64(rand::random::<f64>() * 0.2);
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(link.retry_interval.max(Duration::from_millis(100)) + jitter) => {}
        }
    }
}

/// Resolves at `at`; never without one.
pub(super) async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves when this node's view of the Raft leadership changes (never without a cluster).
pub(super) async fn leadership_changed(l: &mut Option<tokio::sync::watch::Receiver<crate::cluster::Leadership>>) {
    if let Some(l) = l.as_mut() {
        if l.changed().await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

/// MQTT options of the link client for `host:port`.
pub(super) fn options(link: &LinkConfig, ctx: &Ctx, host: &str, port: u16, clean: bool) -> Result<MqttOptions, String> {
    let mut opts = MqttOptions::new(link.clientid.clone(), host, port);
    opts.set_clean_start(clean);
    opts.set_session_expiry_interval(Some(if clean { 0 } else { LINK_SESSION_EXPIRY }));
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_manual_acks(true);
    opts.set_receive_maximum(Some(link.max_inflight.max(1)));
    // The link client publishes nothing; its SUBSCRIBE/UNSUBSCRIBE packets take packet ids from
    // the same window, at most `routes::OUTSTANDING` at a time. rumqttc sizes a table by this
    // bound (65,535 by default: ~8 MB allocated and cleared per connection attempt, a tenth of
    // an idle leader's CPU while the remote was down).
    opts.set_outgoing_inflight_upper_limit((super::routes::OUTSTANDING * 8) as u16);
    let (actor, term) = match ctx.cluster() {
        Some(c) => (c.node_name.clone(), c.raft.metrics().current_term),
        None => (ctx.me.clone(), 0),
    };
    opts.set_user_properties(vec![
        (LINK_PROPERTY.to_string(), ctx.me.clone()),
        (LINK_VERSION_PROPERTY.to_string(), LINK_VERSION.to_string()),
        (LINK_TARGET_PROPERTY.to_string(), link.name.clone()),
        (LINK_ACTOR_PROPERTY.to_string(), actor),
        (LINK_INCARNATION_PROPERTY.to_string(), term.to_string()),
    ]);
    // Room for the remote's CONNACK route list (one user property per route: ~1.5 million
    // routes of 20 bytes fit); publishes are bounded by the remote's own max_packet_size.
    opts.set_max_packet_size(Some(ctx.broker.mqtt.max_packet_size.max(LINK_MAX_CONNACK)));
    if let Some(u) = &link.username {
        opts.set_credentials(u.clone(), link.password.clone().unwrap_or_default());
    }
    if link.ssl.enable {
        let tls = tls_client_config(link).map_err(|e| format!("TLS configuration: {e}"))?;
        opts.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::new(tls))));
    }
    Ok(opts)
}

/// A connection error as the link status shows it: a refusal says what the remote refused
/// (each cause has its own CONNACK code; a 5.0 reason string says the same there).
pub(super) fn describe(e: &rumqttc::v5::ConnectionError, remote: &str) -> String {
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as C;
    let rumqttc::v5::ConnectionError::ConnectionRefused(code) = e else { return e.to_string() };
    let why = match code {
        C::NotAuthorized => format!("cluster {remote} has no link named after this cluster (cluster.links there)"),
        C::Banned => format!("the link to this cluster is disabled on cluster {remote}"),
        C::ServerMoved => {
            format!("the server is not cluster {remote} (a link's name must be the remote's cluster.name)")
        }
        C::BadUserNamePassword => format!("cluster {remote} does not take this link's username/password"),
        C::UseAnotherServer => "the server is not a link listener (tcp.clink / ssl.clink)".to_string(),
        C::UnsupportedProtocolVersion => "the remote speaks another link protocol version".to_string(),
        C::ServerUnavailable => "the remote node cannot reach its cluster's majority".to_string(),
        C::ClientIdentifierNotValid => "the remote refused this link's client id".to_string(),
        other => return format!("refused by the remote: {other:?}"),
    };
    format!("refused: {why}")
}

/// End this cluster's session at the remote (a deleted or disabled link): a clean connection
/// whose session expires with it, so the remote drops the link's routes and queued messages.
pub(super) async fn farewell(link: LinkConfig, ctx: Ctx) {
    for server in &link.server {
        let Ok(opts) = options(&link, &ctx, &server.host, server.port, true) else { return };
        let (client, mut el) = AsyncClient::new(opts, 16);
        let done = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(RPacket::ConnAck(_))) => {
                        let _ = client.try_disconnect();
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        })
        .await;
        if done == Ok(true) {
            tracing::info!(server = %server, "link: session at the remote ended");
            return;
        }
    }
    tracing::warn!("link: could not end the session at the remote (its routes expire with it)");
}

/// One link connection, until it fails (Err, with whether it had connected), or this node
/// stops leading or the link stops (Ok). `barrier`: the term of this node's last read barrier.
pub(super) async fn run(
    link: &LinkConfig,
    ctx: &Ctx,
    status: &Arc<LinkStatus>,
    (host, port): (&str, u16),
    barrier: &mut Option<u64>,
) -> Result<(), (String, bool)> {
    let (broker, cancel) = (&ctx.broker, &ctx.cancel);
    if let Some(c) = ctx.cluster() {
        // A new leader's view may lag the log: read through a committed barrier first, or the
        // route bootstrap would remove routes at the remote that subscribers here still want.
        // Once per term: after it, this leader's view follows its own commits (a remote that
        // stays down was a Raft commit on every node every few seconds).
        if !c.is_ready() {
            return Err(("this node has not caught up with the cluster yet".into(), false));
        }
        let term = c.raft.leadership().borrow().term;
        if *barrier != Some(term) {
            c.commit_wait(vec![Command::Barrier]).await.map_err(|e| (format!("read barrier: {e}"), false))?;
            *barrier = Some(term);
        }
    }
    let opts = options(link, ctx, host, port, false).map_err(|e| (e, false))?;
    let (client, mut el) = AsyncClient::new(opts, 1024.max(2 * usize::from(link.max_inflight)));
    // rumqttc's `poll` is not cancel-safe while it connects (a poll dropped mid-handshake
    // connects again, and the remote sees the link session taken over): it runs in a task of
    // its own and its events come over a channel.
    let (ev_tx, mut events) = tokio::sync::mpsc::channel::<Result<Event, String>>(64);
    let remote_name = link.name.clone();
    let mut poller = ctx.tracker.spawn(async move {
        loop {
            let ev = el.poll().await.map_err(|e| describe(&e, &remote_name));
            let end = ev.is_err();
            if ev_tx.send(ev).await.is_err() || end {
                break;
            }
        }
    });
    let addr = format!("{host}:{port}");
    let mut connected = false;
    let mut routes = RouteSync::new(&link.topics, link.retry_interval.max(Duration::from_millis(100)));
    let mut pending: VecDeque<Inbound> = VecDeque::new();
    let mut leadership = ctx.cluster().map(|c| c.raft.leadership());
    // A leader whose lease lapsed for a moment (a heartbeat round stalled on a loaded machine)
    // keeps the link: handing it over re-bootstraps every route and darkens the link for as
    // long. What it applies still needs commits, so a deposed leader that does not know it yet
    // acknowledges nothing, and the new leader's connection takes the session over (0x8E).
    // It hands over when it stops leading, or after the grace a node cut off from its
    // majority is given before it sheds its link sessions.
    let lease_grace = ctx.cluster().map_or(Duration::ZERO, |c| {
        let cfg = c.raft.config();
        cfg.election_max + cfg.heartbeat * 2
    });
    let mut lease_lost: Option<tokio::time::Instant> = None;
    // Armed before the route table is read, re-armed before it is read again: no change is
    // missed between two reads.
    let mut routes_changed = Box::pin(broker.routes_changed.notified());
    routes_changed.as_mut().enable();
    routes.follow(&broker.router);
    let mut status_at = tokio::time::Instant::now();
    let result = loop {
        if connected && routes.has_work() {
            if let Err(e) = routes.send(&client) {
                break Err(e);
            }
            if routes.pending() == 0 || status_at.elapsed() >= Duration::from_millis(500) {
                status.set_route_sync(&routes);
                status_at = tokio::time::Instant::now();
            }
        }
        status.set_inflight(pending.len());
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            _ = &mut routes_changed => {
                routes_changed.set(broker.routes_changed.notified());
                routes_changed.as_mut().enable();
                routes.follow(&broker.router);
            }
            _ = sleep_until_some(routes.retry_at()) => {
                routes.retry();
            }
            _ = leadership_changed(&mut leadership) => {
                let l = ctx.cluster().map(|c| c.leadership());
                match l {
                    Some(l) if !l.is_leader() => {
                        tracing::info!("link: no longer the leader; handing the link over");
                        break Ok(());
                    }
                    Some(l) if !l.lease => {
                        lease_lost.get_or_insert_with(|| tokio::time::Instant::now() + lease_grace);
                    }
                    _ => lease_lost = None,
                }
            }
            _ = sleep_until_some(lease_lost) => {
                tracing::info!(grace = ?lease_grace, "link: leading without a lease past the grace; handing the link over");
                break Ok(());
            }
            done = front_done(&mut pending), if !pending.is_empty() => {
                let Some(f) = pending.pop_front() else { continue };
                match done {
                    Ok(true) => {
                        if !f.skip {
                            status.duplicates.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(pkid = f.p.pkid, topic = %String::from_utf8_lossy(&f.p.topic), "link: a redelivery already applied here (acknowledged again)");
                        }
                    }
                    Ok(false) => {
                        status.published.fetch_add(1, Ordering::Relaxed);
                        if let Some(c) = broker.run_deferred(f.deferred) {
                            c.wait(broker, Duration::from_millis(500)).await;
                        }
                    }
                    // Not acknowledged: the remote redelivers it (and what follows) on the
                    // next link connection, where the dedup record sorts out what was applied.
                    Err(e) => break Err(format!("commit here failed: {e}")),
                }
                if let Err(e) = client.try_ack(&f.p) {
                    break Err(format!("ack: {e}"));
                }
            }
            ev = events.recv() => match ev.unwrap_or_else(|| Err("event loop ended".into())) {
                Ok(Event::Incoming(RPacket::ConnAck(a))) => {
                    connected = true;
                    status.connects.fetch_add(1, Ordering::Relaxed);
                    // The remote lists the routes it holds for us: the bootstrap is the
                    // difference to what we want.
                    let held: BTreeSet<String> = a
                        .properties
                        .iter()
                        .flat_map(|p| p.user_properties.iter())
                        .filter(|(k, _)| k == LINK_ROUTE_PROPERTY)
                        .map(|(_, v)| v.clone())
                        .collect();
                    if a.properties.iter().flat_map(|p| p.user_properties.iter()).any(|(k, _)| k == LINK_ROUTES_CUT_PROPERTY) {
                        tracing::warn!("link: the remote's route list did not fit its CONNACK: routes removed here while the link was down may stay there");
                    }
                    routes.connected(held, a.properties.as_ref().and_then(|p| p.max_packet_size));
                    if !a.session_present {
                        // A new session there: its sequence numbers start over.
                        reset_seen(link, ctx);
                    }
                    // What the remote holds is what the status shows until the next sync
                    // (a sync that finds nothing to change does not touch it).
                    status.set_route_sync(&routes);
                    tracing::info!(server = %addr, session_present = a.session_present, routes = routes.held().len(), "link: connected");
                    status.set("connected", Some(addr.clone()), None);
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Subscribe(pkid))) => routes.subscribe_sent(pkid),
                Ok(Event::Outgoing(rumqttc::Outgoing::Unsubscribe(pkid))) => routes.unsubscribe_sent(pkid),
                Ok(Event::Incoming(RPacket::SubAck(a))) => {
                    let why = a.properties.as_ref().and_then(|p| p.reason_string.as_deref());
                    routes.suback(a.pkid, &a.return_codes, why);
                    if routes.pending() == 0 || status_at.elapsed() >= Duration::from_millis(500) {
                        status.set_route_sync(&routes);
                        status_at = tokio::time::Instant::now();
                    }
                }
                Ok(Event::Incoming(RPacket::UnsubAck(a))) => {
                    routes.unsuback(a.pkid, &a.reasons);
                    if routes.pending() == 0 || status_at.elapsed() >= Duration::from_millis(500) {
                        status.set_route_sync(&routes);
                        status_at = tokio::time::Instant::now();
                    }
                }
                Ok(Event::Incoming(RPacket::Publish(p))) => {
                    pending.push_back(on_publish(link, ctx, status, p));
                }
                Ok(Event::Incoming(RPacket::Disconnect(d))) => {
                    break Err(format!("disconnected by the remote: {:?}", d.reason_code));
                }
                Ok(_) => {}
                Err(e) => break Err(e),
            },
        }
    };
    let _ = client.try_disconnect();
    // The poller sends the DISCONNECT, then finds the channel closed and ends.
    drop(events);
    if tokio::time::timeout(Duration::from_millis(500), &mut poller).await.is_err() {
        poller.abort();
    }
    // Messages whose commit went through are delivered here even though their acknowledgement
    // can no longer be sent (the redelivery will be a duplicate).
    // (Without a cluster a message is accepted when it arrives: its sequence number is
    // recorded then, so it is delivered even though the link is stopping.)
    for f in pending {
        let ok = match f.wait {
            None => !f.skip,
            Some(_) if cancel.is_cancelled() => false,
            Some(rx) => matches!(rx.await, Ok(Ok(rs)) if !rs.iter().any(|r| matches!(r.outcome, Outcome::Duplicate))),
        };
        if ok {
            broker.run_deferred(f.deferred);
        }
    }
    status.set_inflight(0);
    result.map_err(|e| (e, connected))
}
