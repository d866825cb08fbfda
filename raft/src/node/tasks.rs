//! The node's own tasks: the leadership watch and the heartbeats, and how a call reaches the
//! leader (here, or forwarded to it). The proposal pipeline is in `pipeline`.

use super::*;

/// Keeps `tx` up to date, waking only when openraft's server metrics change (role, leader,
/// vote, membership) or when a lease is due to run out. (Its full metrics change with every
/// heartbeat answer on a leader; waking on them was 20 wake-ups a second on an idle leader.)
/// A leader's lease is re-read when it would run out: renewed by then, it is extended.
///
/// On a follower, "heard from the leader" lives in openraft's core (`vote_last_modified`), and
/// asking for it makes the core publish its metrics again. Asking on every metrics change was a
/// feedback loop that kept idle followers at 100 % CPU; so a follower asks only when its role,
/// leader or term changed, and when the lease it last saw is about to run out.
pub(super) async fn watch_leadership<S: StateMachine>(
    raft: RaftHandle<S>,
    cfg: RaftConfig,
    tx: watch::Sender<Leadership>,
    fatal: watch::Sender<Option<String>>,
    cancel: CancellationToken,
) {
    let metrics = raft.metrics();
    // The same, awaited only while leading without a lease (a change seen while not awaited
    // wakes it once, harmlessly).
    let mut full = raft.metrics();
    let mut server = raft.server_metrics();
    let lease = cfg.lease();
    // While a follower knows a leader but has no lease, nothing it watches tells it when the
    // leader's heartbeats come back: it asks again at this pace (only in that state).
    let retry = (cfg.heartbeat / 2).max(Duration::from_millis(5));
    let mut last_key = None;
    // When the follower's lease (as last read) runs out, or when it should ask again.
    let mut recheck: Option<Instant> = None;
    loop {
        let (state, leader, term, acked, sole_voter) = {
            // Role, leader and term from the server metrics (the full metrics are sent after
            // them, so they can be a moment behind); the rest from the full metrics.
            let (state, leader, term) = {
                let sm = server.borrow_watched();
                (sm.state, sm.current_leader, sm.vote.leader_id.term)
            };
            let m = metrics.borrow_watched();
            if let Err(e) = &m.running_state {
                // Raft stopped on its own (a storage error: a full disk, a failing device; or
                // a bug), not by our shutdown: the node must not go on as if it were a member.
                if !cancel.is_cancelled() && !matches!(e, openraft::errors::Fatal::Stopped) {
                    tracing::error!("raft stopped: {e}");
                    fatal.send_replace(Some(format!("raft stopped: {e}")));
                }
                tx.send_modify(|l| l.lease = false);
                break;
            }
            let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
            (state, leader, term, m.last_quorum_acked, voters == [cfg.id])
        };
        let key = (state, leader, term);
        let due = recheck.is_some_and(|t| Instant::now() >= t);
        let lease_ok = match state {
            ServerState::Leader => {
                recheck = None;
                let ok = sole_voter || acked.map(|t| t.elapsed() < lease).unwrap_or(false);
                if ok && !sole_voter {
                    // Re-evaluated when the quorum acknowledgement would be too old.
                    let left = acked.map(|t| lease.saturating_sub(t.elapsed())).unwrap_or_default();
                    recheck = Some(Instant::now() + left + Duration::from_millis(1));
                } else if !ok {
                    // Until a quorum answers (nothing else here wakes on it).
                    recheck = Some(Instant::now() + retry);
                }
                ok
            }
            _ if leader.is_some() => {
                if last_key != Some(key) || due || recheck.is_none() {
                    // Heard from an elected leader (a committed vote) within the lease.
                    let heard =
                        raft.with_raft_state(|st| (st.vote_ref().is_committed(), st.vote_last_modified())).await;
                    match heard {
                        Ok((true, Some(t))) if t.elapsed() < lease => {
                            recheck = Some(Instant::now() + (lease - t.elapsed()) + Duration::from_millis(1));
                            true
                        }
                        _ => {
                            recheck = Some(Instant::now() + retry);
                            false
                        }
                    }
                } else {
                    tx.borrow().lease
                }
            }
            _ => {
                recheck = None;
                false
            }
        };
        last_key = Some(key);
        let next = Leadership { leader, term, state, lease: lease_ok };
        tx.send_if_modified(|cur| {
            if *cur != next {
                if cur.lease != next.lease || cur.leader != next.leader {
                    tracing::info!(leader = ?next.leader, term, state = ?next.state, lease = next.lease, "leadership");
                }
                *cur = next;
                true
            } else {
                false
            }
        });
        let sleep = async {
            match recheck {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        // A leader without its lease yet: the first quorum acknowledgement (in the full
        // metrics) gives it, at once rather than at the next recheck.
        let acked_wait = async {
            if state == ServerState::Leader && !lease_ok {
                let _ = full.changed().await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = acked_wait => {}
            r = server.changed() => if r.is_err() {
                // The core is gone. On a storage error it said so in its metrics first.
                if let Err(e) = &metrics.borrow_watched().running_state {
                    if !cancel.is_cancelled() && !matches!(e, openraft::errors::Fatal::Stopped) {
                        tracing::error!("raft stopped: {e}");
                        fatal.send_replace(Some(format!("raft stopped: {e}")));
                    }
                } else if !cancel.is_cancelled() {
                    tracing::error!("raft stopped: its core ended");
                    fatal.send_replace(Some("raft stopped: its core ended (panicked)".into()));
                }
                tx.send_modify(|l| l.lease = false);
                break;
            },
            _ = sleep => {}
        }
    }
}

/// The leader's heartbeats, every `every` while this node leads (openraft's own are off: see
/// `RaftConfig::openraft`). Waits, without waking, while it does not lead. openraft's timer
/// tick is off while this node leads: on a leader it only checks the election timer (which a
/// leader skips) and the heartbeat (sent here).
pub(super) async fn heartbeats<S: StateMachine>(
    raft: RaftHandle<S>,
    every: Duration,
    mut leadership: watch::Receiver<Leadership>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = leadership.wait_for(|l| l.state == ServerState::Leader) => if r.is_err() { return },
        }
        raft.runtime_config().tick(false);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while leadership.borrow().state == ServerState::Leader {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {
                    if raft.trigger().heartbeat().await.is_err() {
                        return;
                    }
                }
                r = leadership.changed() => if r.is_err() { return },
            }
        }
        // A follower or candidate again: its election timer runs on the tick.
        raft.runtime_config().tick(true);
    }
}

