//! Client workloads over real MQTT connections (rumqttc, MQTT 3.1.1). Each logical client is
//! one process in the history; it does one operation at a time and moves to another node when
//! its node fails. A publish is `Ok` only on PUBACK/PUBCOMP; a timeout or a dropped connection
//! makes it `Info` (indeterminate); a refused connection is `Fail`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};

use crate::db::mqtt_addr;
use crate::history::{Kind, Recorder, F};

pub fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Why a connection attempt did not work: refused (certainly not connected) or unknown.
pub enum ConnErr {
    Refused(String),
    Unknown(String),
}

/// Connects and waits for the CONNACK (3 s); returns the session-present flag.
pub async fn connect(id: &str, addr: SocketAddr, clean: bool) -> Result<(AsyncClient, EventLoop, bool), ConnErr> {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(5));
    o.set_clean_session(clean);
    o.set_inflight(16);
    let (c, mut el) = AsyncClient::new(o, 16);
    let r = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(a))) => {
                    return if a.code == ConnectReturnCode::Success {
                        Ok(a.session_present)
                    } else {
                        Err(ConnErr::Refused(format!("CONNACK {:?}", a.code)))
                    };
                }
                Ok(_) => {}
                Err(rumqttc::ConnectionError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Err(ConnErr::Refused(e.to_string()));
                }
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                    return Err(ConnErr::Refused(format!("CONNACK {code:?}")));
                }
                Err(e) => return Err(ConnErr::Unknown(e.to_string())),
            }
        }
    })
    .await;
    match r {
        Err(_) => Err(ConnErr::Unknown("no CONNACK within 3 s".into())),
        Ok(Err(e)) => Err(e),
        Ok(Ok(sp)) => Ok((c, el, sp)),
    }
}

/// Polls until `want` matches an event, an error, or `within` passes.
async fn poll_until(
    el: &mut EventLoop,
    within: Duration,
    mut want: impl FnMut(&Event) -> bool,
) -> anyhow::Result<Event> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, el.poll()).await {
            Err(_) => bail!("timed out after {within:?}"),
            Ok(Err(e)) => bail!("connection: {e}"),
            Ok(Ok(ev)) => {
                if want(&ev) {
                    return Ok(ev);
                }
            }
        }
    }
}

/// Shared by every workload task of a run.
#[derive(Clone)]
pub struct Ctx {
    pub rec: Recorder,
    /// Publishers and readers stop when set.
    pub stop: Arc<AtomicBool>,
    /// Subscribers stop when set (after the drain).
    pub stop_subs: Arc<AtomicBool>,
    /// Monotonic micros (since `t0`) of the last delivery to any subscriber.
    pub last_delivery: Arc<AtomicU64>,
    pub deliveries: Arc<AtomicU64>,
    pub t0: Instant,
    /// Publishers connected (or connecting) per node: see `place`.
    placed: Arc<std::sync::Mutex<std::collections::HashMap<u32, usize>>>,
}

impl Ctx {
    pub fn new(rec: Recorder, t0: Instant) -> Ctx {
        Ctx {
            rec,
            stop: Arc::default(),
            stop_subs: Arc::default(),
            last_delivery: Arc::default(),
            deliveries: Arc::default(),
            t0,
            placed: Arc::default(),
        }
    }

    /// The node a publisher (re)connects to: the one with the fewest publishers, other than
    /// `avoid` (the node that just failed it) when there is another; ties go by `turn`.
    /// Moving every failed publisher to "the next node" made them all meet on one node after
    /// a few faults, and a fault on that node then held every publisher: nothing was published
    /// while it lasted, so the dark-window checker measured the clients' 5 s timeout, not the
    /// link.
    pub fn place(&self, nodes: &[u32], avoid: Option<u32>, turn: usize) -> u32 {
        let mut placed = self.placed.lock().unwrap_or_else(|e| e.into_inner());
        let n = nodes.len().max(1);
        let candidates =
            (0..nodes.len()).map(|k| nodes[(turn + k) % n]).filter(|node| nodes.len() == 1 || Some(*node) != avoid);
        let node = candidates.min_by_key(|node| placed.get(node).copied().unwrap_or(0)).unwrap_or(nodes[turn % n]);
        *placed.entry(node).or_default() += 1;
        node
    }

    /// A publisher left `node` (its connection failed, or it stopped).
    pub fn unplace(&self, node: u32) {
        let mut placed = self.placed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = placed.get_mut(&node) {
            *c = c.saturating_sub(1);
        }
    }
}

