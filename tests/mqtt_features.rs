//! MQTT features over real TCP, checked byte-exactly with a raw client on the broker's codec.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::wire::*;
use common::*;
use strait::mqtt::packet::*;

const V5: Protocol = Protocol::V5;
const V3: Protocol = Protocol::V311;

#[tokio::test]
async fn qos_0_1_2_both_directions_and_downgrade() {
    let n = start("").await;
    for proto in [V3, V5] {
        let (mut sub, _) = Raw::connect(n.mqtt, proto, "sub").await;
        assert_eq!(sub.subscribe("q/+", QoS::ExactlyOnce).await, vec![2]);
        let (mut pubr, _) = Raw::connect(n.mqtt, proto, "pub").await;
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce].into_iter().enumerate() {
            assert_eq!(pubr.publish(publish("q/x", qos, b"m", 10 + i as u16)).await, 0);
            let got = sub.publish_in().await;
            assert_eq!((got.qos, &got.payload[..], got.topic.as_str()), (qos, &b"m"[..], "q/x"));
            sub.ack(&got).await;
        }
        tracing::info!("--- a QoS 2 publish to a QoS 1 subscription is delivered at QoS 1");
        let (mut low, _) = Raw::connect(n.mqtt, proto, "low").await;
        low.subscribe("d/1", QoS::AtLeastOnce).await;
        pubr.publish(publish("d/1", QoS::ExactlyOnce, b"x", 99)).await;
        assert_eq!(low.publish_in().await.qos, QoS::AtLeastOnce);
    }
    n.stop().await;
}

#[tokio::test]
async fn retained_store_deliver_clear() {
    let n = start("").await;
    let (mut p, _) = Raw::connect(n.mqtt, V5, "p").await;
    let mut m = publish("r/a", QoS::AtLeastOnce, b"keep", 1);
    m.retain = true;
    p.publish(m).await;
    let (mut s, _) = Raw::connect(n.mqtt, V5, "s").await;
    s.subscribe("r/#", QoS::AtLeastOnce).await;
    let got = s.publish_in().await;
    assert!(got.retain, "retained message delivered on subscribe carries RETAIN");
    assert_eq!(&got.payload[..], b"keep");
    s.ack(&got).await;
    tracing::info!("--- live delivery of a retained publish has RETAIN 0 without retain-as-published");
    let mut live = publish("r/a", QoS::AtMostOnce, b"new", 0);
    live.retain = true;
    p.publish(live).await;
    assert!(!s.publish_in().await.retain);
    tracing::info!("--- empty retained payload clears");
    let mut clear = publish("r/a", QoS::AtLeastOnce, b"", 2);
    clear.retain = true;
    p.publish(clear).await;
    let _ = s.publish_in().await;
    let (mut s2, _) = Raw::connect(n.mqtt, V5, "s2").await;
    s2.subscribe("r/#", QoS::AtLeastOnce).await;
    s2.no_publish(Duration::from_millis(300), "retained message was cleared").await;
    tracing::info!("--- retain handling 2: never sent on subscribe");
    let mut again = publish("r/b", QoS::AtMostOnce, b"b", 0);
    again.retain = true;
    p.publish(again).await;
    let (mut s3, _) = Raw::connect(n.mqtt, V5, "s3").await;
    let opts = SubOptions { qos: QoS::AtMostOnce, retain_handling: 2, ..SubOptions::default() };
    s3.subscribe_opts("r/#", opts, Properties::default()).await;
    s3.no_publish(Duration::from_millis(300), "retain handling 2").await;
    n.stop().await;
}

#[tokio::test]
async fn wildcards_and_dollar_topics() {
    let n = start("").await;
    let (mut s, _) = Raw::connect(n.mqtt, V3, "s").await;
    s.subscribe("#", QoS::AtMostOnce).await;
    let (mut p, _) = Raw::connect(n.mqtt, V3, "p").await;
    // Clients cannot publish to $SYS; a $-topic they can publish to is not matched by '#'.
    p.publish(publish("$app/x", QoS::AtMostOnce, b"d", 0)).await;
    p.publish(publish("a/b/c", QoS::AtMostOnce, b"n", 0)).await;
    let got = s.publish_in().await;
    assert_eq!(got.topic, "a/b/c", "'#' must not match $-topics");
    n.stop().await;
}

