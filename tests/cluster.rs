//! A regional cluster of real `strait` processes (tests/common/procs.rs): one broker across
//! three nodes, what survives SIGKILL, what a minority refuses. Clients are the raw codec client
//! (exact reason codes and packet ids).

mod common;

use common::{addr, init};

use std::collections::BTreeMap;
use std::time::Duration;

use common::procs::{http, ProcCluster};
use common::raw::{connect_packet, publish, Got, Raw};
use strait::mqtt::packet::{Packet, Protocol, PubResp, QoS};

/// Connect v5: `clean` start, session expiry `expiry` seconds. Returns the client and
/// (reason code, session present).
async fn v5(port: u16, id: &str, clean: bool, expiry: u32) -> (Raw, u8, bool) {
    let mut c = connect_packet(Protocol::V5, id);
    c.clean_start = clean;
    c.properties.session_expiry_interval = (expiry > 0).then_some(expiry);
    let (raw, ack) = Raw::connect_with(addr(port), c).await;
    (raw, ack.code, ack.session_present)
}

async fn v5_ok(port: u16, id: &str, clean: bool, expiry: u32) -> (Raw, bool) {
    let (raw, code, present) = v5(port, id, clean, expiry).await;
    assert_eq!(code, 0, "CONNACK of {id} on port {port}");
    (raw, present)
}

