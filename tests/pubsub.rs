//! Publish/subscribe behaviour driven by rumqttc (MQTT 3.1.1 and 5.0) over real TCP.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::clients::{v4, v5};
use common::*;

#[tokio::test]
async fn v4_qos_levels_both_directions_and_downgrade() {
    use v4::QoS;
    let n = start("").await;
    let (s2, mut e2) = v4::client(&n, "sub-q2", true).await;
    let (s1, mut e1) = v4::client(&n, "sub-q1", true).await;
    let (s0, mut e0) = v4::client(&n, "sub-q0", true).await;
    assert_eq!(
        v4::subscribe(&s2, &mut e2, "q/#", QoS::ExactlyOnce).await,
        v4::SubscribeReasonCode::Success(QoS::ExactlyOnce)
    );
    assert_eq!(
        v4::subscribe(&s1, &mut e1, "q/#", QoS::AtLeastOnce).await,
        v4::SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    assert_eq!(
        v4::subscribe(&s0, &mut e0, "q/#", QoS::AtMostOnce).await,
        v4::SubscribeReasonCode::Success(QoS::AtMostOnce)
    );
    let (p, mut pe) = v4::client(&n, "pub", true).await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce].into_iter().enumerate() {
        let topic = format!("q/{i}");
        // Publisher → broker at `qos`, acknowledged per its QoS flow.
        v4::publish(&p, &mut pe, &topic, qos, false, &[i as u8]).await;
        // Broker → subscribers at min(published, granted).
        for (ev, granted) in [(&mut e2, QoS::ExactlyOnce), (&mut e1, QoS::AtLeastOnce), (&mut e0, QoS::AtMostOnce)] {
            let got = v4::publish_in(ev).await;
            assert_eq!((got.topic.as_str(), &got.payload[..]), (topic.as_str(), &[i as u8][..]));
            assert_eq!(
                got.qos as u8,
                (qos as u8).min(granted as u8),
                "delivered QoS of a QoS {qos:?} publish to a {granted:?} subscription"
            );
        }
    }
    n.stop().await;
}

#[tokio::test]
async fn v5_qos_levels_both_directions_and_downgrade() {
    use v5::QoS;
    let n = start("").await;
    let (s2, mut e2, _) = v5::client(&n, "sub-q2", true, None).await;
    let (s1, mut e1, _) = v5::client(&n, "sub-q1", true, None).await;
    assert_eq!(
        v5::subscribe(&s2, &mut e2, "q/+", QoS::ExactlyOnce).await,
        v5::SubscribeReasonCode::Success(QoS::ExactlyOnce)
    );
    assert_eq!(
        v5::subscribe(&s1, &mut e1, "q/+", QoS::AtLeastOnce).await,
        v5::SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    let (p, mut pe, _) = v5::client(&n, "pub", true, None).await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce].into_iter().enumerate() {
        let topic = format!("q/{i}");
        v5::publish(&p, &mut pe, &topic, qos, false, b"m").await;
        let got = v5::publish_in(&mut e2).await;
        assert_eq!((v5::topic(&got), got.qos), (topic.clone(), qos));
        let got = v5::publish_in(&mut e1).await;
        assert_eq!((v5::topic(&got), got.qos as u8), (topic, (qos as u8).min(1)), "downgraded to the granted QoS");
    }
    n.stop().await;
}