#[tokio::test]
async fn overlapping_subscriptions_delivered_once_with_all_ids() {
    let n = start("").await;
    let (mut s, _) = Raw::connect(n.mqtt, V5, "s").await;
    let sid = |id| Properties { subscription_identifiers: vec![id], ..Properties::default() };
    s.subscribe_opts("o/+", SubOptions { qos: QoS::AtMostOnce, ..SubOptions::default() }, sid(1)).await;
    s.subscribe_opts("o/#", SubOptions { qos: QoS::AtLeastOnce, ..SubOptions::default() }, sid(2)).await;
    let (mut p, _) = Raw::connect(n.mqtt, V5, "p").await;
    p.publish(publish("o/x", QoS::AtLeastOnce, b"1", 1)).await;
    let got = s.publish_in().await;
    assert_eq!(got.qos, QoS::AtLeastOnce, "highest QoS of the overlapping subscriptions");
    let mut ids = got.properties.subscription_identifiers.clone();
    ids.sort();
    assert_eq!(ids, vec![1, 2]);
    s.ack(&got).await;
    s.no_publish(Duration::from_millis(300), "one copy only").await;
    n.stop().await;
}

#[tokio::test]
async fn shared_subscription_one_member_per_message() {
    let n = start("").await;
    let (mut a, _) = Raw::connect(n.mqtt, V5, "a").await;
    let (mut b, _) = Raw::connect(n.mqtt, V5, "b").await;
    assert_eq!(a.subscribe("$share/g/job/#", QoS::AtLeastOnce).await, vec![1]);
    assert_eq!(b.subscribe("$share/g/job/#", QoS::AtLeastOnce).await, vec![1]);
    let (mut p, _) = Raw::connect(n.mqtt, V5, "p").await;
    for i in 0..20u16 {
        p.publish(publish("job/1", QoS::AtLeastOnce, b"w", i + 1)).await;
    }
    let (mut na, mut nb) = (0, 0);
    loop {
        let mut progressed = false;
        if let Some(Some(Packet::Publish(m))) = a.recv_within(Duration::from_millis(200)).await {
            a.ack(&m).await;
            na += 1;
            progressed = true;
        }
        if let Some(Some(Packet::Publish(m))) = b.recv_within(Duration::from_millis(200)).await {
            b.ack(&m).await;
            nb += 1;
            progressed = true;
        }
        if !progressed {
            break;
        }
    }
    assert_eq!(na + nb, 20, "each message exactly once across the group (a={na}, b={nb})");
    assert!(na > 0 && nb > 0, "both members get work (a={na}, b={nb})");
    n.stop().await;
}

#[tokio::test]
async fn no_local_and_retain_as_published() {
    let n = start("").await;
    let (mut c, _) = Raw::connect(n.mqtt, V5, "self").await;
    let nl = SubOptions { qos: QoS::AtMostOnce, no_local: true, ..SubOptions::default() };
    c.subscribe_opts("nl/t", nl, Properties::default()).await;
    c.publish(publish("nl/t", QoS::AtMostOnce, b"own", 0)).await;
    c.no_publish(Duration::from_millis(300), "no local").await;
    let rap = SubOptions { qos: QoS::AtMostOnce, retain_as_published: true, ..SubOptions::default() };
    c.subscribe_opts("rap/t", rap, Properties::default()).await;
    let (mut p, _) = Raw::connect(n.mqtt, V5, "p").await;
    let mut m = publish("rap/t", QoS::AtMostOnce, b"r", 0);
    m.retain = true;
    p.publish(m).await;
    assert!(c.publish_in().await.retain, "retain as published keeps RETAIN on live delivery");
    n.stop().await;
}

