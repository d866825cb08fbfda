//! Property test against a live listener: random and mutated-valid byte streams, at least
//! 100,000 inputs (STRAIT_FUZZ_CASES for more), over many connections. Afterwards the broker must
//! still serve a normal client, and must have counted the bad packets rather than crashed.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::wire::*;
use common::*;
use rand::{Rng, SeedableRng};
use strait::mqtt::codec;
use strait::mqtt::packet::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn valid_packets() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for proto in [Protocol::V311, Protocol::V5] {
        let mut sub_props = Properties::default();
        if proto.is_v5() {
            sub_props.subscription_identifiers = vec![5];
        }
        let packets = vec![
            Packet::Publish(publish("f/a", QoS::AtLeastOnce, b"payload", 3)),
            Packet::Publish(publish("f/b", QoS::ExactlyOnce, b"p2", 4)),
            Packet::Subscribe(Subscribe {
                packet_id: 2,
                filters: vec![SubscribeFilter { filter: "f/#".into(), options: SubOptions::default() }],
                properties: sub_props,
            }),
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 3,
                filters: vec!["f/#".into()],
                properties: Properties::default(),
            }),
            Packet::PubRel(PubResp::new(4, 0)),
            Packet::PingReq,
        ];
        for p in packets {
            let mut b = BytesMut::new();
            codec::encode(&p, proto, &mut b);
            out.push(b.to_vec());
        }
    }
    out
}

fn connect_bytes(proto: Protocol, id: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    codec::encode(&Packet::Connect(Box::new(connect_packet(proto, id))), proto, &mut b);
    b.to_vec()
}

fn mutate(rng: &mut impl Rng, v: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..4) {
        if v.is_empty() {
            v.push(rng.random());
        }
        let at = rng.random_range(0..v.len());
        match rng.random_range(0..5) {
            0 => v[at] ^= 1 << rng.random_range(0..8),
            1 => v.truncate(at),
            2 => v[at] = rng.random(),
            3 => v.insert(at, rng.random()),
            // Corrupt the remaining length.
            _ => {
                if v.len() > 1 {
                    v[1] = rng.random();
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_mutated_streams_never_hurt_the_broker() {
    let cases: usize = std::env::var("STRAIT_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let n = start("mqtt.connect_timeout = 2s").await;
    let valid = valid_packets();
    let workers = 8;
    let per = cases.div_ceil(workers);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let addr = n.mqtt;
        let valid = valid.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed + w as u64);
            let mut done = 0usize;
            let mut conns = 0usize;
            while done < per {
                let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { continue };
                conns += 1;
                let proto = if rng.random_bool(0.5) { Protocol::V5 } else { Protocol::V311 };
                let mut stream = Vec::new();
                // Half the connections start with a valid CONNECT so the packet loop is exercised.
                if rng.random_bool(0.5) {
                    stream.extend(connect_bytes(proto, &format!("fz{w}-{conns}")));
                }
                // A batch of inputs on this connection: random bytes or mutated valid packets.
                for _ in 0..rng.random_range(1..12) {
                    if rng.random_bool(0.3) {
                        let len = rng.random_range(0..32);
                        stream.extend((0..len).map(|_| rng.random::<u8>()));
                    } else {
                        let mut p = valid[rng.random_range(0..valid.len())].clone();
                        if rng.random_bool(0.7) {
                            mutate(&mut rng, &mut p);
                        }
                        stream.extend(p);
                    }
                    done += 1;
                }
                let _ = s.write_all(&stream).await;
                let _ = s.shutdown().await;
                // Drain until the broker closes (bounded), so that its reaction is exercised.
                let mut sink = [0u8; 4096];
                let _ = tokio::time::timeout(Duration::from_millis(200), async {
                    while let Ok(k) = s.read(&mut sink).await {
                        if k == 0 {
                            break;
                        }
                    }
                })
                .await;
            }
            (done, conns)
        }));
    }
    let (mut total, mut conns) = (0, 0);
    for t in tasks {
        let (d, c) = t.await.expect("fuzz worker panicked");
        total += d;
        conns += c;
    }
    assert!(total >= cases, "sent {total} inputs");
    tracing::info!(total, conns, "--- fuzzing done; the broker must still serve");
    let m = &n.node.broker.metrics;
    let bad = m.malformed_packets.load(std::sync::atomic::Ordering::Relaxed)
        + m.protocol_errors.load(std::sync::atomic::Ordering::Relaxed);
    assert!(bad > 0, "the fuzzer should have produced rejected packets");

    let (mut sub, _) = Raw::connect(n.mqtt, Protocol::V5, "after-sub").await;
    sub.subscribe("after/#", QoS::AtLeastOnce).await;
    let (mut p, _) = Raw::connect(n.mqtt, Protocol::V311, "after-pub").await;
    assert_eq!(p.publish(publish("after/1", QoS::AtLeastOnce, b"still alive", 1)).await, 0);
    assert_eq!(&sub.publish_in().await.payload[..], b"still alive");
    n.stop().await;
}
