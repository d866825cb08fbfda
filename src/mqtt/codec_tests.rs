use bytes::{Bytes, BytesMut};
use rand::{Rng, SeedableRng};

use super::*;

fn enc(p: &Packet, proto: Protocol) -> BytesMut {
    let mut out = BytesMut::new();
    encode(p, proto, &mut out);
    assert_eq!(out.len(), encoded_len(p, proto), "encoded_len disagrees with encode for {p:?}");
    out
}

fn dec(bytes: &[u8], proto: Option<Protocol>) -> R<Option<Packet>> {
    let mut b = BytesMut::from(bytes);
    decode(&mut b, proto, 1 << 20)
}

fn full_props() -> Properties {
    Properties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        content_type: Some("text/plain".into()),
        response_topic: Some("resp/1".into()),
        correlation_data: Some(Bytes::from_static(b"corr")),
        user_properties: vec![("k".into(), "v".into()), ("k".into(), "v2".into())],
        ..Properties::default()
    }
}

fn all_packets(v5: bool) -> Vec<Packet> {
    let p = |x: Properties| if v5 { x } else { Properties::default() };
    let code = |c: u8| if v5 { c } else { 0 };
    let protocol = if v5 { Protocol::V5 } else { Protocol::V311 };
    vec![
        Packet::Connect(Box::new(Connect {
            protocol,
            clean_start: true,
            keep_alive: 30,
            client_id: "c1".into(),
            will: Some(Will {
                topic: "w/t".into(),
                payload: Bytes::from_static(b"bye"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: p(Properties { will_delay_interval: Some(5), ..full_props() }),
            }),
            username: Some("u".into()),
            password: Some(Bytes::from_static(b"pw")),
            properties: p(Properties {
                session_expiry_interval: Some(10),
                receive_maximum: Some(5),
                maximum_packet_size: Some(1000),
                topic_alias_maximum: Some(4),
                request_problem_information: Some(0),
                user_properties: vec![("a".into(), "b".into())],
                ..Properties::default()
            }),
        })),
        Packet::ConnAck(ConnAck {
            session_present: true,
            code: 0,
            properties: p(Properties {
                assigned_client_identifier: Some("x".into()),
                receive_maximum: Some(32),
                maximum_qos: Some(1),
                server_keep_alive: Some(20),
                ..Properties::default()
            }),
        }),
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: "a/b".into(),
            packet_id: 7,
            payload: Bytes::from_static(b"hello"),
            properties: p(Properties { subscription_identifiers: vec![1, 300], topic_alias: Some(2), ..full_props() }),
        }),
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "a".into(),
            packet_id: 0,
            payload: Bytes::new(),
            properties: Properties::default(),
        }),
        Packet::PubAck(PubResp { packet_id: 1, code: code(0x10), properties: Properties::default() }),
        Packet::PubRec(PubResp {
            packet_id: 2,
            code: code(0x87),
            properties: p(Properties { reason_string: Some("no".into()), ..Properties::default() }),
        }),
        Packet::PubRel(PubResp::new(3, 0)),
        Packet::PubComp(PubResp::new(4, 0)),
        Packet::Subscribe(Subscribe {
            packet_id: 9,
            filters: vec![
                SubscribeFilter {
                    filter: "a/+".into(),
                    options: SubOptions {
                        qos: QoS::ExactlyOnce,
                        no_local: v5,
                        retain_as_published: v5,
                        retain_handling: if v5 { 2 } else { 0 },
                    },
                },
                SubscribeFilter { filter: "#".into(), options: SubOptions::default() },
            ],
            properties: p(Properties { subscription_identifiers: vec![42], ..Properties::default() }),
        }),
        Packet::SubAck(SubAck { packet_id: 9, codes: vec![2, 0, 0x80], properties: Properties::default() }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 10,
            filters: vec!["a/+".into(), "b".into()],
            properties: Properties::default(),
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 10,
            codes: if v5 { vec![0, 0x11] } else { vec![] },
            properties: Properties::default(),
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(Disconnect {
            code: code(0x04),
            properties: p(Properties { session_expiry_interval: Some(0), ..Properties::default() }),
        }),
    ]
}

