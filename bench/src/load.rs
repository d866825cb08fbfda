//! The load generator: rumqttc publishers and subscribers (MQTT 3.1.1, the protocol every peer
//! speaks), bounded by message count and time. Every payload carries its send time, the
//! publisher's number and its sequence number, so the subscribers measure end-to-end latency
//! and count what is lost or duplicated. Idle connections and the connection rate use a raw
//! CONNECT over TCP, so that the client library's own cost is not what gets measured there.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

pub const HEADER: usize = 20;

/// How publishers and subscribers are wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wiring {
    /// Publisher i → subscriber i on its own topic (needs pubs == subs).
    Pairs,
    /// Every subscriber subscribes to every publisher's topic.
    FanOut,
}

#[derive(Debug, Clone)]
pub struct Flow {
    pub pubs: usize,
    pub subs: usize,
    pub wiring: Wiring,
    pub qos: u8,
    pub payload: usize,
    /// Messages per publisher.
    pub count: u64,
    /// Messages per second per publisher; `None` = as fast as the broker takes them.
    pub rate: Option<u64>,
    /// Publishers connect here (round-robin), subscribers there.
    pub pub_addrs: Vec<SocketAddr>,
    pub sub_addrs: Vec<SocketAddr>,
    /// Topic prefix (`bench` or `linked/bench`).
    pub prefix: String,
    /// Give up when nothing new arrived for this long.
    pub idle_timeout: Duration,
    /// Give up after this long in all.
    pub max_time: Duration,
    /// Subscribers with persistent sessions (clean session off), client ids `bench-{tag}-N`;
    /// they stay behind, offline, when the flow ends.
    pub persistent: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Outcome {
    pub sent: u64,
    pub acked: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Seconds from the first send to the last delivery.
    pub seconds: f64,
    /// Deliveries per second.
    pub msgs_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub errors: Vec<String>,
    pub timed_out: bool,
}

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn options(id: &str, addr: SocketAddr) -> MqttOptions {
    options_clean(id, addr, true)
}

fn options_clean(id: &str, addr: SocketAddr, clean: bool) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(clean);
    o.set_inflight(crate::brokers::INFLIGHT as u16);
    o.set_max_packet_size(2 << 20, 2 << 20);
    o
}

struct SubResult {
    received: u64,
    duplicates: u64,
    lat_us: Vec<u32>,
    last_ns: u64,
    error: Option<String>,
}

