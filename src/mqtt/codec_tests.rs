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

/// A fixed header for `b0` with the remaining length of `body`, then `body`.
fn pkt(b0: u8, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.extend_from_slice(&[b0]);
    put_varint(&mut out, body.len());
    out.extend_from_slice(body);
    out.to_vec()
}

/// A 5.0 CONNECT body: connect flags, property bytes (block without its length), then the rest
/// of the payload after the client id "c".
fn connect5(flags: u8, props: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 4, b'M', b'Q', b'T', b'T', 5, flags, 0, 60, props.len() as u8];
    b.extend_from_slice(props);
    b.extend_from_slice(&[0, 1, b'c']);
    b.extend_from_slice(rest);
    pkt(0x10, &b)
}

/// A 5.0 PUBLISH QoS 0 to "a" with the given property bytes and payload "x".
fn publish5(props: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 1, b'a', props.len() as u8];
    b.extend_from_slice(props);
    b.push(b'x');
    pkt(0x30, &b)
}

fn msg_props() -> Properties {
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

fn reason_props() -> Properties {
    Properties {
        reason_string: Some("why".into()),
        user_properties: vec![("a".into(), "b".into()), ("a".into(), "c".into())],
        ..Properties::default()
    }
}

/// Every packet type, with every property its type allows populated for 5.0.
fn all_packets(v5: bool) -> Vec<Packet> {
    let p = |x: Properties| if v5 { x } else { Properties::default() };
    let code = |c: u8| if v5 { c } else { 0 };
    let protocol = if v5 { Protocol::V5 } else { Protocol::V311 };
    let mut v = vec![
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
                properties: p(Properties { will_delay_interval: Some(5), ..msg_props() }),
            }),
            username: Some("u".into()),
            password: Some(Bytes::from_static(b"pw")),
            properties: p(Properties {
                session_expiry_interval: Some(10),
                receive_maximum: Some(5),
                maximum_packet_size: Some(1000),
                topic_alias_maximum: Some(4),
                request_problem_information: Some(0),
                request_response_information: Some(1),
                authentication_method: Some("SCRAM".into()),
                authentication_data: Some(Bytes::from_static(b"\x00\x01")),
                user_properties: vec![("a".into(), "b".into())],
                ..Properties::default()
            }),
        })),
        Packet::Connect(Box::new(Connect {
            protocol,
            clean_start: false,
            keep_alive: 0,
            client_id: String::new(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        })),
        Packet::ConnAck(ConnAck {
            session_present: true,
            code: 0,
            properties: p(Properties {
                session_expiry_interval: Some(3600),
                assigned_client_identifier: Some("x".into()),
                server_keep_alive: Some(20),
                authentication_method: Some("SCRAM".into()),
                authentication_data: Some(Bytes::from_static(b"srv")),
                response_information: Some("ri".into()),
                server_reference: Some("other:1883".into()),
                receive_maximum: Some(32),
                topic_alias_maximum: Some(10),
                maximum_qos: Some(1),
                retain_available: Some(1),
                maximum_packet_size: Some(65536),
                wildcard_subscription_available: Some(1),
                subscription_identifier_available: Some(0),
                shared_subscription_available: Some(1),
                ..reason_props()
            }),
        }),
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: reason::BAD_USER_NAME_OR_PASSWORD,
            properties: Properties::default(),
        }),
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: "a/b".into(),
            packet_id: 7,
            payload: Bytes::from_static(b"hello"),
            properties: p(Properties {
                subscription_identifiers: vec![1, 300, 268_435_455],
                topic_alias: Some(2),
                ..msg_props()
            }),
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
        Packet::PubAck(PubResp::new(u16::MAX, 0)),
        Packet::PubRec(PubResp { packet_id: 2, code: code(0x87), properties: p(reason_props()) }),
        Packet::PubRel(PubResp { packet_id: 3, code: code(0x92), properties: p(reason_props()) }),
        Packet::PubComp(PubResp { packet_id: 4, code: 0, properties: p(reason_props()) }),
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
            properties: p(Properties {
                subscription_identifiers: vec![42],
                user_properties: vec![("s".into(), "1".into())],
                ..Properties::default()
            }),
        }),
        Packet::SubAck(SubAck { packet_id: 9, codes: vec![2, 0, 1, 0x80], properties: p(reason_props()) }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 10,
            filters: vec!["a/+".into(), "b".into()],
            properties: p(Properties { user_properties: vec![("u".into(), "1".into())], ..Properties::default() }),
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 10,
            codes: if v5 { vec![0, 0x11] } else { vec![] },
            properties: p(reason_props()),
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(Disconnect {
            code: code(0x04),
            properties: p(Properties {
                session_expiry_interval: Some(0),
                server_reference: Some("s2".into()),
                ..reason_props()
            }),
        }),
        Packet::Disconnect(Disconnect::new(0)),
    ];
    if v5 {
        v.push(Packet::Auth(Auth {
            code: 0x18,
            properties: Properties {
                authentication_method: Some("SCRAM".into()),
                authentication_data: Some(Bytes::from_static(b"d")),
                ..reason_props()
            },
        }));
        v.push(Packet::Auth(Auth { code: 0, properties: Properties::default() }));
        v.push(Packet::Auth(Auth { code: 0x19, properties: Properties::default() }));
        v.push(Packet::Disconnect(Disconnect::new(0x8E)));
    } else {
        v.push(Packet::Connect(Box::new(Connect {
            protocol: Protocol::V31,
            clean_start: true,
            keep_alive: 5,
            client_id: "old".into(),
            will: None,
            username: Some("u".into()),
            password: None,
            properties: Properties::default(),
        })));
    }
    v
}

fn decode_all(bytes: &[u8], proto: Protocol) -> Vec<Packet> {
    let mut b = BytesMut::from(bytes);
    let mut out = Vec::new();
    loop {
        let first = if out.is_empty() && b.first().is_some_and(|b0| b0 >> 4 == 1) { None } else { Some(proto) };
        match decode(&mut b, first, 1 << 20) {
            Ok(Some(p)) => out.push(p),
            Ok(None) => break,
            Err(e) => panic!("{e} after {out:?}"),
        }
    }
    assert!(b.is_empty());
    out
}

#[test]
fn round_trip_every_packet_both_versions() {
    for v5 in [false, true] {
        let proto = if v5 { Protocol::V5 } else { Protocol::V311 };
        for p in all_packets(v5) {
            let bytes = enc(&p, proto);
            let first = if matches!(p, Packet::Connect(_)) { None } else { Some(proto) };
            let got = dec(&bytes, first).unwrap_or_else(|e| panic!("{p:?} ({proto:?}): {e}"));
            assert_eq!(got, Some(p.clone()), "round trip for {proto:?}");
        }
        // Back to back in one buffer: each decode takes exactly one packet.
        let mut all = BytesMut::new();
        let list: Vec<Packet> = all_packets(v5).into_iter().filter(|p| !matches!(p, Packet::Connect(_))).collect();
        for p in &list {
            encode(p, proto, &mut all);
        }
        assert_eq!(decode_all(&all, proto), list);
    }
}

