//! Hostile peers on every port, reproduced exactly as a security review ran them against real
//! processes: each attack now fails and the cluster keeps serving.

mod common;

use common::{addr, init};

use std::time::Duration;

use common::procs::{http_get, rss_kb, ProcCluster, TEST_API_KEY, TEST_API_SECRET, TEST_SECRET};
use common::raw::{publish, Raw};
use serde_json::Value;
use strait::mqtt::packet::{Packet, Protocol, QoS};
use strait_raft::net::{raw_body, raw_call, AdminRequest, Identity, TlsFiles};

/// The test clusters' node certificate (`procs::test_certs`), as a peer would present it.
fn node_tls() -> Option<TlsFiles> {
    let d = common::procs::test_certs();
    let read = |n: &str| std::fs::read(d.join(n)).expect("test certificate");
    Some(TlsFiles { cert: read("server.pem"), key: read("server.key"), ca: read("ca.pem") })
}

fn json(port: u16, path: &str) -> Value {
    let (code, body) = http_get(port, path).expect("the API answers");
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

/// Publish on node `from`, receive on node `to`: the cluster serves.
async fn serves(c: &ProcCluster, from: usize, to: usize, topic: &str) {
    let (mut sub, _) = Raw::connect(addr(c.nodes[to].mqtt), Protocol::V5, &format!("sec-sub-{topic}")).await;
    assert_eq!(sub.subscribe(topic, QoS::AtLeastOnce).await, vec![1]);
    let (mut p, _) = Raw::connect(addr(c.nodes[from].mqtt), Protocol::V5, &format!("sec-pub-{topic}")).await;
    assert_eq!(p.publish(publish(topic, QoS::AtLeastOnce, b"still serving", 1)).await, 0);
    match sub.next(Duration::from_secs(10)).await {
        common::raw::Got::Packet(Packet::Publish(m)) => assert_eq!(&m.payload[..], b"still serving"),
        other => panic!("the cluster stopped serving: {other:?}"),
    }
}

/// The Raft/gRPC port answers nothing to a caller without the cluster secret (not even the
/// cluster's name): a garbage `Forward`, an `Admin` add-learner + change-membership naming a
/// fake voter, an `Append` at term u64::MAX all fail, and the cluster keeps its leader, term
/// and members. A caller that does hold the secret still cannot commit an entry that does not
/// decode (it used to stop every node's state machine, for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raft_port_refuses_callers_without_the_cluster_secret() {
    init();
    let mut c = ProcCluster::start(3, "");
    let leader = c.wait_ready(&[0, 1, 2]).await;
    let before = json(c.nodes[0].api, "/api/v5/cluster");
    let term = c.status(leader).expect("status")["term"].clone();
    let ids: Vec<u64> = before["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["id"].as_str().and_then(|s| s.parse().ok()))
        .collect();
    assert_eq!(ids.len(), 3, "{before}");
    let target = |i: usize| -> (String, u64) {
        let name = &c.nodes[i].name;
        let id = before["nodes"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["name"] == name.as_str()))
            .and_then(|n| n["id"].as_str())
            .and_then(|s| s.parse().ok())
            .expect("node id");
        (format!("127.0.0.1:{}", c.nodes[i].raft), id)
    };
    let (raft, id) = target(leader);

    // Strangers that even hold a node certificate of the cluster's CA (test clusters run mutual
    // TLS): no secret; the right cluster name with a wrong secret.
    for me in [Identity::new("guess", 7, None), Identity::new(&c.cluster, 7, Some("a-wrong-secret-of-16+"))] {
        let me = me.with_tls(node_tls());
        let garbage: Vec<u8> = (0u8..25).map(|b| b.wrapping_mul(37)).collect();
        let e = raw_call(&raft, &me, id, "forward", garbage).await.expect_err("a garbage Forward is refused");
        assert!(e.starts_with("Unauthenticated"), "{e}");
        assert!(!e.contains(&c.cluster), "a refusal names nothing of the cluster: {e}");
        let add = raw_body(&AdminRequest::AddLearner { id: 99, addr: "127.0.0.1:1".into() });
        let e = raw_call(&raft, &me, id, "admin", add).await.expect_err("add-learner is refused");
        assert!(e.starts_with("Unauthenticated"), "{e}");
        let change = raw_body(&AdminRequest::ChangeMembership { voters: [ids[0], 99].into(), retain: false });
        let e = raw_call(&raft, &me, id, "admin", change).await.expect_err("change-membership is refused");
        assert!(e.starts_with("Unauthenticated"), "{e}");
        let huge = format!(
            "\u{1}{{\"vote\":{{\"leader_id\":{{\"term\":{},\"node_id\":7}},\"committed\":true}},\"prev_log_id\":null,\"entries\":[],\"leader_commit\":null}}",
            u64::MAX
        );
        for m in ["append", "vote", "pre_vote"] {
            let e = raw_call(&raft, &me, id, m, huge.clone().into_bytes()).await.expect_err("refused");
            assert!(e.starts_with("Unauthenticated"), "{m}: {e}");
        }
    }

    // A caller holding the secret: an undecodable proposal never becomes an entry.
    let member = Identity::new(&c.cluster, ids[0], Some(TEST_SECRET)).with_tls(node_tls());
    let e = raw_call(&raft, &member, id, "forward", vec![1, 0xff, 0xfe, 0xfd]).await.expect_err("refused");
    assert!(e.starts_with("InvalidArgument") && e.contains("not a proposal"), "{e}");

    // Nothing moved: same leader, same term, same three members; every node serves.
    assert_eq!(c.wait_ready(&[0, 1, 2]).await, leader, "same leader");
    assert_eq!(c.status(leader).expect("status")["term"], term, "no election was disturbed");
    let after = json(c.nodes[0].api, "/api/v5/cluster");
    assert_eq!(after["nodes"].as_array().map(|a| a.len()), Some(3), "{after}");
    serves(&c, 1, 2, "sec/raft").await;
    // And after a restart (an entry that had stopped the state machine stopped it again on
    // every replay).
    c.kill(leader);
    c.spawn(leader);
    c.wait_ready(&[0, 1, 2]).await;
    serves(&c, leader, (leader + 1) % 3, "sec/restart").await;
}

