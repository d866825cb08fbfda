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

/// Make what every node has applied so far (B's registration among it) durable on node `on`
/// too: a follower stores the commit index it learns without a flush of its own (the next
/// append's flush carries it), and after a restart without a leader it knows only what its
/// stored commit index covers. Two more entries, the second applied on `on`.
async fn durable_everywhere(c: &ProcCluster, via: usize, on: usize) {
    let (mut p, _) = Raw::connect(addr(c.nodes[via].mqtt), Protocol::V5, "warmer").await;
    for (i, v) in [&b"1"[..], b"2"].into_iter().enumerate() {
        let mut m = publish("disk/warm", QoS::AtLeastOnce, v, 1 + i as u16);
        m.retain = true;
        assert_eq!(p.publish(m).await, 0, "PUBACK of warm-up {i}");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while retained_at(c, on, "disk/warm").await.as_deref() != Some(&b"2"[..]) {
        assert!(std::time::Instant::now() < deadline, "node {on} did not apply the warm-up within 10 s");
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
    durable_everywhere(&c, a, cc).await;
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
    let log = std::fs::read_to_string(&c.nodes[b].log).unwrap_or_default();
    assert_eq!(code, Some(2), "B with an empty store must refuse to start; its log:\n{log}");
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

/// The review's gap: the wiped node was the leader. The next leader never replicated to it, so
/// its progress says nothing of what the wiped node held; the check used to take it for a seed
/// starting late, and it voted with its data gone. The cluster's committed record that it ran
/// (its registration) is what says so now, whoever leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_leader_refuses_to_start_under_the_next_leader() {
    init();
    let mut c = ProcCluster::start(3, "");
    let l = c.wait_ready(&[0, 1, 2]).await;
    let rest: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    c.kill(l);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let next = loop {
        let n = c.wait_ready(&rest).await;
        if n != l {
            break n;
        }
        assert!(std::time::Instant::now() < deadline, "no new leader within 20 s of the old one's kill");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (mut p, _) = Raw::connect(addr(c.nodes[next].mqtt), Protocol::V5, "writer").await;
    let mut m = publish("disk/leader", QoS::AtLeastOnce, b"after", 1);
    m.retain = true;
    assert_eq!(p.publish(m).await, 0, "PUBACK from the next leader");
    drop(p);
    std::fs::remove_dir_all(c.data_dir(l)).expect("wipe the old leader's data directory");
    c.spawn(l);
    let code = c.wait_exit(l, Duration::from_secs(20)).await;
    let log = std::fs::read_to_string(&c.nodes[l].log).unwrap_or_default();
    assert_eq!(code, Some(2), "the wiped old leader must refuse to start; its log:\n{log}");
    assert!(log.contains("store is empty"), "it says why: {log}");
    c.wait_ready(&rest).await;
}

/// The watermark of node `i`'s Raft store (0 before the first write).
fn watermark(c: &ProcCluster, i: usize) -> u64 {
    std::fs::read_to_string(c.data_dir(i).join("raft/strait-watermark"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// A damaged store is not served as a shorter one: sled recovers to its last intact record and
/// opens an emptied file as a new store, and the node used to start with part of its log (or
/// none). The watermark beside the store remembers how far the log was committed and flushed:
/// a node whose log ends below it refuses to start (exit 2) and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_store_was_truncated_refuses_to_start() {
    init();
    let mut c = ProcCluster::start(3, "");
    c.wait_ready(&[0, 1, 2]).await;
    let (mut p, _) = Raw::connect(addr(c.nodes[0].mqtt), Protocol::V5, "writer").await;
    // Committed traffic until both followers' watermarks are well into the log.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut n: u16 = 0;
    while watermark(&c, 1) < 50 || watermark(&c, 2) < 50 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "watermarks did not advance: {} {}",
            watermark(&c, 1),
            watermark(&c, 2)
        );
        n = n.wrapping_add(1).max(1);
        let mut m = publish(&format!("disk/t{}", n % 20), QoS::AtLeastOnce, format!("v{n}").as_bytes(), n);
        m.retain = true;
        assert_eq!(p.publish(m).await, 0, "PUBACK");
    }
    drop(p);

    tracing::info!("== C's store emptied (sled opens it as a new one)");
    c.kill(2);
    let db = c.data_dir(2).join("raft/db");
    std::fs::OpenOptions::new().write(true).open(&db).and_then(|f| f.set_len(0)).expect("empty C's store");
    c.spawn(2);
    assert_eq!(c.wait_exit(2, Duration::from_secs(20)).await, Some(2), "C with an emptied store must refuse to start");
    let log = std::fs::read_to_string(&c.nodes[2].log).unwrap_or_default();
    assert!(log.contains("the store is damaged"), "C says its store is damaged: {log}");

    tracing::info!("== B's store cut to half its size");
    c.kill(1);
    let db = c.data_dir(1).join("raft/db");
    let len = std::fs::metadata(&db).expect("B's store").len();
    std::fs::OpenOptions::new().write(true).open(&db).and_then(|f| f.set_len(len / 2)).expect("truncate B's store");
    c.spawn(1);
    assert_eq!(c.wait_exit(1, Duration::from_secs(20)).await, Some(2), "B with half its store must refuse to start");
    let log = std::fs::read_to_string(&c.nodes[1].log).unwrap_or_default();
    assert!(log.contains("the store is damaged"), "B says its store is damaged: {log}");
}

/// A single node's store emptied (sled opens it as a new one) is refused, not served empty; a
/// removed data directory is a fresh start.
#[tokio::test]
async fn a_single_node_whose_store_was_emptied_refuses_to_start() {
    init();
    let n = common::start("").await;
    let (mut p, _) = Raw::connect(n.mqtt, Protocol::V5, "writer").await;
    let mut m = publish("single/kept", QoS::AtLeastOnce, b"kept", 1);
    m.retain = true;
    assert_eq!(p.publish(m).await, 0, "PUBACK");
    drop(p);
    let dir = n.stop().await;
    let config = || {
        strait::config::Config::parse_str(&common::config_text(dir.path(), ""), "test", std::iter::empty())
            .expect("config")
    };
    let db = dir.path().join("data/db");
    std::fs::OpenOptions::new().write(true).open(&db).and_then(|f| f.set_len(0)).expect("empty the store");
    match strait::node::Node::start(config()).await {
        Ok(_) => panic!("a node with an emptied store started"),
        Err(e) => assert!(e.to_string().contains("the store is damaged"), "says why: {e}"),
    }
    std::fs::remove_dir_all(dir.path().join("data")).expect("remove the data directory");
    let node = strait::node::Node::start(config()).await.expect("a removed data directory starts afresh");
    node.shutdown().await;
}

/// Receive until `n` PUBLISHes came, acknowledging only the first `ack` of them; payloads.
async fn take(s: &mut Raw, n: usize, ack: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        match s.next(Duration::from_secs(5)).await {
            Got::Packet(Packet::Publish(m)) => {
                if got.len() < ack {
                    s.ack(&m).await;
                }
                got.push(String::from_utf8_lossy(&m.payload).to_string());
            }
            Got::Packet(_) => {}
            other => panic!("waiting for {} more PUBLISH (got {got:?}): {other:?}", n - got.len()),
        }
    }
    got
}

/// A single node writes a session's queue as entries of their own (what changed, not the
/// whole queue): across restarts, with some messages delivered and acknowledged, some sent and
/// not acknowledged, and new ones added while the client was away, what the client gets back
/// is exactly the rest, in order, once.
#[tokio::test]
async fn a_single_nodes_queue_survives_restarts_as_it_changes() {
    init();
    let n = common::start("").await;
    let device = |n: &common::TestNode| {
        let mut c = common::raw::connect_packet(Protocol::V5, "device");
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(600);
        Raw::connect_with(n.mqtt, c)
    };
    let (mut d, _) = device(&n).await;
    assert_eq!(d.subscribe("wq/#", QoS::AtLeastOnce).await, vec![1]);
    d.disconnect().await;
    n.wait_offline("device").await;
    let (mut p, _) = Raw::connect(n.mqtt, Protocol::V5, "pub").await;
    for i in 0..30u16 {
        assert_eq!(p.publish(publish("wq/a", QoS::AtLeastOnce, format!("m{i}").as_bytes(), i + 1)).await, 0);
    }
    drop(p);
    n.wait_queued("device", 30).await;
    let n = n.restart().await;

    let (mut d, ack) = device(&n).await;
    assert!(ack.session_present);
    // All 30 are sent (the window is 32); the first 10 acknowledged.
    let got = take(&mut d, 30, 10).await;
    assert_eq!(got, (0..30).map(|i| format!("m{i}")).collect::<Vec<_>>());
    d.disconnect().await;
    n.wait_offline("device").await;
    let (mut p, _) = Raw::connect(n.mqtt, Protocol::V5, "pub").await;
    for i in 30..35u16 {
        assert_eq!(p.publish(publish("wq/a", QoS::AtLeastOnce, format!("m{i}").as_bytes(), i + 1)).await, 0);
    }
    drop(p);
    let n = n.restart().await;

    let (mut d, ack) = device(&n).await;
    assert!(ack.session_present);
    let got = take(&mut d, 25, 25).await;
    assert_eq!(got, (10..35).map(|i| format!("m{i}")).collect::<Vec<_>>(), "the rest, in order, once");
    d.no_publish(Duration::from_millis(500), "nothing more").await;
    n.stop().await;
}

/// A single node's store cut part-way (sled opens what is left as if it were all) is refused:
/// the store is below the generation its watermark file says it had flushed.
#[tokio::test]
async fn a_single_node_whose_store_was_truncated_refuses_to_start() {
    init();
    let n = common::start("").await;
    let (mut p, _) = Raw::connect(n.mqtt, Protocol::V5, "writer").await;
    let body = vec![b'x'; 2000];
    for i in 0..300u16 {
        let mut m = publish(&format!("single/t{i}"), QoS::AtLeastOnce, &body, i + 1);
        m.retain = true;
        assert_eq!(p.publish(m).await, 0, "PUBACK");
    }
    drop(p);
    let dir = n.stop().await;
    let db = dir.path().join("data/db");
    let len = std::fs::metadata(&db).expect("the store's file").len();
    std::fs::OpenOptions::new().write(true).open(&db).and_then(|f| f.set_len(len / 2)).expect("truncate");
    let config = strait::config::Config::parse_str(&common::config_text(dir.path(), ""), "test", std::iter::empty())
        .expect("config");
    match strait::node::Node::start(config).await {
        Ok(_) => panic!("a node whose store was cut to {} of {len} bytes started", len / 2),
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("the store is damaged") && e.contains("generation"), "says why: {e}");
        }
    }
}

