//! A raw MQTT client speaking through the broker's own codec over a plain TcpStream, for
//! byte-exact protocol checks (reason codes of CONNACK / SUBACK / PUBACK / DISCONNECT).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use strait::mqtt::codec;
use strait::mqtt::packet::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

/// What arrived (or did not) within a wait.
#[derive(Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Got {
    Packet(Packet),
    /// The broker closed the connection (EOF or reset).
    Closed,
    /// Nothing within the window.
    Nothing,
}

pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
    pub proto: Protocol,
}

impl Raw {
    pub async fn open(addr: SocketAddr, proto: Protocol) -> Raw {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("tcp connect within 5 s")
            .expect("tcp connect");
        stream.set_nodelay(true).expect("nodelay");
        Raw { stream, buf: BytesMut::new(), proto }
    }

    /// Connect with a default CONNECT for `client_id` (clean start, keep alive 60).
    pub async fn connect(addr: SocketAddr, proto: Protocol, client_id: &str) -> (Raw, ConnAck) {
        Self::connect_with(addr, connect_packet(proto, client_id)).await
    }

    pub async fn connect_with(addr: SocketAddr, c: Connect) -> (Raw, ConnAck) {
        let mut raw = Raw::open(addr, c.protocol).await;
        raw.send(&Packet::Connect(Box::new(c))).await;
        match raw.next(WAIT).await {
            Got::Packet(Packet::ConnAck(a)) => (raw, a),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub async fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        codec::encode(p, self.proto, &mut out);
        self.send_bytes(&out).await;
    }

    pub async fn send_bytes(&mut self, b: &[u8]) {
        self.stream.write_all(b).await.expect("write to broker");
    }

    /// Next decoded packet within `t`.
    pub async fn next(&mut self, t: Duration) -> Got {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            match codec::decode(&mut self.buf, Some(self.proto), 1 << 24) {
                Ok(Some(p)) => return Got::Packet(p),
                Ok(None) => {}
                Err(e) => panic!("broker sent bytes our codec rejects: {e} ({:02x?})", &self.buf[..]),
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Got::Nothing,
                Ok(Ok(0)) | Ok(Err(_)) => return Got::Closed,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Every byte the broker sends until it closes the connection (bounded by `t`).
    pub async fn bytes_until_close(&mut self, t: Duration) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + t;
        let mut out = self.buf.split().to_vec();
        let mut chunk = [0u8; 1024];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => panic!("connection still open after {t:?}; received so far: {out:02x?}"),
                Ok(Ok(0)) | Ok(Err(_)) => return out,
                Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next packet satisfying `f`, skipping others; panics on close or timeout.
    pub async fn expect<T>(&mut self, what: &str, mut f: impl FnMut(Packet) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Got::Packet(p) => {
                    if let Some(t) = f(p) {
                        return t;
                    }
                }
                Got::Closed => panic!("connection closed while waiting for {what}"),
                Got::Nothing => panic!("timed out after {WAIT:?} waiting for {what}"),
            }
        }
    }

    pub async fn publish_in(&mut self) -> Publish {
        self.expect("PUBLISH", |p| match p {
            Packet::Publish(p) => Some(p),
            _ => None,
        })
        .await
    }

    /// Assert that no PUBLISH arrives within `t`.
    pub async fn no_publish(&mut self, t: Duration, what: &str) {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Got::Packet(Packet::Publish(p)) => panic!("{what}: unexpected PUBLISH {p:?}"),
                Got::Packet(_) => continue,
                Got::Closed | Got::Nothing => return,
            }
        }
    }

    /// Expect the broker to end the connection: Some(reason) when a DISCONNECT came first.
    pub async fn expect_close(&mut self, t: Duration) -> Option<u8> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Got::Packet(Packet::Disconnect(d)) => {
                    assert_eq!(self.next(WAIT).await, Got::Closed, "the broker closes the socket after DISCONNECT");
                    return Some(d.code);
                }
                Got::Packet(_) => continue,
                Got::Closed => return None,
                Got::Nothing => panic!("connection still open after {t:?}"),
            }
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<u8> {
        self.subscribe_opts(filter, SubOptions { qos, ..SubOptions::default() }, Properties::default()).await
    }

    pub async fn subscribe_opts(&mut self, filter: &str, options: SubOptions, properties: Properties) -> Vec<u8> {
        let s =
            Subscribe { packet_id: 7, filters: vec![SubscribeFilter { filter: filter.into(), options }], properties };
        self.send(&Packet::Subscribe(s)).await;
        self.expect("SUBACK", |p| match p {
            Packet::SubAck(a) if a.packet_id == 7 => Some(a.codes),
            _ => None,
        })
        .await
    }

    /// Publish and complete the flow (PUBACK, or PUBREC/PUBREL/PUBCOMP). Returns the reason
    /// code of PUBACK/PUBREC (0 for QoS 0).
    pub async fn publish(&mut self, p: Publish) -> u8 {
        let (qos, id) = (p.qos, p.packet_id);
        self.send(&Packet::Publish(p)).await;
        match qos {
            QoS::AtMostOnce => 0,
            QoS::AtLeastOnce => {
                self.expect("PUBACK", |p| match p {
                    Packet::PubAck(a) if a.packet_id == id => Some(a.code),
                    _ => None,
                })
                .await
            }
            QoS::ExactlyOnce => {
                let code = self
                    .expect("PUBREC", |p| match p {
                        Packet::PubRec(a) if a.packet_id == id => Some(a.code),
                        _ => None,
                    })
                    .await;
                if code < 0x80 {
                    self.send(&Packet::PubRel(PubResp::new(id, 0))).await;
                    self.expect("PUBCOMP", |p| match p {
                        Packet::PubComp(c) if c.packet_id == id => Some(()),
                        _ => None,
                    })
                    .await;
                }
                code
            }
        }
    }

    /// Acknowledge a received PUBLISH as a client must.
    pub async fn ack(&mut self, p: &Publish) {
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(&Packet::PubAck(PubResp::new(p.packet_id, 0))).await,
            QoS::ExactlyOnce => {
                let id = p.packet_id;
                self.send(&Packet::PubRec(PubResp::new(id, 0))).await;
                self.expect("PUBREL", |p| match p {
                    Packet::PubRel(r) if r.packet_id == id => Some(()),
                    _ => None,
                })
                .await;
                self.send(&Packet::PubComp(PubResp::new(id, 0))).await;
            }
        }
    }

    pub async fn disconnect(mut self) {
        self.send(&Packet::Disconnect(Disconnect::new(0))).await;
        let _ = self.stream.shutdown().await;
    }
}

pub fn connect_packet(protocol: Protocol, client_id: &str) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

pub fn publish(topic: &str, qos: QoS, payload: &[u8], id: u16) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { id },
        payload: Bytes::copy_from_slice(payload),
        properties: Properties::default(),
    }
}

pub fn encode(p: &Packet, proto: Protocol) -> Vec<u8> {
    let mut b = BytesMut::new();
    codec::encode(p, proto, &mut b);
    b.to_vec()
}