impl<S: StateMachine> Inner<S> {
    /// Run `call` on the leader, wherever it is, retrying through leader changes until
    /// `propose_timeout`. A retried write carries the same request ids, so it applies once.
    pub(super) async fn call(&self, call: Call) -> Result<ClientWriteResponse<C>, ProposeError> {
        self.call_until(call, Instant::now() + self.cfg.propose_timeout).await
    }

    /// `call`, giving up at `deadline`.
    pub(super) async fn call_until(
        &self,
        call: Call,
        deadline: Instant,
    ) -> Result<ClientWriteResponse<C>, ProposeError> {
        let mut leadership = self.leadership.clone();
        let mut hint: Option<u64> = None;
        let mut backoff = Duration::from_millis(5);
        loop {
            if self.cancel.is_cancelled() {
                return Err(ProposeError::Shutdown);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ProposeError::Unavailable(self.cfg.propose_timeout));
            }
            let remaining = deadline - now;
            let leader = hint.take().or_else(|| leadership.borrow().leader);
            let outcome: Option<WriteResult> = match leader {
                None => None,
                Some(l) if l == self.cfg.id => {
                    let fut = async {
                        match &call {
                            Call::Write(b) => self.raft.client_write(Request(b.to_vec())).await,
                            Call::Admin(AdminRequest::AddLearner { id, addr }) => {
                                self.raft.add_learner(*id, BasicNode::new(addr.clone()), true).await
                            }
                            Call::Admin(AdminRequest::ChangeMembership { voters, retain }) => {
                                self.raft.change_membership(voters.clone(), *retain).await
                            }
                        }
                    };
                    tokio::time::timeout(remaining, fut).await.ok()
                }
                Some(l) => self.forward(l, &call, remaining.min(Duration::from_secs(2))).await,
            };
            match outcome {
                Some(Ok(resp)) => return Ok(resp),
                Some(Err(RaftError::APIError(e))) => match e {
                    ClientWriteError::ForwardToLeader(f) | ClientWriteError::LogEntryDiscarded(f) => {
                        hint = f.leader_id.filter(|l| Some(*l) != leader);
                    }
                    ClientWriteError::ChangeMembershipError(e) => return Err(ProposeError::Membership(e.to_string())),
                    ClientWriteError::PreconditionFailed(e) => return Err(ProposeError::Membership(e.to_string())),
                },
                Some(Err(RaftError::Fatal(f))) if leader == Some(self.cfg.id) => {
                    return Err(ProposeError::Fatal(f.to_string()));
                }
                // A remote leader that is shutting down: look for the next one.
                Some(Err(RaftError::Fatal(_))) => {}
                None => {}
            }
            if hint.is_none() {
                // Wait for news of a leader, at most a short backoff.
                let wait = backoff.min(deadline.saturating_duration_since(Instant::now()));
                let _ = tokio::time::timeout(wait, leadership.changed()).await;
                backoff = (backoff * 2).min(Duration::from_millis(100));
            }
        }
    }

    /// A gRPC client for node `l` (cached per node and address); None when `l` is not a member.
    pub(super) fn client_for(&self, l: u64) -> Option<net::pb::raft_client::RaftClient<tonic::transport::Channel>> {
        let addr = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            m.membership_config.membership().get_node(&l).map(|n| n.addr.clone())
        }?;
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        match peers.get(&l) {
            Some((a, c)) if *a == addr => Some(c.clone()),
            _ => {
                let c = net::client(net::channel(&self.me, &addr, self.cfg.election_min).ok()?);
                peers.insert(l, (addr, c.clone()));
                Some(c)
            }
        }
    }

    /// Forward to leader `l`; None when it could not be asked or did not answer.
    pub(super) async fn forward(&self, l: u64, call: &Call, ttl: Duration) -> Option<WriteResult> {
        let mut client = self.client_for(l)?;
        let body = match call {
            Call::Write(b) => b.clone(),
            Call::Admin(a) => Bytes::from(encode_raft(a).ok()?),
        };
        let req = net::request(&self.me, l, body);
        let fut = async {
            match call {
                Call::Write(_) => client.forward(req).await,
                Call::Admin(_) => client.admin(req).await,
            }
        };
        match tokio::time::timeout(ttl, fut).await {
            Ok(Ok(resp)) => match decode_raft::<WriteResult>(resp.get_ref()) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(leader = l, "undecodable forward reply: {e}");
                    None
                }
            },
            Ok(Err(status)) => {
                tracing::debug!(leader = l, "forward failed: {status}");
                None
            }
            Err(_) => None,
        }
    }
}