#[tokio::test]
async fn v4_retained_store_deliver_clear_and_flags() {
    use v4::QoS;
    let n = start("").await;
    let (p, mut pe) = v4::client(&n, "pub", true).await;
    v4::publish(&p, &mut pe, "r/a", QoS::AtLeastOnce, true, b"kept").await;
    v4::publish(&p, &mut pe, "r/b", QoS::AtMostOnce, true, b"kept-b").await;

    let (s, mut se) = v4::client(&n, "late", true).await;
    v4::subscribe(&s, &mut se, "r/a", QoS::AtLeastOnce).await;
    let got = v4::publish_in(&mut se).await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..], got.retain),
        ("r/a", &b"kept"[..], true),
        "retained on subscribe"
    );
    v4::no_publish(&mut se, "only the one retained message of r/a").await;

    // Live delivery of a retained publish to an existing subscription: RETAIN 0 (MQTT-3.3.1-9).
    v4::publish(&p, &mut pe, "r/a", QoS::AtLeastOnce, true, b"newer").await;
    let got = v4::publish_in(&mut se).await;
    assert_eq!((&got.payload[..], got.retain), (&b"newer"[..], false), "live delivery has RETAIN 0");

    // The newest retained message replaced the old one.
    let (s2, mut se2) = v4::client(&n, "later", true).await;
    v4::subscribe(&s2, &mut se2, "r/+", QoS::AtLeastOnce).await;
    let mut seen = [v4::publish_in(&mut se2).await, v4::publish_in(&mut se2).await];
    seen.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(
        seen.iter().map(|m| (m.topic.as_str(), &m.payload[..], m.retain)).collect::<Vec<_>>(),
        vec![("r/a", &b"newer"[..], true), ("r/b", &b"kept-b"[..], true)]
    );

    // An empty retained payload clears; it is still delivered live to subscribers.
    v4::publish(&p, &mut pe, "r/a", QoS::AtLeastOnce, true, b"").await;
    assert!(v4::publish_in(&mut se).await.payload.is_empty());
    let (s3, mut se3) = v4::client(&n, "after-clear", true).await;
    v4::subscribe(&s3, &mut se3, "r/a", QoS::AtLeastOnce).await;
    v4::no_publish(&mut se3, "retained message was cleared").await;
    assert_eq!(n.node.broker.retained_count(), 1, "only r/b is still retained");
    n.stop().await;
}

#[tokio::test]
async fn v4_wildcards_and_dollar_topics() {
    use v4::QoS;
    let n = start("").await;
    let filters = ["a/+/c", "a/#", "#", "+/+", "+", "$app/#", "+/b"];
    let mut subs = Vec::new();
    for (i, f) in filters.iter().enumerate() {
        let (c, mut ev) = v4::client(&n, &format!("w{i}"), true).await;
        v4::subscribe(&c, &mut ev, f, QoS::AtMostOnce).await;
        subs.push((c, ev));
    }
    let (p, mut pe) = v4::client(&n, "pub", true).await;
    let topics = ["a/b/c", "a", "a/b", "x/b", "top", "$app/b", "$app", "a/b/c/d", "/b"];
    for t in topics {
        v4::publish(&p, &mut pe, t, QoS::AtLeastOnce, false, t.as_bytes()).await;
    }
    // What each filter must receive, in publish order ('#' and '+' never match '$' topics).
    let expected: [&[&str]; 7] = [
        &["a/b/c"],
        &["a/b/c", "a", "a/b", "a/b/c/d"],
        &["a/b/c", "a", "a/b", "x/b", "top", "a/b/c/d", "/b"],
        &["a/b", "x/b", "/b"],
        &["a", "top"],
        &["$app/b", "$app"],
        &["a/b", "x/b", "/b"],
    ];
    for ((f, (_c, ev)), want) in filters.iter().zip(subs.iter_mut()).zip(expected) {
        let mut got = Vec::new();
        for _ in 0..want.len() {
            got.push(v4::publish_in(ev).await.topic);
        }
        assert_eq!(got, want, "messages matched by {f}");
        v4::no_publish(ev, &format!("nothing else matches {f}")).await;
    }
    n.stop().await;
}

#[tokio::test]
async fn v5_overlapping_subscriptions_delivered_once_with_both_ids() {
    use v5::QoS;
    let n = start("").await;
    let (s, mut se, _) = v5::client(&n, "overlap", true, None).await;
    v5::subscribe_filter(&s, &mut se, v5::filter("ov/+", QoS::AtMostOnce), Some(11)).await;
    v5::subscribe_filter(&s, &mut se, v5::filter("ov/#", QoS::AtLeastOnce), Some(22)).await;
    let (p, mut pe, _) = v5::client(&n, "pub", true, None).await;
    v5::publish(&p, &mut pe, "ov/x", QoS::ExactlyOnce, false, b"one").await;
    let got = v5::publish_in(&mut se).await;
    assert_eq!(got.qos, QoS::AtLeastOnce, "the highest QoS of the matching subscriptions");
    let mut ids = got.properties.as_ref().map(|p| p.subscription_identifiers.clone()).unwrap_or_default();
    ids.sort();
    assert_eq!(ids, vec![11, 22], "both subscription identifiers on the single copy");
    v5::no_publish(&mut se, "one copy only for overlapping subscriptions").await;
    n.stop().await;
}