/// Polls until the SUBACK arrives (or an error).
async fn wait_suback(el: &mut EventLoop) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(deadline, el.poll()).await {
            Err(_) => bail!("no SUBACK within 15 s"),
            Ok(Err(e)) => bail!("subscriber connection: {e}"),
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => return Ok(()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Connects and subscribes a subscriber; returns its client and event loop ready to receive.
pub async fn subscriber(
    id: &str,
    addr: SocketAddr,
    filters: &[String],
    q: u8,
) -> anyhow::Result<(AsyncClient, EventLoop)> {
    subscriber_clean(id, addr, filters, q, true).await
}

async fn subscriber_clean(
    id: &str,
    addr: SocketAddr,
    filters: &[String],
    q: u8,
    clean: bool,
) -> anyhow::Result<(AsyncClient, EventLoop)> {
    let (client, mut el) = AsyncClient::new(options_clean(id, addr, clean), 64);
    for f in filters {
        client.subscribe(f.clone(), qos(q)).await?;
    }
    for _ in filters {
        wait_suback(&mut el).await.with_context(|| format!("subscriber {id} on {addr}"))?;
    }
    Ok((client, el))
}

fn parse(p: &[u8]) -> Option<(u64, u64, u32)> {
    if p.len() < HEADER {
        return None;
    }
    let sent = u64::from_le_bytes(p[0..8].try_into().ok()?);
    let seq = u64::from_le_bytes(p[8..16].try_into().ok()?);
    let publisher = u32::from_le_bytes(p[16..20].try_into().ok()?);
    Some((sent, seq, publisher))
}

pub fn payload(base: Instant, seq: u64, publisher: u32, size: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(size.max(HEADER));
    p.extend_from_slice(&(base.elapsed().as_nanos() as u64).to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend_from_slice(&publisher.to_le_bytes());
    p.resize(size.max(HEADER), b'x');
    p
}

async fn run_subscriber(
    mut el: EventLoop,
    base: Instant,
    pubs: usize,
    count: u64,
    progress: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> SubResult {
    let words = count.div_ceil(64) as usize;
    let mut seen: Vec<Vec<u64>> = vec![vec![0u64; words]; pubs];
    let mut r = SubResult { received: 0, duplicates: 0, lat_us: Vec::new(), last_ns: 0, error: None };
    loop {
        tokio::select! {
            ev = el.poll() => match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let now = base.elapsed().as_nanos() as u64;
                    let Some((sent, seq, publisher)) = parse(&p.payload) else { continue };
                    let (Some(bits), true) = (seen.get_mut(publisher as usize), seq < count) else { continue };
                    let (w, b) = ((seq / 64) as usize, seq % 64);
                    if bits[w] & (1 << b) != 0 {
                        r.duplicates += 1;
                        continue;
                    }
                    bits[w] |= 1 << b;
                    r.received += 1;
                    r.last_ns = now;
                    r.lat_us.push((now.saturating_sub(sent) / 1000).min(u32::MAX as u64) as u32);
                    progress.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => {
                    r.error = Some(format!("subscriber: {e}"));
                    return r;
                }
            },
            _ = stop.changed() => return r,
        }
    }
}

struct PubResult {
    sent: u64,
    acked: u64,
    first_ns: u64,
    error: Option<String>,
}

#[allow(clippy::too_many_arguments)]
async fn run_publisher(
    id: u32,
    addr: SocketAddr,
    topic: String,
    flow: Flow,
    base: Instant,
    start: Arc<tokio::sync::Notify>,
) -> PubResult {
    let (client, mut el) = AsyncClient::new(options(&format!("bench-pub-{id}"), addr), 256);
    let acked = Arc::new(AtomicU64::new(0));
    let (done_tx, mut done_rx) = watch::channel(false);
    let err: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    // Set before our own DISCONNECT: the broker closing the connection after it is expected.
    let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let acked = acked.clone();
        let err = err.clone();
        let closing = closing.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    ev = el.poll() => match ev {
                        Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Event::Outgoing(Outgoing::Publish(_))) if flow.qos == 0 => {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            if !closing.load(Ordering::Relaxed) {
                                if let Ok(mut g) = err.lock() {
                                    *g = Some(format!("publisher {id}: {e}"));
                                }
                            }
                            return;
                        }
                    },
                    _ = done_rx.changed() => return,
                }
            }
        })
    };
    start.notified().await;
    let t0 = tokio::time::Instant::now();
    let first_ns = base.elapsed().as_nanos() as u64;
    let mut sent = 0;
    for seq in 0..flow.count {
        if let Some(rate) = flow.rate {
            tokio::time::sleep_until(t0 + Duration::from_nanos(seq * 1_000_000_000 / rate.max(1))).await;
        }
        let p = payload(base, seq, id, flow.payload);
        if client.publish(topic.clone(), qos(flow.qos), false, p).await.is_err() {
            break;
        }
        sent += 1;
    }
    // Wait for the acknowledgements (bounded by the idle timeout without progress).
    let mut last = acked.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    while acked.load(Ordering::Relaxed) < sent && last_change.elapsed() < flow.idle_timeout {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = acked.load(Ordering::Relaxed);
        if now != last {
            last = now;
            last_change = Instant::now();
        }
        if poller.is_finished() {
            break;
        }
    }
    closing.store(true, Ordering::Relaxed);
    let _ = client.disconnect().await;
    let _ = done_tx.send(true);
    let _ = poller.await;
    let error = err.lock().ok().and_then(|g| g.clone());
    PubResult { sent, acked: acked.load(Ordering::Relaxed), first_ns, error }
}