/// A publisher: `name-seq` payloads to `topic`, one at a time, every `pace`.
pub async fn publisher(ctx: Ctx, process: u32, name: String, topic: String, q: u8, nodes: Vec<u32>, pace: Duration) {
    let mut seq = 0u64;
    let mut i = process as usize;
    let mut avoid = None;
    let mut conn: Option<(AsyncClient, EventLoop, u32)> = None;
    while !ctx.stop.load(Ordering::Relaxed) {
        let (client, el, node) = match conn.as_mut() {
            Some(c) => c,
            None => {
                let node = ctx.place(&nodes, avoid, i);
                match connect(&format!("pub-{name}"), mqtt_addr(node), true).await {
                    Ok((c, el, _)) => conn.insert((c, el, node)),
                    Err(_) => {
                        ctx.unplace(node);
                        avoid = Some(node);
                        i += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
        };
        let node = *node;
        seq += 1;
        let payload = format!("{name}-{seq}");
        let f = F::Publish {
            publisher: name.clone(),
            seq,
            topic: topic.clone(),
            payload: payload.clone(),
            qos: q,
            retain: false,
        };
        let id = ctx.rec.invoke(process, Some(node), f.clone());
        let r = match client.try_publish(topic.clone(), qos(q), false, payload.into_bytes()) {
            Err(e) => Err(anyhow!("{e}")),
            Ok(()) => {
                poll_until(el, Duration::from_secs(5), |ev| match ev {
                    Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_)) => true,
                    Event::Outgoing(Outgoing::Publish(_)) => q == 0,
                    _ => false,
                })
                .await
            }
        };
        match r {
            Ok(_) if q > 0 => ctx.rec.complete(process, id, Kind::Ok, Some(node), f, None),
            Ok(_) => ctx.rec.complete(process, id, Kind::Info, Some(node), f, None),
            Err(e) => {
                ctx.rec.complete(process, id, Kind::Info, Some(node), f, Some(e.to_string()));
                conn = None;
                ctx.unplace(node);
                avoid = Some(node);
                i += 1;
            }
        }
        tokio::time::sleep(pace).await;
    }
    if let Some((c, mut el, node)) = conn {
        ctx.unplace(node);
        let _ = c.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(200), el.poll()).await;
    }
}

/// Parses `name-seq` payloads.
pub fn parse_payload(p: &str) -> (String, u64) {
    match p.rsplit_once('-') {
        Some((name, seq)) => (name.to_string(), seq.parse().unwrap_or(0)),
        None => (p.to_string(), 0),
    }
}

