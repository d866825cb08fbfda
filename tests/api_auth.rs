//! HTTP API, Prometheus metrics, `strait passwd` files and ACL rules.

mod common;

use common::wire::*;
use common::*;
use strait::mqtt::packet::*;

#[tokio::test]
async fn api_endpoints_and_kick() {
    let n = start("").await;
    let (mut c, _) = Raw::connect(n.mqtt, Protocol::V5, "api-client").await;
    c.subscribe("api/#", QoS::AtLeastOnce).await;
    c.publish(publish("api/1", QoS::AtLeastOnce, b"x", 1)).await;
    let (code, body) = http(n.api, "GET", "/api/v5/status").await;
    assert_eq!(code, 200);
    assert!(body.contains("\"status\":\"running\""), "{body}");
    let (code, body) = http(n.api, "GET", "/api/v5/clients").await;
    assert_eq!(code, 200);
    assert!(body.contains("\"clientid\":\"api-client\"") && body.contains("\"connected\":true"), "{body}");
    let (_, body) = http(n.api, "GET", "/api/v5/subscriptions").await;
    assert!(body.contains("\"topic\":\"api/#\""), "{body}");
    let (code, body) = http(n.api, "GET", "/metrics").await;
    assert_eq!(code, 200);
    assert!(body.contains("strait_connections 1"), "{body}");
    assert!(body.contains("strait_messages_received_total{qos=\"1\"} 1"), "{body}");
    assert!(body.contains("strait_subscriptions 1"), "{body}");
    assert_eq!(http(n.api, "DELETE", "/api/v5/clients/nobody").await.0, 404);
    assert_eq!(http(n.api, "DELETE", "/api/v5/clients/api-client").await.0, 204);
    assert_eq!(c.expect_close().await, Some(reason::ADMINISTRATIVE_ACTION));
    assert_eq!(http(n.api, "GET", "/api/v5/nope").await.0, 404);
    tracing::info!("--- DELETE of an offline persistent session discards it");
    let mut p = connect_packet(Protocol::V5, "offline");
    p.clean_start = false;
    p.properties.session_expiry_interval = Some(300);
    let (mut o, _) = Raw::connect_with(n.mqtt, p.clone()).await;
    o.subscribe("off/#", QoS::AtLeastOnce).await;
    o.send(&Packet::Disconnect(Disconnect::new(0))).await;
    drop(o);
    let b = n.node.broker.clone();
    wait_for(|| b.session("offline").is_some_and(|s| !s.is_connected()), WAIT, "offline session").await;
    assert_eq!(http(n.api, "DELETE", "/api/v5/clients/offline").await.0, 204);
    assert!(n.node.broker.session("offline").is_none(), "session discarded");
    let (_, ack) = Raw::connect_with(n.mqtt, p).await;
    assert!(!ack.session_present, "a reconnect finds no session");
    n.stop().await;
}

#[tokio::test]
async fn passwords_and_acl() {
    let dir = TempDir::new("acl");
    let pw = dir.path().join("passwd");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strait"))
        .arg("passwd")
        .arg(&pw)
        .args(["bob", "--password", "hunter2"])
        .output()
        .expect("strait passwd");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        "allow user:bob publish sensors/%u/#\nallow user:bob subscribe sensors/#\ndeny all subscribe secret/#\ndeny all all #\n",
    )
    .expect("write acl");
    let n = start_in(
        dir,
        &format!(
            "authentication {{ allow_anonymous = false, password_file = \"{}\" }}\nauthorization {{ acl_file = \"{}\", no_match = deny }}",
            pw.display(),
            acl.display()
        ),
    )
    .await;
    let mut good = connect_packet(Protocol::V5, "b1");
    good.username = Some("bob".into());
    good.password = Some(bytes::Bytes::from_static(b"hunter2"));
    let mut bad = good.clone();
    bad.password = Some(bytes::Bytes::from_static(b"nope"));
    assert_eq!(Raw::connect_with(n.mqtt, bad).await.1.code, reason::BAD_USER_NAME_OR_PASSWORD);
    let anon = connect_packet(Protocol::V311, "anon");
    // Wire return code 5; the codec reads 3.1.1 return codes back as 5.0 reason codes.
    assert_eq!(Raw::connect_with(n.mqtt, anon).await.1.code, reason::NOT_AUTHORIZED, "3.1.1 not authorized");
    let (mut c, ack) = Raw::connect_with(n.mqtt, good).await;
    assert_eq!(ack.code, 0);
    assert_eq!(c.subscribe("sensors/#", QoS::AtLeastOnce).await, vec![1]);
    assert_eq!(c.subscribe("secret/x", QoS::AtLeastOnce).await, vec![reason::NOT_AUTHORIZED]);
    assert_eq!(c.publish(publish("sensors/bob/t", QoS::AtLeastOnce, b"1", 1)).await, 0);
    assert_eq!(c.publish_in().await.topic, "sensors/bob/t");
    assert_eq!(c.publish(publish("sensors/eve/t", QoS::AtLeastOnce, b"2", 2)).await, reason::NOT_AUTHORIZED);
    c.no_publish(std::time::Duration::from_millis(300), "a denied publish is not delivered").await;
    n.stop().await;
}

/// ACL semantics operators expect (mosquitto's, EMQX's): a SUBSCRIBE is checked as written and
/// read access per delivered message. One `deny all subscribe test/nosubscribe` rule used to
/// make every `#` subscription fail with 0x80; now the `#` subscriber gets every message except
/// that topic's, and subscribing to the denied topic itself is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_monitor_beside_a_deny_rule_reads_everything_else() {
    let dir = TempDir::new("acl-read");
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "deny all subscribe test/nosubscribe\n").expect("write acl");
    let n = start_in(dir, &format!("authorization {{ acl_file = \"{}\", no_match = allow }}", acl.display())).await;
    let (mut monitor, _) = Raw::connect(n.mqtt, Protocol::V5, "monitor").await;
    assert_eq!(monitor.subscribe("#", QoS::AtLeastOnce).await, vec![1], "# is granted");
    let (mut direct, _) = Raw::connect(n.mqtt, Protocol::V311, "direct").await;
    assert_eq!(direct.subscribe("test/nosubscribe", QoS::AtLeastOnce).await, vec![0x80], "the denied topic itself");
    assert_eq!(direct.subscribe("test/+", QoS::AtMostOnce).await, vec![0]);
    let (mut p, _) = Raw::connect(n.mqtt, Protocol::V5, "pub").await;
    for (i, t) in ["test/a", "test/nosubscribe", "other/x", "test/b"].iter().enumerate() {
        assert_eq!(p.publish(publish(t, QoS::AtLeastOnce, b"m", i as u16 + 1)).await, 0, "{t}");
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = monitor.publish_in().await;
        monitor.ack(&m).await;
        got.push(m.topic);
    }
    assert_eq!(got, ["test/a", "other/x", "test/b"], "everything but the denied topic, in order");
    monitor.no_publish(std::time::Duration::from_millis(300), "the denied topic is never delivered").await;
    assert_eq!(direct.publish_in().await.topic, "test/a");
    assert_eq!(direct.publish_in().await.topic, "test/b", "test/+ does not read test/nosubscribe either");
    n.stop().await;
}