#[tokio::test]
async fn v5_shared_subscription_each_message_to_exactly_one_member() {
    use v5::QoS;
    let n = start("").await;
    let (a, mut ae, _) = v5::client(&n, "member-a", true, None).await;
    let (b, mut be, _) = v5::client(&n, "member-b", true, None).await;
    let (plain, mut plain_e, _) = v5::client(&n, "plain", true, None).await;
    assert_eq!(
        v5::subscribe(&a, &mut ae, "$share/g/job/+", QoS::AtLeastOnce).await,
        v5::SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    assert_eq!(
        v5::subscribe(&b, &mut be, "$share/g/job/+", QoS::AtLeastOnce).await,
        v5::SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    v5::subscribe(&plain, &mut plain_e, "job/+", QoS::AtLeastOnce).await;
    let (p, mut pe, _) = v5::client(&n, "pub", true, None).await;
    for i in 0..20u8 {
        v5::publish(&p, &mut pe, &format!("job/{i}"), QoS::AtLeastOnce, false, &[i]).await;
    }
    // A non-shared subscriber sees all 20: the wait bound for the group's deliveries.
    for _ in 0..20 {
        v5::publish_in(&mut plain_e).await;
    }
    let mut seen = Vec::new();
    let (mut na, mut nb) = (0, 0);
    for (ev, count) in [(&mut ae, &mut na), (&mut be, &mut nb)] {
        while let Some(p) = ev.next_within(QUIET).await {
            if let v5::Packet::Publish(m) = p {
                seen.push(m.payload[0]);
                *count += 1;
            }
        }
    }
    seen.sort();
    assert_eq!(seen, (0..20).collect::<Vec<u8>>(), "each message exactly once across the group (a={na}, b={nb})");
    assert!(na > 0 && nb > 0, "both members get some messages (a={na}, b={nb})");
    n.stop().await;
}

#[tokio::test]
async fn v5_no_local_retain_as_published_and_retain_handling() {
    use v5::QoS;
    let n = start("").await;
    let (c, mut ce, _) = v5::client(&n, "self", true, None).await;
    let mut nl = v5::filter("nl/t", QoS::AtLeastOnce);
    nl.nolocal = true;
    v5::subscribe_filter(&c, &mut ce, nl, None).await;
    v5::publish(&c, &mut ce, "nl/t", QoS::AtLeastOnce, false, b"own").await;
    v5::no_publish(&mut ce, "no local: own message not echoed").await;
    let (p, mut pe, _) = v5::client(&n, "other", true, None).await;
    v5::publish(&p, &mut pe, "nl/t", QoS::AtLeastOnce, false, b"theirs").await;
    assert_eq!(&v5::publish_in(&mut ce).await.payload[..], b"theirs", "no local still gets other clients' messages");

    let mut rap = v5::filter("rap/t", QoS::AtLeastOnce);
    rap.preserve_retain = true;
    v5::subscribe_filter(&c, &mut ce, rap, None).await;
    v5::subscribe(&c, &mut ce, "norap/t", QoS::AtLeastOnce).await;
    v5::publish(&p, &mut pe, "rap/t", QoS::AtLeastOnce, true, b"r").await;
    assert!(v5::publish_in(&mut ce).await.retain, "retain as published keeps RETAIN on live delivery");
    v5::publish(&p, &mut pe, "norap/t", QoS::AtLeastOnce, true, b"r").await;
    assert!(!v5::publish_in(&mut ce).await.retain, "without retain-as-published live delivery has RETAIN 0");

    // Retain handling 2: retained messages are not sent on subscribe; 0 (control): they are.
    let mut rh2 = v5::filter("rap/t", QoS::AtLeastOnce);
    rh2.retain_forward_rule = v5::RetainForwardRule::Never;
    let (d, mut de, _) = v5::client(&n, "rh2", true, None).await;
    v5::subscribe_filter(&d, &mut de, rh2, None).await;
    v5::no_publish(&mut de, "retain handling 2").await;
    v5::subscribe(&d, &mut de, "norap/t", QoS::AtLeastOnce).await;
    let got = v5::publish_in(&mut de).await;
    assert_eq!((v5::topic(&got).as_str(), got.retain), ("norap/t", true), "retain handling 0 sends it");
    n.stop().await;
}

#[tokio::test]
async fn v5_properties_pass_through() {
    use v5::QoS;
    let n = start("").await;
    let (s, mut se, _) = v5::client(&n, "sub", true, None).await;
    v5::subscribe(&s, &mut se, "props/#", QoS::AtLeastOnce).await;
    let (p, mut pe, _) = v5::client(&n, "pub", true, None).await;
    let props = v5::PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        response_topic: Some("reply/to/me".into()),
        correlation_data: Some(Bytes::from_static(b"\x00corr\xff")),
        user_properties: vec![("k1".into(), "v1".into()), ("k1".into(), "v2".into()), ("z".into(), "".into())],
        ..Default::default()
    };
    v5::publish_props(&p, &mut pe, "props/1", QoS::AtLeastOnce, false, b"{}", Some(props.clone())).await;
    let got = v5::publish_in(&mut se).await;
    let gp = got.properties.expect("properties delivered");
    assert_eq!(gp.payload_format_indicator, Some(1));
    assert_eq!(gp.content_type, props.content_type);
    assert_eq!(gp.response_topic, props.response_topic);
    assert_eq!(gp.correlation_data, props.correlation_data);
    assert_eq!(gp.user_properties, props.user_properties, "user properties in order, duplicates kept");
    assert_eq!(gp.message_expiry_interval, None, "no expiry invented");
    assert_eq!(gp.topic_alias, None);
    n.stop().await;
}

#[tokio::test]
async fn v5_message_expiry_for_offline_session_and_countdown() {
    use v5::QoS;
    let n = start("").await;
    let (s, mut se, _) = v5::client(&n, "exp", false, Some(300)).await;
    v5::subscribe(&s, &mut se, "e/#", QoS::AtLeastOnce).await;
    s.disconnect().await.expect("queue DISCONNECT");
    se.closed("DISCONNECT").await;
    n.wait_offline("exp").await;
    let (p, mut pe, _) = v5::client(&n, "pub", true, None).await;
    let exp = |secs| Some(v5::PublishProperties { message_expiry_interval: Some(secs), ..Default::default() });
    v5::publish_props(&p, &mut pe, "e/short", QoS::AtLeastOnce, false, b"1s", exp(1)).await;
    v5::publish_props(&p, &mut pe, "e/long", QoS::AtLeastOnce, false, b"60s", exp(60)).await;
    n.wait_queued("exp", 2).await;
    // The point of the test: let the 1 s expiry pass while the subscriber is away.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (_s, mut se, present) = v5::client(&n, "exp", false, Some(300)).await;
    assert!(present, "session resumed");
    let got = v5::publish_in(&mut se).await;
    assert_eq!(v5::topic(&got), "e/long", "the expired message is not delivered");
    let left = got.properties.and_then(|p| p.message_expiry_interval);
    assert!(matches!(left, Some(1..=58)), "remaining expiry counted down by the time spent queued: {left:?}");
    v5::no_publish(&mut se, "nothing else queued").await;
    n.stop().await;
}

#[tokio::test]
async fn v5_topic_alias_from_client_and_assigned_client_id() {
    use v5::QoS;
    let n = start("").await;
    let (s, mut se, _) = v5::client(&n, "sub", true, None).await;
    v5::subscribe(&s, &mut se, "alias/#", QoS::AtLeastOnce).await;
    // Empty client id: the broker assigns one and reports it in CONNACK.
    let (p, mut pe, ack) = v5::connect(v5::opts(&n, "", true, None)).await;
    let assigned = ack.properties.and_then(|pr| pr.assigned_client_identifier).expect("assigned client identifier");
    assert!(!assigned.is_empty());
    assert!(n.node.broker.session(&assigned).is_some_and(|s| s.is_connected()), "session under the assigned id");
    let alias = |a| Some(v5::PublishProperties { topic_alias: Some(a), ..Default::default() });
    v5::publish_props(&p, &mut pe, "alias/long/topic", QoS::AtLeastOnce, false, b"1", alias(4)).await;
    v5::publish_props(&p, &mut pe, "", QoS::AtLeastOnce, false, b"2", alias(4)).await;
    v5::publish_props(&p, &mut pe, "alias/other", QoS::AtLeastOnce, false, b"3", alias(4)).await;
    v5::publish_props(&p, &mut pe, "", QoS::AtLeastOnce, false, b"4", alias(4)).await;
    let got: Vec<(String, Bytes)> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            let m = v5::publish_in(&mut se).await;
            v.push((v5::topic(&m), m.payload));
        }
        v
    };
    let want = [("alias/long/topic", "1"), ("alias/long/topic", "2"), ("alias/other", "3"), ("alias/other", "4")];
    for ((t, pl), (wt, wp)) in got.iter().zip(want) {
        assert_eq!((t.as_str(), &pl[..]), (wt, wp.as_bytes()), "alias resolved (and re-mapped) by the broker");
    }
    n.stop().await;
}

