//! A link's routes at the remote, exact at scale: intersections of local filters with the
//! link's topics, 100,000 distinct filters in one region mirrored as exactly that many routes in
//! the other (counted through the remote's API), messages on them crossing, a route removed
//! while the link holder is being replaced removed there too, and a route the remote refuses
//! shown with its reason.

mod common;

use common::init;

use std::time::{Duration, Instant};

use common::procs::{http_get, rss_kb, ProcCluster};
use common::raw::{connect_packet, publish, Raw};
use serde_json::Value;
use strait::mqtt::packet::{Packet, Properties, Protocol, QoS, SubOptions, Subscribe, SubscribeFilter, Unsubscribe};

const ROUTES: usize = 100_000;

/// The leader's status of link `name` (None: no node answers with it); its first 1,000 routes.
fn link_status(c: &ProcCluster, name: &str) -> Option<Value> {
    link_status_with(c, name, "")
}

/// `link_status` with a query (`?routes=all`: every route listed).
fn link_status_with(c: &ProcCluster, name: &str, query: &str) -> Option<Value> {
    c.nodes.iter().find_map(|n| {
        let (code, body) = http_get(n.api, &format!("/api/v5/cluster/links/link/{name}{query}"))?;
        let v: Value = serde_json::from_str(&body).ok()?;
        (code == 200 && v["status"] == "connected").then_some(v)
    })
}

/// Subscriptions of `client` as the node on `api` counts them.
fn subscriptions_cnt(api: u16, client: &str) -> Option<u64> {
    let (code, body) = http_get(api, &format!("/api/v5/clients/{client}"))?;
    let v: Value = serde_json::from_str(&body).ok()?;
    (code == 200).then(|| v["subscriptions_cnt"].as_u64()).flatten()
}

