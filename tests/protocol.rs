//! Byte-exact protocol behaviour with a raw client on the broker's codec: CONNACK refusals,
//! protocol errors, limits, reserved topics, keep-alive and connect timeouts.

mod common;

use std::time::Duration;

use common::raw::*;
use common::*;
use strait::mqtt::packet::*;

const V5: Protocol = Protocol::V5;
const V3: Protocol = Protocol::V311;

/// A CONNECT with protocol name "MQTT" and the given level, clean session, keep alive 60, empty id.
fn connect_level(level: u8) -> Vec<u8> {
    vec![0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', level, 0x02, 0, 60, 0, 0]
}

#[tokio::test]
async fn unsupported_protocol_version_gets_v311_connack_rc1() {
    let n = start("").await;
    for level in [2u8, 6, 9, 0xff] {
        let mut r = Raw::open(n.mqtt, V3).await;
        r.send_bytes(&connect_level(level)).await;
        assert_eq!(
            r.bytes_until_close(WAIT).await,
            vec![0x20, 0x02, 0x00, 0x01],
            "protocol level {level}: a 3.1.1-shaped CONNACK with return code 1, then close"
        );
    }
    // Control: levels 4 (3.1.1) and 3 (3.1, "MQIsdp") are accepted.
    let mut r = Raw::open(n.mqtt, V3).await;
    r.send_bytes(&connect_level(4)).await;
    assert!(matches!(r.next(WAIT).await, Got::Packet(Packet::ConnAck(a)) if a.code == 0), "3.1.1 accepted");
    let mut r = Raw::open(n.mqtt, Protocol::V31).await;
    r.send_bytes(&[0x10, 0x11, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 60, 0, 3, b'o', b'l', b'd']).await;
    assert!(matches!(r.next(WAIT).await, Got::Packet(Packet::ConnAck(a)) if a.code == 0), "3.1 accepted");
    n.stop().await;
}

#[tokio::test]
async fn v311_empty_client_id_without_clean_session_gets_rc2() {
    let n = start("").await;
    let mut c = connect_packet(V3, "");
    c.clean_start = false;
    let mut r = Raw::open(n.mqtt, V3).await;
    r.send(&Packet::Connect(Box::new(c))).await;
    assert_eq!(r.bytes_until_close(WAIT).await, vec![0x20, 0x02, 0x00, 0x02], "CONNACK rc 2 (identifier rejected)");
    // Control: with clean session the broker assigns an id.
    let (_ok, ack) = Raw::connect(n.mqtt, V3, "").await;
    assert_eq!(ack.code, 0);
    n.stop().await;
}

#[tokio::test]
async fn second_connect_and_non_connect_first_packet_close_the_connection() {
    let n = start("").await;
    let (mut c5, _) = Raw::connect(n.mqtt, V5, "twice5").await;
    c5.send(&Packet::Connect(Box::new(connect_packet(V5, "twice5")))).await;
    assert_eq!(c5.expect_close(WAIT).await, Some(reason::PROTOCOL_ERROR), "v5: DISCONNECT 0x82");
    let (mut c3, _) = Raw::connect(n.mqtt, V3, "twice3").await;
    c3.send(&Packet::Connect(Box::new(connect_packet(V3, "twice3")))).await;
    assert_eq!(c3.expect_close(WAIT).await, None, "3.1.1: closed");

    for first in [vec![0xc0, 0x00], vec![0x82, 0x06, 0, 1, 0, 1, b'a', 0], vec![0x30, 0x03, 0, 1, b't']] {
        let mut r = Raw::open(n.mqtt, V3).await;
        r.send_bytes(&first).await;
        assert_eq!(r.bytes_until_close(WAIT).await, Vec::<u8>::new(), "first packet {first:02x?}: closed, no reply");
    }
    n.stop().await;
}

#[tokio::test]
async fn maximum_packet_size_exceeded_gets_disconnect_0x95() {
    let n = start("mqtt.max_packet_size = 1024").await;
    let (mut c, ack) = Raw::connect(n.mqtt, V5, "big").await;
    assert_eq!(ack.properties.maximum_packet_size, Some(1024), "advertised in CONNACK");
    // Control: a packet within the limit is fine.
    assert_eq!(c.publish(publish("t", QoS::AtLeastOnce, &[1u8; 900], 1)).await, 0);
    c.send(&Packet::Publish(publish("t", QoS::AtMostOnce, &[7u8; 2000], 0))).await;
    assert_eq!(c.expect_close(WAIT).await, Some(reason::PACKET_TOO_LARGE));
    // Only the header of an oversized packet is enough to refuse it.
    let (mut c, _) = Raw::connect(n.mqtt, V5, "big-header").await;
    c.send_bytes(&[0x30, 0x80, 0x80, 0x04]).await; // PUBLISH, remaining length 65536
    assert_eq!(c.expect_close(WAIT).await, Some(reason::PACKET_TOO_LARGE));
    let (mut c3, _) = Raw::connect(n.mqtt, V3, "big3").await;
    c3.send(&Packet::Publish(publish("t", QoS::AtMostOnce, &[7u8; 2000], 0))).await;
    assert_eq!(c3.expect_close(WAIT).await, None, "3.1.1: closed");
    n.stop().await;
}

#[tokio::test]
async fn invalid_topic_filters_get_suback_failure_codes() {
    let n = start("").await;
    let (mut c5, _) = Raw::connect(n.mqtt, V5, "f5").await;
    let (mut c3, _) = Raw::connect(n.mqtt, V3, "f3").await;
    for bad in ["a/#/b", "a+", "#/x", "a/b#", "$share/g", "$share//t", "$share/g+/t", "$share/g/a/#/b"] {
        assert_eq!(c5.subscribe(bad, QoS::AtLeastOnce).await, vec![reason::TOPIC_FILTER_INVALID], "v5 {bad:?}");
        assert_eq!(c3.subscribe(bad, QoS::AtLeastOnce).await, vec![0x80], "3.1.1 {bad:?}");
    }
    // One SUBSCRIBE, one code per filter.
    let s = Subscribe {
        packet_id: 9,
        filters: vec![
            SubscribeFilter {
                filter: "ok/+".into(),
                options: SubOptions { qos: QoS::AtLeastOnce, ..Default::default() },
            },
            SubscribeFilter { filter: "bad/#/x".into(), options: SubOptions::default() },
            SubscribeFilter {
                filter: "ok/#".into(),
                options: SubOptions { qos: QoS::ExactlyOnce, ..Default::default() },
            },
        ],
        properties: Properties::default(),
    };
    c5.send(&Packet::Subscribe(s)).await;
    let codes = c5
        .expect("SUBACK", |p| match p {
            Packet::SubAck(a) if a.packet_id == 9 => Some(a.codes),
            _ => None,
        })
        .await;
    assert_eq!(codes, vec![1, reason::TOPIC_FILTER_INVALID, 2]);
    // The connection is still usable after refused filters.
    c5.send(&Packet::PingReq).await;
    c5.expect("PINGRESP", |p| (p == Packet::PingResp).then_some(())).await;
    n.stop().await;
}

#[tokio::test]
async fn reserved_link_topics_are_denied() {
    let n = start("").await;
    let (mut c5, _) = Raw::connect(n.mqtt, V5, "l5").await;
    for f in ["$LINK/x", "$LINK/#", "$share/g/$LINK/x"] {
        assert_eq!(c5.subscribe(f, QoS::AtMostOnce).await, vec![reason::NOT_AUTHORIZED], "v5 SUBSCRIBE {f}");
    }
    assert_eq!(c5.publish(publish("$LINK/x", QoS::AtLeastOnce, b"no", 1)).await, reason::NOT_AUTHORIZED, "PUBACK");
    assert_eq!(c5.publish(publish("$LINK/x", QoS::ExactlyOnce, b"no", 2)).await, reason::NOT_AUTHORIZED, "PUBREC");
    let (mut c3, _) = Raw::connect(n.mqtt, V3, "l3").await;
    assert_eq!(c3.subscribe("$LINK/x", QoS::AtMostOnce).await, vec![0x80], "3.1.1 SUBSCRIBE");
    // 3.1.1 has no PUBACK reason: acknowledged, but not routed or retained.
    let mut m = publish("$LINK/x", QoS::AtLeastOnce, b"no", 3);
    m.retain = true;
    assert_eq!(c3.publish(m).await, 0);
    assert!(n.node.broker.retained_matching("$LINK/x").is_empty(), "denied publish not retained");
    // Control: an ordinary $-topic may be used.
    assert_eq!(c5.subscribe("$app/x", QoS::AtMostOnce).await, vec![0]);
    n.stop().await;
}

#[tokio::test]
async fn silent_client_is_dropped_after_one_and_a_half_keep_alives() {
    let n = start("").await;
    let mut c = connect_packet(V5, "sleepy5");
    c.keep_alive = 1;
    let t0 = tokio::time::Instant::now();
    let (mut s5, _) = Raw::connect_with(n.mqtt, c).await;
    let mut c = connect_packet(V3, "sleepy3");
    c.keep_alive = 1;
    let (mut s3, _) = Raw::connect_with(n.mqtt, c).await;
    // Control: a client that pings keeps its connection past 1.5 s.
    let mut c = connect_packet(V5, "awake");
    c.keep_alive = 1;
    let (mut awake, _) = Raw::connect_with(n.mqtt, c).await;
    let pinger = tokio::spawn(async move {
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            awake.send(&Packet::PingReq).await;
            awake.expect("PINGRESP", |p| (p == Packet::PingResp).then_some(())).await;
        }
        awake
    });
    assert_eq!(s5.expect_close(WAIT).await, Some(reason::KEEP_ALIVE_TIMEOUT), "v5 DISCONNECT 0x8D");
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(1400) && took < Duration::from_millis(2500), "dropped after {took:?}");
    assert_eq!(s3.expect_close(WAIT).await, None, "3.1.1 closed");
    let mut awake = within(WAIT, "pinger", pinger).await.expect("pinging client kept alive");
    assert_eq!(awake.next(Duration::from_millis(50)).await, Got::Nothing, "pinging client still connected");
    n.stop().await;
}

