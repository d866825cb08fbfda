//! Messages from the remote: committed here (once per sequence number), then acknowledged.

use super::*;

/// A message from the remote on its way here, in arrival order.
pub(super) struct Inbound {
    pub(super) p: RPublish,
    /// Its commit (the dedup record, and what needs Raft), if any.
    pub(super) wait: Option<oneshot::Receiver<Result<Vec<Response>, CommitError>>>,
    /// Deliveries to make once committed.
    pub(super) deferred: Vec<Deferred>,
    /// Known duplicate (no cluster) or not wanted: acknowledge only.
    pub(super) skip: bool,
}

/// Wait for the commit of the front message; whether it was a duplicate.
pub(super) async fn front_done(pending: &mut VecDeque<Inbound>) -> Result<bool, CommitError> {
    let Some(f) = pending.front_mut() else { return std::future::pending().await };
    match f.wait.as_mut() {
        None => Ok(f.skip),
        Some(rx) => match rx.await {
            Ok(Ok(rs)) => Ok(rs.iter().any(|r| matches!(r.outcome, Outcome::Duplicate))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(CommitError::ShuttingDown),
        },
    }
}

pub(super) fn reset_seen(link: &LinkConfig, ctx: &Ctx) {
    match ctx.cluster() {
        Some(c) => {
            // Queued ahead of every message of this connection.
            c.commit_detached(vec![Command::LinkReset { link: link.name.clone() }]);
        }
        None => ctx.registry.seen_reset(&link.name),
    }
}

/// Take in one message from the remote: publish it here (its deliveries held back until its
/// commit) and queue it for acknowledgement in arrival order.
pub(super) fn on_publish(link: &LinkConfig, ctx: &Ctx, status: &Arc<LinkStatus>, p: RPublish) -> Inbound {
    let broker = &ctx.broker;
    status.received.fetch_add(1, Ordering::Relaxed);
    let skip = |p: RPublish| Inbound { p, wait: None, deferred: Vec::new(), skip: true };
    let topic_name = String::from_utf8_lossy(&p.topic).to_string();
    let wanted = topic::valid_topic_name(&topic_name) && link.topics.iter().any(|t| topic::matches(t, &topic_name));
    if !wanted {
        status.dropped.fetch_add(1, Ordering::Relaxed);
        return skip(p);
    }
    let mut qos = match p.qos {
        RQoS::AtMostOnce => QoS::AtMostOnce,
        RQoS::AtLeastOnce => QoS::AtLeastOnce,
        RQoS::ExactlyOnce => QoS::ExactlyOnce,
    };
    let mut properties = Properties::default();
    let mut expires_at_ms = None;
    let mut seq = None;
    if let Some(pp) = &p.properties {
        properties.payload_format_indicator = pp.payload_format_indicator;
        properties.content_type = pp.content_type.clone();
        properties.response_topic = pp.response_topic.clone();
        properties.correlation_data = pp.correlation_data.clone();
        for (k, v) in &pp.user_properties {
            match k.as_str() {
                LINK_SEQ_PROPERTY => seq = v.parse::<u64>().ok(),
                LINK_QOS_PROPERTY => {
                    // The publisher's QoS, within what this cluster allows.
                    if let Some(q) = v.parse::<u8>().ok().filter(|q| *q <= ctx.broker.mqtt.max_qos_allowed) {
                        qos = QoS::from_u8(q).unwrap_or(qos);
                    }
                }
                _ => properties.user_properties.push((k.clone(), v.clone())),
            }
        }
        expires_at_ms = pp.message_expiry_interval.map(|s| now_ms() + u64::from(s) * 1000);
    }
    if qos == QoS::ExactlyOnce && seq.is_none() {
        // Without the remote's sequence number a redelivery cannot be told apart: at least
        // once, so not delivered as QoS 2.
        qos = QoS::AtLeastOnce;
    }
    let cluster = ctx.cluster();
    if cluster.is_none() {
        if let Some(s) = seq {
            if !ctx.registry.seen_insert(&link.name, s) {
                status.duplicates.fetch_add(1, Ordering::Relaxed);
                return skip(p);
            }
        }
    }
    let msg = Message {
        topic: topic_name.as_str().into(),
        payload: p.payload.clone(),
        qos,
        retain: false,
        properties,
        publisher: format!("{LINK_PUBLISHER}{}", link.name).into(),
        expires_at_ms,
    };
    let msg = Arc::new(msg);
    let (published, deferred) = broker.publish_deferred(msg.clone());
    match (cluster, seq) {
        (None, _) => Inbound { p, wait: None, deferred, skip: false },
        // Everything through Raft, in one entry applied once per sequence number: durable
        // deliveries (Enqueue), the others (Deliver, made by each owner node on apply).
        // Proposed now, in arrival order (the remote's publisher order).
        (Some(c), Some(seq)) => {
            let mut cmds: Vec<Command> = published.ops.into_iter().map(|op| c.command(op)).collect();
            if cmds.is_empty() && deferred.is_empty() {
                // Routes exist only for filters wanted here: worth a line when it happens.
                tracing::info!(seq, topic = %msg.topic, "link: a message matched no subscriber here");
            }
            let targets: Vec<_> = deferred.into_iter().map(Deferred::into_target).collect();
            if !targets.is_empty() {
                cmds.push(Command::Deliver { msg: (*msg).clone(), targets });
            }
            let wait = Some(c.commit(vec![Command::FromLink { link: link.name.clone(), seq, cmds }]));
            Inbound { p, wait, deferred: Vec::new(), skip: false }
        }
        (Some(c), None) => {
            let cmds: Vec<Command> = published.ops.into_iter().map(|op| c.command(op)).collect();
            let wait = (!cmds.is_empty()).then(|| c.commit(cmds));
            Inbound { p, wait, deferred, skip: false }
        }
    }
}