#[tokio::test]
async fn v5_properties_pass_through_and_expiry_counts_down() {
    let n = start("").await;
    let (mut s, _) = Raw::connect(n.mqtt, V5, "s").await;
    s.subscribe("pp/#", QoS::AtLeastOnce).await;
    let (mut p, _) = Raw::connect(n.mqtt, V5, "p").await;
    let mut m = publish("pp/1", QoS::AtLeastOnce, b"{}", 1);
    m.properties = Properties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        response_topic: Some("reply/1".into()),
        correlation_data: Some(Bytes::from_static(b"abc")),
        user_properties: vec![("k".into(), "v".into())],
        message_expiry_interval: Some(100),
        ..Properties::default()
    };
    p.publish(m).await;
    let got = s.publish_in().await;
    let pr = &got.properties;
    assert_eq!(pr.content_type.as_deref(), Some("application/json"));
    assert_eq!(pr.response_topic.as_deref(), Some("reply/1"));
    assert_eq!(pr.correlation_data.as_deref(), Some(&b"abc"[..]));
    assert_eq!(pr.user_properties, vec![("k".to_string(), "v".to_string())]);
    assert_eq!(pr.payload_format_indicator, Some(1));
    assert!(matches!(pr.message_expiry_interval, Some(99..=100)), "remaining expiry: {:?}", pr.message_expiry_interval);
    tracing::info!("--- invalid UTF-8 with payload format 1 gets PUBACK 0x99");
    let mut bad = publish("pp/2", QoS::AtLeastOnce, b"\xff\xfe", 2);
    bad.properties.payload_format_indicator = Some(1);
    assert_eq!(p.publish(bad).await, 0x99);
    n.stop().await;
}

#[tokio::test]
async fn message_expiry_drops_for_offline_session() {
    let n = start("").await;
    let mut c = connect_packet(V5, "exp");
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(60);
    let (mut s, _) = Raw::connect_with(n.mqtt, c.clone()).await;
    s.subscribe("e/#", QoS::AtLeastOnce).await;
    s.send(&Packet::Disconnect(Disconnect::new(0))).await;
    drop(s);
    let (mut p, _) = Raw::connect(n.mqtt, V5, "p").await;
    let mut m = publish("e/1", QoS::AtLeastOnce, b"short", 1);
    m.properties.message_expiry_interval = Some(1);
    p.publish(m).await;
    p.publish(publish("e/2", QoS::AtLeastOnce, b"long", 2)).await;
    tokio::time::sleep(Duration::from_millis(2100)).await; // let the 1 s expiry pass (the point of the test)
    let (mut s, ack) = Raw::connect_with(n.mqtt, c).await;
    assert!(ack.session_present);
    let got = s.publish_in().await;
    assert_eq!(got.topic, "e/2", "the expired message is not delivered");
    n.stop().await;
}

#[tokio::test]
async fn topic_alias_and_assigned_client_id() {
    let n = start("").await;
    let (mut s, _) = Raw::connect(n.mqtt, V5, "s").await;
    s.subscribe("alias/#", QoS::AtMostOnce).await;
    let (mut p, ack) = Raw::connect(n.mqtt, V5, "").await;
    let assigned = ack.properties.assigned_client_identifier.expect("assigned client id for an empty one");
    assert!(!assigned.is_empty());
    let mut first = publish("alias/t", QoS::AtMostOnce, b"1", 0);
    first.properties.topic_alias = Some(3);
    p.publish(first).await;
    let mut second = publish("", QoS::AtMostOnce, b"2", 0);
    second.properties.topic_alias = Some(3);
    p.publish(second).await;
    assert_eq!(s.publish_in().await.topic, "alias/t");
    assert_eq!(s.publish_in().await.topic, "alias/t", "alias resolved to the registered topic");
    tracing::info!("--- an unknown alias is a protocol error");
    let mut unknown = publish("", QoS::AtMostOnce, b"3", 0);
    unknown.properties.topic_alias = Some(7);
    p.send(&Packet::Publish(unknown)).await;
    assert_eq!(p.expect_close().await, Some(reason::PROTOCOL_ERROR));
    n.stop().await;
}