#[tokio::test]
async fn tcp_client_without_connect_is_dropped_after_connect_timeout() {
    let n = start("mqtt.connect_timeout = 1s").await;
    let t0 = tokio::time::Instant::now();
    let mut mute = Raw::open(n.mqtt, V3).await;
    let mut partial = Raw::open(n.mqtt, V3).await;
    partial.send_bytes(&[0x10, 0x0c, 0, 4, b'M']).await; // a CONNECT that never completes
    assert_eq!(mute.bytes_until_close(Duration::from_secs(4)).await, Vec::<u8>::new());
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_millis(2500), "dropped after {took:?}");
    assert_eq!(partial.bytes_until_close(Duration::from_secs(2)).await, Vec::<u8>::new());
    n.stop().await;
}

#[tokio::test]
async fn max_connections_refuses_the_third_and_frees_slots() {
    let n = start("listeners.tcp.default.max_connections = 2").await;
    let (a, _) = Raw::connect(n.mqtt, V3, "a").await;
    let (_b, _) = Raw::connect(n.mqtt, V3, "b").await;
    let mut third = Raw::open(n.mqtt, V3).await;
    third.send(&Packet::Connect(Box::new(connect_packet(V3, "c")))).await;
    assert_eq!(third.next(WAIT).await, Got::Closed, "third connection closed without CONNACK");
    // Closing one frees its slot.
    a.disconnect().await;
    let m = &n.node.broker.metrics;
    wait_for(|| m.connections.load(std::sync::atomic::Ordering::Relaxed) == 1, WAIT, "one connection left").await;
    let (_c, ack) = Raw::connect(n.mqtt, V3, "c").await;
    assert_eq!(ack.code, 0, "a slot was freed");
    n.stop().await;
}