#[test]
fn round_trip_every_packet_both_versions() {
    for v5 in [false, true] {
        let proto = if v5 { Protocol::V5 } else { Protocol::V311 };
        for p in all_packets(v5) {
            let bytes = enc(&p, proto);
            let first = matches!(p, Packet::Connect(_)).then_some(()).map_or(Some(proto), |_| None);
            let got = dec(&bytes, first).unwrap_or_else(|e| panic!("{p:?} ({proto:?}): {e}"));
            assert_eq!(got, Some(p.clone()), "round trip for {proto:?}");
        }
    }
    let auth = Packet::Auth(Auth { code: 0x18, properties: Properties::default() });
    assert_eq!(dec(&enc(&auth, Protocol::V5), Some(Protocol::V5)), Ok(Some(auth.clone())));
    assert!(enc(&auth, Protocol::V311).is_empty(), "AUTH is never sent to 3.1.1");
}

#[test]
fn golden_vectors() {
    // MQTT 3.1.1 CONNECT, client id "ab", clean session, keep alive 60.
    let connect = [0x10, 0x0e, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 2, b'a', b'b'];
    match dec(&connect, None) {
        Ok(Some(Packet::Connect(c))) => {
            assert_eq!(
                (c.protocol, c.clean_start, c.keep_alive, c.client_id.as_str()),
                (Protocol::V311, true, 60, "ab")
            );
        }
        other => panic!("{other:?}"),
    }
    // 3.1 CONNECT ("MQIsdp", level 3).
    let v31 = [0x10, 0x10, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 10, 0, 2, b'a', b'b'];
    assert!(matches!(dec(&v31, None), Ok(Some(Packet::Connect(c))) if c.protocol == Protocol::V31));
    // PUBLISH QoS 1 "a/b" id 10 payload "x".
    let publish = [0x32, 0x08, 0, 3, b'a', b'/', b'b', 0, 10, b'x'];
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "a/b".into(),
        packet_id: 10,
        payload: Bytes::from_static(b"x"),
        properties: Properties::default(),
    });
    assert_eq!(dec(&publish, Some(Protocol::V311)), Ok(Some(p.clone())));
    assert_eq!(&enc(&p, Protocol::V311)[..], &publish[..]);
    // 5.0 CONNECT with session expiry 120 and receive maximum 10.
    let v5 = [0x10, 0x16, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 8, 0x11, 0, 0, 0, 120, 0x21, 0, 10, 0, 1, b'c'];
    match dec(&v5, None) {
        Ok(Some(Packet::Connect(c))) => {
            assert_eq!(c.properties.session_expiry_interval, Some(120));
            assert_eq!(c.properties.receive_maximum, Some(10));
        }
        other => panic!("{other:?}"),
    }
    // 3.1.1 CONNACK for "bad user name or password" is return code 4.
    let ack = Packet::ConnAck(ConnAck { session_present: false, code: 0x86, properties: Properties::default() });
    assert_eq!(&enc(&ack, Protocol::V311)[..], &[0x20, 2, 0, 4]);
}

