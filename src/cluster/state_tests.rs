use super::super::seen::DEDUPE_WINDOW;
use super::*;
use crate::mqtt::packet::{Properties, Protocol, QoS};
use strait_raft::StateMachine;

fn msg(topic: &str) -> Message {
    Message {
        topic: topic.into(),
        payload: bytes::Bytes::from_static(b"x"),
        qos: QoS::ExactlyOnce,
        retain: false,
        properties: Properties::default(),
        publisher: "$link:eu".into(),
        expires_at_ms: None,
    }
}

#[test]
fn seen_remembers_a_window_and_everything_below_it() {
    let mut s = Seen::default();
    assert!(!s.contains(0), "nothing is seen at first, not even 0");
    assert!(s.insert(0));
    assert!(!s.insert(0));
    assert!(s.insert(5) && s.insert(3), "out of order within the window");
    assert!(s.contains(3) && !s.contains(4));
    for q in 10..(10 + DEDUPE_WINDOW as u64 + 5) {
        assert!(s.insert(q));
    }
    assert_eq!(s.recent.len(), DEDUPE_WINDOW);
    assert!(s.contains(4), "below the floor counts as seen");
    assert!(!s.insert(12));
}

#[test]
fn newer_numbers_ahead_of_older_unseen_ones_do_not_hide_them() {
    // A reconnect resends in packet id order: after the id wraps, up to a window (4096) of
    // newer numbers can come before older ones not seen yet.
    let mut s = Seen::default();
    for q in 0..20_000u64 {
        assert!(s.insert(q));
    }
    for q in 24_000..28_096u64 {
        assert!(s.insert(q), "{q}");
    }
    for q in 20_000..24_000u64 {
        assert!(!s.contains(q), "{q} was never seen");
        assert!(s.insert(q));
    }
}

fn target(id: &str) -> Target {
    Target { client_id: id.into(), qos: QoS::AtLeastOnce, retain: false, sub_ids: vec![], bound: None }
}

fn persistent(st: &mut ClusterState, id: &str, node: u64) {
    st.apply_one(Command::Connect {
        client_id: id.into(),
        node,
        protocol: Protocol::V5,
        clean_start: true,
        expiry_interval: 600,
        will: None,
        link: None,
    });
}

fn queued(st: &ClusterState, id: &str) -> Vec<u64> {
    st.s.sessions[id].queue.keys().copied().collect()
}

#[test]
fn a_full_offline_queue_drops_by_its_policy_and_never_congests() {
    let mut st = ClusterState::default();
    persistent(&mut st, "old", 1);
    persistent(&mut st, "new", 1);
    for id in ["old", "new"] {
        st.apply_one(Command::Disconnect { client_id: id.into(), epoch: 1, at_ms: 0, expiry_interval: 600 });
    }
    let send = |st: &mut ClusterState, drop_oldest: bool| {
        let b = QueueBound { max_len: 3, max_bytes: 0, drop_oldest };
        let (o, _) = st.apply_one(Command::Enqueue {
            msg: msg("t"),
            targets: vec![Target { bound: Some(b), ..target(if drop_oldest { "old" } else { "new" }) }],
            bound: QueueBound { max_len: 1000, max_bytes: 0, drop_oldest: true },
        });
        assert!(matches!(o, Outcome::Enqueued { congested: None }), "an offline session never congests: {o:?}");
    };
    for _ in 0..5 {
        send(&mut st, true);
        send(&mut st, false);
    }
    // Seqs 0..10 alternate between the two sessions: "old" got 0,2,4,6,8; "new" 1,3,5,7,9.
    assert_eq!(queued(&st, "old"), vec![4, 6, 8], "drop-oldest keeps the newest three");
    assert_eq!(queued(&st, "new"), vec![1, 3, 5], "drop-newest keeps the first three");
    assert_eq!(st.s.sessions["old"].dropped, 2);
    assert_eq!(st.s.sessions["new"].dropped, 2);
}

#[test]
fn a_byte_bound_evicts_and_is_recounted_after_acks_and_restore() {
    let mut st = ClusterState::default();
    persistent(&mut st, "s", 1);
    let one = queued_size(&Delivery {
        msg: Arc::new(msg("t")),
        qos: QoS::AtLeastOnce,
        retain: false,
        sub_ids: vec![],
        seq: None,
    });
    let b = QueueBound { max_len: 1000, max_bytes: one * 2, drop_oldest: true };
    for _ in 0..4 {
        st.apply_one(Command::Enqueue { msg: msg("t"), targets: vec![target("s")], bound: b });
    }
    assert_eq!(queued(&st, "s"), vec![2, 3]);
    assert_eq!(st.s.sessions["s"].queue_bytes, one * 2);
    st.apply_one(Command::Ack { client_id: "s".into(), seqs: vec![2] });
    assert_eq!(st.s.sessions["s"].queue_bytes, one);
    let mut copy = ClusterState::default();
    let mut events = Vec::new();
    copy.restore(&st.snapshot().expect("snapshot"), &mut events).expect("restore");
    assert!(matches!(events.as_slice(), [(_, c)] if matches!(c.as_slice(), [Change::Reset(_)])), "a restore is told");
    assert_eq!(copy.s.sessions["s"].queue_bytes, one, "derived byte count rebuilt on restore");
    assert_eq!(copy.s.sessions["s"].dropped, 2);
}

