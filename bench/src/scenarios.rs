//! The scenarios: each runs against every broker it applies to, on a fresh deployment, while a
//! sampler reads the brokers' CPU time and RSS from /proc.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttc::{Event, Packet, QoS};

use crate::brokers::{self, Binaries, Deployment, Kind};
use crate::load::{self, Flow, Outcome, Wiring};

/// One row of the results: a scenario against one broker.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Row {
    pub scenario: String,
    pub broker: String,
    /// The broker stayed up and accepted connections at the end.
    pub healthy: bool,
    pub msgs_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Broker CPU over the measured window, % of one core (sum over a deployment's processes).
    pub cpu_pct: f64,
    /// Peak RSS over the run, MiB (sum over processes).
    pub rss_mib: f64,
    pub sent: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Scenario-specific figures (connections/s, KiB per connection, propagation, recovery...).
    pub extra: BTreeMap<String, f64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub enum What {
    Flow {
        pubs: usize,
        subs: usize,
        wiring: Wiring,
        qos: u8,
        payload: usize,
        count: u64,
        rate: Option<u64>,
    },
    Idle {
        conns: usize,
    },
    ConnRate {
        workers: usize,
        secs: u64,
    },
    /// 3-node Strait cluster: publish on node 1, subscribe on node 2.
    Cluster {
        qos: u8,
        count: u64,
        rate: Option<u64>,
    },
    /// 3-node Strait cluster doing nothing: CPU of each node over `secs`.
    ClusterIdle {
        secs: u64,
    },
    /// 3-node Strait: a persistent subscriber on node 2, publisher on node 1, `runs` times in
    /// a row on the same topic; each run's subscriber stays behind, offline (as devices do).
    Persistent {
        count: u64,
        rate: Option<u64>,
        runs: usize,
    },
    /// Two regions (Strait linked / mosquitto bridged): publish in A, subscribe in B.
    Link {
        qos: u8,
        count: u64,
        rate: Option<u64>,
    },
    /// Subscription propagation across the link: SUBACK in B → first message from A.
    Propagation {
        tries: usize,
    },
    /// SIGKILL a node while messages flow over a link: time until they flow again. The
    /// receiving region's leader (it holds the link client), or with `sending` the node of the
    /// sending region that serves the link client's connection.
    Failover {
        tries: usize,
        sending: bool,
    },
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub what: What,
    pub brokers: &'static [Kind],
}

const ALL: &[Kind] = &[Kind::Strait, Kind::Mosquitto, Kind::Rumqttd];
const LINKABLE: &[Kind] = &[Kind::Strait, Kind::Mosquitto];
const STRAIT: &[Kind] = &[Kind::Strait];

/// The scenario list; `scale` divides message counts and durations (smoke runs).
pub fn all(scale: u64) -> Vec<Scenario> {
    let n = |c: u64| (c / scale).max(10);
    let flow =
        |pubs, subs, wiring, qos, payload, count, rate| What::Flow { pubs, subs, wiring, qos, payload, count, rate };
    vec![
        Scenario {
            name: "qos0-1to1",
            about: "1 → 1, QoS 0, 64 B, max rate",
            what: flow(1, 1, Wiring::Pairs, 0, 64, n(500_000), None),
            brokers: ALL,
        },
        Scenario {
            name: "qos1-1to1",
            about: "1 → 1, QoS 1, 64 B, max rate",
            what: flow(1, 1, Wiring::Pairs, 1, 64, n(200_000), None),
            brokers: ALL,
        },
        Scenario {
            name: "qos2-1to1",
            about: "1 → 1, QoS 2, 64 B, max rate",
            what: flow(1, 1, Wiring::Pairs, 2, 64, n(100_000), None),
            brokers: ALL,
        },
        Scenario {
            name: "qos1-10to10",
            about: "10 pairs, QoS 1, 64 B, max rate",
            what: flow(10, 10, Wiring::Pairs, 1, 64, n(30_000), None),
            brokers: ALL,
        },
        Scenario {
            name: "fanout-1to50",
            about: "1 → 50 subscribers, QoS 0, 64 B (count-bounded)",
            what: flow(1, 50, Wiring::FanOut, 0, 64, n(20_000), None),
            brokers: ALL,
        },
        Scenario {
            name: "qos1-1k",
            about: "1 → 1, QoS 1, 1 KiB, max rate",
            what: flow(1, 1, Wiring::Pairs, 1, 1024, n(100_000), None),
            brokers: ALL,
        },
        Scenario {
            name: "latency-2k",
            about: "1 → 1, QoS 1, 64 B at a fixed 2,000 msg/s",
            what: flow(1, 1, Wiring::Pairs, 1, 64, n(40_000), Some(2000)),
            brokers: ALL,
        },
        Scenario {
            name: "idle-10k",
            about: "10,000 idle connections: RSS per connection",
            what: What::Idle { conns: (10_000 / scale as usize).max(50) },
            brokers: ALL,
        },
        Scenario {
            name: "connect-rate",
            about: "connect + CONNACK + disconnect, 8 workers",
            what: What::ConnRate { workers: 8, secs: (10 / scale).max(1) },
            brokers: ALL,
        },
        Scenario {
            name: "cluster-qos1",
            about: "3-node Strait: publish on node 1, subscribe on node 2, QoS 1, max rate",
            what: What::Cluster { qos: 1, count: n(100_000), rate: None },
            brokers: STRAIT,
        },
        Scenario {
            name: "cluster-latency-2k",
            about: "3-node Strait: node 1 → node 2, QoS 1 at 2,000 msg/s",
            what: What::Cluster { qos: 1, count: n(40_000), rate: Some(2000) },
            brokers: STRAIT,
        },
        Scenario {
            name: "cluster-idle",
            about: "3-node Strait doing nothing: CPU per node (% of a core)",
            what: What::ClusterIdle { secs: (10 / scale).max(2) },
            brokers: STRAIT,
        },
        Scenario {
            name: "cluster-persistent",
            about: "3-node Strait: node 1 → persistent subscriber on node 2, QoS 1, max rate, 3 runs (earlier subscribers left offline)",
            what: What::Persistent { count: n(50_000), rate: None, runs: 3 },
            brokers: STRAIT,
        },
        Scenario {
            name: "cluster-persistent-latency-2k",
            about: "3-node Strait: node 1 → persistent subscriber on node 2, QoS 1 at 2,000 msg/s, 3 runs",
            what: What::Persistent { count: n(20_000), rate: Some(2000), runs: 3 },
            brokers: STRAIT,
        },
        Scenario {
            name: "link-qos1",
            about: "two regions linked / bridged on linked/#: publish in A, subscribe in B, QoS 1, max rate",
            what: What::Link { qos: 1, count: n(50_000), rate: None },
            brokers: LINKABLE,
        },
        Scenario {
            name: "link-latency-2k",
            about: "two regions: A → B, QoS 1 at 2,000 msg/s",
            what: What::Link { qos: 1, count: n(40_000), rate: Some(2000) },
            brokers: LINKABLE,
        },
        Scenario {
            name: "link-propagation",
            about: "two regions: new subscription in B → first message from A",
            what: What::Propagation { tries: (20 / scale as usize).max(2) },
            brokers: LINKABLE,
        },
        Scenario {
            name: "link-failover",
            about: "3-node region B pulls from A; SIGKILL B's leader under QoS 1 traffic: time until deliveries resume",
            what: What::Failover { tries: (10 / scale as usize).max(1), sending: false },
            brokers: STRAIT,
        },
        Scenario {
            name: "link-failover-sending",
            about: "3-node region A serves B's link client; SIGKILL the A node it is connected to under QoS 1 traffic: time until deliveries resume",
            what: What::Failover { tries: (10 / scale as usize).max(1), sending: true },
            brokers: STRAIT,
        },
    ]
}

/// Samples the CPU time and peak RSS of a set of processes.
struct Sampler {
    pids: Vec<u32>,
    cpu0: f64,
    t0: Instant,
    peak_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pids: Vec<u32>) -> Sampler {
        let peak_kib = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let cpu0 = pids.iter().filter_map(|p| brokers::cpu_seconds(*p)).sum();
        let thread = {
            let (pids, peak, stop) = (pids.clone(), peak_kib.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let rss: u64 = pids.iter().filter_map(|p| brokers::rss_kib(*p)).sum();
                    peak.fetch_max(rss, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Sampler { pids, cpu0, t0: Instant::now(), peak_kib, stop, thread: Some(thread) }
    }

    /// (CPU % of one core since start, peak RSS MiB).
    fn finish(mut self) -> (f64, f64) {
        let cpu1: f64 = self.pids.iter().filter_map(|p| brokers::cpu_seconds(*p)).sum();
        let secs = self.t0.elapsed().as_secs_f64().max(1e-3);
        let rss: u64 = self.pids.iter().filter_map(|p| brokers::rss_kib(*p)).sum();
        self.peak_kib.fetch_max(rss, Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        ((cpu1 - self.cpu0) / secs * 100.0, self.peak_kib.load(Ordering::Relaxed) as f64 / 1024.0)
    }
}

fn flow_row(row: &mut Row, o: &Outcome) {
    row.msgs_per_s = o.msgs_per_s;
    row.p50_ms = o.p50_ms;
    row.p99_ms = o.p99_ms;
    row.p999_ms = o.p999_ms;
    row.sent = o.sent;
    row.expected = o.expected;
    row.received = o.received;
    row.lost = o.lost;
    row.duplicates = o.duplicates;
    row.extra.insert("acked".into(), o.acked as f64);
    row.extra.insert("max_ms".into(), o.max_ms);
    if o.timed_out {
        row.extra.insert("timed_out".into(), 1.0);
    }
    if let Some(e) = o.errors.first() {
        row.error = Some(e.clone());
    }
}

fn flow_of(pubs: usize, subs: usize, wiring: Wiring, qos: u8, payload: usize, count: u64, rate: Option<u64>) -> Flow {
    Flow {
        pubs,
        subs,
        wiring,
        qos,
        payload,
        count,
        rate,
        pub_addrs: Vec::new(),
        sub_addrs: Vec::new(),
        prefix: "bench".into(),
        idle_timeout: Duration::from_secs(10),
        max_time: Duration::from_secs(120),
        persistent: None,
    }
}

/// Runs `s` against `kind`, start to finish (deployment started and stopped here).
pub async fn run(s: &Scenario, kind: Kind, bins: &Binaries) -> Row {
    let mut row = Row { scenario: s.name.into(), broker: kind.name().into(), ..Row::default() };
    match run_inner(s, kind, bins, &mut row).await {
        Ok(()) => {}
        Err(e) => {
            row.healthy = false;
            row.error = Some(format!("{e:#}"));
        }
    }
    row
}

async fn run_inner(s: &Scenario, kind: Kind, bins: &Binaries, row: &mut Row) -> anyhow::Result<()> {
    let mut dep: Deployment = match s.what {
        What::Cluster { .. } | What::ClusterIdle { .. } | What::Persistent { .. } | What::Failover { .. }
            if kind == Kind::Strait =>
        {
            if let What::Failover { .. } = s.what {
                brokers::linked(kind, bins, 3)?
            } else {
                let d = brokers::strait_cluster3(bins)?;
                wait_cluster(&d, 3).await?;
                d
            }
        }
        What::Link { .. } | What::Propagation { .. } => brokers::linked(kind, bins, 1)?,
        _ => brokers::single(kind, bins)?,
    };
    if matches!(s.what, What::Link { .. } | What::Propagation { .. } | What::Failover { .. }) && kind == Kind::Strait {
        wait_links(&dep).await?;
    }
    // Flaps under load: leader changes and link reconnections during the run, from every
    // Strait node's /metrics (a lease that lapses under load shows up in both).
    // (Not in failover runs: their kills are the point, and a restarted node counts from 0.)
    let flaps_before = if matches!(s.what, What::Failover { .. }) { None } else { flap_counters(&dep, kind) };
    let sampler = Sampler::start(dep.pids());
    match s.what {
        What::Flow { pubs, subs, wiring, qos, payload, count, rate } => {
            let mut f = flow_of(pubs, subs, wiring, qos, payload, count, rate);
            f.pub_addrs = vec![dep.mqtt[0]];
            f.sub_addrs = vec![dep.mqtt[0]];
            let o = load::run(&f).await?;
            flow_row(row, &o);
        }
        What::Cluster { qos, count, rate } => {
            let mut f = flow_of(1, 1, Wiring::Pairs, qos, 64, count, rate);
            f.pub_addrs = vec![dep.mqtt[0]];
            f.sub_addrs = vec![dep.mqtt[1]];
            let o = load::run(&f).await?;
            flow_row(row, &o);
        }
        What::ClusterIdle { secs } => {
            let pids = dep.pids();
            let before: Vec<f64> = pids.iter().map(|p| brokers::cpu_seconds(*p).unwrap_or(0.0)).collect();
            let t0 = Instant::now();
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let el = t0.elapsed().as_secs_f64();
            let mut worst: f64 = 0.0;
            for (i, p) in pids.iter().enumerate() {
                let pct = (brokers::cpu_seconds(*p).unwrap_or(0.0) - before[i]) / el * 100.0;
                row.extra.insert(format!("node{}_cpu_pct", i + 1), pct);
                worst = worst.max(pct);
            }
            row.extra.insert("max_node_cpu_pct".into(), worst);
        }
        What::Persistent { count, rate, runs } => {
            let mut rates = Vec::new();
            for r in 0..runs {
                let mut f = flow_of(1, 1, Wiring::Pairs, 1, 64, count, rate);
                f.pub_addrs = vec![dep.mqtt[0]];
                f.sub_addrs = vec![dep.mqtt[1]];
                f.persistent = Some(format!("psub-run{}", r + 1));
                let o = load::run(&f).await?;
                row.extra.insert(format!("run{}_msgs_per_s", r + 1), o.msgs_per_s);
                row.extra.insert(format!("run{}_p99_ms", r + 1), o.p99_ms);
                rates.push(o.msgs_per_s);
                // The row shows the last run: the one with the most sessions left behind.
                flow_row(row, &o);
            }
            let first = rates.first().copied().unwrap_or(0.0);
            let worst = rates.iter().copied().fold(f64::INFINITY, f64::min);
            row.extra.insert("worst_run_vs_first".into(), if first > 0.0 { worst / first } else { 0.0 });
        }
        What::Link { qos, count, rate } => {
            let half = dep.mqtt.len() / 2;
            let mut f = flow_of(1, 1, Wiring::Pairs, qos, 64, count, rate);
            f.prefix = "linked/bench".into();
            f.pub_addrs = vec![dep.mqtt[0]];
            f.sub_addrs = vec![dep.mqtt[half]];
            // Subscriptions cross the link asynchronously: subscribe, then wait until a probe
            // published in A arrives in B before the measured flow starts.
            propagation_once(dep.mqtt[0], dep.mqtt[half], "linked/bench/0", 1000).await?;
            let o = load::run(&f).await?;
            flow_row(row, &o);
        }
        What::Propagation { tries } => {
            let half = dep.mqtt.len() / 2;
            let mut v = Vec::new();
            for i in 0..tries {
                v.push(propagation_once(dep.mqtt[0], dep.mqtt[half], &format!("linked/prop/{i}"), i as u64).await?);
            }
            v.sort_unstable();
            row.p50_ms = load::percentile_ms(&v, 0.5);
            row.p99_ms = load::percentile_ms(&v, 0.99);
            row.extra.insert("tries".into(), tries as f64);
            row.received = tries as u64;
            row.expected = tries as u64;
        }
        What::Idle { conns } => {
            let before = dep.pids().iter().filter_map(|p| brokers::rss_kib(*p)).sum::<u64>();
            let (held, took) = load::idle_connections(dep.mqtt[0], conns).await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let after = dep.pids().iter().filter_map(|p| brokers::rss_kib(*p)).sum::<u64>();
            row.extra.insert("kib_per_conn".into(), after.saturating_sub(before) as f64 / conns as f64);
            row.extra.insert("connections".into(), held.len() as f64);
            row.extra.insert("open_per_s".into(), conns as f64 / took.as_secs_f64().max(1e-3));
            row.received = held.len() as u64;
            row.expected = conns as u64;
            row.lost = (conns - held.len()) as u64;
            drop(held);
        }
        What::ConnRate { workers, secs } => {
            let (n, lat, err) = load::connect_rate(dep.mqtt[0], workers, Duration::from_secs(secs)).await;
            row.extra.insert("conns_per_s".into(), n as f64 / secs as f64);
            row.p50_ms = load::percentile_ms(&lat, 0.5);
            row.p99_ms = load::percentile_ms(&lat, 0.99);
            row.p999_ms = load::percentile_ms(&lat, 0.999);
            row.received = n;
            row.error = err;
        }
        What::Failover { tries, sending } => failover(&mut dep, bins, tries, sending, row).await?,
    }
    let (cpu, rss) = sampler.finish();
    if let (Some(before), Some(after)) = (flaps_before, flap_counters(&dep, kind)) {
        row.extra.insert("leader_changes".into(), after.0 - before.0);
        row.extra.insert("link_connects".into(), after.1 - before.1);
    }
    row.cpu_pct = cpu;
    row.rss_mib = rss;
    row.healthy = dep.healthy();
    dep.stop();
    Ok(())
}

/// Leader changes seen and link connections made, summed over a clustered Strait
/// deployment's nodes (None: not one, or a node did not answer).
fn flap_counters(d: &Deployment, kind: Kind) -> Option<(f64, f64)> {
    if kind != Kind::Strait || d.api.len() < 2 {
        return None;
    }
    let mut sums = (0.0, 0.0);
    for api in &d.api {
        let body = brokers::http_get(*api, "/metrics").ok()?;
        sums.0 += metric_sum(&body, "strait_raft_leader_changes_total");
        sums.1 += metric_sum(&body, "strait_link_connects_total");
    }
    Some(sums)
}

/// The sum of a series' samples (every label set) in a Prometheus text body.
fn metric_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with(' ') || r.starts_with('{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn wait_cluster(d: &Deployment, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut ready = 0;
        for a in &d.api {
            if let Ok(b) = brokers::http_get(*a, "/api/v5/cluster") {
                let v: serde_json::Value = serde_json::from_str(&b).unwrap_or_default();
                if v["available"] == true {
                    ready += 1;
                }
            }
        }
        if ready >= n.min(d.api.len()) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "cluster not available on every node within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until, in every region, some node reports its link connected.
async fn wait_links(d: &Deployment) -> anyhow::Result<()> {
    let half = d.api.len() / 2;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut up = 0;
        for region in [&d.api[..half], &d.api[half..]] {
            let any = region.iter().any(|a| {
                brokers::http_get(*a, "/api/v5/cluster/links")
                    .ok()
                    .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
                    .is_some_and(|v| v[0]["status"] == "connected")
            });
            up += any as usize;
        }
        if up == 2 {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "links not connected in both regions within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Subscribes in B, then publishes to `topic` in A every 2 ms (QoS 0) until one arrives.
/// Returns microseconds from the SUBACK to the first arrival.
async fn propagation_once(
    a: std::net::SocketAddr,
    b: std::net::SocketAddr,
    topic: &str,
    id: u64,
) -> anyhow::Result<u32> {
    let (sub, mut el) = load::subscriber(&format!("bench-prop-sub-{id}"), b, &[topic.to_string()], 1).await?;
    let t0 = Instant::now();
    let (pubc, mut pel) = rumqttc::AsyncClient::new(
        rumqttc::MqttOptions::new(format!("bench-prop-pub-{id}"), a.ip().to_string(), a.port()),
        64,
    );
    let poller = tokio::spawn(async move { while pel.poll().await.is_ok() {} });
    let publisher = {
        let pubc = pubc.clone();
        let topic = topic.to_string();
        tokio::spawn(async move {
            loop {
                if pubc.publish(topic.clone(), QoS::AtMostOnce, false, b"probe".to_vec()).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let r = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(_))) => return Ok(t0.elapsed()),
                Ok(_) => {}
                Err(e) => return Err(anyhow::anyhow!("subscriber: {e}")),
            }
        }
    })
    .await
    .context("no message crossed within 30 s of the subscription")?;
    publisher.abort();
    let _ = pubc.disconnect().await;
    let _ = sub.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), el.poll()).await;
    poller.abort();
    Ok(r?.as_micros().min(u32::MAX as u128) as u32)
}

fn leader_index(d: &Deployment, region: std::ops::Range<usize>) -> Option<usize> {
    for i in region.clone() {
        let Ok(b) = brokers::http_get(d.api[i], "/api/v5/cluster") else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&b) else { continue };
        let Some(leader) = v["leader"].as_str() else { continue };
        // Node names are n1@.., n2@.. in each region.
        let n: usize = leader.trim_start_matches('n').split('@').next()?.parse().ok()?;
        return Some(region.start + n - 1);
    }
    None
}

/// The node of region A (0..3) whose listener serves region B's link client (`clink-b`).
fn link_holder_a(d: &Deployment) -> Option<usize> {
    for i in 0..3 {
        let Ok(b) = brokers::http_get(d.api[i], "/api/v5/clients/clink-b") else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&b) else { continue };
        if v["connected"] != true {
            continue;
        }
        let id = v["node_id"].as_str()?.to_string();
        let c: serde_json::Value = serde_json::from_str(&brokers::http_get(d.api[i], "/api/v5/cluster").ok()?).ok()?;
        let node = c["nodes"].as_array()?.iter().find(|n| n["id"] == id.as_str())?;
        let n: usize = node["name"].as_str()?.trim_start_matches('n').split('@').next()?.parse().ok()?;
        return Some(n - 1);
    }
    None
}

/// Region A = nodes 0..3 (publisher), region B = 3..6 (its leader pulls A's messages over the
/// link). A subscriber in B receives a QoS 1 flow at 500 msg/s; B's leader (or, `sending`, the
/// A node serving B's link client) is SIGKILLed; recovery = kill → first delivery of a message
/// published after the kill.
async fn failover(
    d: &mut Deployment,
    bins: &Binaries,
    tries: usize,
    sending: bool,
    row: &mut Row,
) -> anyhow::Result<()> {
    let mut rec = Vec::new();
    let mut lost_total = 0u64;
    for t in 0..tries {
        // Every node (the restarted one too) serves again before the next try.
        wait_cluster(d, d.api.len()).await?;
        wait_links(d).await?;
        let victim = (0..60)
            .find_map(|_| {
                let l = if sending { link_holder_a(d) } else { leader_index(d, 3..6) };
                if l.is_none() {
                    std::thread::sleep(Duration::from_millis(100));
                }
                l
            })
            .context(if sending { "no node of region A serves B's link client" } else { "region B has no leader" })?;
        let sub_node = if sending { 4 } else { (3..6).find(|i| *i != victim).context("no follower")? };
        let pub_node = if sending { (0..3).find(|i| *i != victim).context("no other A node")? } else { 0 };
        let topic = format!("linked/failover/{t}");
        let (subc, mut el) =
            load::subscriber(&format!("bench-fo-sub-{t}"), d.mqtt[sub_node], std::slice::from_ref(&topic), 1).await?;
        let base = Instant::now();
        let kill_ns = Arc::new(AtomicU64::new(u64::MAX));
        let stop = Arc::new(AtomicBool::new(false));
        let (pubc, mut pel) = rumqttc::AsyncClient::new(
            rumqttc::MqttOptions::new(
                format!("bench-fo-pub-{t}"),
                d.mqtt[pub_node].ip().to_string(),
                d.mqtt[pub_node].port(),
            ),
            1024,
        );
        let poller = tokio::spawn(async move { while pel.poll().await.is_ok() {} });
        let sent = Arc::new(AtomicU64::new(0));
        let publisher = {
            let (pubc, topic, stop, sent) = (pubc.clone(), topic.clone(), stop.clone(), sent.clone());
            tokio::spawn(async move {
                let t0 = tokio::time::Instant::now();
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep_until(t0 + Duration::from_millis(seq * 2)).await;
                    let p = load::payload(base, seq, 0, 64);
                    if pubc.publish(topic.clone(), QoS::AtLeastOnce, false, p).await.is_err() {
                        return;
                    }
                    seq += 1;
                    sent.store(seq, Ordering::Relaxed);
                }
            })
        };
        let receiver = {
            let kill_ns = kill_ns.clone();
            tokio::spawn(async move {
                let mut seen = std::collections::HashSet::new();
                let mut recovered: Option<u64> = None;
                let deadline = Instant::now() + Duration::from_secs(60);
                while Instant::now() < deadline {
                    match tokio::time::timeout(Duration::from_secs(5), el.poll()).await {
                        Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                            let now = base.elapsed().as_nanos() as u64;
                            if p.payload.len() >= 16 {
                                let sent_ns = u64::from_le_bytes(p.payload[0..8].try_into().unwrap_or([0; 8]));
                                let seq = u64::from_le_bytes(p.payload[8..16].try_into().unwrap_or([0; 8]));
                                seen.insert(seq);
                                let k = kill_ns.load(Ordering::Relaxed);
                                if recovered.is_none() && k != u64::MAX && sent_ns > k {
                                    recovered = Some(now - k);
                                }
                            }
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(_)) => break,
                        Err(_) => {
                            if recovered.is_some() {
                                break;
                            }
                        }
                    }
                }
                (recovered, seen)
            })
        };
        tokio::time::sleep(Duration::from_millis(1000)).await;
        kill_ns.store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
        d.procs[victim].kill();
        // Traffic continues for 4 s after the kill, then stops; the receiver drains.
        tokio::time::sleep(Duration::from_secs(4)).await;
        stop.store(true, Ordering::Relaxed);
        let _ = publisher.await;
        let (recovered, seen) = receiver.await.context("receiver task")?;
        let n = sent.load(Ordering::Relaxed);
        // Messages published before the route reached region A are not forwarded (by design):
        // count from the first one that arrived.
        let first = seen.iter().min().copied().unwrap_or(0);
        let lost = (first..n).filter(|s| !seen.contains(s)).count() as u64;
        lost_total += lost;
        let _ = subc.disconnect().await;
        let _ = pubc.disconnect().await;
        poller.abort();
        let r = recovered.context("deliveries did not resume within 60 s of the kill")?;
        tracing::info!(try_ = t, recovery_ms = r / 1_000_000, lost, "failover");
        rec.push((r / 1000).min(u32::MAX as u64) as u32);
        brokers::restart_strait(d, bins, victim)?;
    }
    rec.sort_unstable();
    row.p50_ms = load::percentile_ms(&rec, 0.5);
    row.p99_ms = load::percentile_ms(&rec, 0.99);
    row.extra.insert("recovery_max_ms".into(), rec.last().copied().unwrap_or(0) as f64 / 1000.0);
    row.extra.insert("tries".into(), tries as f64);
    row.lost = lost_total;
    Ok(())
}