#[tokio::test]
async fn wills_abnormal_normal_and_delayed() {
    let n = start("").await;
    let (mut w, _) = Raw::connect(n.mqtt, V5, "watch").await;
    w.subscribe("will/#", QoS::AtLeastOnce).await;
    let with_will = |id: &str, delay: Option<u32>| {
        let mut c = connect_packet(V5, id);
        c.will = Some(Will {
            topic: format!("will/{id}"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties { will_delay_interval: delay, ..Properties::default() },
        });
        if delay.is_some() {
            c.clean_start = false;
            c.properties.session_expiry_interval = Some(60);
        }
        c
    };
    tracing::info!("--- abnormal close publishes the will");
    let (c1, _) = Raw::connect_with(n.mqtt, with_will("a", None)).await;
    drop(c1);
    let got = w.publish_in().await;
    assert_eq!((got.topic.as_str(), &got.payload[..]), ("will/a", &b"gone"[..]));
    w.ack(&got).await;
    tracing::info!("--- normal DISCONNECT discards it");
    let (mut c2, _) = Raw::connect_with(n.mqtt, with_will("b", None)).await;
    c2.send(&Packet::Disconnect(Disconnect::new(0))).await;
    drop(c2);
    w.no_publish(Duration::from_millis(300), "no will after a normal DISCONNECT").await;
    tracing::info!("--- a delayed will is cancelled by a reconnect within the delay");
    let (c3, _) = Raw::connect_with(n.mqtt, with_will("c", Some(2))).await;
    drop(c3);
    let mut back = with_will("c", Some(2));
    back.will = None;
    let (_c3b, ack) = Raw::connect_with(n.mqtt, back).await;
    assert!(ack.session_present);
    w.no_publish(Duration::from_millis(2500), "delayed will cancelled by reconnect").await;
    n.stop().await;
}

#[tokio::test]
async fn reserved_link_topics_and_invalid_filters() {
    let n = start("").await;
    let (mut c5, _) = Raw::connect(n.mqtt, V5, "c5").await;
    assert_eq!(c5.subscribe("$LINK/x", QoS::AtMostOnce).await, vec![reason::NOT_AUTHORIZED]);
    assert_eq!(c5.subscribe("a/#/b", QoS::AtMostOnce).await, vec![reason::TOPIC_FILTER_INVALID]);
    assert_eq!(c5.publish(publish("$LINK/x", QoS::AtLeastOnce, b"no", 1)).await, reason::NOT_AUTHORIZED);
    let (mut c3, _) = Raw::connect(n.mqtt, V3, "c3").await;
    assert_eq!(c3.subscribe("$LINK/#", QoS::AtMostOnce).await, vec![0x80]);
    assert_eq!(c3.subscribe("a+", QoS::AtMostOnce).await, vec![0x80]);
    n.stop().await;
}

#[tokio::test]
async fn refusals_at_connect() {
    let n = start("").await;
    let mut r = Raw::open(n.mqtt, V3).await;
    r.send_bytes(&[0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 9, 0x02, 0, 60, 0, 0]).await;
    assert!(
        matches!(r.recv().await, Some(Packet::ConnAck(a)) if a.code == reason::UNSUPPORTED_PROTOCOL_VERSION || a.code == 1),
        "unsupported protocol level gets a CONNACK refusal"
    );
    let mut c = connect_packet(V3, "");
    c.clean_start = false;
    let (_, ack) = Raw::connect_with(n.mqtt, c).await;
    // Wire return code 2; the codec reads 3.1.1 return codes back as 5.0 reason codes.
    assert_eq!(
        ack.code,
        reason::CLIENT_IDENTIFIER_NOT_VALID,
        "3.1.1 empty client id with clean session 0: identifier rejected"
    );
    tracing::info!("--- first packet not CONNECT: closed");
    let mut r = Raw::open(n.mqtt, V3).await;
    r.send_bytes(&[0xc0, 0]).await;
    assert_eq!(r.recv().await, None);
    tracing::info!("--- second CONNECT: protocol error");
    let (mut c, _) = Raw::connect(n.mqtt, V5, "twice").await;
    c.send(&Packet::Connect(Box::new(connect_packet(V5, "twice")))).await;
    assert_eq!(c.expect_close().await, Some(reason::PROTOCOL_ERROR));
    n.stop().await;
}

#[tokio::test]
async fn packet_size_keepalive_and_connect_timeout() {
    let n = start("mqtt { max_packet_size = 1024, connect_timeout = 1s }").await;
    let (mut big, ack) = Raw::connect(n.mqtt, V5, "big").await;
    assert_eq!(ack.properties.maximum_packet_size, Some(1024));
    big.send(&Packet::Publish(publish("t", QoS::AtMostOnce, &[7u8; 2000], 0))).await;
    assert_eq!(big.expect_close().await, Some(reason::PACKET_TOO_LARGE));
    tracing::info!("--- keep alive 1 s and silence: dropped after 1.5 s with 0x8D");
    let mut c = connect_packet(V5, "sleepy");
    c.keep_alive = 1;
    let started = tokio::time::Instant::now();
    let (mut s, _) = Raw::connect_with(n.mqtt, c).await;
    assert_eq!(s.expect_close().await, Some(reason::KEEP_ALIVE_TIMEOUT));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1400) && took < Duration::from_secs(3), "dropped after {took:?}");
    tracing::info!("--- TCP without CONNECT is dropped after the connect timeout");
    let mut mute = Raw::open(n.mqtt, V3).await;
    assert_eq!(mute.recv().await, None, "closed within the connect timeout");
    n.stop().await;
}

