//! A node whose store is new: join the cluster that counts it, bootstrap with the other
//! seeds, or refuse (it lost its data).

use super::*;

impl<S: StateMachine> RaftNode<S> {
    /// A pristine store (first start, or a node whose data is gone). Ask the other seeds
    /// first: when a cluster exists that counts this node as a member and records that it ran
    /// (its registration is committed, or the leader replicated to it), this node's promises
    /// (its votes, the entries it acknowledged) are lost with its data, and starting under the
    /// same id could elect a leader without committed entries: refuse, and say how to rejoin.
    /// Only a leader's linearizable read can say "never ran": without one this node waits (a
    /// follower's state may lag, and leader progress is memory the next leader lacks). A
    /// member that never ran commits its registration through that leader before it takes any
    /// Raft traffic, so a later loss of its data is always recognised. When the cluster no
    /// longer counts it (an operator removed it), wait to be added like a new node. A seed
    /// bootstraps only once a majority of the seeds answers and none of them has a cluster
    /// (never alone: a wiped node must not found a new cluster while the others are down).
    pub(super) async fn join_or_bootstrap(&self) -> Result<(), StartError> {
        let cfg = &self.inner.cfg;
        let others: Vec<(u64, String)> =
            cfg.seeds.iter().filter(|(id, _)| **id != cfg.id).map(|(id, a)| (*id, a.clone())).collect();
        let seed = cfg.seeds.contains_key(&cfg.id);
        let mut logged = None;
        let mut log_once = |what: &'static str| {
            if logged != Some(what) {
                tracing::info!("{what}");
                logged = Some(what);
            }
        };
        loop {
            let asks = others.iter().map(|(id, addr)| {
                let me = self.inner.me.clone();
                async move { (*id, addr.as_str(), net::probe(&me, *id, addr, Duration::from_secs(2)).await) }
            });
            let answers = futures_util::future::join_all(asks).await;
            let clusters: Vec<(u64, &str, &ProbeReply)> = answers
                .iter()
                .filter_map(|(id, a, r)| r.as_ref().filter(|r| r.initialized).map(|r| (*id, *a, r)))
                .collect();
            if let Some(&(peer, _, r)) = clusters.first() {
                let member = |r: &ProbeReply| r.voters.contains(&cfg.id) || r.learners.contains(&cfg.id);
                let ran = clusters.iter().any(|(_, _, r)| {
                    member(r)
                        && (r.registered
                            || r.matched.as_ref().is_some_and(|m| m.get(&cfg.id).is_some_and(|m| m.is_some())))
                });
                if ran {
                    return Err(StartError::Amnesia { id: cfg.id, peer, term: r.term, last: r.last_log_index });
                }
                if !clusters.iter().any(|(_, _, r)| member(r)) {
                    tracing::info!(peer, "a cluster exists and this node is not a member: waiting to be added");
                    return Ok(());
                }
                let Some(&(leader, addr, _)) = clusters.iter().find(|(_, _, r)| r.linearized) else {
                    // No leader yet. Seeds that bootstrap at the same time see each other's
                    // fresh membership (nothing after it): this node cannot have held anything
                    // that a majority of them lacks when they and it are a majority.
                    let reachable = 1 + answers.iter().filter(|(_, _, r)| r.is_some()).count();
                    let fresh = clusters.iter().all(|(_, _, r)| r.last_log_index <= Some(0));
                    if fresh && seed && reachable * 2 > cfg.seeds.len() {
                        tracing::info!(peer, "the seeds are bootstrapping: joining them");
                        self.initialize_seeds().await;
                        return Ok(());
                    }
                    log_once(
                        "pristine store: a cluster exists, waiting for its leader to tell whether this node ran in it",
                    );
                    tokio::select! {
                        _ = self.inner.cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                    }
                    continue;
                };
                // A seed starting after the others (first start): the same membership.
                if let Some(cmd) = self.inner.registration.clone() {
                    if let Err(e) = self.register(leader, addr, cmd).await {
                        log_once("pristine store: could not register with the leader yet, retrying");
                        tracing::debug!(leader, "registration: {e}");
                        tokio::select! {
                            _ = self.inner.cancel.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                        }
                        continue;
                    }
                }
                tracing::info!(peer = leader, "a cluster exists that this node never ran in: joining it");
                if seed {
                    self.initialize_seeds().await;
                }
                return Ok(());
            }
            if !seed {
                tracing::info!("not a seed: waiting to be added to the cluster");
                return Ok(());
            }
            let reachable = 1 + answers.iter().filter(|(_, _, r)| r.is_some()).count();
            if reachable * 2 > cfg.seeds.len() {
                self.initialize_seeds().await;
                return Ok(());
            }
            log_once("pristine store: waiting for a majority of the seeds before bootstrapping");
            tokio::select! {
                _ = self.inner.cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            }
        }
    }

    /// Commit this node's registration through the leader `leader` at `addr` (this node is
    /// not part of the cluster's traffic yet, so it cannot use `propose`).
    async fn register(&self, leader: u64, addr: &str, cmd: S::Command) -> Result<(), String> {
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        let props = vec![Proposal { id: RequestId { origin: self.inner.origin, seq }, cmd }];
        let body = encode(&props).map_err(|e| e.to_string())?;
        let mut client =
            net::client(net::channel(&self.inner.me, addr, self.inner.cfg.election_min).map_err(|e| e.to_string())?);
        let req = net::request(&self.inner.me, leader, Bytes::from(body));
        let resp = tokio::time::timeout(Duration::from_secs(5), client.forward(req))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|s| s.to_string())?;
        let r: WriteResult = decode_raft(resp.get_ref()).map_err(|e| e.to_string())?;
        r.map(|_| ()).map_err(|e| e.to_string())
    }

    async fn initialize_seeds(&self) {
        let cfg = &self.inner.cfg;
        let members: BTreeMap<u64, BasicNode> =
            cfg.seeds.iter().map(|(id, addr)| (*id, BasicNode::new(addr.clone()))).collect();
        match self.inner.raft.initialize(members).await {
            Ok(()) => tracing::info!(seeds = ?cfg.seeds, "initialized the cluster from the seed list"),
            Err(e) => tracing::info!("not initializing: {e}"),
        }
    }
}