#[test]
fn a_connected_session_past_half_its_bound_congests_the_publisher() {
    let mut st = ClusterState::default();
    persistent(&mut st, "s", 1);
    let b = QueueBound { max_len: 8, max_bytes: 0, drop_oldest: true };
    let mut last = None;
    for _ in 0..5 {
        let (o, _) = st.apply_one(Command::Enqueue { msg: msg("t"), targets: vec![target("s")], bound: b });
        last = Some(o);
    }
    match last {
        Some(Outcome::Enqueued { congested: Some((id, low)) }) => assert_eq!((id.as_str(), low), ("s", 2)),
        other => panic!("expected congestion, got {other:?}"),
    }
}

#[test]
fn from_link_applies_once_per_sequence_number_and_reset_starts_over() {
    let mut st = ClusterState::default();
    let connect = Command::Connect {
        client_id: "sub".into(),
        node: 1,
        protocol: Protocol::V5,
        clean_start: true,
        expiry_interval: 60,
        will: None,
        link: None,
    };
    st.apply_one(connect);
    let enqueue = || Command::Enqueue {
        msg: msg("linked/1"),
        targets: vec![target("sub")],
        bound: QueueBound { max_len: 100, max_bytes: 0, drop_oldest: true },
    };
    let from = |seq| Command::FromLink { link: "eu".into(), seq, cmds: vec![enqueue()] };
    assert!(matches!(st.apply_one(from(7)).0, Outcome::Enqueued { .. }));
    assert!(matches!(st.apply_one(from(7)).0, Outcome::Duplicate), "a redelivery is not applied again");
    assert_eq!(st.s.sessions["sub"].queue.len(), 1);
    st.apply_one(Command::LinkReset { link: "eu".into() });
    assert!(matches!(st.apply_one(from(7)).0, Outcome::Enqueued { .. }), "a new remote session starts over");
    assert_eq!(st.s.sessions["sub"].queue.len(), 2);
}

#[test]
fn deleting_a_link_ends_the_session_of_its_link_client() {
    let mut st = ClusterState::default();
    for (id, link) in [("clink-eu", Some("eu".to_string())), ("plain", None)] {
        st.apply_one(Command::Connect {
            client_id: id.into(),
            node: 1,
            protocol: Protocol::V5,
            clean_start: false,
            expiry_interval: 600,
            will: None,
            link,
        });
    }
    let (_, changes) = st.apply_one(Command::LinkSet {
        name: "eu".into(),
        spec: None,
        drop_sessions: true,
        expect: Some(true),
        in_file: true,
    });
    assert!(!st.s.sessions.contains_key("clink-eu") && st.s.sessions.contains_key("plain"));
    assert_eq!(st.s.links.get("eu"), Some(&None), "a deletion is kept (it overrides the config file)");
    assert!(changes.iter().any(|c| matches!(c, Change::Links(_))));
    let again =
        Command::LinkSet { name: "eu".into(), spec: None, drop_sessions: true, expect: Some(true), in_file: true };
    assert!(matches!(st.apply_one(again).0, Outcome::Stale), "deleted already");
    let create = Command::LinkSet {
        name: "eu".into(),
        spec: Some("{}".into()),
        drop_sessions: false,
        expect: Some(false),
        in_file: true,
    };
    assert!(matches!(st.apply_one(create.clone()).0, Outcome::Done));
    assert!(matches!(st.apply_one(create).0, Outcome::Stale), "a second create of one name");
}

#[test]
fn a_qos2_message_applies_once_per_packet_id_until_released() {
    let mut st = ClusterState::default();
    persistent(&mut st, "pub", 1);
    persistent(&mut st, "sub", 2);
    let received = |pkid| Command::Received {
        client_id: "pub".into(),
        pkid,
        cmds: vec![Command::Enqueue {
            msg: msg("t"),
            targets: vec![target("sub")],
            bound: QueueBound { max_len: 100, max_bytes: 0, drop_oldest: true },
        }],
    };
    assert!(matches!(st.apply_one(received(7)).0, Outcome::Enqueued { .. }));
    assert!(matches!(st.apply_one(received(7)).0, Outcome::Duplicate), "a resend (DUP) is recognised");
    assert_eq!(queued(&st, "sub").len(), 1);

    // The set travels in snapshots (a node that restores one still recognises the resend).
    let mut copy = ClusterState::default();
    copy.restore(&st.snapshot().expect("snapshot"), &mut Vec::new()).expect("restore");
    assert!(matches!(copy.apply_one(received(7)).0, Outcome::Duplicate));

    assert!(matches!(st.apply_one(Command::Released { client_id: "pub".into(), pkid: 7 }).0, Outcome::Done));
    assert!(matches!(st.apply_one(Command::Released { client_id: "pub".into(), pkid: 7 }).0, Outcome::Stale));
    assert!(matches!(st.apply_one(received(7)).0, Outcome::Enqueued { .. }), "released: the id is new again");
    assert_eq!(queued(&st, "sub").len(), 2);

    // A clean start forgets it; a session's takeover tells the new owner what it holds.
    persistent(&mut st, "pub", 3);
    assert!(st.s.sessions["pub"].received.is_empty());
}