/// Receive `n` PUBLISHes, acknowledging each as a client must (QoS 2 flows interleaved);
/// payloads in arrival order.
async fn receive(c: &mut Raw, n: usize) -> Vec<(String, QoS, u16)> {
    let mut out = Vec::new();
    while out.len() < n {
        match c.next(Duration::from_secs(5)).await {
            Got::Packet(Packet::Publish(p)) => {
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => c.send(&Packet::PubAck(PubResp::new(p.packet_id, 0))).await,
                    QoS::ExactlyOnce => c.send(&Packet::PubRec(PubResp::new(p.packet_id, 0))).await,
                }
                out.push((String::from_utf8_lossy(&p.payload).to_string(), p.qos, p.packet_id));
            }
            Got::Packet(Packet::PubRel(r)) => c.send(&Packet::PubComp(PubResp::new(r.packet_id, 0))).await,
            Got::Packet(_) => {}
            other => panic!("waiting for {} more PUBLISH (got {out:?}): {other:?}", n - out.len()),
        }
    }
    // Complete the QoS 2 flows still open.
    while let Got::Packet(p) = c.next(Duration::from_millis(200)).await {
        if let Packet::PubRel(r) = p {
            c.send(&Packet::PubComp(PubResp::new(r.packet_id, 0))).await;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_broker_across_three_nodes() {
    init();
    let c = ProcCluster::start(3, "");
    c.wait_ready(&[0, 1, 2]).await;
    let [p1, p2, p3] = [c.nodes[0].mqtt, c.nodes[1].mqtt, c.nodes[2].mqtt];

    tracing::info!("== subscribers on nodes 2 and 3 at QoS 1 and 2; publisher on node 1");
    let (mut s2, _) = v5_ok(p2, "s2", true, 0).await;
    assert_eq!(s2.subscribe("a/#", QoS::AtLeastOnce).await, vec![1]);
    let (mut s3, _) = v5_ok(p3, "s3", true, 0).await;
    assert_eq!(s3.subscribe("a/+", QoS::ExactlyOnce).await, vec![2]);
    let (mut pubr, _) = v5_ok(p1, "pub", true, 0).await;
    for (i, q) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce].into_iter().enumerate() {
        let code = pubr.publish(publish("a/b", q, format!("q{i}").as_bytes(), 10 + i as u16)).await;
        assert!(code < 0x80, "publish q{i}: {code:#x}");
    }
    let got2 = receive(&mut s2, 3).await;
    let got3 = receive(&mut s3, 3).await;
    let qos = |g: &[(String, QoS, u16)]| g.iter().map(|(p, q, _)| (p.clone(), *q)).collect::<Vec<_>>();
    // Downgrade rules as on one node: min(published, granted); order kept.
    assert_eq!(
        qos(&got2),
        vec![("q0".into(), QoS::AtMostOnce), ("q1".into(), QoS::AtLeastOnce), ("q2".into(), QoS::AtLeastOnce)]
    );
    assert_eq!(
        qos(&got3),
        vec![("q0".into(), QoS::AtMostOnce), ("q1".into(), QoS::AtLeastOnce), ("q2".into(), QoS::ExactlyOnce)]
    );

    tracing::info!("== a burst of QoS 2, 1, 0 not waiting for acks: publisher order on every node");
    let (mut s1, _) = v5_ok(p1, "s1", true, 0).await;
    assert_eq!(s1.subscribe("a/+", QoS::ExactlyOnce).await, vec![2]);
    let burst: Vec<(String, QoS)> =
        (0..30).map(|i| (format!("o{i}"), [QoS::ExactlyOnce, QoS::AtLeastOnce, QoS::AtMostOnce][i % 3])).collect();
    for (i, (payload, q)) in burst.iter().enumerate() {
        pubr.send(&Packet::Publish(publish("a/o", *q, payload.as_bytes(), 40 + i as u16))).await;
    }
    let mut acked = 0;
    while acked < 20 {
        match pubr.next(Duration::from_secs(5)).await {
            Got::Packet(Packet::PubRec(r)) => pubr.send(&Packet::PubRel(PubResp::new(r.packet_id, 0))).await,
            Got::Packet(Packet::PubAck(_) | Packet::PubComp(_)) => acked += 1,
            Got::Packet(_) => {}
            other => panic!("publisher: {acked} of 20 acknowledged: {other:?}"),
        }
    }
    let want: Vec<String> = burst.iter().map(|(p, _)| p.clone()).collect();
    for (name, s) in [("node 1", &mut s1), ("node 2", &mut s2), ("node 3", &mut s3)] {
        let got: Vec<String> = receive(s, 30).await.into_iter().map(|g| g.0).collect();
        assert_eq!(got, want, "subscriber on {name}: the publisher's order");
    }

    tracing::info!("== retained set on node 1, read on node 3");
    let mut r = publish("cfg/x", QoS::AtLeastOnce, b"retained-1", 20);
    r.retain = true;
    assert_eq!(pubr.publish(r).await, 0);
    let (mut late, _) = v5_ok(p3, "late", true, 0).await;
    late.subscribe("cfg/#", QoS::AtLeastOnce).await;
    let p = late.publish_in().await;
    assert!(p.retain, "retained flag on a retained message");
    assert_eq!(&p.payload[..], b"retained-1");

    tracing::info!("== shared subscription across nodes 2 and 3: each message once");
    let (mut g2, _) = v5_ok(p2, "g2", true, 0).await;
    let (mut g3, _) = v5_ok(p3, "g3", true, 0).await;
    g2.subscribe("$share/grp/job/#", QoS::AtLeastOnce).await;
    g3.subscribe("$share/grp/job/#", QoS::AtLeastOnce).await;
    for i in 0..20u16 {
        pubr.publish(publish("job/1", QoS::AtLeastOnce, format!("j{i}").as_bytes(), 100 + i)).await;
    }
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for g in [&mut g2, &mut g3] {
        loop {
            match g.next(Duration::from_millis(500)).await {
                Got::Packet(Packet::Publish(p)) => {
                    g.ack(&p).await;
                    *seen.entry(String::from_utf8_lossy(&p.payload).to_string()).or_default() += 1;
                }
                Got::Packet(_) => {}
                _ => break,
            }
        }
    }
    assert_eq!(seen.len(), 20, "every job delivered: {seen:?}");
    assert!(seen.values().all(|n| *n == 1), "each job exactly once across the cluster: {seen:?}");

    tracing::info!("== session takeover across nodes: the old connection gets 0x8E");
    let (mut t1, _) = v5_ok(p1, "roamer", false, 300).await;
    t1.subscribe("roam/#", QoS::AtLeastOnce).await;
    let (mut t2, present) = v5_ok(p2, "roamer", false, 300).await;
    assert!(present, "the session moved with its subscriptions");
    assert_eq!(t1.expect_close(Duration::from_secs(5)).await, Some(0x8E), "DISCONNECT session taken over");
    pubr.publish(publish("roam/1", QoS::AtLeastOnce, b"follows", 200)).await;
    assert_eq!(&t2.publish_in().await.payload[..], b"follows", "subscription moved with the session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_survives_the_sigkill_of_its_node() {
    init();
    let mut c = ProcCluster::start(3, "");
    c.wait_ready(&[0, 1, 2]).await;
    let [p1, p2, p3] = [c.nodes[0].mqtt, c.nodes[1].mqtt, c.nodes[2].mqtt];

    let (mut sub, _) = v5_ok(p2, "keeper", false, 600).await;
    sub.subscribe("k/q1", QoS::AtLeastOnce).await;
    sub.subscribe("k/q2", QoS::ExactlyOnce).await;
    sub.disconnect().await;

    let (mut pubr, _) = v5_ok(p1, "kpub", true, 0).await;
    for i in 0..40u16 {
        let q = if i % 2 == 0 { QoS::AtLeastOnce } else { QoS::ExactlyOnce };
        let topic = if q == QoS::AtLeastOnce { "k/q1" } else { "k/q2" };
        assert_eq!(pubr.publish(publish(topic, q, format!("m{i}").as_bytes(), i + 1)).await, 0, "acked");
    }
    tracing::info!("== 40 acknowledged; killing the session's node");
    c.kill(1);
    c.wait_ready(&[0, 2]).await;
    let (mut back, present) = v5_ok(p3, "keeper", false, 600).await;
    assert!(present, "the session is resumed on another node");
    let got = receive(&mut back, 40).await;
    let mut payloads: Vec<String> = got.iter().map(|(p, _, _)| p.clone()).collect();
    payloads.sort();
    let mut want: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    want.sort();
    assert_eq!(payloads, want, "every acknowledged message, once");
    back.no_publish(Duration::from_millis(500), "no duplicates").await;
}

/// Inbound QoS 2 exactly once through a failover: the publisher's node commits a QoS 2
/// message and dies before the client sees PUBREC; the client resends it (DUP, same packet id)
/// to another node. Neither a connected subscriber nor a persistent one gets it twice, and the
/// release (PUBREL) on the new node completes the flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos2_resend_to_another_node_after_its_node_died_is_delivered_once() {
    init();
    let mut c = ProcCluster::start(3, "");
    c.wait_ready(&[0, 1, 2]).await;
    let [p1, p2, p3] = [c.nodes[0].mqtt, c.nodes[1].mqtt, c.nodes[2].mqtt];

    let (mut live, _) = v5_ok(p3, "q2-live", true, 0).await;
    assert_eq!(live.subscribe("x2/#", QoS::ExactlyOnce).await, vec![2]);
    let (mut keep, _) = v5_ok(p2, "q2-keep", false, 600).await;
    assert_eq!(keep.subscribe("x2/#", QoS::ExactlyOnce).await, vec![2]);
    keep.disconnect().await;

    let (mut pubr, _) = v5_ok(p1, "q2-pub", false, 600).await;
    pubr.send(&Packet::Publish(publish("x2/a", QoS::ExactlyOnce, b"once", 7))).await;
    // Delivered means committed; the publisher never reads its PUBREC (as if it was lost).
    let got = receive(&mut live, 1).await;
    assert_eq!(got[0].0, "once");
    tracing::info!("== committed; killing the publisher's node");
    c.kill(0);
    c.wait_ready(&[1, 2]).await;

    let (mut again, present) = v5_ok(p2, "q2-pub", false, 600).await;
    assert!(present, "the publisher's session is resumed on another node");
    let mut dup = publish("x2/a", QoS::ExactlyOnce, b"once", 7);
    dup.dup = true;
    assert!(again.publish(dup).await < 0x80, "the resend is acknowledged (PUBREC, PUBREL, PUBCOMP)");
    assert_eq!(again.publish(publish("x2/b", QoS::ExactlyOnce, b"marker", 8)).await, 0);
    let got = receive(&mut live, 1).await;
    assert_eq!(got[0].0, "marker", "the resend was not delivered again to the connected subscriber");

    let (mut back, present) = v5_ok(p3, "q2-keep", false, 600).await;
    assert!(present);
    let got: Vec<String> = receive(&mut back, 2).await.into_iter().map(|g| g.0).collect();
    assert_eq!(got, vec!["once".to_string(), "marker".to_string()], "the persistent subscriber's queue");
    back.no_publish(Duration::from_millis(500), "no duplicate in the persistent queue").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_refuses_connects_and_commits_and_serves_again_after_healing() {
    init();
    let mut c = ProcCluster::start(3, "");
    c.wait_ready(&[0, 1, 2]).await;
    let p3 = c.nodes[2].mqtt;
    let (mut held, _) = v5_ok(p3, "held", true, 0).await;

    tracing::info!("== pausing nodes 1 and 2: node 3 is a minority");
    c.pause(0);
    c.pause(1);
    c.wait_available(2, false, Duration::from_secs(5)).await;
    let (_, code, _) = v5(p3, "newcomer", true, 0).await;
    assert_eq!(code, 0x88, "CONNACK server unavailable on a minority node");
    // A SUBSCRIBE needs a commit: refused.
    let codes = held.subscribe("x/#", QoS::AtLeastOnce).await;
    assert_eq!(codes, vec![0x80], "SUBACK failure while no leader can commit");

    tracing::info!("== resuming");
    c.resume(0);
    c.resume(1);
    c.wait_ready(&[0, 1, 2]).await;
    let (mut again, _) = v5_ok(p3, "newcomer", true, 0).await;
    assert_eq!(again.subscribe("x/#", QoS::AtLeastOnce).await, vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_raft_port_and_nodes_of_other_clusters_disturb_nothing() {
    init();
    let c = ProcCluster::start(3, "");
    let leader = c.wait_ready(&[0, 1, 2]).await;
    let term = c.status(0).expect("status")["term"].clone();
    for n in &c.nodes {
        // Not HTTP/2, not gRPC: dropped.
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", n.raft)) {
            use std::io::Write;
            let _ = s.write_all(b"\x16\x03\x01 garbage \x00\xff GET / HTTP/1.1\r\n\r\n");
            let _ = s.write_all(&[0u8; 4096]);
        }
    }
    // A node configured for another cluster with our nodes as seeds.
    let mut other = ProcCluster::configure("cluster-other", 1, 1, "");
    let ours: Vec<String> = c.nodes.iter().map(|n| format!("\"{}:{}\"", n.name, n.raft)).collect();
    let cfg = std::fs::read_to_string(&other.nodes[0].config).expect("config");
    let mine = format!("\"{}:{}\"", other.nodes[0].name, other.nodes[0].raft);
    let cfg = cfg.replace(&format!("[{mine}]"), &format!("[{mine}, {}]", ours.join(", ")));
    std::fs::write(&other.nodes[0].config, cfg).expect("config");
    other.spawn(0);
    tokio::time::sleep(Duration::from_secs(2)).await; // let it try (it cannot win an election)
    assert_eq!(c.wait_ready(&[0, 1, 2]).await, leader, "same leader");
    assert_eq!(c.status(0).expect("status")["term"], term, "no election was disturbed");
    let log = std::fs::read_to_string(&c.nodes[0].log).unwrap_or_default()
        + &std::fs::read_to_string(&c.nodes[1].log).unwrap_or_default()
        + &std::fs::read_to_string(&c.nodes[2].log).unwrap_or_default();
    // Its proof of membership binds its cluster's name: even with the same secret, refused.
    assert!(log.contains("refused an RPC without this cluster's secret"), "the refusal is logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_added_and_removed_at_runtime() {
    init();
    let mut c = ProcCluster::configure("cluster-test", 4, 3, "");
    for i in 0..4 {
        c.spawn(i);
    }
    c.wait_ready(&[0, 1, 2]).await;
    let body = format!("{{\"name\": \"{}:{}\"}}", c.nodes[3].name, c.nodes[3].raft);
    let (code, resp) = http(c.nodes[1].api, "POST", "/api/v5/cluster/nodes", Some(&body)).expect("POST");
    assert_eq!(code, 201, "add node: {resp}");
    c.wait_ready(&[0, 1, 2, 3]).await;
    // The new node serves clients of the cluster.
    let (mut s4, _) = v5_ok(c.nodes[3].mqtt, "on4", true, 0).await;
    s4.subscribe("new/#", QoS::AtLeastOnce).await;
    let (mut p1, _) = v5_ok(c.nodes[0].mqtt, "p", true, 0).await;
    p1.publish(publish("new/x", QoS::AtLeastOnce, b"hi", 1)).await;
    assert_eq!(&s4.publish_in().await.payload[..], b"hi");

    let path = format!("/api/v5/cluster/nodes/{}", c.nodes[2].name);
    let (code, resp) = http(c.nodes[0].api, "DELETE", &path, None).expect("DELETE");
    assert_eq!(code, 204, "remove node: {resp}");
    let st = c.status(0).expect("status");
    let names: Vec<&str> = st["nodes"].as_array().expect("nodes").iter().filter_map(|n| n["name"].as_str()).collect();
    assert!(!names.contains(&c.nodes[2].name.as_str()), "removed from the membership: {names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_a_qos1_stream_loses_no_acknowledged_message() {
    init();
    let mut c = ProcCluster::start(3, "");
    let leader = c.wait_ready(&[0, 1, 2]).await;
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let (sub_node, pub_node) = (others[0], others[1]);
    let (mut sub, _) = v5_ok(c.nodes[sub_node].mqtt, "stream-sub", false, 600).await;
    sub.subscribe("s/#", QoS::AtLeastOnce).await;
    let pub_port = c.nodes[pub_node].mqtt;

    // The publisher sends one message at a time; a failed or refused publish is retried on a
    // new connection (as a client library would), so "acknowledged" is exactly what got PUBACK.
    let publisher = tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut stalls = Vec::new();
        let (mut p, _) = v5_ok(pub_port, "stream-pub", true, 0).await;
        let mut i: u16 = 0;
        while i < 600 {
            let t = std::time::Instant::now();
            p.send(&Packet::Publish(publish("s/x", QoS::AtLeastOnce, format!("{i}").as_bytes(), i + 1))).await;
            match p.next(Duration::from_secs(5)).await {
                Got::Packet(Packet::PubAck(a)) if a.packet_id == i + 1 && a.code == 0 => {
                    acked.push(i);
                    stalls.push(t.elapsed());
                    i += 1;
                }
                other => {
                    tracing::info!("== publish {i} not acknowledged ({other:?}); reconnecting");
                    loop {
                        let (np, code, _) = v5(pub_port, "stream-pub", true, 0).await;
                        if code == 0 {
                            p = np;
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        (acked, stalls.into_iter().max().unwrap_or_default())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.kill(leader);
    let (acked, worst) = publisher.await.expect("publisher");
    tracing::info!("== {} acknowledged; worst publish round trip {worst:?}", acked.len());
    assert!(worst < Duration::from_secs(5), "the publisher saw at most a short stall: {worst:?}");
    let got = receive(&mut sub, acked.len()).await;
    let mut ids: Vec<u16> = got.iter().filter_map(|(p, _, _)| p.parse().ok()).collect();
    ids.sort();
    ids.dedup();
    let missing: Vec<u16> = acked.iter().copied().filter(|i| ids.binary_search(i).is_err()).collect();
    assert!(missing.is_empty(), "acknowledged but never delivered: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_acks_nothing_and_catches_up_and_a_dead_nodes_wills_are_published() {
    init();
    let mut c = ProcCluster::start(3, "");
    c.wait_ready(&[0, 1, 2]).await;
    let [p1, p2, p3] = [c.nodes[0].mqtt, c.nodes[1].mqtt, c.nodes[2].mqtt];
    let (mut watcher, _) = v5_ok(p1, "watcher", true, 0).await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;

    tracing::info!("== pausing node 3; writes go on; node 3 catches up after SIGCONT");
    c.pause(2);
    let (mut w, _) = v5_ok(p1, "writer", true, 0).await;
    let mut r = publish("state/a", QoS::AtLeastOnce, b"while-paused", 1);
    r.retain = true;
    assert_eq!(w.publish(r).await, 0);
    c.resume(2);
    c.wait_ready(&[0, 1, 2]).await;
    let (mut reader, _) = v5_ok(p3, "reader", true, 0).await;
    reader.subscribe("state/#", QoS::AtLeastOnce).await;
    assert_eq!(&reader.publish_in().await.payload[..], b"while-paused", "node 3 caught up");

    tracing::info!("== a client with a will on node 2; node 2 is killed");
    let mut conn = connect_packet(Protocol::V5, "mortal");
    conn.will = Some(strait::mqtt::packet::Will {
        topic: "wills/mortal".into(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    });
    let (_mortal, ack) = Raw::connect_with(addr(p2), conn).await;
    assert_eq!(ack.code, 0);
    c.kill(1);
    // node_down_after = 2 s in the test config: the leader publishes the will once.
    let p = watcher.publish_in().await;
    assert_eq!(&p.payload[..], b"gone");
    watcher.ack(&p).await;
    watcher.no_publish(Duration::from_secs(1), "the will only once").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_ends_its_lost_connections_once_and_sessions_expire_cluster_wide() {
    init();
    let mut c = ProcCluster::start(3, "");
    c.wait_ready(&[0, 1, 2]).await;
    let [p1, p3] = [c.nodes[0].mqtt, c.nodes[2].mqtt];
    let (mut watcher, _) = v5_ok(p1, "watcher", true, 0).await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;

    tracing::info!("== a session that expires 1 s after its client leaves");
    let (short, _) = v5_ok(p3, "short-lived", false, 1).await;
    short.disconnect().await;
    common::wait_for(
        || (0..3).all(|i| http(c.nodes[i].api, "GET", "/api/v5/clients/short-lived", None).map(|r| r.0) == Some(404)),
        Duration::from_secs(10),
        "the session to expire on every node",
    )
    .await;

    tracing::info!("== a client with a will on node 3; node 3 is killed and restarted at once");
    let mut conn = connect_packet(Protocol::V5, "phoenix");
    conn.will = Some(strait::mqtt::packet::Will {
        topic: "wills/phoenix".into(),
        payload: bytes::Bytes::from_static(b"lost"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    });
    conn.properties.session_expiry_interval = Some(600);
    let (_phoenix, ack) = Raw::connect_with(addr(p3), conn).await;
    assert_eq!(ack.code, 0);
    c.kill(2);
    c.spawn(2);
    c.wait_ready(&[0, 1, 2]).await;
    let p = watcher.publish_in().await;
    assert_eq!(&p.payload[..], b"lost", "the will of a connection lost with its node");
    watcher.ack(&p).await;
    watcher.no_publish(Duration::from_secs(3), "the will only once").await;
    // The session itself survives (expiry 600 s), disconnected, and resumes on any node.
    let (_again, present) = v5_ok(p1, "phoenix", false, 600).await;
    assert!(present, "the persistent session outlived its node's restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_publisher_is_slowed_not_dropped_for_a_subscriber_on_another_node() {
    init();
    let c = ProcCluster::start(3, "mqtt.max_mqueue_len = 100");
    c.wait_ready(&[0, 1, 2]).await;
    let (mut sub, _) = v5_ok(c.nodes[1].mqtt, "slowpoke", true, 0).await;
    sub.subscribe("fast/#", QoS::AtLeastOnce).await;
    const N: usize = 3000;
    let reader = tokio::spawn(async move { receive(&mut sub, N).await.len() });
    let (mut p, _) = v5_ok(c.nodes[0].mqtt, "firehose", true, 0).await;
    // Pipelined: 3000 QoS 1 PUBLISHes without waiting, then their PUBACKs.
    for i in 0..N {
        p.send(&Packet::Publish(publish(
            "fast/x",
            QoS::AtLeastOnce,
            format!("{i}").as_bytes(),
            (i % 60000 + 1) as u16,
        )))
        .await;
    }
    let mut acked = 0;
    while acked < N {
        match p.next(Duration::from_secs(10)).await {
            Got::Packet(Packet::PubAck(_)) => acked += 1,
            Got::Packet(_) => {}
            other => panic!("publisher: {other:?} after {acked} PUBACKs"),
        }
    }
    let got = tokio::time::timeout(Duration::from_secs(30), reader).await.expect("reader done").expect("reader");
    assert_eq!(got, N, "every acknowledged message reached the subscriber on the other node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connections_commits_apply_in_packet_order() {
    init();
    let c = ProcCluster::start(3, "");
    c.wait_ready(&[0, 1, 2]).await;
    let (mut s, _) = v5_ok(c.nodes[1].mqtt, "flipper", false, 600).await;
    // Pipelined UNSUBSCRIBE/SUBSCRIBE pairs, ending subscribed: the last one must win.
    for k in 0..10u16 {
        s.send(&Packet::Unsubscribe(strait::mqtt::packet::Unsubscribe {
            packet_id: 100 + k,
            filters: vec!["o/#".into()],
            properties: Default::default(),
        }))
        .await;
        s.send(&Packet::Subscribe(strait::mqtt::packet::Subscribe {
            packet_id: 200 + k,
            filters: vec![strait::mqtt::packet::SubscribeFilter {
                filter: "o/#".into(),
                options: strait::mqtt::packet::SubOptions { qos: QoS::AtLeastOnce, ..Default::default() },
            }],
            properties: Default::default(),
        }))
        .await;
    }
    s.expect("the last SUBACK", |p| matches!(p, Packet::SubAck(a) if a.packet_id == 209).then_some(())).await;
    // Pipelined QoS 1 publishes from one connection on another node reach the persistent
    // subscriber in order.
    let (mut p, _) = v5_ok(c.nodes[0].mqtt, "orderly", true, 0).await;
    for i in 0..300u16 {
        p.send(&Packet::Publish(publish("o/x", QoS::AtLeastOnce, format!("{i}").as_bytes(), i + 1))).await;
    }
    let got = receive(&mut s, 300).await;
    let seq: Vec<u16> = got.iter().map(|(m, _, _)| m.parse().expect("number")).collect();
    assert_eq!(seq, (0..300).collect::<Vec<_>>(), "publisher order kept through Raft");
}