/// One HTTP/1.1 request with the given extra header lines; (status, body).
fn http_with(port: u16, method: &str, path: &str, headers: &[&str], body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

fn basic(key: &str, secret: &str) -> String {
    use base64::Engine;
    format!("Authorization: Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{key}:{secret}")))
}

/// The HTTP API with keys configured: nothing without a valid key (but the health check), a
/// body must be JSON (a web page's text/plain POST used to create a link), a cross-site request
/// changes nothing, a link's stored password is never returned and never follows a new `server`
/// unless given again; the nodes still read each other's API (the leader's link view).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_wants_a_key_json_bodies_and_never_leaks_a_link_password() {
    init();
    // Every test cluster's API has a key (TEST_API_KEY).
    let c = ProcCluster::start(3, "");
    c.wait_ready(&[0, 1, 2]).await;
    let api = c.nodes[1].api;
    let ok = basic(TEST_API_KEY, TEST_API_SECRET);
    let json_type = "Content-Type: application/json";

    let (code, body) = http_with(api, "GET", "/api/v5/status", &[], "");
    assert_eq!((code, body.as_str()), (200, r#"{"status":"running"}"#), "the health check is open and says no more");
    let (code, body) = http_with(api, "GET", "/api/v5/status", &[&ok], "");
    assert!(code == 200 && body.contains("\"uptime_secs\""), "with a key, the details: {body}");
    for path in ["/api/v5/clients", "/api/v5/cluster", "/api/v5/cluster/links", "/metrics"] {
        let (code, body) = http_with(api, "GET", path, &[], "");
        assert_eq!(code, 401, "{path} without a key: {body}");
        assert!(body.contains("BAD_API_KEY_OR_SECRET"), "{body}");
        assert_eq!(
            http_with(api, "GET", path, &[&basic(TEST_API_KEY, "wrong-secret-0123456789")], "").0,
            401,
            "{path}"
        );
        assert_eq!(http_with(api, "GET", path, &[&ok], "").0, 200, "{path} with the key");
    }
    for (m, p) in [
        ("DELETE", "/api/v5/clients/x"),
        ("POST", "/api/v5/cluster/nodes"),
        ("DELETE", "/api/v5/cluster/nodes/n1@127.0.0.1"),
    ] {
        assert_eq!(http_with(api, m, p, &[json_type], "{}").0, 401, "{m} {p} without a key");
    }

    let link = r#"{"name": "far", "server": "127.0.0.1:1", "username": "u", "password": "p4ss-w0rd-never-shown", "topics": ["t/#"], "enable": false}"#;
    let (code, body) = http_with(api, "POST", "/api/v5/cluster/links", &[&ok, "Content-Type: text/plain"], link);
    assert_eq!(code, 415, "a text/plain body: {body}");
    let (code, body) = http_with(api, "POST", "/api/v5/cluster/links", &[&ok], link);
    assert_eq!(code, 415, "a body without a Content-Type: {body}");
    let cross = "Origin: http://evil.example";
    let (code, body) = http_with(api, "POST", "/api/v5/cluster/links", &[&ok, json_type, cross], link);
    assert_eq!(code, 403, "a cross-site request: {body}");
    let (_, links) = http_with(api, "GET", "/api/v5/cluster/links", &[&ok], "");
    assert!(!links.contains("\"far\""), "refused requests created nothing: {links}");
    let (code, body) = http_with(api, "POST", "/api/v5/cluster/links", &[&ok, json_type], link);
    assert_eq!(code, 201, "{body}");
    assert!(!body.contains("p4ss-w0rd-never-shown"), "the password is never returned: {body}");

    // A new server without the password: refused; with it: accepted.
    let move_only = r#"{"server": "127.0.0.1:2"}"#;
    let (code, body) = http_with(api, "PUT", "/api/v5/cluster/links/link/far", &[&ok, json_type], move_only);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("requires its password again"), "{body}");
    let with_pw = r#"{"server": "127.0.0.1:2", "password": "p4ss-w0rd-never-shown"}"#;
    let (code, body) = http_with(api, "PUT", "/api/v5/cluster/links/link/far", &[&ok, json_type], with_pw);
    assert_eq!(code, 200, "{body}");
    // Other keys change without it (the password stays).
    let (code, body) =
        http_with(api, "PUT", "/api/v5/cluster/links/link/far", &[&ok, json_type], r#"{"topics": ["u/#"]}"#);
    assert_eq!(code, 200, "{body}");
    for i in 0..3 {
        let (code, body) = http_with(c.nodes[i].api, "GET", "/api/v5/cluster/links", &[&ok], "");
        assert_eq!(code, 200);
        assert!(body.contains("\"far\"") && body.contains("u/#"), "node {i} sees the link: {body}");
        assert!(!body.contains("p4ss-w0rd-never-shown"), "{body}");
        let log = std::fs::read_to_string(&c.nodes[i].log).unwrap_or_default();
        assert!(!log.contains("p4ss-w0rd-never-shown"), "node {i} logged the password");
    }
    let (_, metrics) = http_with(api, "GET", "/metrics", &[&ok], "");
    assert!(!metrics.contains("strait_api_denied_total 0"), "denials are counted: {metrics}");
}

/// Link impersonation, both listeners: a client claiming to be the other cluster's link on the
/// normal listener, one without the link's credentials on the link listener, and one taking
/// the link session's client id (it used to drain the other region's messages) are all
/// refused, and the real link, holding the shared credentials, carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_other_cluster_holding_the_link_credentials_is_a_link() {
    init();
    let mut east = ProcCluster::configure("cluster-us-east", 3, 3, "");
    let mut west = ProcCluster::configure("cluster-eu-west", 3, 3, "");
    let creds = "username = \"link\", password = \"shared-link-password-0123\"";
    east.link_to_with(&[&west], "[\"#\"]", creds);
    west.link_to_with(&[&east], "[\"#\"]", creds);
    for i in 0..3 {
        east.spawn(i);
        west.spawn(i);
    }
    east.wait_ready(&[0, 1, 2]).await;
    west.wait_ready(&[0, 1, 2]).await;
    let (mut sub, _) = Raw::connect(addr(west.nodes[0].mqtt), Protocol::V5, "west-sub").await;
    assert_eq!(sub.subscribe("linked/#", QoS::AtLeastOnce).await, vec![1]);
    west.wait_link("cluster-us-east", Some("linked/#")).await;
    east.wait_link("cluster-eu-west", None).await;

    let claim = |id: &str, user: Option<&str>| {
        let mut c = common::raw::connect_packet(Protocol::V5, id);
        for (k, v) in [
            ("strait-link", "cluster-eu-west"),
            ("strait-link-version", "1"),
            ("strait-link-target", "cluster-us-east"),
        ] {
            c.properties.user_properties.push((k.to_string(), v.to_string()));
        }
        c.username = user.map(String::from);
        c.password = user.map(|_| bytes::Bytes::from_static(b"a-guessed-password"));
        c
    };
    for i in 0..3 {
        let n = &east.nodes[i];
        let (_, ack) = Raw::connect_with(addr(n.mqtt), claim("fake-link", None)).await;
        assert_eq!(ack.code, 0x9C, "a link claim on the normal listener of node {i}: use another server");
        let (_, ack) = Raw::connect_with(addr(n.clink), claim("fake-link", None)).await;
        assert_eq!(ack.code, 0x86, "a link claim without credentials on the link listener of node {i}");
        let (_, ack) = Raw::connect_with(addr(n.clink), claim("fake-link", Some("link"))).await;
        assert_eq!(ack.code, 0x86, "a link claim with a wrong password on node {i}");
        let c = common::raw::connect_packet(Protocol::V5, "clink-cluster-eu-west");
        let (_, ack) = Raw::connect_with(addr(n.mqtt), c).await;
        assert_eq!(ack.code, 0x85, "the link session's client id on the normal listener of node {i}");
    }

    // The real link was never displaced: a message published in us-east arrives.
    let (mut p, _) = Raw::connect(addr(east.nodes[1].mqtt), Protocol::V5, "east-pub").await;
    assert_eq!(p.publish(publish("linked/x", QoS::AtLeastOnce, b"through the link", 1)).await, 0);
    match sub.next(Duration::from_secs(15)).await {
        common::raw::Got::Packet(Packet::Publish(m)) => assert_eq!(&m.payload[..], b"through the link"),
        other => panic!("the link stopped carrying messages: {other:?}; us-east:{}", east.links_report()),
    }
}