/// The `q` quantile of sorted microsecond samples, in milliseconds.
pub fn percentile_ms(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Runs one flow: subscribers first (all subscribed), then publishers together.
pub async fn run(flow: &Flow) -> anyhow::Result<Outcome> {
    let base = Instant::now();
    let topic = |i: usize| format!("{}/{i}", flow.prefix);
    let progress = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut subs = Vec::new();
    let mut clients = Vec::new();
    for s in 0..flow.subs {
        let filters = match flow.wiring {
            Wiring::Pairs => vec![topic(s)],
            Wiring::FanOut if flow.pubs == 1 => vec![topic(0)],
            Wiring::FanOut => vec![format!("{}/+", flow.prefix)],
        };
        let addr = flow.sub_addrs[s % flow.sub_addrs.len()];
        let (c, el) = match &flow.persistent {
            None => subscriber(&format!("bench-sub-{s}"), addr, &filters, flow.qos).await?,
            Some(tag) => subscriber_clean(&format!("bench-{tag}-{s}"), addr, &filters, flow.qos, false).await?,
        };
        clients.push(c);
        subs.push(tokio::spawn(run_subscriber(el, base, flow.pubs, flow.count, progress.clone(), stop_rx.clone())));
    }
    let per_sub = match flow.wiring {
        Wiring::Pairs => flow.count,
        Wiring::FanOut => flow.count * flow.pubs as u64,
    };
    let expected = per_sub * flow.subs as u64;
    let start = Arc::new(tokio::sync::Notify::new());
    let mut pubs = Vec::new();
    for p in 0..flow.pubs {
        let addr = flow.pub_addrs[p % flow.pub_addrs.len()];
        pubs.push(tokio::spawn(run_publisher(p as u32, addr, topic(p), flow.clone(), base, start.clone())));
    }
    // Let every publisher connect before they start together.
    tokio::time::sleep(Duration::from_millis(200)).await;
    start.notify_waiters();
    let t0 = Instant::now();
    let mut last = 0;
    let mut last_change = Instant::now();
    let mut timed_out = false;
    while progress.load(Ordering::Relaxed) < expected {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = progress.load(Ordering::Relaxed);
        if now != last {
            last = now;
            last_change = Instant::now();
        }
        if last_change.elapsed() > flow.idle_timeout || t0.elapsed() > flow.max_time {
            timed_out = true;
            break;
        }
    }
    let mut out = Outcome { expected, timed_out, ..Outcome::default() };
    let mut first_ns = u64::MAX;
    for p in pubs {
        let r = p.await.context("publisher task")?;
        out.sent += r.sent;
        out.acked += r.acked;
        first_ns = first_ns.min(r.first_ns);
        out.errors.extend(r.error);
    }
    let _ = stop_tx.send(true);
    let mut lat = Vec::new();
    let mut last_ns = 0;
    for s in subs {
        let r = s.await.context("subscriber task")?;
        out.received += r.received;
        out.duplicates += r.duplicates;
        last_ns = last_ns.max(r.last_ns);
        lat.extend(r.lat_us);
        out.errors.extend(r.error);
    }
    for c in clients {
        let _ = c.try_disconnect();
    }
    out.lost = expected.saturating_sub(out.received);
    out.seconds = (last_ns.saturating_sub(first_ns)) as f64 / 1e9;
    if out.seconds > 0.0 {
        out.msgs_per_s = out.received as f64 / out.seconds;
    }
    lat.sort_unstable();
    out.p50_ms = percentile_ms(&lat, 0.50);
    out.p99_ms = percentile_ms(&lat, 0.99);
    out.p999_ms = percentile_ms(&lat, 0.999);
    out.max_ms = lat.last().map(|v| *v as f64 / 1000.0).unwrap_or(0.0);
    Ok(out)
}

/// A raw MQTT 3.1.1 CONNECT (clean session, keep-alive 600 s).
fn connect_packet(id: &str) -> Vec<u8> {
    let mut v = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x02, 0x58];
    v.extend_from_slice(&(id.len() as u16).to_be_bytes());
    v.extend_from_slice(id.as_bytes());
    let mut p = vec![0x10];
    let mut len = v.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        p.push(b);
        if len == 0 {
            break;
        }
    }
    p.extend(v);
    p
}

/// Opens one connection and completes the CONNECT/CONNACK exchange.
pub async fn raw_connect(addr: SocketAddr, id: &str) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(&connect_packet(id)).await?;
    let mut ack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut ack)).await.context("no CONNACK within 10 s")??;
    if ack[0] != 0x20 || ack[3] != 0 {
        bail!("CONNACK refused: {ack:?}");
    }
    Ok(s)
}

/// Opens `n` connections (64 at a time) and keeps them; returns them and the time taken.
pub async fn idle_connections(addr: SocketAddr, n: usize) -> anyhow::Result<(Vec<TcpStream>, Duration)> {
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        tasks.push(tokio::spawn(async move {
            let r = raw_connect(addr, &format!("idle-{i}")).await;
            drop(permit);
            r
        }));
    }
    let mut conns = Vec::with_capacity(n);
    for t in tasks {
        conns.push(t.await??);
    }
    Ok((conns, t0.elapsed()))
}

/// Connect + CONNACK + DISCONNECT in a loop from `workers` tasks for `time`; returns the
/// number of completed connections, CONNACK latencies (ms, sorted) and the first error.
pub async fn connect_rate(addr: SocketAddr, workers: usize, time: Duration) -> (u64, Vec<u32>, Option<String>) {
    let deadline = Instant::now() + time;
    let mut tasks = Vec::new();
    for w in 0..workers {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                match raw_connect(addr, &format!("rate-{w}-{i}")).await {
                    Ok(mut s) => {
                        lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        let _ = s.write_all(&[0xE0, 0x00]).await;
                    }
                    Err(e) => return (lat, Some(e.to_string())),
                }
                i += 1;
            }
            (lat, None)
        }));
    }
    let mut all = Vec::new();
    let mut err = None;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            all.extend(l);
            err = err.or(e);
        }
    }
    all.sort_unstable();
    (all.len() as u64, all, err)
}
