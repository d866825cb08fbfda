//! A raw MQTT client speaking through the broker's own codec, packet by packet (`Raw`), and
//! the packets tests build with it. (`raw.rs` is the event-style client with `Got`.)

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use strait::mqtt::codec;
use strait::mqtt::packet::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

/// A raw MQTT client speaking through the broker's codec.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
    pub proto: Protocol,
}

impl Raw {
    pub async fn open(addr: SocketAddr, proto: Protocol) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        Raw { stream, buf: BytesMut::new(), proto }
    }

    /// Connect with `client_id`; returns the CONNACK.
    pub async fn connect(addr: SocketAddr, proto: Protocol, client_id: &str) -> (Raw, ConnAck) {
        Self::connect_with(addr, connect_packet(proto, client_id)).await
    }

    pub async fn connect_with(addr: SocketAddr, c: Connect) -> (Raw, ConnAck) {
        let mut raw = Raw::open(addr, c.protocol).await;
        raw.send(&Packet::Connect(Box::new(c))).await;
        match raw.recv().await {
            Some(Packet::ConnAck(a)) => (raw, a),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub async fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        codec::encode(p, self.proto, &mut out);
        self.stream.write_all(&out).await.expect("write");
    }

    pub async fn send_bytes(&mut self, b: &[u8]) {
        self.stream.write_all(b).await.expect("write");
    }

    /// Next packet within WAIT; None when the server closed the connection.
    pub async fn recv(&mut self) -> Option<Packet> {
        self.recv_within(WAIT).await.unwrap_or_else(|| panic!("no packet from the broker within {WAIT:?}"))
    }

    /// Next packet within `t`: Some(None) = closed, None = nothing arrived in time.
    pub async fn recv_within(&mut self, t: Duration) -> Option<Option<Packet>> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            match codec::decode(&mut self.buf, Some(self.proto), 1 << 24) {
                Ok(Some(p)) => return Some(Some(p)),
                Ok(None) => {}
                Err(e) => panic!("broker sent an undecodable packet: {e}"),
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(None),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Wait for the next PUBLISH, answering nothing.
    pub async fn publish_in(&mut self) -> Publish {
        loop {
            match self.recv().await {
                Some(Packet::Publish(p)) => return p,
                Some(_) => continue,
                None => panic!("connection closed while waiting for a PUBLISH"),
            }
        }
    }

    /// Assert no PUBLISH arrives within `t`.
    pub async fn no_publish(&mut self, t: Duration, what: &str) {
        if let Some(Some(Packet::Publish(p))) = self.recv_within(t).await {
            panic!("{what}: unexpected PUBLISH {p:?}");
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<u8> {
        self.subscribe_opts(filter, SubOptions { qos, ..SubOptions::default() }, Properties::default()).await
    }

    pub async fn subscribe_opts(&mut self, filter: &str, options: SubOptions, properties: Properties) -> Vec<u8> {
        let s =
            Subscribe { packet_id: 1, filters: vec![SubscribeFilter { filter: filter.into(), options }], properties };
        self.send(&Packet::Subscribe(s)).await;
        loop {
            match self.recv().await {
                Some(Packet::SubAck(a)) => return a.codes,
                Some(_) => continue,
                None => panic!("closed while waiting for SUBACK"),
            }
        }
    }

    /// Publish and wait for the broker's acknowledgement (PUBACK / PUBREC+PUBCOMP). Returns
    /// the reason code of PUBACK/PUBREC (0 for QoS 0).
    pub async fn publish(&mut self, p: Publish) -> u8 {
        let qos = p.qos;
        let id = p.packet_id;
        self.send(&Packet::Publish(p)).await;
        match qos {
            QoS::AtMostOnce => 0,
            QoS::AtLeastOnce => loop {
                match self.recv().await {
                    Some(Packet::PubAck(a)) if a.packet_id == id => return a.code,
                    Some(_) => continue,
                    None => panic!("closed while waiting for PUBACK"),
                }
            },
            QoS::ExactlyOnce => {
                let code = loop {
                    match self.recv().await {
                        Some(Packet::PubRec(a)) if a.packet_id == id => break a.code,
                        Some(_) => continue,
                        None => panic!("closed while waiting for PUBREC"),
                    }
                };
                if code >= 0x80 {
                    return code;
                }
                self.send(&Packet::PubRel(PubResp::new(id, 0))).await;
                loop {
                    match self.recv().await {
                        Some(Packet::PubComp(c)) if c.packet_id == id => return code,
                        Some(_) => continue,
                        None => panic!("closed while waiting for PUBCOMP"),
                    }
                }
            }
        }
    }

    /// Acknowledge a received PUBLISH as the client must.
    pub async fn ack(&mut self, p: &Publish) {
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(&Packet::PubAck(PubResp::new(p.packet_id, 0))).await,
            QoS::ExactlyOnce => {
                self.send(&Packet::PubRec(PubResp::new(p.packet_id, 0))).await;
                loop {
                    match self.recv().await {
                        Some(Packet::PubRel(r)) if r.packet_id == p.packet_id => break,
                        Some(_) => continue,
                        None => panic!("closed while waiting for PUBREL"),
                    }
                }
                self.send(&Packet::PubComp(PubResp::new(p.packet_id, 0))).await;
            }
        }
    }

    /// Expect the server to end the connection: returns the v5 DISCONNECT reason if one came.
    pub async fn expect_close(&mut self) -> Option<u8> {
        loop {
            match self.recv().await {
                Some(Packet::Disconnect(d)) => return Some(d.code),
                Some(_) => continue,
                None => return None,
            }
        }
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

pub fn publish(topic: &str, qos: QoS, payload: &'static [u8], id: u16) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { id },
        payload: bytes::Bytes::from_static(payload),
        properties: Properties::default(),
    }
}

/// Minimal HTTP/1.1 request; returns (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("api connect");
    let req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("api write");
    let mut resp = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut resp)).await.expect("api answered").expect("api read");
    let text = String::from_utf8_lossy(&resp).to_string();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}