#[test]
fn v311_encoding_drops_v5_only_fields() {
    let v3 = Some(Protocol::V311);
    // AUTH is never sent to 3.1.1.
    let auth = Packet::Auth(Auth { code: 0x18, properties: Properties::default() });
    assert!(enc(&auth, Protocol::V311).is_empty());
    assert_eq!(encoded_len(&auth, Protocol::V311), 0);
    // Properties and reason codes are not written; failures in SUBACK become 0x80.
    let pubrec = Packet::PubRec(PubResp { packet_id: 5, code: 0x87, properties: reason_props() });
    assert_eq!(&enc(&pubrec, Protocol::V311)[..], &[0x50, 2, 0, 5]);
    let suback = Packet::SubAck(SubAck { packet_id: 1, codes: vec![1, 0x87, 0x8F], properties: reason_props() });
    assert_eq!(&enc(&suback, Protocol::V311)[..], &[0x90, 5, 0, 1, 1, 0x80, 0x80]);
    let unsuback = Packet::UnsubAck(UnsubAck { packet_id: 3, codes: vec![0, 0x11], properties: reason_props() });
    assert_eq!(&enc(&unsuback, Protocol::V311)[..], &[0xb0, 2, 0, 3]);
    let disconnect = Packet::Disconnect(Disconnect { code: 0x8E, properties: reason_props() });
    assert_eq!(&enc(&disconnect, Protocol::V311)[..], &[0xe0, 0]);
    // CONNACK reason codes map to 3.1.1 return codes and back.
    for (code, rc) in [(0u8, 0u8), (0x84, 1), (0x85, 2), (0x88, 3), (0x89, 3), (0x86, 4), (0x87, 5), (0x80, 5)] {
        let ack = Packet::ConnAck(ConnAck { session_present: false, code, properties: reason_props() });
        let bytes = enc(&ack, Protocol::V311);
        assert_eq!(&bytes[..], &[0x20, 2, 0, rc], "code {code:#x}");
        let back = match dec(&bytes, v3) {
            Ok(Some(Packet::ConnAck(a))) => a.code,
            other => panic!("{other:?}"),
        };
        assert_eq!(reason::v3_connack_code(back), rc);
    }
    // DUP is never written on QoS 0.
    let p = Packet::Publish(Publish {
        dup: true,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".into(),
        packet_id: 0,
        payload: Bytes::new(),
        properties: Properties::default(),
    });
    assert_eq!(&enc(&p, Protocol::V311)[..], &[0x30, 3, 0, 1, b't']);
    // CONNECT is encoded for its own protocol whatever the connection's.
    let c = Packet::Connect(Box::new(Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 1,
        client_id: "x".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties { session_expiry_interval: Some(9), ..Properties::default() },
    }));
    assert_eq!(dec(&enc(&c, Protocol::V311), None), Ok(Some(c)));
}

#[test]
fn golden_vectors() {
    // MQTT 3.1.1 CONNECT, client id "ab", clean session, keep alive 60.
    let connect = [0x10, 0x0e, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 2, b'a', b'b'];
    let want = Packet::Connect(Box::new(Connect {
        protocol: Protocol::V311,
        clean_start: true,
        keep_alive: 60,
        client_id: "ab".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }));
    assert_eq!(dec(&connect, None), Ok(Some(want.clone())));
    assert_eq!(&enc(&want, Protocol::V311)[..], &connect[..]);
    // 3.1.1 CONNECT with will (QoS 1, retain), user name and password.
    let full = [
        0x10, 0x1e, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xee, 0, 10, 0, 1, b'c', 0, 3, b'w', b'/', b't', 0, 3, b'b', b'y',
        b'e', 0, 1, b'u', 0, 2, b'p', b'w',
    ];
    match dec(&full, None) {
        Ok(Some(Packet::Connect(c))) => {
            let w = c.will.as_ref().expect("will");
            assert_eq!(
                (w.topic.as_str(), &w.payload[..], w.qos, w.retain),
                ("w/t", &b"bye"[..], QoS::AtLeastOnce, true)
            );
            assert_eq!((c.username.as_deref(), c.password.as_deref()), (Some("u"), Some(&b"pw"[..])));
            assert_eq!(&enc(&Packet::Connect(c), Protocol::V311)[..], &full[..]);
        }
        other => panic!("{other:?}"),
    }
    // 3.1 CONNECT ("MQIsdp", level 3).
    let v31 = [0x10, 0x10, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 10, 0, 2, b'a', b'b'];
    match dec(&v31, None) {
        Ok(Some(p @ Packet::Connect(_))) => assert_eq!(&enc(&p, Protocol::V31)[..], &v31[..]),
        other => panic!("{other:?}"),
    }
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
    // 5.0: the same PUBLISH carries an empty property block.
    assert_eq!(&enc(&p, Protocol::V5)[..], &[0x32, 0x09, 0, 3, b'a', b'/', b'b', 0, 10, 0, b'x']);
    // 3.1.1 SUBSCRIBE id 10: "a/b" QoS 1, "c/d" QoS 2 (spec example, 3.8.3).
    let subscribe = [0x82, 0x0e, 0, 10, 0, 3, b'a', b'/', b'b', 1, 0, 3, b'c', b'/', b'd', 2];
    let s = Packet::Subscribe(Subscribe {
        packet_id: 10,
        filters: vec![
            SubscribeFilter {
                filter: "a/b".into(),
                options: SubOptions { qos: QoS::AtLeastOnce, ..SubOptions::default() },
            },
            SubscribeFilter {
                filter: "c/d".into(),
                options: SubOptions { qos: QoS::ExactlyOnce, ..SubOptions::default() },
            },
        ],
        properties: Properties::default(),
    });
    assert_eq!(dec(&subscribe, Some(Protocol::V311)), Ok(Some(s.clone())));
    assert_eq!(&enc(&s, Protocol::V311)[..], &subscribe[..]);
    // SUBACK for it: granted 1 and failure.
    let suback = Packet::SubAck(SubAck { packet_id: 10, codes: vec![1, 0x80], properties: Properties::default() });
    assert_eq!(&enc(&suback, Protocol::V311)[..], &[0x90, 4, 0, 10, 1, 0x80]);
    // 5.0 CONNECT with session expiry 120 and receive maximum 10.
    let v5 = [0x10, 0x16, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 8, 0x11, 0, 0, 0, 120, 0x21, 0, 10, 0, 1, b'c'];
    let want = Packet::Connect(Box::new(Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 60,
        client_id: "c".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties {
            session_expiry_interval: Some(120),
            receive_maximum: Some(10),
            ..Properties::default()
        },
    }));
    assert_eq!(dec(&v5, None), Ok(Some(want.clone())));
    assert_eq!(&enc(&want, Protocol::V5)[..], &v5[..]);
    // 3.1.1 CONNACK for "bad user name or password" is return code 4.
    let ack = Packet::ConnAck(ConnAck { session_present: false, code: 0x86, properties: Properties::default() });
    assert_eq!(&enc(&ack, Protocol::V311)[..], &[0x20, 2, 0, 4]);
    // Short forms: 5.0 PUBACK success without properties, DISCONNECT normal, PINGs.
    assert_eq!(&enc(&Packet::PubAck(PubResp::new(1, 0)), Protocol::V5)[..], &[0x40, 2, 0, 1]);
    assert_eq!(&enc(&Packet::PubAck(PubResp::new(1, 0x10)), Protocol::V5)[..], &[0x40, 3, 0, 1, 0x10]);
    assert_eq!(&enc(&Packet::Disconnect(Disconnect::new(0)), Protocol::V5)[..], &[0xe0, 0]);
    assert_eq!(&enc(&Packet::PingReq, Protocol::V5)[..], &[0xc0, 0]);
    assert_eq!(&enc(&Packet::PingResp, Protocol::V311)[..], &[0xd0, 0]);
}