/// Wait (bounded) until `cond` holds for the link's status; returns it.
async fn until_link(c: &ProcCluster, name: &str, within: Duration, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    let mut last = None;
    loop {
        if let Some(v) = link_status(c, name) {
            if cond(&v) {
                return v;
            }
            last = Some(v);
        }
        if Instant::now() > deadline {
            let brief = last.map(|v| {
                format!(
                    "status {} route_count {} wanted {} pending {} refused {} error {}",
                    v["status"],
                    v["route_count"],
                    v["routes_wanted"],
                    v["routes_pending"],
                    v["routes_refused_count"],
                    v["last_error"]
                )
            });
            c.dump_logs();
            panic!("{what}: not within {within:?}; last link status: {brief:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn subscribe_many(c: &mut Raw, filters: &[String], id: u16) {
    let s = Subscribe {
        packet_id: id,
        filters: filters
            .iter()
            .map(|f| SubscribeFilter {
                filter: f.clone(),
                options: SubOptions { qos: QoS::AtLeastOnce, ..SubOptions::default() },
            })
            .collect(),
        properties: Properties::default(),
    };
    c.send(&Packet::Subscribe(s)).await;
    let codes = c
        .expect("SUBACK", |p| match p {
            Packet::SubAck(a) if a.packet_id == id => Some(a.codes),
            _ => None,
        })
        .await;
    assert!(codes.iter().all(|c| *c == 1), "SUBACK {id}: {codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_intersections_and_stay_exact_at_100k_through_a_link_holder_sigkill() {
    init();
    // us-east wants linked/# from eu-west (one way); its clients may hold any number of
    // subscriptions.
    let mut east = ProcCluster::configure("cluster-us-east", 3, 3, "mqtt { max_subscriptions = infinity }");
    let mut west = ProcCluster::configure("cluster-eu-west", 3, 3, "");
    east.link_to(&west, "[\"linked/#\"]");
    west.link_to(&east, "[]");
    for i in 0..3 {
        east.spawn(i);
        west.spawn(i);
    }
    east.wait_ready(&[0, 1, 2]).await;
    west.wait_ready(&[0, 1, 2]).await;
    let link = "cluster-eu-west";
    let holder_at_west = "clink-cluster-us-east";

    tracing::info!("== a subscriber on # makes the route linked/# (the intersection), not #");
    let (mut all, _) = Raw::connect(common::addr(east.nodes[1].mqtt), Protocol::V5, "everything").await;
    assert_eq!(all.subscribe("#", QoS::AtLeastOnce).await, vec![1]);
    let v = until_link(&east, link, Duration::from_secs(20), "the route linked/#", |v| {
        v["routes"].as_array().is_some_and(|r| r.len() == 1 && r[0] == "linked/#")
    })
    .await;
    assert_eq!(v["routes_wanted"], 1, "{v}");
    let (mut p, _) = Raw::connect(common::addr(west.nodes[0].mqtt), Protocol::V5, "west-pub").await;
    assert_eq!(p.publish(publish("other/1", QoS::AtLeastOnce, b"stays", 1)).await, 0);
    assert_eq!(p.publish(publish("linked/1", QoS::AtLeastOnce, b"crosses", 2)).await, 0);
    let m = all.publish_in().await;
    assert_eq!(&*m.topic, "linked/1", "only linked/# crosses");
    all.ack(&m).await;
    all.no_publish(Duration::from_millis(300), "nothing but linked/#").await;
    drop(all);

    tracing::info!("== {ROUTES} distinct filters on one us-east node");
    let west_rss: Vec<u64> = (0..3).map(|i| west.pid(i).map(rss_kb).unwrap_or(0)).collect();
    // A persistent session: its subscriptions outlive the node it is connected to (which may
    // be the one killed below).
    let mut many = connect_packet(Protocol::V5, "many");
    many.properties.session_expiry_interval = Some(3600);
    let (mut s, ack) = Raw::connect_with(common::addr(east.nodes[1].mqtt), many.clone()).await;
    assert_eq!(ack.code, 0);
    let filters: Vec<String> = (0..ROUTES).map(|i| format!("linked/s/{i}")).collect();
    let started = Instant::now();
    for (n, chunk) in filters.chunks(500).enumerate() {
        subscribe_many(&mut s, chunk, n as u16 + 1).await;
    }
    let subscribed = started.elapsed();
    // "everything" was not persistent: its # is gone, so linked/# goes from the routes.
    let v = until_link(&east, link, Duration::from_secs(60), "every route held at eu-west", |v| {
        v["route_count"] == ROUTES && v["routes_pending"] == 0
    })
    .await;
    let mirrored = started.elapsed();
    assert_eq!(v["routes_refused_count"], 0, "nothing refused");
    let all = link_status_with(&east, link, "?routes=all").expect("link status");
    assert!(!all["routes"].as_array().is_some_and(|r| r.iter().any(|x| x == "linked/#")), "a stale linked/# route");
    let at_west = west.nodes.iter().find_map(|n| subscriptions_cnt(n.api, holder_at_west));
    assert_eq!(at_west, Some(ROUTES as u64), "eu-west's count of the link session's routes");
    let grown: Vec<i64> = (0..3).map(|i| west.pid(i).map(rss_kb).unwrap_or(0) as i64 - west_rss[i] as i64).collect();
    tracing::info!(
        "== {ROUTES} subscribed in {subscribed:?}, all held at eu-west after {mirrored:?}; eu-west RSS growth per node: {grown:?} KB (~{} bytes/route on the largest)",
        grown.iter().max().copied().unwrap_or(0) * 1024 / ROUTES as i64
    );

    tracing::info!("== a message on every 1,000th route crosses");
    for i in (0..ROUTES).step_by(1000) {
        let id = (i / 1000) as u16 + 10;
        assert_eq!(p.publish(publish(&format!("linked/s/{i}"), QoS::AtLeastOnce, b"x", id)).await, 0);
    }
    let mut got = std::collections::BTreeSet::new();
    while got.len() < ROUTES / 1000 {
        let m = s.publish_in().await;
        s.ack(&m).await;
        got.insert(m.topic.to_string());
    }

    tracing::info!("== SIGKILL the link holder; 1,000 filters go while the link moves");
    let holder = east.wait_ready(&[0, 1, 2]).await;
    let killed = east.nodes[holder].name.clone();
    let kill_at = Instant::now();
    east.kill(holder);
    drop(s);
    // The session resumes on a surviving node once a new leader commits its CONNECT.
    let other = (holder + 1) % 3;
    many.clean_start = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut s = loop {
        let (s, ack) = Raw::connect_with(common::addr(east.nodes[other].mqtt), many.clone()).await;
        if ack.code == 0 {
            assert!(ack.session_present, "the persistent session resumed");
            break s;
        }
        assert!(Instant::now() < deadline, "no CONNACK 0 from the survivors within 20 s: {ack:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for (n, chunk) in filters[..1000].chunks(100).enumerate() {
        let id = n as u16 + 300;
        let un = Unsubscribe { packet_id: id, filters: chunk.to_vec(), properties: Properties::default() };
        s.send(&Packet::Unsubscribe(un)).await;
        s.expect("UNSUBACK", |p| matches!(p, Packet::UnsubAck(a) if a.packet_id == id).then_some(())).await;
    }
    let v = until_link(&east, link, Duration::from_secs(60), "the new holder's routes exact at eu-west", |v| {
        v["node"] != killed.as_str() && v["route_count"] == ROUTES - 1000 && v["routes_pending"] == 0
    })
    .await;
    tracing::info!("== routes exact at eu-west through the new holder {:?} after the SIGKILL", kill_at.elapsed());
    assert_eq!(v["routes_truncated"], true, "1,000 routes listed unless ?routes=all");
    let v = link_status_with(&east, link, "?routes=all").expect("link status");
    let routes = v["routes"].as_array().cloned().unwrap_or_default();
    assert_eq!(routes.len(), ROUTES - 1000, "?routes=all lists every route");
    assert!(!routes.iter().any(|r| r == "linked/s/0" || r == "linked/s/999"), "a removed route stayed");
    assert!(routes.iter().any(|r| r == "linked/s/1000"), "a kept route went");
    let at_west = west.nodes.iter().find_map(|n| subscriptions_cnt(n.api, holder_at_west));
    assert_eq!(at_west, Some((ROUTES - 1000) as u64), "eu-west's count after the failover");
}

/// A route the remote refuses (here: deeper than its `max_topic_levels`) is shown in the link
/// status with the reason, retried, and does not hold up the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_route_is_reported_with_its_reason_and_the_rest_go_through() {
    init();
    let mut a = ProcCluster::configure("cluster-a", 1, 0, "");
    let mut b = ProcCluster::configure("cluster-b", 1, 0, "mqtt { max_topic_levels = 3 }");
    a.link_to(&b, "[\"#\"]");
    b.link_to(&a, "[]");
    a.spawn(0);
    b.spawn(0);
    a.wait_up(0).await;
    b.wait_up(0).await;
    let (mut s, _) = Raw::connect(common::addr(a.nodes[0].mqtt), Protocol::V5, "deep").await;
    assert_eq!(s.subscribe("x/y/z/too/deep", QoS::AtLeastOnce).await, vec![1]);
    assert_eq!(s.subscribe("x/fine", QoS::AtLeastOnce).await, vec![1]);
    let v = until_link(&a, "cluster-b", Duration::from_secs(20), "the refusal reported", |v| {
        v["routes_refused_count"] == 1 && v["routes"].as_array().is_some_and(|r| r.iter().any(|x| x == "x/fine"))
    })
    .await;
    assert_eq!(v["routes_refused"][0]["route"], "x/y/z/too/deep", "{v}");
    assert!(v["routes_refused"][0]["reason"].as_str().is_some_and(|r| r.contains("TopicFilterInvalid")), "{v}");
    // Unsubscribed here: nothing is wanted or refused any more once the retry ran.
    let un = Unsubscribe { packet_id: 9, filters: vec!["x/y/z/too/deep".into()], properties: Properties::default() };
    s.send(&Packet::Unsubscribe(un)).await;
    s.expect("UNSUBACK", |p| matches!(p, Packet::UnsubAck(_)).then_some(())).await;
    until_link(&a, "cluster-b", Duration::from_secs(20), "the refusal cleared by the retry", |v| {
        v["routes_refused_count"] == 0 && v["routes_pending"] == 0 && v["route_count"] == 1
    })
    .await;
}

/// `$share` across a link: the route is the group's inner filter, the remote sends each message
/// once, and the receiving cluster gives it to one member of each group (plus every ordinary
/// subscriber).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_group_gets_each_linked_message_once() {
    init();
    let mut a = ProcCluster::configure("cluster-a", 1, 0, "");
    let mut b = ProcCluster::configure("cluster-b", 1, 0, "");
    a.link_to(&b, "[\"#\"]");
    b.link_to(&a, "[]");
    a.spawn(0);
    b.spawn(0);
    a.wait_up(0).await;
    b.wait_up(0).await;
    let here = common::addr(a.nodes[0].mqtt);
    let mut members = Vec::new();
    for i in 0..2 {
        let (mut m, _) = Raw::connect(here, Protocol::V5, &format!("member-{i}")).await;
        assert_eq!(m.subscribe("$share/g/jobs/#", QoS::AtLeastOnce).await, vec![1]);
        members.push(m);
    }
    let (mut plain, _) = Raw::connect(here, Protocol::V5, "plain").await;
    assert_eq!(plain.subscribe("jobs/#", QoS::AtLeastOnce).await, vec![1]);
    until_link(&a, "cluster-b", Duration::from_secs(20), "the route jobs/#", |v| {
        v["routes"].as_array().is_some_and(|r| r.len() == 1 && r[0] == "jobs/#") && v["routes_pending"] == 0
    })
    .await;
    let (mut p, _) = Raw::connect(common::addr(b.nodes[0].mqtt), Protocol::V5, "jobs-pub").await;
    const N: usize = 20;
    for i in 0..N {
        assert_eq!(p.publish(publish(&format!("jobs/{i}"), QoS::AtLeastOnce, b"j", i as u16 + 1)).await, 0);
    }
    for _ in 0..N {
        let m = plain.publish_in().await;
        plain.ack(&m).await;
    }
    let mut got = std::collections::BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < N && Instant::now() < deadline {
        for (i, m) in members.iter_mut().enumerate() {
            if let common::raw::Got::Packet(Packet::Publish(x)) = m.next(Duration::from_millis(50)).await {
                m.ack(&x).await;
                assert!(got.insert(x.topic.to_string(), i).is_none(), "{} delivered to the group twice", x.topic);
            }
        }
    }
    assert_eq!(got.len(), N, "each message once to the group: {got:?}");
    for m in members.iter_mut() {
        m.no_publish(Duration::from_millis(200), "no second copy").await;
    }
    let v = link_status(&a, "cluster-b").expect("link status");
    assert_eq!(v["messages_received"], N, "the remote sent each message once: {v}");
}
