//! A QoS 2 publisher that behaves as MQTT asks of a client whose server went away: it keeps a
//! persistent session (fixed client id, clean session off) and, on the next node, sends what was
//! not completed again under the same packet ids with DUP set (PUBLISH, or PUBREL once PUBREC
//! came). A message its node committed before dying reaches the subscribers once (checked by
//! `duplicates`); one never acknowledged but resent and completed on another node is `Ok`.
//!
//! rumqttc 0.25 keeps unacknowledged requests in `EventLoop::pending` but resends a PUBLISH
//! without DUP and only to the same address; this moves them to a connection to the next node
//! and sets DUP.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Request};

use crate::db::mqtt_addr;
use crate::history::{Kind, F};
use crate::workload::{qos, Ctx};

/// After the run, how long the message in flight may still take before it counts as
/// indeterminate. During the run it is never given up: a new message under a packet id the
/// session still holds would be taken for a resend of the old one (as MQTT says).
const FINAL_BOUND: Duration = Duration::from_secs(30);

/// Connects with `pending` (requests of the previous connection) to be sent first; the
/// session-present flag, or `pending` back when the node did not take the connection.
async fn connect(
    id: &str,
    node: u32,
    pending: VecDeque<Request>,
) -> Result<(AsyncClient, EventLoop, bool), VecDeque<Request>> {
    let addr = mqtt_addr(node);
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(5));
    o.set_clean_session(false);
    o.set_inflight(16);
    let (c, mut el) = AsyncClient::new(o, 16);
    el.pending = pending;
    let r = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(a))) => {
                    return (a.code == rumqttc::ConnectReturnCode::Success).then_some(a.session_present)
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    })
    .await;
    match r {
        Ok(Some(sp)) => Ok((c, el, sp)),
        _ => Err(salvage(el)),
    }
}

/// What is left of a dead connection: its unacknowledged requests, marked as resends.
fn salvage(mut el: EventLoop) -> VecDeque<Request> {
    el.clean();
    let mut pending = std::mem::take(&mut el.pending);
    for r in pending.iter_mut() {
        if let Request::Publish(p) = r {
            p.dup = true;
        }
    }
    pending
}

/// `name-seq` payloads to `topic` at QoS 2, one at a time, every `pace`; moves to the next of
/// `nodes` when its node fails, resending what was not completed.
pub async fn publisher(ctx: Ctx, process: u32, name: String, topic: String, nodes: Vec<u32>, pace: Duration) {
    let client_id = format!("rpub-{name}");
    let mut i = process as usize;
    let mut avoid = None;
    let mut seq = 0u64;
    let mut conn: Option<(AsyncClient, EventLoop, u32)> = None;
    // Requests of a dead connection, for the next one.
    let mut carried: VecDeque<Request> = VecDeque::new();
    // The message in flight: (history id, op, when it was first sent).
    let mut current: Option<(u64, F, tokio::time::Instant)> = None;
    let mut stopped_at: Option<tokio::time::Instant> = None;
    loop {
        if ctx.stop.load(Ordering::Relaxed) {
            let at = *stopped_at.get_or_insert_with(tokio::time::Instant::now);
            if current.is_none() {
                break;
            }
            if at.elapsed() > FINAL_BOUND {
                if let Some((id, f, since)) = current.take() {
                    let why = format!("not completed {:?} after it was first sent", since.elapsed());
                    ctx.rec.complete(process, id, Kind::Info, None, f, Some(why));
                }
                break;
            }
        }
        if conn.is_none() {
            let node = ctx.place(&nodes, avoid, i);
            match connect(&client_id, node, std::mem::take(&mut carried)).await {
                Ok((c, el, present)) => {
                    if !present {
                        // The session is gone (it was never replicated, or removed): rumqttc
                        // dropped what it would have resent; the message in flight is unknown.
                        if let Some((id, f, _)) = current.take() {
                            ctx.rec.complete(process, id, Kind::Info, Some(node), f, Some("session lost".into()));
                        }
                    }
                    conn = Some((c, el, node));
                }
                Err(pending) => {
                    // Kept for the next node (a refused node must not lose the resends).
                    carried = pending;
                    ctx.unplace(node);
                    avoid = Some(node);
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        let Some((client, el, node)) = conn.as_mut() else { continue };
        let node = *node;
        if current.is_none() {
            seq += 1;
            let payload = format!("{name}-{seq}");
            let f = F::Publish {
                publisher: name.clone(),
                seq,
                topic: topic.clone(),
                payload: payload.clone(),
                qos: 2,
                retain: false,
            };
            let id = ctx.rec.invoke(process, Some(node), f.clone());
            if client.try_publish(topic.clone(), qos(2), false, payload.into_bytes()).is_err() {
                ctx.rec.complete(process, id, Kind::Fail, Some(node), f, Some("client queue full".into()));
                continue;
            }
            current = Some((id, f, tokio::time::Instant::now()));
        }
        // One message at a time: a PUBCOMP completes the one in flight, whichever connection
        // sent it (the first, or a resend).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let done = loop {
            match tokio::time::timeout_at(deadline, el.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubComp(_)))) => break Ok(()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => break Err(format!("connection: {e}")),
                Err(_) => break Err("no PUBCOMP within 5 s".into()),
            }
        };
        match done {
            Ok(()) => {
                if let Some((id, f, _)) = current.take() {
                    ctx.rec.complete(process, id, Kind::Ok, Some(node), f, None);
                }
                tokio::time::sleep(pace).await;
            }
            Err(e) => {
                tracing::debug!(publisher = %name, node, "{e}: resending on the next node");
                if let Some((_, el, _)) = conn.take() {
                    carried = salvage(el);
                }
                ctx.unplace(node);
                avoid = Some(node);
                i += 1;
            }
        }
    }
    if let Some((c, mut el, node)) = conn {
        ctx.unplace(node);
        let _ = c.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(200), el.poll()).await;
    }
}
