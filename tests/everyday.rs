//! The cluster under everyday conditions, with the shipped defaults (no tuned queue or Raft
//! settings): an idle cluster costs (almost) nothing, an offline persistent session never slows
//! a publisher (its queue bound drops, and says so), and a link that is down never slows the
//! publishers of the other region (its outbox fills, reports, and drains in order).

mod common;

use common::{addr, init};

use std::time::{Duration, Instant};

use common::procs::{http_get, ProcCluster};
use common::raw::{connect_packet, publish, Got, Raw};
use serde_json::Value;
use strait::mqtt::packet::{Disconnect, Packet, Protocol, PubResp, QoS};

async fn v5(port: u16, id: &str, clean: bool, expiry: u32) -> (Raw, bool) {
    let mut c = connect_packet(Protocol::V5, id);
    c.clean_start = clean;
    c.properties.session_expiry_interval = (expiry > 0).then_some(expiry);
    let (raw, ack) = Raw::connect_with(addr(port), c).await;
    assert_eq!(ack.code, 0, "CONNACK of {id} on port {port}");
    (raw, ack.session_present)
}

/// Publish `n` QoS 1 messages (payloads `from..from+n`) pipelined, then wait for every PUBACK;
/// the count acknowledged within `within` (a publisher that is slowed shows up as a short
/// count, not as a timing assertion).
async fn publish_pipelined(p: &mut Raw, topic: &str, from: usize, n: usize, within: Duration) -> usize {
    for i in from..from + n {
        let pkid = (i % 60_000 + 1) as u16;
        p.send(&Packet::Publish(publish(topic, QoS::AtLeastOnce, i.to_string().as_bytes(), pkid))).await;
    }
    let deadline = Instant::now() + within;
    let mut acked = 0;
    while acked < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match p.next(left).await {
            Got::Packet(Packet::PubAck(a)) => {
                assert_eq!(a.code, 0, "PUBACK reason code");
                acked += 1
            }
            Got::Packet(_) => {}
            Got::Nothing => break,
            Got::Closed => panic!("publisher closed after {acked} PUBACKs"),
        }
    }
    acked
}

/// Receive `n` QoS 1 PUBLISHes (acknowledging each); their payloads as numbers, in order.
async fn receive(c: &mut Raw, n: usize, what: &str) -> Vec<usize> {
    let mut out = Vec::new();
    while out.len() < n {
        match c.next(Duration::from_secs(10)).await {
            Got::Packet(Packet::Publish(p)) => {
                if p.qos == QoS::AtLeastOnce {
                    c.send(&Packet::PubAck(PubResp::new(p.packet_id, 0))).await;
                }
                out.push(String::from_utf8_lossy(&p.payload).parse().expect("a number"));
            }
            Got::Packet(_) => {}
            other => panic!("{what}: waiting for {} more PUBLISH after {}: {other:?}", n - out.len(), out.len()),
        }
    }
    out
}

fn api_json(port: u16, path: &str) -> Value {
    let (code, body) = http_get(port, path).unwrap_or_else(|| panic!("GET {path} answers"));
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: f64 = f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

/// Regression guard for the follower spin (a leadership watch that woke itself through
/// openraft's metrics kept every follower at a full core): over a few seconds of doing nothing,
/// each node of a 3-node cluster uses a small fraction of a core. Generous on purpose (tests
/// run in parallel on 2 cores); the benchmark reports the real figure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_cluster_costs_almost_nothing() {
    init();
    let c = ProcCluster::start(3, "");
    c.wait_ready(&[0, 1, 2]).await;
    let pids: Vec<u32> = (0..3).map(|i| c.pid(i).expect("running")).collect();
    let before: Vec<f64> = pids.iter().map(|p| cpu_secs(*p)).collect();
    let window = Duration::from_secs(4);
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let secs = started.elapsed().as_secs_f64();
    for (i, pid) in pids.iter().enumerate() {
        let share = (cpu_secs(*pid) - before[i]) / secs;
        tracing::info!("== {} idle: {:.2} % of a core", c.nodes[i].name, share * 100.0);
        assert!(share < 0.15, "{} used {:.0} % of a core while the cluster idled", c.nodes[i].name, share * 100.0);
    }
}

