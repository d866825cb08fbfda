//! Session lifecycle: persistent sessions (3.1.1 clean_session = 0, 5.0 clean_start = 0 +
//! session expiry), clean sessions, takeover, expiry, and persistence across a node restart.

mod common;

use std::time::Duration;

use common::clients::{v4, v5};
use common::raw::*;
use common::*;
use strait::mqtt::packet::{reason, Protocol};

#[tokio::test]
async fn v4_persistent_session_keeps_subscriptions_and_offline_qos1() {
    use v4::QoS;
    let n = start("").await;
    let (s, mut se, ack) = v4::connect(v4::opts(&n, "durable4", false)).await;
    assert!(!ack.session_present, "first connection has no session");
    v4::subscribe(&s, &mut se, "p4/#", QoS::AtLeastOnce).await;
    s.disconnect().await.expect("queue DISCONNECT");
    se.closed("DISCONNECT").await;
    n.wait_offline("durable4").await;

    let (p, mut pe) = v4::client(&n, "pub", true).await;
    for i in 0..3u8 {
        v4::publish(&p, &mut pe, &format!("p4/{i}"), QoS::AtLeastOnce, false, &[i]).await;
    }
    v4::publish(&p, &mut pe, "p4/q0", QoS::AtMostOnce, false, b"q0").await;
    n.wait_queued("durable4", 4).await;

    let (_s, mut se, ack) = v4::connect(v4::opts(&n, "durable4", false)).await;
    assert!(ack.session_present, "session present on resume");
    for i in 0..3u8 {
        let got = v4::publish_in(&mut se).await;
        assert_eq!((got.topic, got.payload.to_vec(), got.qos), (format!("p4/{i}"), vec![i], QoS::AtLeastOnce));
    }
    assert_eq!(v4::publish_in(&mut se).await.topic, "p4/q0", "QoS 0 is queued too (mqueue_store_qos0 default)");
    // The subscription survived without re-subscribing: live messages still arrive.
    v4::publish(&p, &mut pe, "p4/live", QoS::AtLeastOnce, false, b"live").await;
    assert_eq!(v4::publish_in(&mut se).await.topic, "p4/live");
    n.stop().await;
}

#[tokio::test]
async fn v5_persistent_session_with_expiry_keeps_subscriptions_and_offline_qos1() {
    use v5::QoS;
    let n = start("").await;
    let (s, mut se, present) = v5::client(&n, "durable5", false, Some(120)).await;
    assert!(!present);
    v5::subscribe(&s, &mut se, "p5/+", QoS::AtLeastOnce).await;
    s.disconnect().await.expect("queue DISCONNECT");
    se.closed("DISCONNECT").await;
    n.wait_offline("durable5").await;
    let (p, mut pe, _) = v5::client(&n, "pub", true, None).await;
    for i in 0..3u8 {
        v5::publish(&p, &mut pe, &format!("p5/{i}"), QoS::AtLeastOnce, false, &[i]).await;
    }
    n.wait_queued("durable5", 3).await;
    let (_s, mut se, present) = v5::client(&n, "durable5", false, Some(120)).await;
    assert!(present, "session present on resume");
    for i in 0..3u8 {
        let got = v5::publish_in(&mut se).await;
        assert_eq!((v5::topic(&got), got.payload.to_vec()), (format!("p5/{i}"), vec![i]), "in publish order");
    }
    n.stop().await;
}

#[tokio::test]
async fn clean_session_discards_state() {
    use v4::QoS;
    let n = start("").await;
    let (s, mut se) = v4::client(&n, "fickle", false).await;
    v4::subscribe(&s, &mut se, "cs/#", QoS::AtLeastOnce).await;
    s.disconnect().await.expect("queue DISCONNECT");
    se.closed("DISCONNECT").await;
    n.wait_offline("fickle").await;
    let (p, mut pe) = v4::client(&n, "pub", true).await;
    v4::publish(&p, &mut pe, "cs/1", QoS::AtLeastOnce, false, b"queued").await;
    n.wait_queued("fickle", 1).await;

    // clean_session = 1 discards the stored session: no queue, no subscription.
    let (_c, mut ce, ack) = v4::connect(v4::opts(&n, "fickle", true)).await;
    assert!(!ack.session_present);
    v4::publish(&p, &mut pe, "cs/2", QoS::AtLeastOnce, false, b"live").await;
    v4::no_publish(&mut ce, "neither the queued message nor the old subscription survive").await;
    drop(ce);
    let b = n.node.broker.clone();
    wait_for(|| b.session("fickle").is_none(), WAIT, "clean session removed when its connection ends").await;

    // v5: clean start without session expiry ends the session with the connection.
    let (c5, mut c5e, _) = v5::client(&n, "fickle5", true, None).await;
    v5::subscribe(&c5, &mut c5e, "cs/#", v5::QoS::AtLeastOnce).await;
    c5.disconnect().await.expect("queue DISCONNECT");
    c5e.closed("DISCONNECT").await;
    wait_for(|| b.session("fickle5").is_none(), WAIT, "v5 session with expiry 0 removed").await;
    let (_c5, _c5e, present) = v5::client(&n, "fickle5", false, Some(60)).await;
    assert!(!present, "nothing to resume");
    n.stop().await;
}