#[tokio::test]
async fn connection_limit() {
    let n = start("listeners.tcp.default.max_connections = 2").await;
    let (_a, _) = Raw::connect(n.mqtt, V3, "a").await;
    let (_b, _) = Raw::connect(n.mqtt, V3, "b").await;
    let mut third = Raw::open(n.mqtt, V3).await;
    third.send(&Packet::Connect(Box::new(connect_packet(V3, "c")))).await;
    assert_eq!(third.recv().await, None, "the third connection is closed without CONNACK");
    n.stop().await;
}

#[tokio::test]
async fn slow_consumer_queue_limit_drops_qos0_first() {
    let n = start("mqtt { max_mqueue_len = 5, max_inflight = 1 }").await;
    let mut c = connect_packet(V5, "slow");
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(60);
    let (mut s, _) = Raw::connect_with(n.mqtt, c.clone()).await;
    s.subscribe("s/#", QoS::AtLeastOnce).await;
    s.send(&Packet::Disconnect(Disconnect::new(0))).await;
    drop(s);
    let (mut p, _) = Raw::connect(n.mqtt, V5, "p").await;
    for _ in 0..3 {
        p.publish(publish("s/0", QoS::AtMostOnce, b"q0", 0)).await;
    }
    for i in 0..6u16 {
        p.publish(publish("s/1", QoS::AtLeastOnce, b"q1", i + 1)).await;
    }
    let sess = n.node.broker.session("slow").expect("session kept");
    wait_for(|| sess.lock().queue.len() == 5, WAIT, "queue at its limit").await;
    let qos1 = sess.lock().queue.iter().filter(|d| d.qos == QoS::AtLeastOnce).count();
    assert_eq!(qos1, 5, "QoS 0 evicted first, then the newest QoS 1 dropped");
    assert!(sess.dropped.load(std::sync::atomic::Ordering::Relaxed) >= 4);
    n.stop().await;
}