/// What one client can make a node allocate is bounded: a client that sends PINGREQs and never
/// reads (it grew the broker by ~420 MB), a PUBLISH of thousands of empty user properties (a
/// 1 MB packet was 12 MB in memory, kept when retained), retained messages past
/// `max_retained_messages`, and QoS 2 publishes past the Receive Maximum we advertise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_make_a_node_allocate_without_bound() {
    use std::io::Write;
    init();
    let mut c =
        ProcCluster::start(1, "mqtt { max_retained_messages = 3, max_user_properties = 500, send_timeout = 2s }");
    c.wait_ready(&[0]).await;
    let node = &c.nodes[0];
    let pid = c.pid(0).expect("pid");

    // A client that never reads, flooding PINGREQs for up to 8 s or 256 MB.
    let before = rss_kb(pid);
    let mut s = std::net::TcpStream::connect(addr(node.mqtt)).expect("connect");
    s.write_all(&common::raw::encode(
        &Packet::Connect(Box::new(common::raw::connect_packet(Protocol::V5, "never-reads"))),
        Protocol::V5,
    ))
    .expect("CONNECT");
    s.set_write_timeout(Some(Duration::from_millis(500))).expect("timeout");
    let chunk = [0xC0u8, 0x00].repeat(32 * 1024);
    let started = std::time::Instant::now();
    let mut sent = 0usize;
    while sent < 256 << 20 && started.elapsed() < Duration::from_secs(8) {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
            Err(_) => break,
        }
    }
    let grown = rss_kb(pid).saturating_sub(before);
    tracing::info!(
        "== a non-reading client got {} KB in before its writes stalled; the node grew {grown} KB",
        sent / 1024
    );
    assert!(sent < 64 << 20, "the node kept reading a client that does not read: {} MB taken in", sent >> 20);
    assert!(grown < 64 * 1024, "the node grew {grown} KB for one non-reading client");
    // Its socket accepts nothing for send_timeout (2 s): the node lets it go.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = http_get(node.api, "/metrics").expect("metrics");
        if metrics.contains("strait_send_timeouts_total 1") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the non-reading client was not disconnected in 20 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut buf = vec![0u8; 1 << 16];
    let closed = loop {
        match std::io::Read::read(&mut s, &mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) => break e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    };
    assert!(closed, "after strait_send_timeouts_total went up the socket is still open");
    drop(s);

    // 501 user properties: refused with 0x95 (max_user_properties = 500); 500 are fine.
    let mut many = publish("props/x", QoS::AtLeastOnce, b"x", 1);
    many.properties.user_properties = (0..501).map(|_| (String::new(), String::new())).collect();
    let (mut p, _) = Raw::connect(addr(node.mqtt), Protocol::V5, "props").await;
    p.send(&Packet::Publish(many.clone())).await;
    assert_eq!(p.expect_close(Duration::from_secs(5)).await, Some(0x95), "501 user properties");
    let (_, metrics) = http_get(node.api, "/metrics").expect("metrics");
    assert!(metrics.contains("strait_limits_hit_total{limit=\"max_user_properties\"} 1"), "{metrics}");
    many.properties.user_properties.truncate(500);
    let (mut p, _) = Raw::connect(addr(node.mqtt), Protocol::V5, "props").await;
    assert_eq!(p.publish(many).await, 0, "500 user properties");

    // Retained: 3 topics at most (max_retained_messages = 3); a replacement and a clear fit.
    let (mut r, _) = Raw::connect(addr(node.mqtt), Protocol::V5, "retainer").await;
    let retained = |t: &str, v: &'static [u8], id: u16| {
        let mut m = publish(t, QoS::AtLeastOnce, v, id);
        m.retain = true;
        m
    };
    for (i, t) in ["r/1", "r/2", "r/3"].iter().enumerate() {
        assert_eq!(r.publish(retained(t, b"v", i as u16 + 1)).await, 0, "{t}");
    }
    assert_eq!(r.publish(retained("r/4", b"v", 4)).await, 0x97, "a 4th retained topic: quota exceeded");
    assert_eq!(r.publish(retained("r/1", b"v2", 5)).await, 0, "a replacement fits");
    assert_eq!(r.publish(retained("r/1", b"", 6)).await, 0, "a clear");
    assert_eq!(r.publish(retained("r/4", b"v", 7)).await, 0, "room again");
    let (_, metrics) = http_get(node.api, "/metrics").expect("metrics");
    assert!(metrics.contains("strait_retained_refused_total 1"), "{metrics}");

    // QoS 2 past the Receive Maximum we advertised (max_inflight, 32): DISCONNECT 0x93.
    let (mut q, ack) = Raw::connect(addr(node.mqtt), Protocol::V5, "qos2-flood").await;
    assert_eq!(ack.properties.receive_maximum, Some(32), "the server's Receive Maximum is advertised");
    for i in 0..33u16 {
        q.send(&Packet::Publish(publish("q2/x", QoS::ExactlyOnce, b"x", i + 1))).await;
    }
    let close = loop {
        match q.next(Duration::from_secs(5)).await {
            common::raw::Got::Packet(Packet::PubRec(_)) => continue,
            common::raw::Got::Packet(Packet::Disconnect(d)) => break Some(d.code),
            other => panic!("expected DISCONNECT 0x93, got {other:?}"),
        }
    };
    assert_eq!(close, Some(0x93), "Receive Maximum exceeded");

    // The node still serves.
    serves(&c, 0, 0, "sec/bounds").await;
    let _ = c.pid(0);
    c.kill(0);
}

