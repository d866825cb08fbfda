//! Disks fail: a node whose store is gone must not come back with amnesia under its old
//! identity (it could elect a leader without committed entries: the replicas diverge). It
//! refuses to start, says why and how to rejoin, and rejoins as a new member when asked.

mod common;

use common::{addr, init};

use std::time::Duration;

use common::procs::{http, ProcCluster};
use common::raw::{publish, Got, Raw};
use strait::mqtt::packet::{Packet, Protocol, QoS};

/// The retained message on `topic` as node `i` serves it.
async fn retained_at(c: &ProcCluster, i: usize, topic: &str) -> Option<Vec<u8>> {
    let (mut s, ack) = Raw::connect(addr(c.nodes[i].mqtt), Protocol::V5, &format!("reader-{i}")).await;
    assert_eq!(ack.code, 0, "CONNACK on node {i}");
    s.subscribe(topic, QoS::AtLeastOnce).await;
    match s.next(Duration::from_secs(2)).await {
        Got::Packet(Packet::Publish(m)) => Some(m.payload.to_vec()),
        _ => None,
    }
}

/// The review's reproduction: C stopped; a QoS 1 retained message acknowledged (committed by A
/// and B); A and B stopped; B's data directory wiped; B and C started. B used to bootstrap
/// again and elect a leader with C: the acknowledged message gone, the replicas diverged for
/// good. Now B refuses (exit 2, naming the problem and the fix), A and C serve the message, and
/// B rejoins as a new member (removed, restarted, added) and serves it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_store_is_wiped_refuses_to_start_and_rejoins_when_asked() {
    init();
    let (a, b, cc) = (0, 1, 2);
    let mut c = ProcCluster::start(3, "");
    c.wait_ready(&[0, 1, 2]).await;
    c.kill(cc);
    let (mut p, _) = Raw::connect(addr(c.nodes[a].mqtt), Protocol::V5, "writer").await;
    let mut m = publish("disk/ack", QoS::AtLeastOnce, b"acknowledged", 1);
    m.retain = true;
    assert_eq!(p.publish(m).await, 0, "PUBACK: committed by A and B");
    drop(p);
    c.kill(a);
    c.kill(b);
    std::fs::remove_dir_all(c.data_dir(b)).expect("wipe B's data directory");
    c.spawn(b);
    c.spawn(cc);
    let code = c.wait_exit(b, Duration::from_secs(20)).await;
    assert_eq!(code, Some(2), "B with an empty store must refuse to start");
    let log = std::fs::read_to_string(&c.nodes[b].log).unwrap_or_default();
    assert!(log.contains("store is empty") && log.contains("DELETE"), "B says why and how to rejoin: {log}");

    tracing::info!("== A back: A and C serve the acknowledged message");
    c.spawn(a);
    c.wait_ready(&[a, cc]).await;
    assert_eq!(retained_at(&c, cc, "disk/ack").await.as_deref(), Some(&b"acknowledged"[..]), "on C");

    tracing::info!("== B rejoins as a new member: removed, restarted (it waits), added");
    let path = format!("/api/v5/cluster/nodes/{}", c.nodes[b].name);
    let (code, resp) = http(c.nodes[a].api, "DELETE", &path, None).expect("DELETE");
    assert_eq!(code, 204, "remove B: {resp}");
    std::fs::remove_dir_all(c.data_dir(b)).ok();
    c.spawn(b);
    c.wait_up(b).await;
    let body = format!("{{\"name\": \"{}:{}\"}}", c.nodes[b].name, c.nodes[b].raft);
    let (code, resp) = http(c.nodes[a].api, "POST", "/api/v5/cluster/nodes", Some(&body)).expect("POST");
    assert_eq!(code, 201, "add B back: {resp}");
    c.wait_ready(&[0, 1, 2]).await;
    assert_eq!(retained_at(&c, b, "disk/ack").await.as_deref(), Some(&b"acknowledged"[..]), "on the rejoined B");

    tracing::info!("== a wipe with the rest of the cluster up and leading: refused as well");
    c.kill(cc);
    std::fs::remove_dir_all(c.data_dir(cc)).expect("wipe C");
    c.spawn(cc);
    assert_eq!(c.wait_exit(cc, Duration::from_secs(20)).await, Some(2), "C with an empty store");
}