/// Unmounts a tmpfs when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mount point");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mounting a {size} tmpfs at {} (the disk tests run as root)", dir.display());
        Tmpfs(dir.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "resizing the tmpfs at {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A node whose disk fills stops with the reason (exit 2, "No space left on device") instead
/// of serving on as a member that cannot write; the other two go on, and every acknowledged
/// message is kept. Given space and restarted, it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_fills_stops_with_the_reason_and_catches_up_given_space() {
    init();
    let mut c = ProcCluster::configure("cluster-test", 3, 3, "");
    let full = Tmpfs::mount(&c.data_dir(2), "6m");
    for i in 0..3 {
        c.spawn(i);
    }
    c.wait_ready(&[0, 1, 2]).await;
    let body = vec![b'd'; 100_000];
    let mut acked = 0u16;
    let (mut p, _) = Raw::connect(addr(c.nodes[0].mqtt), Protocol::V5, "filler").await;
    let mut exited = None;
    for i in 0..200u16 {
        let mut m = publish(&format!("full/{i}"), QoS::AtLeastOnce, &body, i + 1);
        m.retain = true;
        assert_eq!(p.publish(m).await, 0, "PUBACK {i}: two of three nodes can still commit");
        acked += 1;
        if i % 10 == 9 {
            if exited.is_none() {
                exited = c.wait_exit(2, Duration::from_millis(1)).await;
            }
            if exited.is_some() && acked >= 100 {
                break;
            }
        }
    }
    let log = std::fs::read_to_string(&c.nodes[2].log).unwrap_or_default();
    let code = match exited {
        Some(code) => code,
        None => c.wait_exit(2, Duration::from_secs(10)).await.unwrap_or_else(|| {
            panic!("the node with a full disk did not stop ({acked} MB acknowledged); its log:\n{log}")
        }),
    };
    assert_eq!(code, 2, "exit 2 with the reason");
    assert!(log.contains("No space left on device"), "says why: {log}");

    tracing::info!("== more space; the node restarts and catches up");
    full.resize("64m");
    c.spawn(2);
    c.wait_ready(&[0, 1, 2]).await;
    let (mut s, _) = Raw::connect(addr(c.nodes[2].mqtt), Protocol::V5, "reader").await;
    s.subscribe("full/#", QoS::AtMostOnce).await;
    let mut topics = std::collections::BTreeSet::new();
    while topics.len() < usize::from(acked) {
        match s.next(Duration::from_secs(10)).await {
            Got::Packet(Packet::Publish(m)) => {
                topics.insert(m.topic);
            }
            Got::Packet(_) => {}
            other => panic!("{} of {acked} acknowledged retained messages on the node: {other:?}", topics.len()),
        }
    }
}

