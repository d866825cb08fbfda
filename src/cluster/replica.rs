//! The cluster as the broker's `Replica`: broker operations become replicated commands, their
//! outcomes broker outcomes, and the queues a publisher may wait on live here.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use strait_raft::net::peer::PeerSender;

use super::{Cluster, Command, Outcome as ClusterOutcome, Response};
use crate::broker::control::{Commit, CommitError, Congestion, Drain, Op, Outcome, Replica};
use crate::broker::message::Delivery;

impl Cluster {
    /// The replicated command for a broker operation of this node.
    pub fn command(&self, op: Op) -> Command {
        match op {
            Op::Connect { client_id, protocol, clean_start, expiry_interval, will, link } => {
                Command::Connect { client_id, node: self.id, protocol, clean_start, expiry_interval, will, link }
            }
            Op::Disconnect { client_id, epoch, at_ms, expiry_interval } => {
                Command::Disconnect { client_id, epoch, at_ms, expiry_interval }
            }
            Op::Subscribe { client_id, epoch, filter, sub } => Command::Subscribe { client_id, epoch, filter, sub },
            Op::Unsubscribe { client_id, epoch, filter } => Command::Unsubscribe { client_id, epoch, filter },
            Op::Retain { msg } => Command::Retain { msg },
            Op::Enqueue { msg, targets, bound } => {
                self.metrics.enqueued.fetch_add(targets.len() as u64, Ordering::Relaxed);
                Command::Enqueue { msg, targets, bound }
            }
            Op::Ack { client_id, seqs } => Command::Ack { client_id, seqs },
            Op::Received { client_id, epoch, pkid, ops } => Command::ReceivedAt {
                client_id,
                epoch,
                pkid,
                cmds: ops.into_iter().map(|op| self.command(op)).collect(),
            },
            Op::Released { client_id, epoch, pkid } => Command::ReleasedAt { client_id, epoch, pkid },
        }
    }

    /// A replicated outcome as the broker sees it.
    fn outcome(&self, r: Response) -> Outcome {
        match r.outcome {
            ClusterOutcome::Connected { present, .. } => Outcome::Connected { present },
            ClusterOutcome::Stale => Outcome::Stale,
            ClusterOutcome::Duplicate => Outcome::Duplicate,
            ClusterOutcome::Enqueued { congested } => Outcome::Enqueued {
                congested: congested.and_then(|(client_id, low)| {
                    let cluster = self.this.upgrade()?;
                    let drain = DurableDrain { cluster, client_id: client_id.clone(), low };
                    Some((client_id, Congestion::Remote(Arc::new(drain))))
                }),
            },
            ClusterOutcome::Done | ClusterOutcome::Orphaned { .. } => Outcome::Done,
        }
    }
}

impl Replica for Cluster {
    fn node(&self) -> u64 {
        self.id
    }

    fn available(&self) -> bool {
        Cluster::available(self)
    }

    fn commit(&self, ops: Vec<Op>) -> Commit {
        let Some(me) = self.this.upgrade() else {
            return Box::pin(async { Err(CommitError::ShuttingDown) });
        };
        let rx = me.commit(ops.into_iter().map(|op| self.command(op)).collect());
        Box::pin(async move {
            let rs = rx.await.map_err(|_| CommitError::ShuttingDown)??;
            Ok(rs.into_iter().map(|r| me.outcome(r)).collect())
        })
    }

    fn commit_detached(&self, ops: Vec<Op>) {
        if let Some(me) = self.this.upgrade() {
            me.commit_detached(ops.into_iter().map(|op| self.command(op)).collect());
        }
    }

    fn forward(&self, owner: u64, client_id: &str, d: &Delivery) -> Option<Congestion> {
        let sender = Cluster::forward(self, owner, client_id, d)?;
        Some(Congestion::Remote(sender))
    }

    fn ack(&self, client_id: &Arc<str>, seq: u64) {
        Cluster::ack(self, client_id, seq)
    }
}

/// Another node's data-plane queue.
impl Drain for PeerSender {
    fn drained(&self, max: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.wait_drained(max))
    }
}

/// A connected persistent session's replicated queue past half its bound: drained when it is
/// at `low` or below, or the session is no longer connected.
struct DurableDrain {
    cluster: Arc<Cluster>,
    client_id: String,
    low: u32,
}

impl Drain for DurableDrain {
    fn drained(&self, max: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            // Re-read when this node's view moves (acks are applied through it): no polling.
            let mut view = self.cluster.view();
            let _ = tokio::time::timeout(max, async {
                loop {
                    view.borrow_and_update();
                    let busy = self
                        .cluster
                        .read(|s| {
                            s.sessions
                                .get(&self.client_id)
                                .is_some_and(|e| e.connected && e.queue.len() > self.low as usize)
                        })
                        .await;
                    if !busy || view.changed().await.is_err() {
                        break;
                    }
                }
            })
            .await;
        })
    }
}