/// A persistent subscriber (clean session off, fixed client id) of `filter`; reconnects to the
/// next node when its node fails, and subscribes again only if the session was lost.
#[allow(clippy::too_many_arguments)]
pub async fn subscriber(
    ctx: Ctx,
    process: u32,
    client_id: String,
    filter: String,
    q: u8,
    nodes: Vec<u32>,
    ready: Arc<AtomicBool>,
    away: Option<(Duration, Duration)>,
) {
    let mut i = process as usize;
    let mut subscribed = false;
    // QoS 2 receiver state kept across connections (MQTT 4.3.3 method B): packet ids received
    // and not yet released. A PUBLISH under one of them is the same message sent again (after
    // a reconnection or a failover) and is not delivered twice. rumqttc forgets this state on
    // every reconnection, so the application keeps it.
    let mut unreleased: std::collections::HashSet<u16> = std::collections::HashSet::new();
    while !ctx.stop_subs.load(Ordering::Relaxed) {
        let node = nodes[i % nodes.len()];
        let f = F::Connect { client_id: client_id.clone(), clean: false, session_present: None };
        let id = ctx.rec.invoke(process, Some(node), f.clone());
        let (client, mut el, sp) = match connect(&client_id, mqtt_addr(node), false).await {
            Ok(c) => c,
            Err(e) => {
                let (kind, msg) = match e {
                    ConnErr::Refused(m) => (Kind::Fail, m),
                    ConnErr::Unknown(m) => (Kind::Info, m),
                };
                ctx.rec.complete(process, id, kind, Some(node), f, Some(msg));
                i += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
        };
        ctx.rec.complete(
            process,
            id,
            Kind::Ok,
            Some(node),
            F::Connect { client_id: client_id.clone(), clean: false, session_present: Some(sp) },
            None,
        );
        if !sp {
            unreleased.clear();
        }
        if !subscribed || !sp {
            let f = F::Subscribe { client_id: client_id.clone(), filter: filter.clone(), qos: q };
            let id = ctx.rec.invoke(process, Some(node), f.clone());
            let r = match client.try_subscribe(filter.clone(), qos(q)) {
                Err(e) => Err(anyhow!("{e}")),
                Ok(()) => {
                    poll_until(&mut el, Duration::from_secs(5), |ev| matches!(ev, Event::Incoming(Packet::SubAck(_))))
                        .await
                }
            };
            match r {
                Ok(Event::Incoming(Packet::SubAck(a))) => {
                    let granted = match a.return_codes.first() {
                        Some(rumqttc::SubscribeReasonCode::Success(g)) => *g as u8,
                        _ => 128,
                    };
                    if granted > 2 {
                        ctx.rec.complete(process, id, Kind::Fail, Some(node), f, Some("SUBACK refused".into()));
                        i += 1;
                        continue;
                    }
                    ctx.rec.complete(
                        process,
                        id,
                        Kind::Ok,
                        Some(node),
                        F::Subscribe { client_id: client_id.clone(), filter: filter.clone(), qos: granted },
                        None,
                    );
                    subscribed = true;
                }
                other => {
                    let e = other.err().map(|e| e.to_string());
                    ctx.rec.complete(process, id, Kind::Info, Some(node), f, e);
                    i += 1;
                    continue;
                }
            }
        }
        ready.store(true, Ordering::Relaxed);
        let connected_at = Instant::now();
        // Receive until the connection fails or the run ends (or, while publishers run, it is
        // time to go away for a while: a clean disconnect, the session stays).
        loop {
            if ctx.stop_subs.load(Ordering::Relaxed) {
                let _ = client.try_disconnect();
                let _ = tokio::time::timeout(Duration::from_millis(200), el.poll()).await;
                return;
            }
            if let Some((stay, gone)) = away {
                if connected_at.elapsed() >= stay && !ctx.stop.load(Ordering::Relaxed) {
                    tracing::info!(client_id, ?gone, "subscriber goes away (session kept)");
                    let _ = client.try_disconnect();
                    // Until the DISCONNECT is out: what arrives meanwhile is acknowledged by
                    // rumqttc, so it is a delivery and is recorded as one.
                    let _ = tokio::time::timeout(Duration::from_millis(500), async {
                        loop {
                            match el.poll().await {
                                Ok(Event::Incoming(Packet::Publish(p))) => {
                                    deliver(&ctx, process, node, &client_id, &mut unreleased, p)
                                }
                                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                                Ok(_) => {}
                            }
                        }
                    })
                    .await;
                    let back = Instant::now() + gone;
                    while Instant::now() < back && !ctx.stop.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    break;
                }
            }
            match tokio::time::timeout(Duration::from_millis(500), el.poll()).await {
                Err(_) => {}
                Ok(Ok(Event::Incoming(Packet::PubRel(r)))) => {
                    unreleased.remove(&r.pkid);
                }
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    deliver(&ctx, process, node, &client_id, &mut unreleased, p);
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) => break,
            }
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Probes `node` every `every`: a fresh connection subscribes to a topic of its own, publishes
/// one QoS 1 message to it and waits for it (3 s).
pub async fn prober(ctx: Ctx, process: u32, node: u32, every: Duration) {
    let mut n = 0u64;
    while !ctx.stop_subs.load(Ordering::Relaxed) {
        n += 1;
        let id = ctx.rec.invoke(process, Some(node), F::Probe {});
        let r = probe_once(node, n).await;
        let (kind, err) = match r {
            Ok(()) => (Kind::Ok, None),
            Err(ConnErr::Refused(e)) => (Kind::Fail, Some(e)),
            Err(ConnErr::Unknown(e)) => (Kind::Info, Some(e)),
        };
        ctx.rec.complete(process, id, kind, Some(node), F::Probe {}, err);
        tokio::time::sleep(every).await;
    }
}

async fn probe_once(node: u32, n: u64) -> Result<(), ConnErr> {
    let id = format!("probe-{node}-{n}");
    let (c, mut el, _) = connect(&id, mqtt_addr(node), true).await?;
    let topic = format!("probe/{node}/{n}");
    let r = async {
        c.try_subscribe(topic.clone(), QoS::AtLeastOnce)?;
        poll_until(&mut el, Duration::from_secs(3), |ev| matches!(ev, Event::Incoming(Packet::SubAck(_)))).await?;
        c.try_publish(topic.clone(), QoS::AtLeastOnce, false, b"probe".to_vec())?;
        poll_until(&mut el, Duration::from_secs(3), |ev| matches!(ev, Event::Incoming(Packet::Publish(_)))).await?;
        anyhow::Ok(())
    }
    .await;
    let _ = c.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(100), el.poll()).await;
    r.map_err(|e| ConnErr::Unknown(e.to_string()))
}

pub const REGISTER: &str = "reg/0";

/// Writes the retained register (QoS 1, retain) every `pace`, rotating nodes on failure.
pub async fn retain_writer(ctx: Ctx, process: u32, nodes: Vec<u32>, pace: Duration) {
    let mut seq = 0u64;
    let mut i = process as usize;
    while !ctx.stop.load(Ordering::Relaxed) {
        let node = nodes[i % nodes.len()];
        let Ok((c, mut el, _)) = connect(&format!("retain-writer-{process}"), mqtt_addr(node), true).await else {
            i += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while !ctx.stop.load(Ordering::Relaxed) {
            seq += 1;
            let payload = format!("w{process}-{seq}");
            let f = F::Publish {
                publisher: format!("w{process}"),
                seq,
                topic: REGISTER.into(),
                payload: payload.clone(),
                qos: 1,
                retain: true,
            };
            let id = ctx.rec.invoke(process, Some(node), f.clone());
            let r = match c.try_publish(REGISTER, QoS::AtLeastOnce, true, payload.into_bytes()) {
                Err(e) => Err(anyhow!("{e}")),
                Ok(()) => {
                    poll_until(&mut el, Duration::from_secs(5), |ev| matches!(ev, Event::Incoming(Packet::PubAck(_))))
                        .await
                }
            };
            match r {
                Ok(_) => ctx.rec.complete(process, id, Kind::Ok, Some(node), f, None),
                Err(e) => {
                    ctx.rec.complete(process, id, Kind::Info, Some(node), f, Some(e.to_string()));
                    i += 1;
                    break;
                }
            }
            tokio::time::sleep(pace).await;
        }
        let _ = c.try_disconnect();
    }
}

/// One read of the retained register on `node`: subscribe, take the retained message (or none
/// within `wait` after the SUBACK).
pub async fn retain_read(ctx: &Ctx, process: u32, node: u32, n: u64, wait: Duration) -> bool {
    let f = F::RetainRead { topic: REGISTER.into(), value: None };
    let id = ctx.rec.invoke(process, Some(node), f.clone());
    let r = async {
        let (c, mut el, _) =
            connect(&format!("retain-reader-{process}-{n}"), mqtt_addr(node), true).await.map_err(|e| match e {
                ConnErr::Refused(m) | ConnErr::Unknown(m) => anyhow!(m),
            })?;
        c.try_subscribe(REGISTER, QoS::AtLeastOnce)?;
        poll_until(&mut el, Duration::from_secs(3), |ev| matches!(ev, Event::Incoming(Packet::SubAck(_)))).await?;
        let v =
            match poll_until(&mut el, wait, |ev| matches!(ev, Event::Incoming(Packet::Publish(p)) if p.retain)).await {
                Ok(Event::Incoming(Packet::Publish(p))) => Some(String::from_utf8_lossy(&p.payload).into_owned()),
                _ => None,
            };
        let _ = c.try_disconnect();
        anyhow::Ok(v)
    }
    .await;
    match r {
        Ok(v) => {
            ctx.rec.complete(
                process,
                id,
                Kind::Ok,
                Some(node),
                F::RetainRead { topic: REGISTER.into(), value: v },
                None,
            );
            true
        }
        Err(e) => {
            ctx.rec.complete(process, id, Kind::Info, Some(node), f, Some(e.to_string()));
            false
        }
    }
}

/// Reads the register on rotating nodes every `pace` while the run lasts.
pub async fn retain_reader(ctx: Ctx, process: u32, nodes: Vec<u32>, pace: Duration) {
    let mut n = 0u64;
    while !ctx.stop.load(Ordering::Relaxed) {
        n += 1;
        let node = nodes[n as usize % nodes.len()];
        retain_read(&ctx, process, node, n, Duration::from_millis(1000)).await;
        tokio::time::sleep(pace).await;
    }
}

/// Record a PUBLISH a subscriber received (rumqttc has acknowledged it). A QoS 2 PUBLISH under a
/// packet id not yet released is the same message sent again and is not delivered twice.
fn deliver(
    ctx: &Ctx,
    process: u32,
    node: u32,
    client_id: &str,
    unreleased: &mut std::collections::HashSet<u16>,
    p: rumqttc::Publish,
) {
    if p.qos == QoS::ExactlyOnce && !unreleased.insert(p.pkid) {
        tracing::debug!(
            client_id,
            pkid = p.pkid,
            "QoS 2 PUBLISH sent again under an unreleased id: not delivered twice"
        );
        return;
    }
    tracing::trace!(client_id, node, pkid = p.pkid, qos = p.qos as u8, dup = p.dup, payload = %String::from_utf8_lossy(&p.payload), "deliver");
    let payload = String::from_utf8_lossy(&p.payload).into_owned();
    let (publisher, seq) = parse_payload(&payload);
    ctx.rec.event(
        process,
        Kind::Ok,
        Some(node),
        F::Deliver {
            client_id: client_id.to_string(),
            topic: p.topic.clone(),
            payload,
            qos: p.qos as u8,
            dup: p.dup,
            publisher,
            seq,
        },
    );
    ctx.deliveries.fetch_add(1, Ordering::Relaxed);
    ctx.last_delivery.store(ctx.t0.elapsed().as_micros() as u64, Ordering::Relaxed);
}