#[tokio::test]
async fn v4_will_on_abnormal_close_and_not_after_disconnect() {
    use v4::QoS;
    let n = start("").await;
    let (w, mut we) = v4::client(&n, "watcher", true).await;
    v4::subscribe(&w, &mut we, "will/#", QoS::AtLeastOnce).await;
    let with_will = |id: &str| {
        let mut o = v4::opts(&n, id, true);
        o.set_last_will(rumqttc::LastWill::new(format!("will/{id}"), format!("{id} gone"), QoS::AtLeastOnce, false));
        o
    };
    let (_gone, gone_ev, _) = v4::connect(with_will("dropped")).await;
    n.wait_subscribed("watcher", "will/#").await;
    drop(gone_ev); // event loop aborted: socket closed without DISCONNECT
    let got = v4::publish_in(&mut we).await;
    assert_eq!((got.topic.as_str(), &got.payload[..]), ("will/dropped", &b"dropped gone"[..]));

    let (polite, mut polite_ev, _) = v4::connect(with_will("polite")).await;
    polite.disconnect().await.expect("queue DISCONNECT");
    polite_ev.closed("DISCONNECT sent").await;
    let b = n.node.broker.clone();
    wait_for(|| b.session("polite").is_none(), WAIT, "clean session of polite removed").await;
    v4::no_publish(&mut we, "no will after a normal DISCONNECT").await;
    n.stop().await;
}