#[tokio::test]
async fn qos2_duplicate_delivered_once_and_unknown_pubrel() {
    let n = start("").await;
    let (mut s, _) = Raw::connect(n.mqtt, V5, "sub").await;
    s.subscribe("x/#", QoS::ExactlyOnce).await;
    let (mut p, _) = Raw::connect(n.mqtt, V5, "pub").await;
    let m = publish("x/1", QoS::ExactlyOnce, b"once", 5);
    p.send(&Packet::Publish(m.clone())).await;
    let mut dup = m;
    dup.dup = true;
    p.send(&Packet::Publish(dup)).await;
    for _ in 0..2 {
        let code = p.expect("PUBREC", |x| if let Packet::PubRec(r) = x { Some(r.code) } else { None }).await;
        assert_eq!(code, 0);
    }
    p.send(&Packet::PubRel(PubResp::new(5, 0))).await;
    let code = p.expect("PUBCOMP", |x| if let Packet::PubComp(r) = x { Some(r.code) } else { None }).await;
    assert_eq!(code, 0);
    p.send(&Packet::PubRel(PubResp::new(5, 0))).await;
    let code = p.expect("PUBCOMP", |x| if let Packet::PubComp(r) = x { Some(r.code) } else { None }).await;
    assert_eq!(code, reason::PACKET_IDENTIFIER_NOT_FOUND, "PUBREL for an unknown id");
    let got = s.publish_in().await;
    assert_eq!(&got.payload[..], b"once");
    s.ack(&got).await;
    s.no_publish(QUIET, "the duplicate QoS 2 PUBLISH is not delivered twice").await;
    // UNSUBSCRIBE reason codes.
    let u =
        Unsubscribe { packet_id: 3, filters: vec!["x/#".into(), "never".into()], properties: Properties::default() };
    s.send(&Packet::Unsubscribe(u)).await;
    let codes = s.expect("UNSUBACK", |x| if let Packet::UnsubAck(a) = x { Some(a.codes) } else { None }).await;
    assert_eq!(codes, vec![reason::SUCCESS, reason::NO_SUBSCRIPTION_EXISTED]);
    n.stop().await;
}
