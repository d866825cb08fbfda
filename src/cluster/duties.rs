//! What a node does for the cluster beside applying: register itself after a start, and
//! (on the leader) expire sessions and declare unreachable nodes' sessions gone; a node cut
//! off from its majority sheds the link sessions it serves.

use super::*;

/// Registers this node's addresses in the replicated membership, and ends what the registry
/// still holds of this node's previous run: sessions it owned as connected lost their
/// connections with that process (they become disconnected, their wills are published). Until
/// this is committed the node refuses CONNECT (retried until it sticks).
pub(super) async fn announce(cluster: Arc<Cluster>, info: NodeInfo) {
    let mut delay = Duration::from_millis(100);
    loop {
        if cluster.raft.leadership().borrow().lease {
            let cmds = vec![Command::Join(info.clone()), Command::NodeDown { node: info.id, at_ms: now_ms() }];
            match cluster.commit_wait(cmds).await {
                Ok(rs) => {
                    for r in rs {
                        if let Outcome::Orphaned { wills } = r.outcome {
                            if !wills.is_empty() {
                                tracing::info!(count = wills.len(), "cluster: wills of connections lost at restart");
                            }
                            for (client_id, will) in wills {
                                cluster.broker.publish_will_cluster(&client_id, will);
                            }
                        }
                    }
                    cluster.ready.store(true, Ordering::Release);
                    tracing::info!(node = %info.name, "cluster.joined");
                    return;
                }
                Err(e) => tracing::debug!("cluster: announce failed: {e}"),
            }
        }
        tokio::select! {
            _ = cluster.cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// A node cut off from its majority applies nothing new, so the link sessions it serves (another
/// cluster's link clients connected here) would stay connected and receive nothing until the
/// partition heals. Once it has had no leader lease for longer than an ordinary election takes,
/// it ends them with 0x88: the remote's link client moves on to a node of the majority (and
/// this node refuses it until it has a lease again).
pub(super) async fn shed_links_without_lease(cluster: Arc<Cluster>) {
    let cfg = cluster.raft.config();
    let grace = cfg.election_max + cfg.heartbeat * 2;
    let mut l = cluster.raft.leadership();
    loop {
        tokio::select! {
            _ = cluster.cancel.cancelled() => return,
            r = l.wait_for(|x| !x.lease) => if r.is_err() { return },
        }
        let back = tokio::select! {
            _ = cluster.cancel.cancelled() => return,
            r = tokio::time::timeout(grace, l.wait_for(|x| x.lease)) => r.map(|r| r.map(|_| ())),
        };
        match back {
            Ok(Ok(_)) => continue,
            Ok(Err(_)) => return,
            Err(_) => {}
        }
        for s in cluster.broker.sessions() {
            if s.link.load(Ordering::Relaxed)
                && s.owner.load(Ordering::Acquire) == cluster.id
                && cluster.broker.kick(&s.client_id, crate::broker::session::Kick::Unavailable)
            {
                tracing::warn!(client_id = %s.client_id, ?grace, "link session ended: this node has had no leader lease (cut off from its cluster)");
            }
        }
        // Re-armed once the lease is back (connections are refused until then).
        tokio::select! {
            _ = cluster.cancel.cancelled() => return,
            r = l.wait_for(|x| x.lease) => if r.is_err() { return },
        }
    }
}

/// What only the leader does, once a second: expire sessions; mark the sessions of a node that
/// stayed unreachable as disconnected and publish their wills.
pub(super) async fn leader_duties(cluster: Arc<Cluster>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last_seen: HashMap<u64, Instant> = HashMap::new();
    let mut marked: BTreeSet<u64> = BTreeSet::new();
    let mut leadership = cluster.raft.leadership();
    let mut was_leader: Option<u64> = None;
    loop {
        tokio::select! {
            _ = cluster.cancel.cancelled() => break,
            _ = tick.tick() => {}
            r = leadership.changed() => {
                if r.is_err() { break }
                let l = leadership.borrow().leader;
                if l != was_leader {
                    cluster.metrics.leader_changes.fetch_add(1, Ordering::Relaxed);
                    was_leader = l;
                }
                continue;
            }
        }
        let l = cluster.leadership();
        if !(l.state == ServerState::Leader && l.lease) {
            last_seen.clear();
            marked.clear();
            continue;
        }
        let now = now_ms();
        // Session expiry.
        let expired: Vec<(String, u64)> = cluster
            .read(|s| {
                s.sessions
                    .iter()
                    .filter(|(_, e)| !e.connected && e.expiry_interval != u32::MAX)
                    .filter(|(_, e)| {
                        e.disconnected_at_ms.is_some_and(|at| at + u64::from(e.expiry_interval) * 1000 <= now)
                    })
                    .map(|(k, e)| (k.clone(), e.epoch))
                    .collect()
            })
            .await;
        if !expired.is_empty() {
            tracing::info!(count = expired.len(), "cluster: expiring sessions");
            let cmds = expired.into_iter().map(|(client_id, epoch)| Command::Expire { client_id, epoch }).collect();
            cluster.commit_detached(cmds);
        }
        // Unreachable nodes.
        let instant_now = Instant::now();
        let mut down = Vec::new();
        if let Some(hb) = cluster.raft.heartbeat_ages() {
            for (node, age) in hb.iter() {
                if *node == cluster.id {
                    continue;
                }
                let fresh = age.is_some_and(|a| a < Duration::from_millis(500));
                if fresh {
                    last_seen.insert(*node, instant_now);
                    marked.remove(node);
                } else {
                    let seen = *last_seen.entry(*node).or_insert(instant_now);
                    if instant_now.duration_since(seen) >= cluster.node_down_after && !marked.contains(node) {
                        down.push(*node);
                    }
                }
            }
        }
        for node in down {
            let has_sessions = cluster.read(|s| s.sessions.values().any(|e| e.owner == node && e.connected)).await;
            marked.insert(node);
            if !has_sessions {
                continue;
            }
            tracing::warn!(node, "cluster: node unreachable; its sessions are disconnected and their wills published");
            match cluster.commit_wait(vec![Command::NodeDown { node, at_ms: now }]).await {
                Ok(rs) => {
                    for r in rs {
                        if let Outcome::Orphaned { wills } = r.outcome {
                            for (client_id, will) in wills {
                                cluster.broker.publish_will_cluster(&client_id, will);
                            }
                        }
                    }
                }
                Err(e) => {
                    marked.remove(&node);
                    tracing::warn!(node, "cluster: NodeDown not committed: {e}");
                }
            }
        }
    }
}