#[tokio::test]
async fn v5_takeover_disconnects_first_with_0x8e_and_session_continues() {
    let n = start("").await;
    let mut c = connect_packet(Protocol::V5, "taken");
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(60);
    let (mut first, ack) = Raw::connect_with(n.mqtt, c.clone()).await;
    assert!(!ack.session_present);
    assert_eq!(first.subscribe("tk/#", strait::mqtt::packet::QoS::AtLeastOnce).await, vec![1]);

    // The second connection is a rumqttc client: an independent implementation resumes it.
    let (_second, mut se, present) = v5::client(&n, "taken", false, Some(60)).await;
    assert!(present, "the session moves to the new connection");
    assert_eq!(first.expect_close(WAIT).await, Some(reason::SESSION_TAKEN_OVER), "first connection told why");

    let (p, mut pe, _) = v5::client(&n, "pub", true, None).await;
    v5::publish(&p, &mut pe, "tk/1", v5::QoS::AtLeastOnce, false, b"after").await;
    let got = v5::publish_in(&mut se).await;
    assert_eq!(v5::topic(&got), "tk/1", "subscriptions continue on the new connection");
    assert!(
        n.node.broker.session("taken").is_some_and(|s| s.is_connected()),
        "still connected after the old one ended"
    );

    // A 3.1.1 takeover: the old connection is simply closed.
    let (mut old, _) = Raw::connect(n.mqtt, Protocol::V311, "taken4").await;
    let (_new, _) = Raw::connect(n.mqtt, Protocol::V311, "taken4").await;
    assert_eq!(old.expect_close(WAIT).await, None, "3.1.1 connection closed without DISCONNECT");
    n.stop().await;
}

#[tokio::test]
async fn v5_session_expiry_after_one_second() {
    use v5::QoS;
    let n = start("").await;
    let (s, mut se, _) = v5::client(&n, "brief", false, Some(1)).await;
    v5::subscribe(&s, &mut se, "se/#", QoS::AtLeastOnce).await;
    s.disconnect().await.expect("queue DISCONNECT");
    se.closed("DISCONNECT").await;
    let gone_at = tokio::time::Instant::now();
    n.wait_offline("brief").await;
    // Wait past the expiry (2 s, as a client would), then resume: the session is gone.
    let b = n.node.broker.clone();
    wait_for(|| b.session("brief").is_none(), Duration::from_secs(4), "session expired").await;
    let expired_after = gone_at.elapsed();
    assert!(expired_after >= Duration::from_millis(900), "expired too early, after {expired_after:?}");
    let (_s, mut se, present) = v5::client(&n, "brief", false, Some(1)).await;
    assert!(!present, "session_present = false after expiry");
    let (p, mut pe, _) = v5::client(&n, "pub", true, None).await;
    v5::publish(&p, &mut pe, "se/1", QoS::AtLeastOnce, false, b"x").await;
    v5::no_publish(&mut se, "the expired session's subscription is gone").await;
    n.stop().await;
}

#[tokio::test]
async fn restart_on_same_data_dir_keeps_sessions_queues_and_retained() {
    use v5::QoS;
    let n = start("").await;
    let (s, mut se, _) = v5::client(&n, "survivor", false, Some(600)).await;
    v5::subscribe(&s, &mut se, "rs/#", QoS::AtLeastOnce).await;
    s.disconnect().await.expect("queue DISCONNECT");
    se.closed("DISCONNECT").await;
    n.wait_offline("survivor").await;
    let (s4, mut s4e) = v4::client(&n, "survivor4", false).await;
    v4::subscribe(&s4, &mut s4e, "rs/+", v4::QoS::AtLeastOnce).await;
    s4.disconnect().await.expect("queue DISCONNECT");
    s4e.closed("DISCONNECT").await;
    n.wait_offline("survivor4").await;

    let (p, mut pe, _) = v5::client(&n, "pub", true, None).await;
    v5::publish(&p, &mut pe, "rs/q1", QoS::AtLeastOnce, false, b"queued-1").await;
    v5::publish(&p, &mut pe, "rs/q2", QoS::AtLeastOnce, false, b"queued-2").await;
    v5::publish(&p, &mut pe, "rs/ret", QoS::AtLeastOnce, true, b"retained").await;
    n.wait_queued("survivor", 3).await;
    drop(pe);

    let n = n.restart().await;
    assert_eq!(n.node.broker.retained_count(), 1, "retained message reloaded");
    let (_s, mut se, present) = v5::client(&n, "survivor", false, Some(600)).await;
    assert!(present, "v5 persistent session survived the restart");
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = v5::publish_in(&mut se).await;
        got.push((v5::topic(&m), m.payload.to_vec()));
    }
    assert_eq!(
        got,
        vec![
            ("rs/q1".to_string(), b"queued-1".to_vec()),
            ("rs/q2".to_string(), b"queued-2".to_vec()),
            ("rs/ret".to_string(), b"retained".to_vec())
        ],
        "queued QoS 1 messages in order"
    );
    let (_s4, mut s4e, ack) = v4::connect(v4::opts(&n, "survivor4", false)).await;
    assert!(ack.session_present, "3.1.1 persistent session survived the restart");
    assert_eq!(v4::publish_in(&mut s4e).await.topic, "rs/q1");

    // Subscriptions were restored into the router: a live publish after restart is routed.
    let (p, mut pe, _) = v5::client(&n, "pub2", true, None).await;
    v5::publish(&p, &mut pe, "rs/after", QoS::AtLeastOnce, false, b"live").await;
    assert_eq!(v5::topic(&v5::publish_in(&mut se).await), "rs/after");

    let (l, mut le) = v4::client(&n, "late", true).await;
    v4::subscribe(&l, &mut le, "rs/ret", v4::QoS::AtMostOnce).await;
    let r = v4::publish_in(&mut le).await;
    assert_eq!((&r.payload[..], r.retain), (&b"retained"[..], true), "retained survived the restart");
    n.stop().await;
}