/// A device that subscribed with a persistent session and went away is the normal case: its
/// queue fills to `mqtt.max_mqueue_len` (1000 by default), the oldest messages are dropped and
/// counted, and publishers on its topics run at full speed throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_persistent_session_never_slows_a_publisher() {
    init();
    let c = ProcCluster::start(3, "");
    c.wait_ready(&[0, 1, 2]).await;

    tracing::info!("== a device subscribes with a persistent session on node 3 and leaves");
    let (mut dev, _) = v5(c.nodes[2].mqtt, "offline-device", false, 3600).await;
    assert_eq!(dev.subscribe("ev/#", QoS::AtLeastOnce).await, vec![1]);
    dev.send(&Packet::Disconnect(Disconnect::new(0))).await;
    drop(dev);
    let (mut online, _) = v5(c.nodes[1].mqtt, "online", true, 0).await;
    assert_eq!(online.subscribe("ev/#", QoS::AtLeastOnce).await, vec![1]);

    const N: usize = 3000;
    let reader = tokio::spawn(async move { receive(&mut online, N, "online subscriber").await });
    let (mut p, _) = v5(c.nodes[0].mqtt, "publisher", true, 0).await;
    // Before: past half of the offline queue every publish waited 500 ms (about 2 msg/s).
    let acked = publish_pipelined(&mut p, "ev/0", 0, N, Duration::from_secs(60)).await;
    assert_eq!(acked, N, "every publish acknowledged while the device is away");
    let got = tokio::time::timeout(Duration::from_secs(30), reader).await.expect("reader done").expect("reader");
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "the online subscriber got everything, in order");

    tracing::info!("== the bound and what it dropped, seen from every node");
    for n in &c.nodes {
        // (A follower may still be applying the last commits: wait for it, bounded.)
        let path = "/api/v5/clients/offline-device";
        common::wait_for(
            || api_json(n.api, path)["mqueue_dropped"] == (N - 1000) as u64,
            Duration::from_secs(10),
            "every node to count the drops",
        )
        .await;
        let v = api_json(n.api, path);
        assert_eq!(v["mqueue_len"], 1000, "{}: {v}", n.name);
        assert_eq!(v["mqueue_max"], 1000, "{}: {v}", n.name);
        assert!(v["mqueue_bytes"].as_u64().unwrap_or(0) > 0, "{}: {v}", n.name);
    }
    let evicted = || {
        let (_, metrics) = http_get(c.nodes[2].api, "/metrics").expect("metrics");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("strait_messages_dropped_oldest_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    common::wait_for(|| evicted() == Some((N - 1000) as u64), Duration::from_secs(10), "the owner node's counter")
        .await;

    tracing::info!("== the device comes back: the newest 1000, in order");
    let (mut dev, present) = v5(c.nodes[0].mqtt, "offline-device", false, 3600).await;
    assert!(present);
    let got = receive(&mut dev, 1000, "returning device").await;
    assert_eq!(got, (N - 1000..N).collect::<Vec<_>>(), "drop_oldest kept the newest messages");
    dev.no_publish(Duration::from_millis(300), "nothing beyond the bound").await;
}

/// Link down (the whole other region gone): publishers here are not slowed; the outbox (the
/// remote's link session here) fills to `links[].max_outbox`, drops the oldest and says so;
/// when the region comes back it drains in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_is_down_never_slows_publishers_and_its_outbox_drains_in_order() {
    init();
    let mut east = ProcCluster::configure("cluster-us-east", 3, 3, "");
    let mut west = ProcCluster::configure("cluster-eu-west", 3, 3, "");
    // us-east's bound for what it keeps for eu-west.
    east.link_to_with(&[&west], "[\"#\"]", "max_outbox = 500");
    west.link_to(&east, "[\"#\"]");
    for i in 0..3 {
        east.spawn(i);
        west.spawn(i);
    }
    east.wait_ready(&[0, 1, 2]).await;
    west.wait_ready(&[0, 1, 2]).await;

    tracing::info!("== a persistent subscriber on eu-west; its route reaches us-east");
    let (mut sub, _) = v5(west.nodes[1].mqtt, "far-away", false, 3600).await;
    assert_eq!(sub.subscribe("linked/#", QoS::AtLeastOnce).await, vec![1]);
    west.wait_link("cluster-us-east", Some("linked/#")).await;
    let (mut p, _) = v5(east.nodes[0].mqtt, "pub-east", true, 0).await;
    assert_eq!(publish_pipelined(&mut p, "linked/x", 0, 10, Duration::from_secs(10)).await, 10);
    assert_eq!(receive(&mut sub, 10, "across the link").await, (0..10).collect::<Vec<_>>());
    // Its acknowledgements committed (else they come again after the restart, as QoS 1 may).
    common::wait_for(
        || {
            http_get(west.nodes[1].api, "/api/v5/clients/far-away")
                .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
                .is_some_and(|v| v["mqueue_len"] == 0)
        },
        Duration::from_secs(10),
        "the subscriber's acknowledgements to be committed",
    )
    .await;
    drop(sub);

    tracing::info!("== eu-west goes away entirely; us-east keeps publishing at full speed");
    for i in 0..3 {
        west.kill(i);
    }
    const N: usize = 2000;
    let acked = publish_pipelined(&mut p, "linked/x", 10, N, Duration::from_secs(60)).await;
    assert_eq!(acked, N, "no publisher waits for a link that is down");
    // (Read on a follower: wait until it has applied every committed publish.)
    let path = "/api/v5/cluster/links/link/cluster-eu-west/metrics";
    common::wait_for(
        || api_json(east.nodes[2].api, path)["outbox"]["dropped"] == (N - 500) as u64,
        Duration::from_secs(10),
        "the outbox to count what it dropped",
    )
    .await;
    let outbox = &api_json(east.nodes[2].api, path)["outbox"];
    assert_eq!(outbox["connected"], false, "{outbox}");
    assert_eq!(outbox["depth"], 500, "the outbox holds max_outbox: {outbox}");
    assert_eq!(outbox["dropped"], (N - 500) as u64, "{outbox}");
    assert!(outbox["bytes"].as_u64().unwrap_or(0) > 0, "{outbox}");
    let client = api_json(east.nodes[2].api, "/api/v5/clients/clink-cluster-eu-west");
    assert_eq!(client["mqueue_max"], 500, "a link client's queue is the outbox, with its bound: {client}");
    assert_eq!(client["mqueue_dropped"], (N - 500) as u64, "{client}");
    // (The node whose view was waited for above.)
    let (_, metrics) = http_get(east.nodes[2].api, "/metrics").expect("metrics");
    assert!(
        metrics.contains(&format!("strait_link_outbox_dropped_total{{link=\"cluster-eu-west\"}} {}", N - 500)),
        "outbox metrics exported"
    );

    tracing::info!("== eu-west comes back: the outbox drains to the subscriber, in order");
    for i in 0..3 {
        west.spawn(i);
    }
    west.wait_ready(&[0, 1, 2]).await;
    let (mut sub, present) = v5(west.nodes[2].mqtt, "far-away", false, 3600).await;
    assert!(present, "eu-west kept its subscriber's session through the restart");
    let got = receive(&mut sub, 500, "the drained outbox").await;
    assert_eq!(got, (10 + N - 500..10 + N).collect::<Vec<_>>(), "the newest max_outbox messages, in order");
}
