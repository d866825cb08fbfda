//! rumqttc clients (an independent implementation) driven from tests. Each client's event loop
//! runs in a task that forwards every incoming packet to a channel and stops at the first
//! connection error (no automatic reconnect); dropping `Events` aborts that task, which drops
//! the socket without DISCONNECT (an abnormal close, as for will tests).

use std::fmt::Debug;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{TestNode, WAIT};

/// Incoming packets of one client, or the error that ended its connection.
pub struct Events<P> {
    rx: mpsc::UnboundedReceiver<Result<P, String>>,
    task: tokio::task::JoinHandle<()>,
}

impl<P: Debug> Events<P> {
    /// The next packet for which `f` returns Some, skipping others. Panics on timeout or when
    /// the connection ends first.
    pub async fn expect<T>(&mut self, what: &str, mut f: impl FnMut(P) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
                Ok(None) => panic!("client task ended while waiting for {what}"),
                Ok(Some(Err(e))) => panic!("connection ended ({e}) while waiting for {what}"),
                Ok(Some(Ok(p))) => {
                    if let Some(t) = f(p) {
                        return t;
                    }
                }
            }
        }
    }

    /// Assert that no packet matching `f` arrives within `t` (other packets are skipped).
    pub async fn none(&mut self, t: Duration, what: &str, mut f: impl FnMut(&P) -> bool) {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) | Ok(None) | Ok(Some(Err(_))) => return,
                Ok(Some(Ok(p))) => {
                    if f(&p) {
                        panic!("{what}: unexpected {p:?}");
                    }
                }
            }
        }
    }

    /// The next packet within `t`; None on timeout or when the connection ended.
    pub async fn next_within(&mut self, t: Duration) -> Option<P> {
        match tokio::time::timeout(t, self.rx.recv()).await {
            Ok(Some(Ok(p))) => Some(p),
            _ => None,
        }
    }

    /// Wait for the connection to end; returns the error text (skips packets).
    pub async fn closed(&mut self, what: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
                Ok(None) => return "event loop ended".into(),
                Ok(Some(Err(e))) => return e,
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

impl<P> Drop for Events<P> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub mod v4 {
    use super::*;
    pub use rumqttc::{AsyncClient, ConnAck, MqttOptions, Packet, Publish, QoS, SubscribeReasonCode};

    pub fn opts(n: &TestNode, id: &str, clean_session: bool) -> MqttOptions {
        let mut o = MqttOptions::new(id, "127.0.0.1", n.port());
        o.set_keep_alive(Duration::from_secs(10));
        o.set_clean_session(clean_session);
        o
    }

    /// Connect and wait for a successful CONNACK.
    pub async fn connect(o: MqttOptions) -> (AsyncClient, Events<Packet>, ConnAck) {
        let (client, mut el) = AsyncClient::new(o, 256);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(rumqttc::Event::Incoming(p)) => {
                        if tx.send(Ok(p)).is_err() {
                            break;
                        }
                    }
                    Ok(rumqttc::Event::Outgoing(_)) => {}
                    Err(e) => {
                        let _ = tx.send(Err(format!("{e:?}")));
                        break;
                    }
                }
            }
        });
        let mut ev = Events { rx, task };
        let ack = ev
            .expect("CONNACK", |p| match p {
                Packet::ConnAck(a) => Some(a),
                _ => None,
            })
            .await;
        assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success, "CONNACK code");
        (client, ev, ack)
    }

    pub async fn client(n: &TestNode, id: &str, clean_session: bool) -> (AsyncClient, Events<Packet>) {
        let (c, ev, _) = connect(opts(n, id, clean_session)).await;
        (c, ev)
    }

    /// Subscribe and wait for the SUBACK.
    pub async fn subscribe(c: &AsyncClient, ev: &mut Events<Packet>, filter: &str, qos: QoS) -> SubscribeReasonCode {
        c.subscribe(filter, qos).await.expect("queue SUBSCRIBE");
        let codes = ev
            .expect(&format!("SUBACK for {filter}"), |p| match p {
                Packet::SubAck(a) => Some(a.return_codes),
                _ => None,
            })
            .await;
        codes[0]
    }

    pub async fn publish_in(ev: &mut Events<Packet>) -> Publish {
        ev.expect("PUBLISH", |p| match p {
            Packet::Publish(p) => Some(p),
            _ => None,
        })
        .await
    }

    /// Publish and wait for the broker's final acknowledgement (none for QoS 0).
    pub async fn publish(
        c: &AsyncClient,
        ev: &mut Events<Packet>,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: &[u8],
    ) {
        c.publish(topic, qos, retain, payload.to_vec()).await.expect("queue PUBLISH");
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => ev.expect("PUBACK", |p| matches!(p, Packet::PubAck(_)).then_some(())).await,
            QoS::ExactlyOnce => ev.expect("PUBCOMP", |p| matches!(p, Packet::PubComp(_)).then_some(())).await,
        }
    }

    pub async fn no_publish(ev: &mut Events<Packet>, what: &str) {
        ev.none(super::super::QUIET, what, |p| matches!(p, Packet::Publish(_))).await
    }
}

