//! The same broker driven by rumqttc, an independent client implementation, in 3.1.1 and 5.0.

mod common;

use std::time::Duration;

use common::*;
use tokio::sync::mpsc;

type V4Rx = mpsc::UnboundedReceiver<(String, Vec<u8>, u8, bool)>;
type V5Rx = mpsc::UnboundedReceiver<(String, Vec<u8>, u8)>;

/// A v4 client whose incoming PUBLISHes (topic, payload, qos, retain) arrive on a channel.
fn v4(n: &TestNode, id: &str, clean: bool) -> (rumqttc::AsyncClient, V4Rx) {
    let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", n.mqtt.port());
    o.set_keep_alive(Duration::from_secs(5));
    o.set_clean_session(clean);
    let (client, mut el) = rumqttc::AsyncClient::new(o, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let _ = tx.send((p.topic.clone(), p.payload.to_vec(), p.qos as u8, p.retain));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    (client, rx)
}

fn v5(n: &TestNode, id: &str, expiry: Option<u32>) -> (rumqttc::v5::AsyncClient, V5Rx) {
    let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", n.mqtt.port());
    o.set_keep_alive(Duration::from_secs(5));
    o.set_clean_start(expiry.is_none());
    o.set_session_expiry_interval(expiry);
    let (client, mut el) = rumqttc::v5::AsyncClient::new(o, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        use rumqttc::v5::mqttbytes::v5::Packet;
        loop {
            match el.poll().await {
                Ok(rumqttc::v5::Event::Incoming(Packet::Publish(p))) => {
                    let topic = String::from_utf8_lossy(&p.topic).to_string();
                    let _ = tx.send((topic, p.payload.to_vec(), p.qos as u8));
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("rumqttc v5 event loop ended: {e:?}");
                    break;
                }
            }
        }
    });
    (client, rx)
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>, what: &str) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
        .expect("client ended")
}

async fn subscribed(n: &TestNode, id: &str, filter: &str) {
    let b = n.node.broker.clone();
    wait_for(
        || b.session(id).is_some_and(|s| s.lock().subscriptions.contains_key(filter)),
        WAIT,
        &format!("{id} subscribed to {filter}"),
    )
    .await;
}

#[tokio::test]
async fn rumqttc_v4_qos_levels_retained_and_persistent_session() {
    use rumqttc::QoS;
    let n = start("").await;
    let (sub, mut rx) = v4(&n, "r4-sub", false);
    sub.subscribe("r4/#", QoS::ExactlyOnce).await.expect("subscribe");
    subscribed(&n, "r4-sub", "r4/#").await;
    let (p, _prx) = v4(&n, "r4-pub", true);
    for (i, q) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce].into_iter().enumerate() {
        p.publish(format!("r4/{i}"), q, false, vec![i as u8]).await.expect("publish");
        let (t, payload, qos, _) = next(&mut rx, "publish").await;
        assert_eq!((t, payload, qos), (format!("r4/{i}"), vec![i as u8], i as u8));
    }
    p.publish("r4/keep", QoS::AtLeastOnce, true, b"kept".to_vec()).await.expect("publish retained");
    let _ = next(&mut rx, "live retained").await;
    let (late, mut lrx) = v4(&n, "r4-late", true);
    late.subscribe("r4/keep", QoS::AtLeastOnce).await.expect("subscribe");
    let (t, payload, _, retain) = next(&mut lrx, "retained on subscribe").await;
    assert_eq!((t.as_str(), payload.as_slice(), retain), ("r4/keep", &b"kept"[..], true));

    tracing::info!("--- persistent session: messages published while offline arrive on reconnect");
    sub.disconnect().await.expect("disconnect");
    let b = n.node.broker.clone();
    wait_for(|| b.session("r4-sub").is_some_and(|s| !s.is_connected()), WAIT, "r4-sub offline").await;
    for i in 0..5u8 {
        p.publish("r4/off", QoS::AtLeastOnce, false, vec![i]).await.expect("publish");
    }
    let s = n.node.broker.session("r4-sub").expect("session");
    wait_for(|| s.lock().queue.len() == 5, WAIT, "5 queued for the offline session").await;
    let (_sub2, mut rx2) = v4(&n, "r4-sub", false);
    for i in 0..5u8 {
        let (_, payload, _, _) = next(&mut rx2, "queued message").await;
        assert_eq!(payload, vec![i], "in publisher order");
    }
    n.stop().await;
}

#[tokio::test]
async fn rumqttc_v5_pubsub_and_session_resume() {
    use rumqttc::v5::mqttbytes::QoS;
    let n = start("").await;
    let (sub, mut rx) = v5(&n, "r5-sub", Some(60));
    sub.subscribe("r5/+", QoS::ExactlyOnce).await.expect("subscribe");
    subscribed(&n, "r5-sub", "r5/+").await;
    let (p, _prx) = v5(&n, "r5-pub", None);
    for i in 0..3u8 {
        let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][i as usize];
        p.publish(format!("r5/{i}"), qos, false, vec![i]).await.expect("publish");
        let (t, payload, q) = next(&mut rx, "publish").await;
        assert_eq!((t, payload, q), (format!("r5/{i}"), vec![i], i));
    }
    // Let the QoS 2 flow finish first: a PUBREL resent on resume (as the spec requires) is
    // something a fresh rumqttc event loop rejects as unsolicited.
    let s = n.node.broker.session("r5-sub").expect("session");
    wait_for(|| s.lock().inflight.is_empty(), WAIT, "r5-sub acknowledged everything").await;
    sub.disconnect().await.expect("disconnect");
    let b = n.node.broker.clone();
    wait_for(|| b.session("r5-sub").is_some_and(|s| !s.is_connected()), WAIT, "r5-sub offline").await;
    p.publish("r5/x", QoS::ExactlyOnce, false, b"later".to_vec()).await.expect("publish");
    wait_for(|| s.lock().queue.len() == 1, WAIT, "queued for the offline v5 session").await;
    let (_sub2, mut rx2) = v5(&n, "r5-sub", Some(60));
    let (t, payload, q) = next(&mut rx2, "message queued while offline").await;
    assert_eq!((t.as_str(), payload.as_slice(), q), ("r5/x", &b"later"[..], 2));
    n.stop().await;
}