#[tokio::test]
async fn v5_will_delay_cancelled_by_reconnect_and_sent_otherwise() {
    use v5::QoS;
    let n = start("").await;
    let (w, mut we, _) = v5::client(&n, "watcher", true, None).await;
    v5::subscribe(&w, &mut we, "wd/#", QoS::AtLeastOnce).await;
    let with_will = |id: &str, delay: u32| {
        let mut o = v5::opts(&n, id, false, Some(60));
        let props = v5::LastWillProperties {
            delay_interval: Some(delay),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: vec![],
        };
        o.set_last_will(v5::LastWill::new(format!("wd/{id}"), "late", QoS::AtLeastOnce, false, Some(props)));
        o
    };
    let (_a, a_ev, _) = v5::connect(with_will("comes-back", 2)).await;
    let (_b, b_ev, _) = v5::connect(with_will("stays-away", 1)).await;
    let dropped_at = tokio::time::Instant::now();
    drop(a_ev);
    drop(b_ev);
    n.wait_offline("comes-back").await;
    let (_a2, _a2_ev, present) = v5::client(&n, "comes-back", false, Some(60)).await;
    assert!(present, "session resumed within the will delay");
    // Control: the client that stays away gets its will after the 1 s delay.
    let got = v5::publish_in(&mut we).await;
    assert_eq!(v5::topic(&got), "wd/stays-away");
    let waited = dropped_at.elapsed();
    assert!(waited >= Duration::from_millis(900), "will delay honoured: will after {waited:?}");
    // The reconnected client's 2 s delay passes with no will.
    let rest = Duration::from_millis(2600).saturating_sub(dropped_at.elapsed());
    we.none(rest, "delayed will cancelled by the reconnect", |p| matches!(p, v5::Packet::Publish(_))).await;
    n.stop().await;
}