fn connect_v(level: u8) -> Vec<u8> {
    vec![0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', level, 0x02, 0, 60, 0, 0]
}

#[test]
fn strictness() {
    use CodecError as E;
    let v3 = Some(Protocol::V311);
    let v5 = Some(Protocol::V5);
    let cases: Vec<(&str, Vec<u8>, Option<Protocol>, CodecError)> = vec![
        ("first packet not CONNECT", vec![0xc0, 0], None, E::Protocol("first packet is not CONNECT")),
        ("unsupported level", connect_v(6), None, E::UnsupportedProtocol(6)),
        (
            "bad protocol name",
            vec![0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'X', 4, 2, 0, 60, 0, 0],
            None,
            E::BadProtocolName,
        ),
        (
            "reserved connect flag",
            vec![0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 4, 3, 0, 60, 0, 0],
            None,
            E::Malformed("reserved CONNECT flag set"),
        ),
        (
            "will qos without will",
            vec![0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x0a, 0, 60, 0, 0],
            None,
            E::Malformed("will QoS/retain without will flag"),
        ),
        (
            "password without user 3.1.1",
            vec![0x10, 0x0e, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x42, 0, 60, 0, 0, 0, 0],
            None,
            E::Malformed("password without user name"),
        ),
        (
            "trailing bytes",
            vec![0x10, 0x0d, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0, 9],
            None,
            E::Malformed("unexpected bytes after the packet's fields"),
        ),
        (
            "bad utf-8 client id",
            vec![0x10, 0x0d, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, 0xff],
            None,
            E::Malformed("invalid UTF-8 string"),
        ),
        (
            "NUL in client id",
            vec![0x10, 0x0d, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, 0],
            None,
            E::Malformed("U+0000 in a UTF-8 string"),
        ),
        ("reserved flags on PUBACK", vec![0x41, 2, 0, 1], v3, E::Malformed("invalid fixed header flags")),
        (
            "SUBSCRIBE flags must be 0010",
            vec![0x80, 6, 0, 1, 0, 1, b'a', 0],
            v3,
            E::Malformed("invalid fixed header flags"),
        ),
        ("PUBLISH QoS 3", vec![0x36, 5, 0, 1, b'a', 0, 1], v3, E::Malformed("PUBLISH QoS 3")),
        ("DUP on QoS 0", vec![0x38, 3, 0, 1, b'a'], v3, E::Malformed("DUP set on a QoS 0 PUBLISH")),
        ("wildcard topic", vec![0x30, 3, 0, 1, b'#'], v3, E::TopicNameInvalid("wildcard in a topic name")),
        ("empty topic 3.1.1", vec![0x30, 2, 0, 0], v3, E::TopicNameInvalid("empty topic name")),
        ("packet id 0", vec![0x32, 5, 0, 1, b'a', 0, 0], v3, E::Malformed("packet identifier 0")),
        ("empty SUBSCRIBE", vec![0x82, 2, 0, 1], v3, E::Protocol("SUBSCRIBE without topic filters")),
        (
            "v3 sub options reserved bits",
            vec![0x82, 6, 0, 1, 0, 1, b'a', 0x04],
            v3,
            E::Malformed("reserved subscription option bits"),
        ),
        ("v5 retain handling 3", vec![0x82, 7, 0, 1, 0, 0, 1, b'a', 0x30], v5, E::Protocol("retain handling 3")),
        (
            "v5 sub options reserved bits",
            vec![0x82, 7, 0, 1, 0, 0, 1, b'a', 0x40],
            v5,
            E::Malformed("reserved subscription option bits"),
        ),
        ("empty UNSUBSCRIBE", vec![0xa2, 2, 0, 1], v3, E::Protocol("UNSUBSCRIBE without topic filters")),
        ("PINGREQ with body", vec![0xc0, 1, 0], v3, E::Malformed("PINGREQ/PINGRESP with a body")),
        (
            "remaining length 5 bytes",
            vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
            v3,
            E::Malformed("remaining length longer than 4 bytes"),
        ),
        ("unknown property", vec![0x30, 6, 0, 1, b'a', 2, 0x7f, 0], v5, E::Malformed("unknown property")),
        (
            "property not allowed",
            vec![0x30, 8, 0, 1, b'a', 4, 0x21, 0, 1, b'x'],
            v5,
            E::Protocol("property not allowed on this packet"),
        ),
        ("duplicate property", vec![0x30, 8, 0, 1, b'a', 4, 0x01, 0, 0x01, 0], v5, E::Protocol("duplicate property")),
        (
            "payload format 2",
            vec![0x30, 7, 0, 1, b'a', 2, 0x01, 2, b'x'],
            v5,
            E::Protocol("property value must be 0 or 1"),
        ),
        ("topic alias 0", vec![0x30, 8, 0, 1, b'a', 3, 0x23, 0, 0, b'x'], v5, E::Protocol("topic alias 0")),
        (
            "subscription id 0",
            vec![0x82, 9, 0, 1, 2, 0x0b, 0, 0, 1, b'a', 0],
            v5,
            E::Protocol("subscription identifier 0"),
        ),
        ("AUTH in 3.1.1", vec![0xf0, 0], v3, E::Malformed("AUTH in MQTT 3.1.1")),
        ("reserved type 0", vec![0x00, 0], v3, E::Malformed("reserved packet type 0")),
    ];
    for (what, bytes, proto, want) in cases {
        assert_eq!(dec(&bytes, proto), Err(want), "{what}");
    }
    // receive maximum 0 in CONNECT
    let mut c = vec![0x10, 0x10, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 3, 0x21, 0, 0, 0, 0];
    assert_eq!(dec(&c, None), Err(E::Protocol("receive maximum 0")));
    c[15] = 1;
    assert!(matches!(dec(&c, None), Ok(Some(Packet::Connect(_)))));
    // Empty topic with an alias is fine in 5.0 (the connection resolves it).
    assert!(matches!(dec(&[0x30, 6, 0, 0, 3, 0x23, 0, 1], v5), Ok(Some(Packet::Publish(_)))));
}

#[test]
fn too_large_is_reported_from_the_header() {
    let mut b = BytesMut::from(&[0x30u8, 0xff, 0xff, 0x03][..]);
    assert_eq!(decode(&mut b, Some(Protocol::V311), 1024), Err(CodecError::TooLarge { size: 65535 + 4, max: 1024 }));
}

#[test]
fn partial_input_consumes_nothing() {
    for p in all_packets(true) {
        let bytes = enc(&p, Protocol::V5);
        let proto = if matches!(p, Packet::Connect(_)) { None } else { Some(Protocol::V5) };
        let mut b = BytesMut::new();
        for (i, byte) in bytes.iter().enumerate() {
            b.extend_from_slice(&[*byte]);
            let r = decode(&mut b, proto, 1 << 20).unwrap_or_else(|e| panic!("{e} at byte {i}"));
            if i + 1 < bytes.len() {
                assert!(r.is_none(), "decoded early at byte {i} of {p:?}");
                assert_eq!(b.len(), i + 1, "consumed bytes before a whole packet was there");
            } else {
                assert_eq!(r, Some(p.clone()));
                assert!(b.is_empty());
            }
        }
    }
}

#[test]
fn rumqttc_encodes_what_we_decode() {
    use rumqttc::v5::mqttbytes::v5 as r5;
    use rumqttc::v5::mqttbytes::QoS as RQoS;
    let props = r5::PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(30),
        topic_alias: None,
        response_topic: Some("r".into()),
        correlation_data: Some(Bytes::from_static(b"c")),
        user_properties: vec![("k".into(), "v".into())],
        subscription_identifiers: vec![],
        content_type: Some("json".into()),
    };
    let mut p = r5::Publish::new("x/y", RQoS::AtLeastOnce, Bytes::from_static(b"data"), Some(props));
    p.pkid = 5;
    let mut b = BytesMut::new();
    p.write(&mut b).expect("rumqttc encodes");
    match decode(&mut b, Some(Protocol::V5), 1 << 20) {
        Ok(Some(Packet::Publish(ours))) => {
            assert_eq!((ours.topic.as_str(), ours.packet_id), ("x/y", 5));
            assert_eq!(ours.payload, Bytes::from_static(b"data"));
            assert_eq!(ours.properties.content_type.as_deref(), Some("json"));
            assert_eq!(ours.properties.user_properties, vec![("k".to_string(), "v".to_string())]);
            assert_eq!(ours.properties.message_expiry_interval, Some(30));
        }
        other => panic!("{other:?}"),
    }
    let mut b = BytesMut::new();
    let mut p4 = rumqttc::Publish::new("v4/t", rumqttc::QoS::ExactlyOnce, b"p".to_vec());
    p4.pkid = 3;
    p4.write(&mut b).expect("encode");
    assert!(
        matches!(decode(&mut b, Some(Protocol::V311), 1 << 20), Ok(Some(Packet::Publish(p))) if p.topic == "v4/t" && p.qos == QoS::ExactlyOnce)
    );
    let mut b = BytesMut::new();
    rumqttc::Connect::new("rid").write(&mut b).expect("encode");
    assert!(matches!(decode(&mut b, None, 1 << 20), Ok(Some(Packet::Connect(c))) if c.client_id == "rid"));
}

#[test]
fn random_and_mutated_input_never_panics() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let valid: Vec<(BytesMut, bool)> = [false, true]
        .iter()
        .flat_map(|v5| {
            let proto = if *v5 { Protocol::V5 } else { Protocol::V311 };
            all_packets(*v5).into_iter().map(move |p| (enc(&p, proto), *v5))
        })
        .collect();
    for i in 0..200_000u32 {
        let mut bytes: Vec<u8> = if i % 2 == 0 {
            let n = rng.random_range(0..64);
            (0..n).map(|_| rng.random()).collect()
        } else {
            let (b, _) = &valid[rng.random_range(0..valid.len())];
            let mut v = b.to_vec();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..v.len());
                match rng.random_range(0..3) {
                    0 => v[at] ^= 1 << rng.random_range(0..8),
                    1 => v.truncate(at.max(1)),
                    _ => v[at] = rng.random(),
                }
            }
            v
        };
        for proto in [None, Some(Protocol::V311), Some(Protocol::V5)] {
            let mut b = BytesMut::from(&bytes[..]);
            // Drain as many packets as decode; must end in Ok(None) or an error, never a panic.
            while let Ok(Some(_)) = decode(&mut b, proto, 4096) {}
        }
        bytes.clear();
    }
}