/// Node-to-node mutual TLS (`cluster.raft.ssl`): the cluster forms and serves over it (Raft and
/// the data plane); a caller that holds the secret but speaks plaintext gets nothing, and one
/// with a certificate from another CA is refused in the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_over_mutual_tls_takes_only_peers_the_cluster_ca_signed() {
    init();
    common::require_binary("openssl");
    let ours = common::TempDir::new("raft-tls");
    common::certs::make_certs(ours.path());
    let theirs = common::TempDir::new("raft-tls-other");
    common::certs::make_certs(theirs.path());
    let f = |n: &str| ours.path().join(n).display().to_string();
    let mut c = ProcCluster::start(
        3,
        &format!(
            "cluster.raft.ssl {{ certfile = \"{}\", keyfile = \"{}\", cacertfile = \"{}\" }}",
            f("server.pem"),
            f("server.key"),
            f("ca.pem")
        ),
    );
    c.wait_ready(&[0, 1, 2]).await;
    serves(&c, 0, 2, "tls/raft").await;

    let raft = format!("127.0.0.1:{}", c.nodes[0].raft);
    let id: u64 = json(c.nodes[0].api, "/api/v5/cluster")["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["name"] == c.nodes[0].name.as_str()))
        .and_then(|n| n["id"].as_str())
        .and_then(|s| s.parse().ok())
        .expect("node id");
    let plain = Identity::new(&c.cluster, 1, Some(TEST_SECRET));
    let e = raw_call(&raft, &plain, id, "vote", vec![]).await.expect_err("plaintext is refused");
    assert!(!e.contains(&c.cluster), "{e}");
    let read = |d: &common::TempDir, n: &str| std::fs::read(d.path().join(n)).expect("pem");
    let stranger = Identity::new(&c.cluster, 1, Some(TEST_SECRET)).with_tls(Some(TlsFiles {
        cert: read(&theirs, "server.pem"),
        key: read(&theirs, "server.key"),
        ca: read(&ours, "ca.pem"),
    }));
    let e = raw_call(&raft, &stranger, id, "vote", vec![]).await.expect_err("another CA's certificate is refused");
    tracing::info!("== refused: {e}");
    let member = Identity::new(&c.cluster, 1, Some(TEST_SECRET)).with_tls(Some(TlsFiles {
        cert: read(&ours, "server.pem"),
        key: read(&ours, "server.key"),
        ca: read(&ours, "ca.pem"),
    }));
    let e = raw_call(&raft, &member, id, "forward", vec![1, 2, 3]).await.expect_err("garbage is still refused");
    assert!(e.starts_with("InvalidArgument"), "a certified caller gets an answer: {e}");
    c.kill(1);
    c.spawn(1);
    c.wait_ready(&[0, 1, 2]).await;
    serves(&c, 1, 0, "tls/restart").await;
}