#[test]
fn short_forms_decode() {
    let v5 = Some(Protocol::V5);
    // PUBACK etc.: 2 = success without properties, 3 = reason code only, 4 = empty property block.
    assert_eq!(dec(&[0x40, 2, 0, 7], v5), Ok(Some(Packet::PubAck(PubResp::new(7, 0)))));
    assert_eq!(dec(&[0x50, 3, 0, 7, 0x10], v5), Ok(Some(Packet::PubRec(PubResp::new(7, 0x10)))));
    assert_eq!(dec(&[0x62, 4, 0, 7, 0x92, 0], v5), Ok(Some(Packet::PubRel(PubResp::new(7, 0x92)))));
    assert_eq!(dec(&[0x70, 2, 0, 7], Some(Protocol::V311)), Ok(Some(Packet::PubComp(PubResp::new(7, 0)))));
    // DISCONNECT / AUTH: empty = success.
    assert_eq!(dec(&[0xe0, 0], v5), Ok(Some(Packet::Disconnect(Disconnect::new(0)))));
    assert_eq!(dec(&[0xe0, 1, 0x04], v5), Ok(Some(Packet::Disconnect(Disconnect::new(0x04)))));
    assert_eq!(dec(&[0xe0, 0], Some(Protocol::V311)), Ok(Some(Packet::Disconnect(Disconnect::new(0)))));
    assert_eq!(dec(&[0xf0, 0], v5), Ok(Some(Packet::Auth(Auth { code: 0, properties: Properties::default() }))));
    assert_eq!(
        dec(&[0xf0, 1, 0x18], v5),
        Ok(Some(Packet::Auth(Auth { code: 0x18, properties: Properties::default() })))
    );
    // The maximum remaining length is accepted (and the header alone does not allocate it all).
    let mut b = BytesMut::from(&[0x30u8, 0xff, 0xff, 0xff, 0x7f][..]);
    assert_eq!(decode(&mut b, v5, usize::MAX), Ok(None));
    assert_eq!(b.len(), 5);
    assert!(b.capacity() < 1 << 20);
    // Non-minimal remaining length is fine.
    assert_eq!(dec(&[0xc0, 0x80, 0x00], v5), Ok(Some(Packet::PingReq)));
    // 5.0: password without user name is allowed; repeated user properties are kept in order.
    match dec(&connect5(0x42, &[0x26, 0, 1, b'k', 0, 1, b'1', 0x26, 0, 1, b'k', 0, 1, b'2'], &[0, 1, b'p']), None) {
        Ok(Some(Packet::Connect(c))) => {
            assert_eq!((c.username, c.password), (None, Some(Bytes::from_static(b"p"))));
            assert_eq!(c.properties.user_properties, vec![("k".into(), "1".into()), ("k".into(), "2".into())]);
        }
        other => panic!("{other:?}"),
    }
    // Empty topic with an alias is fine in 5.0 (the connection resolves it).
    match dec(&[0x30, 6, 0, 0, 3, 0x23, 0, 1], v5) {
        Ok(Some(Packet::Publish(p))) => assert_eq!((p.topic.as_str(), p.properties.topic_alias), ("", Some(1))),
        other => panic!("{other:?}"),
    }
    // Invalid filter *syntax* passes the codec (answered per filter in SUBACK by the broker).
    match dec(&[0x82, 8, 0, 1, 0, 3, b'a', b'#', b'b', 1], Some(Protocol::V311)) {
        Ok(Some(Packet::Subscribe(s))) => assert_eq!(s.filters[0].filter, "a#b"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn payload_is_a_slice_of_the_input() {
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "t".into(),
        packet_id: 1,
        payload: Bytes::from(vec![7u8; 1000]),
        properties: Properties::default(),
    });
    let mut b = enc(&p, Protocol::V5);
    let start = b.as_ptr() as usize;
    let end = start + b.len();
    match decode(&mut b, Some(Protocol::V5), 1 << 20) {
        Ok(Some(Packet::Publish(got))) => {
            let at = got.payload.as_ptr() as usize;
            assert!(at >= start && at + got.payload.len() <= end, "payload was copied");
        }
        other => panic!("{other:?}"),
    }
}

fn connect_v(level: u8) -> Vec<u8> {
    vec![0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', level, 0x02, 0, 60, 0, 0]
}

#[test]
fn strictness() {
    use CodecError as E;
    let v3 = Some(Protocol::V311);
    let v5 = Some(Protocol::V5);
    let bad_flags = E::Malformed("invalid fixed header flags");
    let truncated = E::Malformed("packet truncated");
    let trailing = E::Malformed("unexpected bytes after the packet's fields");
    let not_allowed = E::Protocol("property not allowed on this packet");
    let dup = E::Protocol("duplicate property");
    let zero_one = E::Protocol("property value must be 0 or 1");
    let pid0 = E::Malformed("packet identifier 0");
    let cases: Vec<(&str, Vec<u8>, Option<Protocol>, CodecError)> = vec![
        // ---- fixed header
        ("first packet not CONNECT", vec![0xc0, 0], None, E::Protocol("first packet is not CONNECT")),
        ("first packet not CONNECT, header only", vec![0x30], None, E::Protocol("first packet is not CONNECT")),
        ("reserved type 0", vec![0x00, 0], v3, E::Malformed("reserved packet type 0")),
        ("CONNECT flags", pkt(0x11, &connect_v(4)[2..]), None, bad_flags.clone()),
        ("CONNACK flags", vec![0x28, 2, 0, 0], v3, bad_flags.clone()),
        ("PUBACK flags", vec![0x41, 2, 0, 1], v3, bad_flags.clone()),
        ("PUBREC flags", vec![0x52, 2, 0, 1], v5, bad_flags.clone()),
        ("PUBREL flags must be 0010", vec![0x60, 2, 0, 1], v3, bad_flags.clone()),
        ("PUBREL flags 0011", vec![0x63, 2, 0, 1], v5, bad_flags.clone()),
        ("PUBCOMP flags", vec![0x78, 2, 0, 1], v3, bad_flags.clone()),
        ("SUBSCRIBE flags must be 0010", vec![0x80, 6, 0, 1, 0, 1, b'a', 0], v3, bad_flags.clone()),
        ("SUBACK flags", vec![0x92, 3, 0, 1, 0], v3, bad_flags.clone()),
        ("UNSUBSCRIBE flags must be 0010", vec![0xa0, 5, 0, 1, 0, 1, b'a'], v3, bad_flags.clone()),
        ("UNSUBACK flags", vec![0xb2, 2, 0, 1], v3, bad_flags.clone()),
        ("PINGREQ flags", vec![0xc1, 0], v3, bad_flags.clone()),
        ("PINGRESP flags", vec![0xd4, 0], v3, bad_flags.clone()),
        ("DISCONNECT flags", vec![0xe2, 0], v5, bad_flags.clone()),
        ("AUTH flags", vec![0xf1, 0], v5, bad_flags.clone()),
        (
            "remaining length 5 bytes",
            vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
            v3,
            E::Malformed("remaining length longer than 4 bytes"),
        ),
        ("remaining length 5 bytes, header only", vec![0x30, 0x80, 0x80, 0x80, 0x80], v3, {
            E::Malformed("remaining length longer than 4 bytes")
        }),
        // ---- CONNECT
        ("unsupported level 6", connect_v(6), None, E::UnsupportedProtocol(6)),
        ("MQTT level 3", connect_v(3), None, E::UnsupportedProtocol(3)),
        (
            "MQIsdp level 4",
            pkt(0x10, &[0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 4, 2, 0, 60, 0, 0]),
            None,
            E::UnsupportedProtocol(4),
        ),
        ("bad protocol name", pkt(0x10, &[0, 4, b'M', b'Q', b'T', b'X', 4, 2, 0, 60, 0, 0]), None, E::BadProtocolName),
        ("lower-case name", pkt(0x10, &[0, 4, b'm', b'q', b't', b't', 4, 2, 0, 60, 0, 0]), None, E::BadProtocolName),
        ("reserved connect flag", pkt(0x10, &[0, 4, b'M', b'Q', b'T', b'T', 4, 3, 0, 60, 0, 0]), None, {
            E::Malformed("reserved CONNECT flag set")
        }),
        (
            "will QoS without will",
            pkt(0x10, &[0, 4, b'M', b'Q', b'T', b'T', 4, 0x0a, 0, 60, 0, 0]),
            None,
            E::Malformed("will QoS/retain without will flag"),
        ),
        (
            "will retain without will",
            pkt(0x10, &[0, 4, b'M', b'Q', b'T', b'T', 4, 0x22, 0, 60, 0, 0]),
            None,
            E::Malformed("will QoS/retain without will flag"),
        ),
        (
            "will QoS 3",
            pkt(0x10, &[0, 4, b'M', b'Q', b'T', b'T', 4, 0x1e, 0, 60, 0, 0, 0, 1, b't', 0, 0]),
            None,
            E::Malformed("will QoS 3"),
        ),
        (
            "password without user 3.1.1",
            pkt(0x10, &[0, 4, b'M', b'Q', b'T', b'T', 4, 0x42, 0, 60, 0, 0, 0, 0]),
            None,
            E::Malformed("password without user name"),
        ),
        ("trailing bytes", pkt(0x10, &[0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0, 9]), None, trailing.clone()),
        (
            "bad utf-8 client id",
            pkt(0x10, &[0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, 0xff]),
            None,
            E::Malformed("invalid UTF-8 string"),
        ),
        (
            "UTF-16 surrogate in client id",
            pkt(0x10, &[0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 3, 0xed, 0xa0, 0x80]),
            None,
            E::Malformed("invalid UTF-8 string"),
        ),
        (
            "NUL in client id",
            pkt(0x10, &[0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, 0]),
            None,
            E::Malformed("U+0000 in a UTF-8 string"),
        ),
        ("truncated client id", pkt(0x10, &[0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 5, b'a']), None, {
            truncated.clone()
        }),
        ("missing user name", pkt(0x10, &[0, 4, b'M', b'Q', b'T', b'T', 4, 0x82, 0, 60, 0, 0]), None, {
            truncated.clone()
        }),
        ("v5 unknown property", connect5(2, &[0x7f, 0], &[]), None, E::Malformed("unknown property")),
        ("v5 unknown property 0x14", connect5(2, &[0x14, 0], &[]), None, E::Malformed("unknown property")),
        ("v5 topic alias in CONNECT", connect5(2, &[0x23, 0, 1], &[]), None, not_allowed.clone()),
        ("v5 CONNACK property in CONNECT", connect5(2, &[0x12, 0, 1, b'x'], &[]), None, not_allowed.clone()),
        ("v5 duplicate session expiry", connect5(2, &[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 1], &[]), None, dup.clone()),
        ("v5 receive maximum 0", connect5(2, &[0x21, 0, 0], &[]), None, E::Protocol("receive maximum 0")),
        ("v5 maximum packet size 0", connect5(2, &[0x27, 0, 0, 0, 0], &[]), None, E::Protocol("maximum packet size 0")),
        ("v5 request problem information 2", connect5(2, &[0x17, 2], &[]), None, zero_one.clone()),
        ("v5 request response information 2", connect5(2, &[0x19, 2], &[]), None, zero_one.clone()),
        (
            "v5 authentication data without method",
            connect5(2, &[0x16, 0, 1, 9], &[]),
            None,
            E::Protocol("authentication data without authentication method"),
        ),
        ("v5 property length beyond packet", connect5(2, &[0x11, 0, 0], &[]), None, truncated.clone()),
        (
            "v5 session expiry in will properties",
            connect5(0x06, &[], &[5, 0x11, 0, 0, 0, 1, 0, 1, b't', 0, 0]),
            None,
            not_allowed.clone(),
        ),
        ("v5 will payload format 2", connect5(0x06, &[], &[2, 0x01, 2, 0, 1, b't', 0, 0]), None, zero_one.clone()),
        // ---- PUBLISH
        ("PUBLISH QoS 3", vec![0x36, 5, 0, 1, b'a', 0, 1], v3, E::Malformed("PUBLISH QoS 3")),
        ("DUP on QoS 0", vec![0x38, 3, 0, 1, b'a'], v3, E::Malformed("DUP set on a QoS 0 PUBLISH")),
        ("DUP on QoS 0 (5.0)", vec![0x38, 4, 0, 1, b'a', 0], v5, E::Malformed("DUP set on a QoS 0 PUBLISH")),
        ("wildcard # in topic", vec![0x30, 3, 0, 1, b'#'], v3, E::TopicNameInvalid("wildcard in a topic name")),
        (
            "wildcard + in topic",
            vec![0x30, 7, 0, 5, b'a', b'/', b'+', b'/', b'b'],
            v5,
            E::TopicNameInvalid("wildcard in a topic name"),
        ),
        ("empty topic 3.1.1", vec![0x30, 2, 0, 0], v3, E::Malformed("empty topic name")),
        ("empty topic 5.0 without alias", vec![0x30, 3, 0, 0, 0], v5, {
            E::Protocol("empty topic name without topic alias")
        }),
        ("bad utf-8 topic", vec![0x30, 3, 0, 1, 0xc3], v3, E::Malformed("invalid UTF-8 string")),
        ("NUL in topic", vec![0x30, 4, 0, 2, b'a', 0], v3, E::Malformed("U+0000 in a UTF-8 string")),
        ("topic longer than packet", vec![0x30, 3, 0, 9, b'a'], v3, truncated.clone()),
        ("packet id 0", vec![0x32, 5, 0, 1, b'a', 0, 0], v3, pid0.clone()),
        ("packet id missing", vec![0x34, 4, 0, 1, b'a', 0], v3, truncated.clone()),
        ("unknown property", publish5(&[0x7f, 0]), v5, E::Malformed("unknown property")),
        ("receive maximum on PUBLISH", publish5(&[0x21, 0, 1]), v5, not_allowed.clone()),
        ("will delay on PUBLISH", publish5(&[0x18, 0, 0, 0, 1]), v5, not_allowed.clone()),
        ("duplicate payload format", publish5(&[0x01, 0, 0x01, 0]), v5, dup.clone()),
        ("duplicate topic alias", publish5(&[0x23, 0, 1, 0x23, 0, 2]), v5, dup.clone()),
        ("payload format 2", publish5(&[0x01, 2]), v5, zero_one.clone()),
        ("topic alias 0", publish5(&[0x23, 0, 0]), v5, E::Protocol("topic alias 0")),
        ("subscription identifier 0 on PUBLISH", publish5(&[0x0b, 0]), v5, E::Protocol("subscription identifier 0")),
        ("bad utf-8 content type", publish5(&[0x03, 0, 1, 0xff]), v5, E::Malformed("invalid UTF-8 string")),
        ("truncated property value", publish5(&[0x02, 0, 0]), v5, truncated.clone()),
        (
            "property id varint too long",
            publish5(&[0x80, 0x80, 0x80, 0x80]),
            v5,
            E::Malformed("variable byte integer longer than 4 bytes"),
        ),
        // ---- PUBACK / PUBREC / PUBREL / PUBCOMP
        ("PUBACK packet id 0", vec![0x40, 2, 0, 0], v3, pid0.clone()),
        ("PUBREL packet id 0", vec![0x62, 2, 0, 0], v5, pid0.clone()),
        ("PUBACK 3.1.1 with reason code", vec![0x40, 3, 0, 1, 0], v3, trailing.clone()),
        ("PUBACK too short", vec![0x40, 1, 0], v3, truncated.clone()),
        ("PUBACK property not allowed", vec![0x40, 6, 0, 1, 0x10, 2, 0x01, 1], v5, not_allowed.clone()),
        ("PUBCOMP duplicate reason string", vec![0x70, 10, 0, 1, 0, 6, 0x1f, 0, 0, 0x1f, 0, 0], v5, dup.clone()),
        ("PUBREC trailing after properties", vec![0x50, 5, 0, 1, 0, 0, 7], v5, trailing.clone()),
        // ---- SUBSCRIBE
        ("empty SUBSCRIBE", vec![0x82, 2, 0, 1], v3, E::Protocol("SUBSCRIBE without topic filters")),
        ("empty SUBSCRIBE 5.0", vec![0x82, 3, 0, 1, 0], v5, E::Protocol("SUBSCRIBE without topic filters")),
        ("SUBSCRIBE packet id 0", vec![0x82, 6, 0, 0, 0, 1, b'a', 0], v3, pid0.clone()),
        ("SUBSCRIBE missing options", vec![0x82, 5, 0, 1, 0, 1, b'a'], v3, truncated.clone()),
        ("SUBSCRIBE filter not UTF-8", vec![0x82, 6, 0, 1, 0, 1, 0xfe, 0], v3, E::Malformed("invalid UTF-8 string")),
        (
            "3.1.1 options reserved bits",
            vec![0x82, 6, 0, 1, 0, 1, b'a', 0x04],
            v3,
            E::Malformed("reserved subscription option bits"),
        ),
        ("3.1.1 options QoS 3", vec![0x82, 6, 0, 1, 0, 1, b'a', 3], v3, E::Malformed("subscription QoS 3")),
        ("5.0 options QoS 3", vec![0x82, 7, 0, 1, 0, 0, 1, b'a', 3], v5, E::Protocol("subscription QoS 3")),
        ("5.0 retain handling 3", vec![0x82, 7, 0, 1, 0, 0, 1, b'a', 0x30], v5, E::Protocol("retain handling 3")),
        (
            "5.0 options reserved bits",
            vec![0x82, 7, 0, 1, 0, 0, 1, b'a', 0x40],
            v5,
            E::Malformed("reserved subscription option bits"),
        ),
        (
            "5.0 options reserved bit 7",
            vec![0x82, 7, 0, 1, 0, 0, 1, b'a', 0x81],
            v5,
            E::Malformed("reserved subscription option bits"),
        ),
        (
            "subscription id 0",
            vec![0x82, 9, 0, 1, 2, 0x0b, 0, 0, 1, b'a', 0],
            v5,
            E::Protocol("subscription identifier 0"),
        ),
        ("two subscription ids", vec![0x82, 11, 0, 1, 4, 0x0b, 1, 0x0b, 2, 0, 1, b'a', 0], v5, dup.clone()),
        ("topic alias on SUBSCRIBE", vec![0x82, 10, 0, 1, 3, 0x23, 0, 1, 0, 1, b'a', 0], v5, not_allowed.clone()),
        // ---- UNSUBSCRIBE
        ("empty UNSUBSCRIBE", vec![0xa2, 2, 0, 1], v3, E::Protocol("UNSUBSCRIBE without topic filters")),
        ("empty UNSUBSCRIBE 5.0", vec![0xa2, 3, 0, 1, 0], v5, E::Protocol("UNSUBSCRIBE without topic filters")),
        ("UNSUBSCRIBE packet id 0", vec![0xa2, 5, 0, 0, 0, 1, b'a'], v3, pid0.clone()),
        ("UNSUBSCRIBE truncated filter", vec![0xa2, 5, 0, 1, 0, 2, b'a'], v3, truncated.clone()),
        ("subscription id on UNSUBSCRIBE", vec![0xa2, 8, 0, 1, 2, 0x0b, 1, 0, 1, b'a'], v5, not_allowed.clone()),
        // ---- server → client packets
        ("CONNACK reserved flags", vec![0x20, 2, 2, 0], v3, E::Malformed("reserved CONNACK flags")),
        ("CONNACK 3.1.1 return code 6", vec![0x20, 2, 0, 6], v3, E::Malformed("invalid CONNACK return code")),
        ("CONNACK 3.1.1 trailing", vec![0x20, 3, 0, 0, 0], v3, trailing.clone()),
        ("CONNACK topic alias", vec![0x20, 6, 0, 0, 3, 0x23, 0, 1], v5, not_allowed.clone()),
        ("CONNACK maximum QoS 2", vec![0x20, 5, 0, 0, 2, 0x24, 2], v5, zero_one.clone()),
        ("SUBACK 3.1.1 bad code", vec![0x90, 3, 0, 1, 3], v3, E::Malformed("invalid SUBACK return code")),
        ("SUBACK without codes", vec![0x90, 2, 0, 1], v3, E::Protocol("SUBACK/UNSUBACK without reason codes")),
        ("UNSUBACK 5.0 without codes", vec![0xb0, 3, 0, 1, 0], v5, E::Protocol("SUBACK/UNSUBACK without reason codes")),
        ("UNSUBACK 3.1.1 with payload", vec![0xb0, 3, 0, 1, 0], v3, trailing.clone()),
        // ---- PING / DISCONNECT / AUTH
        ("PINGREQ with body", vec![0xc0, 1, 0], v3, E::Malformed("PINGREQ/PINGRESP with a body")),
        ("PINGRESP with body", vec![0xd0, 1, 0], v5, E::Malformed("PINGREQ/PINGRESP with a body")),
        ("DISCONNECT 3.1.1 with body", vec![0xe0, 1, 0], v3, trailing.clone()),
        ("DISCONNECT receive maximum", vec![0xe0, 5, 0, 3, 0x21, 0, 1], v5, not_allowed.clone()),
        ("DISCONNECT trailing", vec![0xe0, 3, 0, 0, 1], v5, trailing.clone()),
        ("AUTH in 3.1.1", vec![0xf0, 0], v3, E::Malformed("AUTH in MQTT 3.1.1")),
        ("AUTH session expiry", vec![0xf0, 7, 0x18, 5, 0x11, 0, 0, 0, 1], v5, not_allowed.clone()),
        (
            "AUTH data without method",
            vec![0xf0, 6, 0x18, 4, 0x16, 0, 1, 1],
            v5,
            E::Protocol("authentication data without authentication method"),
        ),
    ];
    for (what, bytes, proto, want) in cases {
        let mut b = BytesMut::from(&bytes[..]);
        assert_eq!(decode(&mut b, proto, 1 << 20), Err(want), "{what}: {bytes:02x?}");
    }
}

#[test]
fn too_large_is_reported_from_the_header() {
    let mut b = BytesMut::from(&[0x30u8, 0xff, 0xff, 0x03][..]);
    assert_eq!(decode(&mut b, Some(Protocol::V311), 1024), Err(CodecError::TooLarge { size: 65535 + 4, max: 1024 }));
    // Also for the first packet, and the limit counts the fixed header.
    let mut b = BytesMut::from(&[0x10u8, 0x7f][..]);
    assert_eq!(decode(&mut b, None, 128), Err(CodecError::TooLarge { size: 129, max: 128 }));
    let mut b = BytesMut::from(&[0x10u8, 0x7e][..]);
    assert_eq!(decode(&mut b, None, 128), Ok(None));
    // Exactly at the limit decodes.
    let ping = [0xc0u8, 0];
    assert_eq!(decode(&mut BytesMut::from(&ping[..]), Some(Protocol::V5), 2), Ok(Some(Packet::PingReq)));
    assert_eq!(
        decode(&mut BytesMut::from(&ping[..]), Some(Protocol::V5), 1),
        Err(CodecError::TooLarge { size: 2, max: 1 })
    );
}

#[test]
fn reason_codes() {
    use CodecError as E;
    assert_eq!(E::Malformed("x").reason_code(), 0x81);
    assert_eq!(E::Protocol("x").reason_code(), 0x82);
    assert_eq!(E::TooLarge { size: 2, max: 1 }.reason_code(), 0x95);
    assert_eq!(E::UnsupportedProtocol(6).reason_code(), 0x84);
    assert_eq!(E::BadProtocolName.reason_code(), 0x81);
    assert_eq!(E::TopicNameInvalid("x").reason_code(), 0x90);
}

#[test]
fn oversized_fields_keep_lengths_consistent() {
    // Strings over 65_535 bytes cannot be encoded; they are cut (at a char boundary) and the
    // stream stays well-formed.
    let long = "é".repeat(40_000); // 80_000 bytes
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".into(),
        packet_id: 0,
        payload: Bytes::new(),
        properties: Properties { content_type: Some(long), ..Properties::default() },
    });
    let bytes = enc(&p, Protocol::V5);
    match dec(&bytes, Some(Protocol::V5)) {
        Ok(Some(Packet::Publish(got))) => assert_eq!(got.properties.content_type.map(|s| s.len()), Some(65_534)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn partial_input_consumes_nothing() {
    for v5 in [false, true] {
        let proto = if v5 { Protocol::V5 } else { Protocol::V311 };
        for p in all_packets(v5) {
            let bytes = enc(&p, proto);
            let first = if matches!(p, Packet::Connect(_)) { None } else { Some(proto) };
            let mut b = BytesMut::new();
            for (i, byte) in bytes.iter().enumerate() {
                b.extend_from_slice(&[*byte]);
                let r = decode(&mut b, first, 1 << 20).unwrap_or_else(|e| panic!("{e} at byte {i}"));
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
}

// ------------------------------------------------------------------ rumqttc cross-checks

/// Decode `bytes` (one whole packet) with ours.
fn ours(bytes: &BytesMut, proto: Protocol) -> Packet {
    let first = if bytes.first().is_some_and(|b| b >> 4 == 1) { None } else { Some(proto) };
    let mut b = bytes.clone();
    let p = decode(&mut b, first, 1 << 20).unwrap_or_else(|e| panic!("{e}: {bytes:02x?}"));
    assert!(b.is_empty());
    p.unwrap_or_else(|| panic!("incomplete: {bytes:02x?}"))
}

fn v4_pairs() -> Vec<(Packet, rumqttc::mqttbytes::v4::Packet)> {
    use rumqttc::mqttbytes::v4 as r4;
    use rumqttc::mqttbytes::QoS as Q;
    let none = Properties::default;
    let publish = |dup, qos, retain, topic: &str, packet_id, payload: &'static [u8]| {
        (
            Packet::Publish(Publish {
                dup,
                qos,
                retain,
                topic: topic.into(),
                packet_id,
                payload: Bytes::from_static(payload),
                properties: none(),
            }),
            r4::Packet::Publish(r4::Publish {
                dup,
                qos: match qos {
                    QoS::AtMostOnce => Q::AtMostOnce,
                    QoS::AtLeastOnce => Q::AtLeastOnce,
                    QoS::ExactlyOnce => Q::ExactlyOnce,
                },
                retain,
                topic: topic.into(),
                pkid: packet_id,
                payload: Bytes::from_static(payload),
            }),
        )
    };
    vec![
        (
            Packet::Connect(Box::new(Connect {
                protocol: Protocol::V311,
                clean_start: false,
                keep_alive: 45,
                client_id: "rumq".into(),
                will: Some(Will {
                    topic: "last/will".into(),
                    payload: Bytes::from_static(b"gone"),
                    qos: QoS::ExactlyOnce,
                    retain: false,
                    properties: none(),
                }),
                username: Some("user".into()),
                password: Some(Bytes::from_static(b"secret")),
                properties: none(),
            })),
            r4::Packet::Connect({
                let mut c = r4::Connect::new("rumq");
                c.keep_alive = 45;
                c.clean_session = false;
                c.last_will = Some(r4::LastWill::new("last/will", "gone", Q::ExactlyOnce, false));
                c.set_login("user", "secret");
                c
            }),
        ),
        (
            Packet::ConnAck(ConnAck { session_present: true, code: 0, properties: none() }),
            r4::Packet::ConnAck(r4::ConnAck::new(r4::ConnectReturnCode::Success, true)),
        ),
        (
            Packet::ConnAck(ConnAck { session_present: false, code: 0x86, properties: none() }),
            r4::Packet::ConnAck(r4::ConnAck::new(r4::ConnectReturnCode::BadUserNamePassword, false)),
        ),
        (
            Packet::ConnAck(ConnAck { session_present: false, code: 0x84, properties: none() }),
            r4::Packet::ConnAck(r4::ConnAck::new(r4::ConnectReturnCode::RefusedProtocolVersion, false)),
        ),
        publish(false, QoS::AtMostOnce, false, "a/b", 0, b"zero"),
        publish(false, QoS::AtLeastOnce, true, "a/b/c", 17, b""),
        publish(true, QoS::ExactlyOnce, false, "x", 65535, b"two"),
        (Packet::PubAck(PubResp::new(1, 0)), r4::Packet::PubAck(r4::PubAck::new(1))),
        (Packet::PubRec(PubResp::new(2, 0)), r4::Packet::PubRec(r4::PubRec::new(2))),
        (Packet::PubRel(PubResp::new(3, 0)), r4::Packet::PubRel(r4::PubRel::new(3))),
        (Packet::PubComp(PubResp::new(4, 0)), r4::Packet::PubComp(r4::PubComp::new(4))),
        (
            Packet::Subscribe(Subscribe {
                packet_id: 5,
                filters: vec![
                    SubscribeFilter { filter: "a/+".into(), options: SubOptions::default() },
                    SubscribeFilter {
                        filter: "b/#".into(),
                        options: SubOptions { qos: QoS::ExactlyOnce, ..SubOptions::default() },
                    },
                ],
                properties: none(),
            }),
            r4::Packet::Subscribe(r4::Subscribe {
                pkid: 5,
                filters: vec![
                    r4::SubscribeFilter::new("a/+".into(), Q::AtMostOnce),
                    r4::SubscribeFilter::new("b/#".into(), Q::ExactlyOnce),
                ],
            }),
        ),
        (
            Packet::SubAck(SubAck { packet_id: 5, codes: vec![0, 2, 0x80], properties: none() }),
            r4::Packet::SubAck(r4::SubAck::new(
                5,
                vec![
                    r4::SubscribeReasonCode::Success(Q::AtMostOnce),
                    r4::SubscribeReasonCode::Success(Q::ExactlyOnce),
                    r4::SubscribeReasonCode::Failure,
                ],
            )),
        ),
        (
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 6,
                filters: vec!["a/+".into(), "c".into()],
                properties: none(),
            }),
            r4::Packet::Unsubscribe(r4::Unsubscribe { pkid: 6, topics: vec!["a/+".into(), "c".into()] }),
        ),
        (
            Packet::UnsubAck(UnsubAck { packet_id: 6, codes: vec![], properties: none() }),
            r4::Packet::UnsubAck(r4::UnsubAck::new(6)),
        ),
        (Packet::PingReq, r4::Packet::PingReq),
        (Packet::PingResp, r4::Packet::PingResp),
        (Packet::Disconnect(Disconnect::new(0)), r4::Packet::Disconnect),
    ]
}

#[test]
fn rumqttc_v4_cross_check() {
    for (ours_p, theirs) in v4_pairs() {
        // theirs → ours
        let mut b = BytesMut::new();
        theirs.write(&mut b, 1 << 20).expect("rumqttc encodes");
        assert_eq!(ours(&b, Protocol::V311), ours_p, "rumqttc → ours for {theirs:?}");
        // ours → theirs
        let mut b = enc(&ours_p, Protocol::V311);
        let got = rumqttc::mqttbytes::v4::Packet::read(&mut b, 1 << 20).expect("rumqttc decodes ours");
        assert_eq!(got, theirs, "ours → rumqttc for {ours_p:?}");
        assert!(b.is_empty());
    }
}

fn v5_pairs() -> Vec<(Packet, rumqttc::v5::mqttbytes::v5::Packet)> {
    use rumqttc::v5::mqttbytes::v5 as r5;
    use rumqttc::v5::mqttbytes::QoS as Q;
    let user = || vec![("k".to_string(), "v".to_string()), ("k".to_string(), "w".to_string())];
    let reason =
        || Properties { reason_string: Some("because".into()), user_properties: user(), ..Properties::default() };
    let none = Properties::default;
    vec![
        (
            Packet::Connect(Box::new(Connect {
                protocol: Protocol::V5,
                clean_start: true,
                keep_alive: 30,
                client_id: "r5".into(),
                will: Some(Will {
                    topic: "w/t".into(),
                    payload: Bytes::from_static(b"bye"),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    properties: Properties {
                        will_delay_interval: Some(7),
                        payload_format_indicator: Some(1),
                        message_expiry_interval: Some(99),
                        content_type: Some("text".into()),
                        response_topic: Some("re/sp".into()),
                        correlation_data: Some(Bytes::from_static(b"cd")),
                        user_properties: user(),
                        ..Properties::default()
                    },
                }),
                username: Some("user".into()),
                password: Some(Bytes::from_static(b"pass")),
                properties: Properties {
                    session_expiry_interval: Some(300),
                    receive_maximum: Some(20),
                    maximum_packet_size: Some(4096),
                    topic_alias_maximum: Some(8),
                    request_response_information: Some(1),
                    request_problem_information: Some(0),
                    user_properties: user(),
                    authentication_method: Some("PLAIN".into()),
                    authentication_data: Some(Bytes::from_static(b"ad")),
                    ..Properties::default()
                },
            })),
            r5::Packet::Connect(
                r5::Connect {
                    keep_alive: 30,
                    client_id: "r5".into(),
                    clean_start: true,
                    properties: Some(r5::ConnectProperties {
                        session_expiry_interval: Some(300),
                        receive_maximum: Some(20),
                        max_packet_size: Some(4096),
                        topic_alias_max: Some(8),
                        request_response_info: Some(1),
                        request_problem_info: Some(0),
                        user_properties: user(),
                        authentication_method: Some("PLAIN".into()),
                        authentication_data: Some(Bytes::from_static(b"ad")),
                    }),
                },
                Some(r5::LastWill {
                    topic: Bytes::from_static(b"w/t"),
                    message: Bytes::from_static(b"bye"),
                    qos: Q::AtLeastOnce,
                    retain: true,
                    properties: Some(r5::LastWillProperties {
                        delay_interval: Some(7),
                        payload_format_indicator: Some(1),
                        message_expiry_interval: Some(99),
                        content_type: Some("text".into()),
                        response_topic: Some("re/sp".into()),
                        correlation_data: Some(Bytes::from_static(b"cd")),
                        user_properties: user(),
                    }),
                }),
                Some(r5::Login::new("user", "pass")),
            ),
        ),
        (
            Packet::ConnAck(ConnAck {
                session_present: true,
                code: 0,
                properties: Properties {
                    session_expiry_interval: Some(60),
                    receive_maximum: Some(100),
                    maximum_qos: Some(1),
                    retain_available: Some(0),
                    maximum_packet_size: Some(1 << 20),
                    assigned_client_identifier: Some("auto-1".into()),
                    topic_alias_maximum: Some(16),
                    wildcard_subscription_available: Some(1),
                    subscription_identifier_available: Some(1),
                    shared_subscription_available: Some(0),
                    server_keep_alive: Some(15),
                    response_information: Some("ri".into()),
                    server_reference: Some("srv".into()),
                    authentication_method: Some("PLAIN".into()),
                    authentication_data: Some(Bytes::from_static(b"ok")),
                    ..reason()
                },
            }),
            r5::Packet::ConnAck(r5::ConnAck {
                session_present: true,
                code: r5::ConnectReturnCode::Success,
                properties: Some(r5::ConnAckProperties {
                    session_expiry_interval: Some(60),
                    receive_max: Some(100),
                    max_qos: Some(1),
                    retain_available: Some(0),
                    max_packet_size: Some(1 << 20),
                    assigned_client_identifier: Some("auto-1".into()),
                    topic_alias_max: Some(16),
                    reason_string: Some("because".into()),
                    user_properties: user(),
                    wildcard_subscription_available: Some(1),
                    subscription_identifiers_available: Some(1),
                    shared_subscription_available: Some(0),
                    server_keep_alive: Some(15),
                    response_information: Some("ri".into()),
                    server_reference: Some("srv".into()),
                    authentication_method: Some("PLAIN".into()),
                    authentication_data: Some(Bytes::from_static(b"ok")),
                }),
            }),
        ),
        (
            Packet::ConnAck(ConnAck { session_present: false, code: 0x87, properties: none() }),
            r5::Packet::ConnAck(r5::ConnAck {
                session_present: false,
                code: r5::ConnectReturnCode::NotAuthorized,
                properties: None,
            }),
        ),
        (
            Packet::Publish(Publish {
                dup: true,
                qos: QoS::ExactlyOnce,
                retain: true,
                topic: "p/q".into(),
                packet_id: 99,
                payload: Bytes::from_static(b"payload"),
                properties: Properties {
                    payload_format_indicator: Some(0),
                    message_expiry_interval: Some(3600),
                    topic_alias: Some(3),
                    response_topic: Some("r/t".into()),
                    correlation_data: Some(Bytes::from_static(b"cc")),
                    user_properties: user(),
                    subscription_identifiers: vec![1, 128, 16_384, 268_435_455],
                    content_type: Some("json".into()),
                    ..Properties::default()
                },
            }),
            r5::Packet::Publish(r5::Publish {
                dup: true,
                qos: Q::ExactlyOnce,
                retain: true,
                topic: Bytes::from_static(b"p/q"),
                pkid: 99,
                payload: Bytes::from_static(b"payload"),
                properties: Some(r5::PublishProperties {
                    payload_format_indicator: Some(0),
                    message_expiry_interval: Some(3600),
                    topic_alias: Some(3),
                    response_topic: Some("r/t".into()),
                    correlation_data: Some(Bytes::from_static(b"cc")),
                    user_properties: user(),
                    subscription_identifiers: vec![1, 128, 16_384, 268_435_455],
                    content_type: Some("json".into()),
                }),
            }),
        ),
        (
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: "plain".into(),
                packet_id: 0,
                payload: Bytes::from_static(b"x"),
                properties: none(),
            }),
            r5::Packet::Publish(r5::Publish::new("plain", Q::AtMostOnce, Bytes::from_static(b"x"), None)),
        ),
        (
            Packet::PubAck(PubResp::new(1, 0)),
            r5::Packet::PubAck(r5::PubAck { pkid: 1, reason: r5::PubAckReason::Success, properties: None }),
        ),
        (
            Packet::PubAck(PubResp { packet_id: 2, code: 0x10, properties: reason() }),
            r5::Packet::PubAck(r5::PubAck {
                pkid: 2,
                reason: r5::PubAckReason::NoMatchingSubscribers,
                properties: Some(r5::PubAckProperties {
                    reason_string: Some("because".into()),
                    user_properties: user(),
                }),
            }),
        ),
        (
            Packet::PubRec(PubResp { packet_id: 3, code: 0x97, properties: reason() }),
            r5::Packet::PubRec(r5::PubRec {
                pkid: 3,
                reason: r5::PubRecReason::QuotaExceeded,
                properties: Some(r5::PubRecProperties {
                    reason_string: Some("because".into()),
                    user_properties: user(),
                }),
            }),
        ),
        (
            Packet::PubRel(PubResp { packet_id: 4, code: 0x92, properties: reason() }),
            r5::Packet::PubRel(r5::PubRel {
                pkid: 4,
                reason: r5::PubRelReason::PacketIdentifierNotFound,
                properties: Some(r5::PubRelProperties {
                    reason_string: Some("because".into()),
                    user_properties: user(),
                }),
            }),
        ),
        (
            Packet::PubComp(PubResp::new(5, 0)),
            r5::Packet::PubComp(r5::PubComp { pkid: 5, reason: r5::PubCompReason::Success, properties: None }),
        ),
        (
            Packet::Subscribe(Subscribe {
                packet_id: 6,
                filters: vec![
                    SubscribeFilter {
                        filter: "s/+".into(),
                        options: SubOptions {
                            qos: QoS::AtLeastOnce,
                            no_local: true,
                            retain_as_published: true,
                            retain_handling: 2,
                        },
                    },
                    SubscribeFilter {
                        filter: "$share/g/t".into(),
                        options: SubOptions { qos: QoS::ExactlyOnce, retain_handling: 1, ..SubOptions::default() },
                    },
                ],
                properties: Properties {
                    subscription_identifiers: vec![77],
                    user_properties: user(),
                    ..Properties::default()
                },
            }),
            r5::Packet::Subscribe(r5::Subscribe {
                pkid: 6,
                filters: vec![
                    r5::Filter {
                        path: "s/+".into(),
                        qos: Q::AtLeastOnce,
                        nolocal: true,
                        preserve_retain: true,
                        retain_forward_rule: r5::RetainForwardRule::Never,
                    },
                    r5::Filter {
                        path: "$share/g/t".into(),
                        qos: Q::ExactlyOnce,
                        nolocal: false,
                        preserve_retain: false,
                        retain_forward_rule: r5::RetainForwardRule::OnNewSubscribe,
                    },
                ],
                properties: Some(r5::SubscribeProperties { id: Some(77), user_properties: user() }),
            }),
        ),
        (
            Packet::SubAck(SubAck { packet_id: 6, codes: vec![1, 0x8F, 0xA2], properties: reason() }),
            r5::Packet::SubAck(r5::SubAck {
                pkid: 6,
                return_codes: vec![
                    r5::SubscribeReasonCode::Success(Q::AtLeastOnce),
                    r5::SubscribeReasonCode::TopicFilterInvalid,
                    r5::SubscribeReasonCode::WildcardSubscriptionsNotSupported,
                ],
                properties: Some(r5::SubAckProperties {
                    reason_string: Some("because".into()),
                    user_properties: user(),
                }),
            }),
        ),
        (
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 7,
                filters: vec!["s/+".into(), "t".into()],
                properties: Properties { user_properties: user(), ..Properties::default() },
            }),
            r5::Packet::Unsubscribe(r5::Unsubscribe {
                pkid: 7,
                filters: vec!["s/+".into(), "t".into()],
                properties: Some(r5::UnsubscribeProperties { user_properties: user() }),
            }),
        ),
        (
            Packet::UnsubAck(UnsubAck { packet_id: 7, codes: vec![0, 0x11], properties: reason() }),
            r5::Packet::UnsubAck(r5::UnsubAck {
                pkid: 7,
                reasons: vec![r5::UnsubAckReason::Success, r5::UnsubAckReason::NoSubscriptionExisted],
                properties: Some(r5::UnsubAckProperties {
                    reason_string: Some("because".into()),
                    user_properties: user(),
                }),
            }),
        ),
        (Packet::PingReq, r5::Packet::PingReq(r5::PingReq)),
        (Packet::PingResp, r5::Packet::PingResp(r5::PingResp)),
        (
            Packet::Disconnect(Disconnect {
                code: 0x04,
                properties: Properties {
                    session_expiry_interval: Some(0),
                    server_reference: Some("other".into()),
                    ..reason()
                },
            }),
            r5::Packet::Disconnect(r5::Disconnect {
                reason_code: r5::DisconnectReasonCode::DisconnectWithWillMessage,
                properties: Some(r5::DisconnectProperties {
                    session_expiry_interval: Some(0),
                    reason_string: Some("because".into()),
                    user_properties: user(),
                    server_reference: Some("other".into()),
                }),
            }),
        ),
    ]
}