/// The review's case: a QoS 2 message of a connection committed after the client connected
/// again with a clean start must not take the new session's packet id (the new session's first
/// message under that id would be dropped as a resend); its PUBREL must not release the new
/// session's id either.
#[test]
fn a_qos2_message_of_a_replaced_session_does_not_touch_the_new_ones_ids() {
    let mut st = ClusterState::default();
    persistent(&mut st, "pub", 1); // epoch 1
    persistent(&mut st, "sub", 2);
    let received = |epoch, pkid| Command::ReceivedAt {
        client_id: "pub".into(),
        epoch,
        pkid,
        cmds: vec![Command::Enqueue {
            msg: msg("t"),
            targets: vec![target("sub")],
            bound: QueueBound { max_len: 100, max_bytes: 0, drop_oldest: true },
        }],
    };
    persistent(&mut st, "pub", 3); // clean start: epoch 2, a new session
    assert!(matches!(st.apply_one(received(1, 7)).0, Outcome::Enqueued { .. }), "the old one's is routed");
    assert!(st.s.sessions["pub"].received.is_empty(), "and not recorded in the new session");
    assert!(matches!(st.apply_one(received(2, 7)).0, Outcome::Enqueued { .. }), "the new one's own id 7");
    assert!(matches!(st.apply_one(received(2, 7)).0, Outcome::Duplicate));
    let release = |epoch| Command::ReleasedAt { client_id: "pub".into(), epoch, pkid: 7 };
    assert!(matches!(st.apply_one(release(1)).0, Outcome::Stale), "the old connection's PUBREL");
    assert!(matches!(st.apply_one(received(2, 7)).0, Outcome::Duplicate), "still held");
    assert!(matches!(st.apply_one(release(2)).0, Outcome::Done));

    // A session resumed (no clean start) is the same session: an older connection's message
    // counts in it, so the client's resend on the new connection is recognised.
    st.apply_one(Command::Connect {
        client_id: "pub".into(),
        node: 1,
        protocol: Protocol::V5,
        clean_start: false,
        expiry_interval: 600,
        will: None,
        link: None,
    }); // epoch 3, created 2
    assert!(matches!(st.apply_one(received(2, 8)).0, Outcome::Enqueued { .. }));
    assert!(matches!(st.apply_one(received(3, 8)).0, Outcome::Duplicate));
}

/// Format 4 (sessions without the epoch they were created in): read, every connection's ids
/// counting as before.
#[test]
fn a_format_4_snapshot_is_still_read() {
    let mut st = ClusterState::default();
    persistent(&mut st, "pub", 1);
    st.s.sessions.get_mut("pub").expect("pub").received.insert(7);
    let s = &st.s;
    // Format 4's layout: a session's fields without `created` (bincode writes a struct as its
    // fields in order, as it writes a tuple).
    let sessions: BTreeMap<&String, _> = s
        .sessions
        .iter()
        .map(|(k, e)| {
            let v4 = (e.owner, e.epoch, e.connected, &e.protocol, e.expiry_interval, &e.disconnected_at_ms);
            (k, (v4, &e.will, &e.link, &e.subscriptions, &e.queue, e.dropped, &e.received))
        })
        .collect();
    let v4 = (s.view, s.next_seq, &s.nodes, sessions, &s.retained, &s.links, &s.link_seen);
    let mut bytes = vec![4];
    bytes.extend(bincode::serde::encode_to_vec(v4, bincode::config::standard()).expect("encode"));
    let mut copy = ClusterState::default();
    copy.restore(&bytes, &mut Vec::new()).expect("a format 4 snapshot restores");
    let e = &copy.s.sessions["pub"];
    assert_eq!((e.epoch, e.created, e.received.iter().copied().collect::<Vec<_>>()), (1, 0, vec![7]));
    let dup = Command::ReceivedAt { client_id: "pub".into(), epoch: 1, pkid: 7, cmds: Vec::new() };
    assert!(matches!(copy.apply_one(dup).0, Outcome::Duplicate));
}

#[test]
fn a_format_3_snapshot_is_still_read() {
    let mut st = ClusterState::default();
    st.apply_one(Command::Retain { msg: msg("kept") });
    let mut bytes = st.snapshot().expect("snapshot");
    // Without sessions, formats 3, 4 and 5 encode the same.
    bytes[0] = 3;
    let mut copy = ClusterState::default();
    copy.restore(&bytes, &mut Vec::new()).expect("a format 3 snapshot restores");
    assert!(copy.s.retained.contains_key("kept"));
    bytes[0] = 9;
    let e = copy.restore(&bytes, &mut Vec::new()).expect_err("unknown format");
    assert!(e.contains("unknown format 9"), "{e}");
}
