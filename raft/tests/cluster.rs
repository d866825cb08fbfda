//! Three-node clusters over real gRPC on 127.0.0.1 ephemeral ports, each node with its own sled
//! store: formation in any start order, forwarding, leader loss, snapshot catch-up, partitions
//! (fault injection), membership changes.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{wait_for, Cluster, KvCmd};
use strait_raft::ProposeError;

fn append(k: &str, v: impl ToString) -> KvCmd {
    KvCmd::Append(k.to_string(), v.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_form_in_any_start_order_and_a_follower_proposal_commits_everywhere() {
    let mut c = Cluster::new(3, |_| {}).await;
    // Start order 3, 1, 2: no node is special.
    for id in [3, 1, 2] {
        c.start(id).await;
    }
    let leader = c.wait_leader(None).await;
    tracing::info!("== leader is {leader}");
    let follower = *c.nodes.keys().find(|id| **id != leader).expect("a follower");
    let r = c.node(follower).propose(append("k", "a")).await.expect("proposal on a follower");
    assert_eq!(r, 1, "first application");
    c.wait_all("k = a,", |kv| kv.map.get("k").map(String::as_str) == Some("a,")).await;

    // 200 concurrent proposals from all three nodes: each applied exactly once.
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let n = c.node(1 + (i as u64 % 3)).clone();
        tasks.push(tokio::spawn(async move { n.propose(append("many", i)).await }));
    }
    for t in tasks {
        t.await.expect("join").expect("propose");
    }
    c.wait_all("200 appends applied once each", |kv| {
        kv.map.get("many").map(|v| v.split(',').filter(|s| !s.is_empty()).count()) == Some(200)
    })
    .await;
    let states: Vec<_> = futures_util::future::join_all(c.nodes.values().map(|n| n.read(|kv| kv.clone()))).await;
    assert!(states.windows(2).all(|w| w[0] == w[1]), "every node applied the same state");
    let mut seen: Vec<u32> =
        states[0].map["many"].split(',').filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
    seen.sort();
    assert_eq!(seen, (0..200).collect::<Vec<_>>(), "each proposal exactly once");

    // Restart everything: bootstrap is idempotent, state survives.
    for id in [1, 2, 3] {
        c.stop(id).await;
    }
    for id in [2, 3, 1] {
        c.start(id).await;
    }
    c.wait_leader(None).await;
    c.wait_all("state after full restart", |kv| kv == &states[0]).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_loss_elects_a_new_leader_without_losing_committed_entries_and_the_old_leader_catches_up() {
    let mut c = Cluster::new(3, |_| {}).await;
    for id in [1, 2, 3] {
        c.start(id).await;
    }
    let old = c.wait_leader(None).await;
    for i in 0..50 {
        c.node(old).propose(append("k", i)).await.expect("propose on leader");
    }
    tracing::info!("== killing leader {old}");
    c.stop(old).await;
    let new = c.wait_leader(Some(old)).await;
    assert_ne!(new, old);
    let survivor = *c.nodes.keys().find(|id| **id != new).expect("a survivor follower");
    for i in 50..100 {
        c.node(survivor).propose(append("k", i)).await.expect("propose after failover");
    }
    let expect: String = (0..100).map(|i| format!("{i},")).collect();
    c.wait_all("all 100 entries on the survivors", |kv| kv.map.get("k") == Some(&expect)).await;

    tracing::info!("== restarting old leader {old}");
    c.start(old).await;
    c.wait_all("old leader caught up", |kv| kv.map.get("k") == Some(&expect)).await;
    let l = c.node(old).leadership().borrow().clone();
    assert_eq!(l.leader, Some(new), "old leader follows the new one: {l:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_behind_the_purged_log_catches_up_by_snapshot() {
    let mut c = Cluster::new(3, |cfg| {
        cfg.snapshot_every = 20;
        cfg.keep_after_snapshot = 0;
    })
    .await;
    for id in [1, 2, 3] {
        c.start(id).await;
    }
    let leader = c.wait_leader(None).await;
    let lagging = *c.nodes.keys().find(|id| **id != leader).expect("follower");
    c.node(leader).propose(append("k", "first")).await.expect("propose");
    c.wait_all("first entry", |kv| kv.applied == 1).await;
    let lag_last = c.node(lagging).metrics().last_log_index.unwrap_or(0);
    c.stop(lagging).await;

    for i in 0..300 {
        c.node(leader).propose(append("k", i)).await.expect("propose");
    }
    // The leader's log no longer holds what the lagging node needs next.
    wait_for("leader to purge past the lagging node's log", Duration::from_secs(10), || async {
        let purged = c.node(leader).metrics().purged.map(|l| l.index).unwrap_or(0);
        (purged > lag_last + 1).then_some(())
    })
    .await;

    c.start(lagging).await;
    c.wait_all("all 301 entries", |kv| kv.applied == 301).await;
    let snap = c.node(lagging).metrics().snapshot;
    assert!(
        snap.map(|s| s.index > lag_last).unwrap_or(false),
        "the lagging node installed a snapshot past its old log (snapshot {snap:?}, old last {lag_last})"
    );
    // The dedup table came with the snapshot: new proposals still apply once.
    c.node(lagging).propose(append("k", "after")).await.expect("propose on the caught-up node");
    c.wait_all("302 entries", |kv| kv.applied == 302).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_leader_loses_its_lease_first_the_minority_cannot_commit_and_healing_converges() {
    let mut c = Cluster::new(3, |cfg| cfg.propose_timeout = Duration::from_millis(1500)).await;
    for id in [1, 2, 3] {
        c.start(id).await;
    }
    let old = c.wait_leader(None).await;
    c.node(old).propose(append("k", "before")).await.expect("propose");
    c.wait_all("before", |kv| kv.applied == 1).await;
    let others: Vec<u64> = c.nodes.keys().copied().filter(|id| *id != old).collect();
    let cfg = c.cfg.clone();

    tracing::info!("== isolating leader {old}");
    let mut lease = c.node(old).leadership();
    let t0 = Instant::now();
    for id in &others {
        c.node(old).faults().isolate(*id);
    }
    // The isolated leader notices: lease false within the election timeout plus a margin.
    wait_for("the isolated leader's lease to turn false", Duration::from_secs(5), || {
        let l = lease.borrow_and_update().clone();
        async move { (!l.lease).then_some(()) }
    })
    .await;
    let lost_after = t0.elapsed();
    tracing::info!("== lease lost after {lost_after:?}");
    assert!(
        lost_after <= cfg.election_min + Duration::from_millis(100),
        "lease must turn false within the election timeout ({:?}) + 100 ms; took {lost_after:?}",
        cfg.election_min
    );
    // ... before any other node leads (the other side cannot have elected yet: it can only
    // start an election once election_min passed without heartbeats).
    let new_elected = {
        let others = others.clone();
        let c = &c;
        wait_for("the majority to elect a new leader", Duration::from_secs(10), || {
            let others = others.clone();
            async move { others.iter().copied().find(|id| c.node(*id).leadership().borrow().is_leader_with_lease()) }
        })
        .await
    };
    let elected_after = t0.elapsed();
    tracing::info!("== node {new_elected} elected after {elected_after:?}");
    assert!(
        lost_after < elected_after,
        "old leader lost its lease ({lost_after:?}) before a new one led ({elected_after:?})"
    );

    // The minority cannot commit.
    let r = c.node(old).propose(append("k", "minority")).await;
    assert!(matches!(r, Err(ProposeError::Unavailable(_))), "minority proposal must fail, got {r:?}");
    // The majority can.
    c.node(others[0]).propose(append("k", "majority")).await.expect("majority proposal");

    tracing::info!("== healing");
    c.node(old).faults().heal();
    c.wait_all("converged without the minority write", |kv| {
        kv.map.get("k").map(String::as_str) == Some("before,majority,")
    })
    .await;
    let leader = c.wait_leader(None).await;
    assert_ne!(leader, old, "the healed old leader must not lead with a stale log");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn learners_are_added_promoted_and_removed_at_runtime() {
    let mut c = Cluster::new(4, |_| {}).await;
    // Seeds are nodes 1..=3 only; node 4 joins later.
    let four = c.addrs[&4].clone();
    c.cfg.seeds.remove(&4);
    for id in [1, 2, 3] {
        c.start(id).await;
    }
    let leader = c.wait_leader(None).await;
    c.node(leader).propose(append("k", "x")).await.expect("propose");
    c.start(4).await;
    assert_eq!(c.node(4).read(|kv| kv.applied).await, 0, "a non-seed node starts empty and waits");

    let follower = *c.nodes.keys().find(|id| **id != leader && **id != 4).expect("follower");
    // Membership calls work from a follower (forwarded to the leader).
    c.node(follower).add_learner(4, four).await.expect("add learner");
    c.wait_all("learner caught up", |kv| kv.applied == 1).await;
    c.node(follower).promote(4).await.expect("promote");
    assert_eq!(c.node(leader).voters(), BTreeSet::from([1, 2, 3, 4]));

    let victim = *c.nodes.keys().find(|id| **id != leader && **id != 4).expect("victim");
    c.node(4).remove(victim).await.expect("remove");
    let expect: BTreeSet<u64> = [1, 2, 3, 4].into_iter().filter(|id| *id != victim).collect();
    wait_for("membership without the removed node", Duration::from_secs(5), || async {
        (c.node(leader).voters() == expect).then_some(())
    })
    .await;
    c.stop(victim).await;
    c.node(4).propose(append("k", "y")).await.expect("propose with the new membership");
    c.wait_all("both entries", |kv| kv.map.get("k").map(String::as_str) == Some("x,y,")).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_cluster_is_refused_and_does_not_disturb() {
    let mut c = Cluster::new(3, |_| {}).await;
    for id in [1, 2, 3] {
        c.start(id).await;
    }
    let leader = c.wait_leader(None).await;
    let term = c.node(leader).leadership().borrow().term;
    // A stranger from cluster "other" with node 9, whose seed list names our node 1.
    let dir = common::TempDir::new("stranger");
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let cfg = strait_raft::RaftConfig {
        id: 9,
        cluster: "other".into(),
        advertise: addr.clone(),
        seeds: [(9, addr), (1, c.addrs[&1].clone())].into_iter().collect(),
        propose_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let stranger = strait_raft::RaftNode::<common::Kv>::start(cfg, &dir.0, l, None).await.expect("start stranger");
    let r = stranger.propose(append("k", "intruder")).await;
    assert!(r.is_err(), "the stranger cannot form a quorum with our node: {r:?}");
    // Our cluster is undisturbed: same leader, same term.
    let after = c.node(leader).leadership().borrow().clone();
    assert_eq!((after.leader, after.term), (Some(leader), term), "cluster disturbed: {after:?}");
    c.node(leader).propose(append("k", "ok")).await.expect("our cluster still commits");
    stranger.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_follower_does_not_slow_commits_and_catches_up_when_it_recovers() {
    let mut c = Cluster::new(3, |_| {}).await;
    for id in [1, 2, 3] {
        c.start(id).await;
    }
    let leader = c.wait_leader(None).await;
    let slow = *c.nodes.keys().find(|id| **id != leader).expect("follower");
    // Every RPC between the leader and `slow` takes 400 ms each way (both sides delay).
    c.node(leader).faults().delay(slow, Duration::from_millis(400));
    let start = Instant::now();
    for i in 0..20 {
        c.node(leader).propose(append("k", i)).await.expect("propose");
    }
    let took = start.elapsed();
    tracing::info!("== 20 sequential commits with a slow follower took {took:?}");
    assert!(
        took < Duration::from_millis(800),
        "commits must not wait for the slow follower (20 commits took {took:?}; one round trip to it is 800 ms)"
    );
    c.node(leader).faults().heal();
    let expect: String = (0..20).map(|i| format!("{i},")).collect();
    c.wait_all("slow follower caught up", |kv| kv.map.get("k") == Some(&expect)).await;
    c.shutdown().await;
}

/// Each follower keeps 32 proposals outstanding (`propose_ordered`, as an MQTT connection with a
/// receive window does: they travel on the ordered forwarding stream, several entries in the
/// air) while the leader is killed: every proposal is applied exactly once, in the order it
/// was made, and answered in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pipelined_proposals_keep_their_order_through_a_leader_kill() {
    let mut c = Cluster::new(3, |_| {}).await;
    for id in [1, 2, 3] {
        c.start(id).await;
    }
    let old = c.wait_leader(None).await;
    const N: usize = 3000;
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(2);
    let mut tasks = Vec::new();
    for id in c.nodes.keys().copied().filter(|id| *id != old) {
        // A third in, the test kills the leader while the rest are being proposed.
        tasks.push(windowed_proposer(c.node(id).clone(), format!("k{id}"), N, ready_tx.clone()));
    }
    for _ in 0..2 {
        ready_rx.recv().await.expect("a proposer reached a third");
    }
    tracing::info!("== killing leader {old}");
    c.stop(old).await;
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("the proposers finish within 60 s")
            .expect("a proposer failed");
    }
    let expect: String = (0..N).map(|i| format!("{i},")).collect();
    let keys: Vec<String> = c.nodes.keys().filter(|id| **id != old).map(|id| format!("k{id}")).collect();
    c.wait_all("every proposal applied once, in order, on the survivors", |kv| {
        keys.iter().all(|k| kv.map.get(k) == Some(&expect))
    })
    .await;
    c.shutdown().await;
}

/// A leader cut off (not killed: its connections stay open and its answers never come) while a
/// follower has proposals in the air on the forwarding stream. The follower must not wait for
/// those answers until `propose_timeout` (they never come, and the proposals then failed):
/// once another node leads, it submits them again there, in order, and every one succeeds,
/// applied once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proposals_in_the_air_to_a_leader_that_is_cut_off_are_submitted_again_to_the_next() {
    let mut c = Cluster::new(3, |cfg| cfg.propose_timeout = Duration::from_secs(5)).await;
    for id in [1, 2, 3] {
        c.start(id).await;
    }
    let old = c.wait_leader(None).await;
    let follower = c.nodes.keys().copied().find(|id| *id != old).expect("a follower");
    const N: usize = 2000;
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(1);
    let proposer = windowed_proposer(c.node(follower).clone(), "k".into(), N, ready_tx);
    ready_rx.recv().await.expect("the proposer reached a third");
    tracing::info!("== cutting leader {old} off");
    let others: Vec<u64> = c.nodes.keys().copied().filter(|id| *id != old).collect();
    // First slow its traffic, so that batches it took into its log are still unreplicated (in
    // the air, their answers pending) when it is cut off: without this they were sometimes all
    // committed by then, and nothing was left waiting on the old leader.
    for id in &others {
        c.node(old).faults().delay(*id, Duration::from_millis(300));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    for id in &others {
        c.node(old).faults().isolate(*id);
    }
    tokio::time::timeout(Duration::from_secs(60), proposer)
        .await
        .expect("the proposer finishes within 60 s")
        .expect("a proposal failed or came back out of order");
    // Healed, the old leader catches up too: every node holds each proposal once, in order.
    c.node(old).faults().heal();
    let expect: String = (0..N).map(|i| format!("{i},")).collect();
    c.wait_all("every proposal applied once, in order", |kv| kv.map.get("k") == Some(&expect)).await;
    c.shutdown().await;
}

/// Proposes `key` = 0..n with 32 proposals outstanding (an MQTT connection's window), asserting
/// each succeeds and the answers come in order; signals `ready` a third of the way in.
fn windowed_proposer(
    node: strait_raft::RaftNode<common::Kv>,
    key: String,
    n: usize,
    ready: tokio::sync::mpsc::Sender<()>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut outstanding: std::collections::VecDeque<tokio::task::JoinHandle<Result<u64, ProposeError>>> =
            std::collections::VecDeque::new();
        let mut last = 0u64;
        for i in 0..n + 32 {
            if outstanding.len() == 32 || i >= n {
                let Some(fut) = outstanding.pop_front() else { break };
                let applied = fut.await.expect("join").unwrap_or_else(|e| panic!("{key}: proposal failed: {e}"));
                assert!(applied > last, "{key}: answers out of order ({applied} after {last})");
                last = applied;
            }
            if i == n / 3 {
                let _ = ready.send(()).await;
            }
            if i < n {
                outstanding.push_back(tokio::spawn(node.propose_ordered(append(&key, i))));
            }
        }
    })
}