#[test]
fn rumqttc_v5_cross_check() {
    for (ours_p, theirs) in v5_pairs() {
        // theirs → ours
        let mut b = BytesMut::new();
        theirs.write(&mut b, None).expect("rumqttc encodes");
        assert_eq!(ours(&b, Protocol::V5), ours_p, "rumqttc → ours for {theirs:?}");
        // ours → theirs
        let mut b = enc(&ours_p, Protocol::V5);
        let got = rumqttc::v5::mqttbytes::v5::Packet::read(&mut b, None).expect("rumqttc decodes ours");
        assert_eq!(got, theirs, "ours → rumqttc for {ours_p:?}");
        assert!(b.is_empty());
    }
    // rumqttc writes a normal DISCONNECT as `e0 00`; (its reader refuses an empty body, so only
    // this direction).
    let mut b = BytesMut::new();
    rumqttc::v5::mqttbytes::v5::Packet::Disconnect(rumqttc::v5::mqttbytes::v5::Disconnect::new(
        rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::NormalDisconnection,
    ))
    .write(&mut b, None)
    .expect("encode");
    assert_eq!(ours(&b, Protocol::V5), Packet::Disconnect(Disconnect::new(0)));
}

#[test]
fn random_and_mutated_input_never_panics() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let valid: Vec<BytesMut> = [false, true]
        .iter()
        .flat_map(|v5| {
            let proto = if *v5 { Protocol::V5 } else { Protocol::V311 };
            all_packets(*v5).into_iter().map(move |p| enc(&p, proto))
        })
        .collect();
    let mut decoded = 0u32;
    for i in 0..200_000u32 {
        let bytes: Vec<u8> = if i % 2 == 0 {
            let n = rng.random_range(0..64);
            let mut v: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            if let Some(b0) = v.first_mut() {
                // Keep the packet types plausible half of the time.
                if rng.random() {
                    *b0 = (*b0 & 0xf0) | [0, 0, 0, 0, 0, 0, 2, 0, 2, 0, 2, 0, 0, 0, 0, 0][usize::from(*b0 >> 4)];
                }
            }
            v
        } else {
            let mut v = valid[rng.random_range(0..valid.len())].to_vec();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..v.len());
                match rng.random_range(0..4) {
                    0 => v[at] ^= 1 << rng.random_range(0..8),
                    1 => v.truncate(at.max(1)),
                    2 => v.insert(at, rng.random()),
                    _ => v[at] = rng.random(),
                }
            }
            v
        };
        for proto in [None, Some(Protocol::V311), Some(Protocol::V5)] {
            let mut b = BytesMut::from(&bytes[..]);
            // Drain as many packets as decode; must end in Ok(None) or an error, never a panic.
            while let Ok(Some(p)) = decode(&mut b, proto, 4096) {
                decoded += 1;
                // Whatever decodes re-encodes without panicking.
                let mut out = BytesMut::new();
                encode(&p, proto.unwrap_or(Protocol::V5), &mut out);
            }
        }
    }
    assert!(decoded > 1000, "the sweep should exercise successful decodes too ({decoded})");
}