/// A single node whose disk fills refuses what it would have to store, and says so: QoS 1 and
/// 2 publishes get 0x97 (not a PUBACK 0 for a message it could not keep), persistent sessions
/// CONNACK 0x88, /api/v5/ready 503 with the reason; QoS 0 between clean sessions goes on. Given
/// space and restarted, it serves its store again (not refused as damaged). The node runs as a
/// process of its own: sled's concurrency control is global to a process, and a store that
/// failed can hold it (a batch of another store in the same process would wait forever).
#[tokio::test]
async fn a_single_node_whose_disk_fills_refuses_what_it_would_have_to_store() {
    init();
    let dir = common::TempDir::new("disk-full");
    let full = Tmpfs::mount(&dir.path().join("data"), "4m");
    let ports = common::procs::free_ports(2);
    let (mqtt, api) = (addr(ports[0]), addr(ports[1]));
    let config = dir.path().join("node.hocon");
    std::fs::write(
        &config,
        format!(
            "node.data_dir = \"{}\"\nlisteners.tcp.default.bind = \"{mqtt}\"\napi.bind = \"{api}\"\n",
            dir.path().join("data").display()
        ),
    )
    .expect("config");
    let start = || {
        let log = std::fs::File::create(dir.path().join("node.log")).expect("log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_strait"))
            .args(["run", "--config"])
            .arg(&config)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn strait");
        KillOnDrop(child)
    };
    let node = start();
    let connect = |id: &'static str| async move {
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(mqtt).await.is_ok() {
                return Raw::connect(mqtt, Protocol::V5, id).await.0;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the node does not listen on {mqtt}");
    };
    let mut sub = connect("live").await;
    sub.subscribe("live/#", QoS::AtMostOnce).await;
    let mut p = connect("filler").await;
    let body = vec![b'f'; 100_000];
    let mut refused = None;
    for i in 0..200u16 {
        let mut m = publish(&format!("full/{i}"), QoS::AtLeastOnce, &body, i + 1);
        m.retain = true;
        match p.publish(m).await {
            0 => {}
            code => {
                refused = Some((i, code));
                break;
            }
        }
    }
    let (i, code) = refused.expect("a publish refused once the 4 MB disk was full");
    assert_eq!(code, 0x97, "publish {i} refused with 0x97");
    assert_eq!(p.publish(publish("live/q1", QoS::AtLeastOnce, b"q1", 900)).await, 0x97, "QoS 1 refused");
    assert_eq!(p.publish(publish("live/q0", QoS::AtMostOnce, b"q0", 0)).await, 0);
    assert_eq!(&sub.publish_in().await.payload[..], b"q0", "QoS 0 between clean sessions goes on");
    let mut c = common::raw::connect_packet(Protocol::V5, "keeper");
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(600);
    let (_, ack) = Raw::connect_with(mqtt, c).await;
    assert_eq!(ack.code, 0x88, "a persistent session cannot be kept");
    let (status, body) = common::wire::http(api, "GET", "/api/v5/ready").await;
    assert_eq!(status, 503, "not ready: {body}");
    assert!(body.contains("No space left"), "says why: {body}");
    drop((p, sub));

    drop(node);
    full.resize("64m");
    let _node = start();
    let mut r = connect("reader").await;
    r.subscribe("full/#", QoS::AtMostOnce).await;
    assert!(matches!(r.next(Duration::from_secs(5)).await, Got::Packet(Packet::Publish(_))), "the store as flushed");
    let mut p = connect("again").await;
    let mut m = publish("full/after", QoS::AtLeastOnce, b"space", 1);
    m.retain = true;
    assert_eq!(p.publish(m).await, 0, "taken again");
}

/// SIGKILL on drop (and reap).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