#[tokio::test]
async fn takeover_and_session_expiry() {
    let n = start("").await;
    let mut c = connect_packet(V5, "same");
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(1);
    let (mut first, _) = Raw::connect_with(n.mqtt, c.clone()).await;
    first.subscribe("tk/#", QoS::AtLeastOnce).await;
    let (mut second, ack) = Raw::connect_with(n.mqtt, c.clone()).await;
    assert!(ack.session_present, "the session moves to the new connection");
    assert_eq!(first.expect_close().await, Some(reason::SESSION_TAKEN_OVER));
    let (mut p, _) = Raw::connect(n.mqtt, V5, "p").await;
    p.publish(publish("tk/1", QoS::AtLeastOnce, b"x", 1)).await;
    assert_eq!(second.publish_in().await.topic, "tk/1", "subscriptions survived the takeover");
    second.send(&Packet::Disconnect(Disconnect::new(0))).await;
    drop(second);
    wait_for(|| n.node.broker.session("same").is_none(), Duration::from_secs(4), "session expired after 1 s").await;
    let (_, ack) = Raw::connect_with(n.mqtt, c).await;
    assert!(!ack.session_present);
    n.stop().await;
}

#[tokio::test]
async fn restart_keeps_sessions_queues_and_retained() {
    let n = start_in(TempDir::new("restart"), "").await;
    let mut c = connect_packet(V3, "durable");
    c.clean_start = false;
    let (mut s, _) = Raw::connect_with(n.mqtt, c.clone()).await;
    s.subscribe("dur/#", QoS::AtLeastOnce).await;
    s.send(&Packet::Disconnect(Disconnect::new(0))).await;
    drop(s);
    let (mut p, _) = Raw::connect(n.mqtt, V3, "p").await;
    p.publish(publish("dur/1", QoS::AtLeastOnce, b"queued", 1)).await;
    let mut r = publish("dur/r", QoS::AtLeastOnce, b"retained", 2);
    r.retain = true;
    p.publish(r).await;
    drop(p);
    let dir = n.stop().await;
    tracing::info!("--- restart on the same data dir");
    let n = start_in(dir, "").await;
    let (mut s, ack) = Raw::connect_with(n.mqtt, c).await;
    assert!(ack.session_present, "persistent session survived the restart");
    let mut topics = vec![s.publish_in().await.topic, s.publish_in().await.topic];
    topics.sort();
    assert_eq!(topics, vec!["dur/1".to_string(), "dur/r".to_string()]);
    let (mut late, _) = Raw::connect(n.mqtt, V3, "late").await;
    late.subscribe("dur/r", QoS::AtMostOnce).await;
    assert_eq!(&late.publish_in().await.payload[..], b"retained");
    n.stop().await;
}

#[tokio::test]
async fn shutdown_sends_server_shutting_down() {
    let n = start("").await;
    let (mut c, _) = Raw::connect(n.mqtt, V5, "bye").await;
    let stop = tokio::spawn(n.stop());
    assert_eq!(c.expect_close().await, Some(reason::SERVER_SHUTTING_DOWN));
    stop.await.expect("shutdown completes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_publisher_is_slowed_not_dropped_for_a_connected_subscriber() {
    let n = start("mqtt { max_mqueue_len = 100 }").await;
    let (mut s, _) = Raw::connect(n.mqtt, V3, "reader").await;
    s.subscribe("fc/t", QoS::AtLeastOnce).await;
    let (mut p, _) = Raw::connect(n.mqtt, V3, "flood").await;
    let total = 3000u16;
    // Pipeline every PUBLISH at once: without flow control the 100-message queue overflows.
    let mut all = bytes::BytesMut::new();
    for i in 1..=total {
        strait::mqtt::codec::encode(&Packet::Publish(publish("fc/t", QoS::AtLeastOnce, b"x", i)), V3, &mut all);
    }
    let writer = tokio::spawn(async move {
        p.send_bytes(&all).await;
        let mut acked = 0;
        while acked < total {
            match p.recv().await {
                Some(Packet::PubAck(_)) => acked += 1,
                Some(_) => {}
                None => panic!("publisher closed"),
            }
        }
    });
    for _ in 0..total {
        let m = s.publish_in().await;
        s.ack(&m).await;
    }
    writer.await.expect("publisher got every PUBACK");
    let dropped = n.node.broker.metrics.messages_dropped.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(dropped, 0, "flow control slows the publisher instead of dropping");
    n.stop().await;
}