pub mod v5 {
    use super::*;
    pub use rumqttc::v5::mqttbytes::v5::{
        ConnAck, Filter, LastWill, LastWillProperties, Packet, Publish, PublishProperties, RetainForwardRule,
        SubscribeProperties, SubscribeReasonCode,
    };
    pub use rumqttc::v5::mqttbytes::QoS;
    pub use rumqttc::v5::{AsyncClient, MqttOptions};

    pub fn opts(n: &TestNode, id: &str, clean_start: bool, expiry: Option<u32>) -> MqttOptions {
        let mut o = MqttOptions::new(id, "127.0.0.1", n.port());
        o.set_keep_alive(Duration::from_secs(10));
        o.set_clean_start(clean_start);
        o.set_session_expiry_interval(expiry);
        o
    }

    pub async fn connect(o: MqttOptions) -> (AsyncClient, Events<Packet>, ConnAck) {
        let (client, mut el) = AsyncClient::new(o, 256);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(p)) => {
                        if tx.send(Ok(p)).is_err() {
                            break;
                        }
                    }
                    Ok(rumqttc::v5::Event::Outgoing(_)) => {}
                    Err(e) => {
                        let _ = tx.send(Err(format!("{e:?}")));
                        break;
                    }
                }
            }
        });
        let mut ev = Events { rx, task };
        let ack = ev
            .expect("CONNACK", |p| match p {
                Packet::ConnAck(a) => Some(a),
                _ => None,
            })
            .await;
        assert_eq!(ack.code, rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success, "CONNACK code");
        (client, ev, ack)
    }

    pub async fn client(
        n: &TestNode,
        id: &str,
        clean_start: bool,
        expiry: Option<u32>,
    ) -> (AsyncClient, Events<Packet>, bool) {
        let (c, ev, ack) = connect(opts(n, id, clean_start, expiry)).await;
        (c, ev, ack.session_present)
    }

    pub fn filter(path: &str, qos: QoS) -> Filter {
        Filter::new(path, qos)
    }

    /// Subscribe with options (and an optional subscription identifier); waits for the SUBACK.
    pub async fn subscribe_filter(
        c: &AsyncClient,
        ev: &mut Events<Packet>,
        f: Filter,
        id: Option<usize>,
    ) -> SubscribeReasonCode {
        let what = format!("SUBACK for {}", f.path);
        match id {
            Some(id) => c
                .subscribe_many_with_properties([f], SubscribeProperties { id: Some(id), user_properties: vec![] })
                .await
                .expect("queue SUBSCRIBE"),
            None => c.subscribe_many([f]).await.expect("queue SUBSCRIBE"),
        }
        let codes = ev
            .expect(&what, |p| match p {
                Packet::SubAck(a) => Some(a.return_codes),
                _ => None,
            })
            .await;
        codes[0]
    }

    pub async fn subscribe(c: &AsyncClient, ev: &mut Events<Packet>, path: &str, qos: QoS) -> SubscribeReasonCode {
        subscribe_filter(c, ev, Filter::new(path, qos), None).await
    }

    pub async fn publish_in(ev: &mut Events<Packet>) -> Publish {
        ev.expect("PUBLISH", |p| match p {
            Packet::Publish(p) => Some(p),
            _ => None,
        })
        .await
    }

    pub fn topic(p: &Publish) -> String {
        String::from_utf8_lossy(&p.topic).to_string()
    }

    /// Publish (optionally with properties) and wait for the final acknowledgement.
    pub async fn publish_props(
        c: &AsyncClient,
        ev: &mut Events<Packet>,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: &[u8],
        props: Option<PublishProperties>,
    ) {
        match props {
            Some(pr) => c.publish_with_properties(topic, qos, retain, payload.to_vec(), pr).await,
            None => c.publish(topic, qos, retain, payload.to_vec()).await,
        }
        .expect("queue PUBLISH");
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => ev.expect("PUBACK", |p| matches!(p, Packet::PubAck(_)).then_some(())).await,
            QoS::ExactlyOnce => ev.expect("PUBCOMP", |p| matches!(p, Packet::PubComp(_)).then_some(())).await,
        }
    }

    pub async fn publish(
        c: &AsyncClient,
        ev: &mut Events<Packet>,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: &[u8],
    ) {
        publish_props(c, ev, topic, qos, retain, payload, None).await
    }

    pub async fn no_publish(ev: &mut Events<Packet>, what: &str) {
        ev.none(super::super::QUIET, what, |p| matches!(p, Packet::Publish(_))).await
    }
}