/// Logs for shippers: `log.format = json` writes one JSON object per line, with no terminal
/// colour codes in a file; the level changes at runtime through the API (`PUT /api/v5/log`),
/// and a bad level is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_without_colours_and_the_level_changed_at_runtime() {
    init();
    let mut c = ProcCluster::start(1, "log { format = json, level = info }");
    c.wait_ready(&[0]).await;
    let api = c.nodes[0].api;
    let (code, body) = common::procs::http_get(api, "/api/v5/log").expect("API");
    assert_eq!((code, body.contains("\"level\":\"info")), (200, true), "{body}");
    let (code, body) = common::procs::http(api, "PUT", "/api/v5/log", Some(r#"{"level": "debug"}"#)).expect("API");
    assert_eq!(code, 200, "{body}");
    let (_, body) = common::procs::http_get(api, "/api/v5/log").expect("API");
    assert!(body.contains("\"level\":\"debug\""), "{body}");
    let (code, body) = common::procs::http(api, "PUT", "/api/v5/log", Some(r#"{"level": "loud=="}"#)).expect("API");
    assert_eq!(code, 400, "{body}");
    // A debug line now shows up (a client connecting logs at debug level).
    let _ = Raw::connect(addr(c.nodes[0].mqtt), Protocol::V5, "log-probe").await;
    let log = c.nodes[0].log.clone();
    common::wait_for(
        || std::fs::read_to_string(&log).is_ok_and(|t| t.contains("\"level\":\"DEBUG\"")),
        Duration::from_secs(10),
        "a DEBUG line after the level change",
    )
    .await;
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(!text.contains('\u{1b}'), "colour codes in a log file");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with('{')).collect();
    assert!(!lines.is_empty(), "no JSON lines: {text}");
    for l in &lines {
        serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
    }
    c.kill(0);
}
