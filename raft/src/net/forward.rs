//! The ordered forwarding stream, leader side: a follower's proposal batches arrive on one
//! gRPC stream, become log entries in the order they arrive, and are answered in that order
//! (one reply per batch, the same `WriteResult` as the unary `forward`).
//!
//! Every batch of a stream is written under the leader id this node held when the stream
//! opened (openraft's conditional write): once leadership moves, that batch and every later
//! one are refused, so the batches of one stream that reach the log are always a prefix of
//! what was sent. A stream opened on a node that does not lead is refused at once.
//!
//! Bounds: at most `STREAM_DEPTH` batches per stream are taken in and not yet answered (past
//! that the stream is not read: the sender waits); each message is bounded by `MAX_MESSAGE`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use openraft::errors::{Fatal, RaftError};
use openraft::impls::ProgressResponder;
use openraft::metrics::RaftServerMetrics;
use openraft::raft::ClientWriteResult;
use openraft::type_config::alias::{CommittedLeaderIdOf, OneshotReceiverOf, WatchReceiverOf};
use openraft::type_config::async_runtime::WatchReceiver;
use tonic::{Status, Streaming};

use super::{Faults, RaftHandle, WriteResult, C};
use crate::{decode, encode_raft, Proposal, Request, StateMachine};

/// Batches of one stream taken in and not yet answered, at most.
pub const STREAM_DEPTH: usize = 64;

pub type ReplyStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send + 'static>>;

struct St<S: StateMachine> {
    raft: RaftHandle<S>,
    faults: Arc<Faults>,
    from: Option<u64>,
    leader: CommittedLeaderIdOf<C>,
    /// The term it leads in.
    term: u64,
    /// None once the caller closed its side (or sent something unusable).
    input: Option<Streaming<Bytes>>,
    waiting: VecDeque<OneshotReceiverOf<C, ClientWriteResult<C>>>,
    /// Role changes of this node: once it no longer leads (or Raft stopped), the stream ends,
    /// so the follower turns to the new leader at once and a shutdown is not held up by it.
    server: WatchReceiverOf<C, RaftServerMetrics<C>>,
    /// Set after an error reply: the stream ends.
    done: bool,
}

enum Step {
    Reply(Result<Bytes, Status>),
    Continue,
}

pub(super) fn serve<S: StateMachine>(
    raft: RaftHandle<S>,
    faults: Arc<Faults>,
    from: Option<u64>,
    input: Streaming<Bytes>,
) -> Result<ReplyStream, Status> {
    let leader = match raft.as_leader() {
        Ok(l) => l.to_committed_leader_id(),
        Err(f) => {
            return Err(Status::failed_precondition(format!("not the leader (it is {:?})", f.leader_id)));
        }
    };
    let server = raft.server_metrics();
    let term = server.borrow_watched().vote.leader_id.term;
    let st = St { raft, faults, from, leader, term, input: Some(input), waiting: VecDeque::new(), server, done: false };
    Ok(Box::pin(futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if st.done || (st.input.is_none() && st.waiting.is_empty()) {
                return None;
            }
            match step(&mut st).await {
                Step::Reply(r) => {
                    st.done |= r.is_err();
                    return Some((r, st));
                }
                Step::Continue => {}
            }
        }
    })))
}

/// Take in the next batch (while there is room) or answer the oldest one, whichever is first.
async fn step<S: StateMachine>(st: &mut St<S>) -> Step {
    let room = st.waiting.len() < STREAM_DEPTH;
    let St { raft, faults, from, leader, term, input, waiting, server, .. } = st;
    tokio::select! {
        biased;
        r = server.changed() => {
            let leads = r.is_ok() && {
                let m = server.borrow_watched();
                m.state == openraft::ServerState::Leader && m.vote.leader_id.term == *term
            };
            if leads {
                Step::Continue
            } else {
                Step::Reply(Err(Status::unavailable("this node no longer leads")))
            }
        }
        r = async {
            match waiting.front_mut() {
                Some(rx) => rx.await,
                None => std::future::pending().await,
            }
        } => {
            waiting.pop_front();
            let r: WriteResult = match r {
                Ok(r) => r.map_err(RaftError::APIError),
                Err(_) => Err(RaftError::Fatal(Fatal::Stopped)),
            };
            Step::Reply(encode_raft(&r).map(Bytes::from).map_err(|e| Status::internal(e.to_string())))
        }
        m = async {
            match input.as_mut() {
                Some(i) => i.next().await,
                None => std::future::pending().await,
            }
        }, if room => {
            let body = match m {
                Some(Ok(b)) => b,
                Some(Err(_)) | None => {
                    *input = None;
                    return Step::Continue;
                }
            };
            if let Some(from) = from {
                if let Err(e) = faults.pass(*from).await {
                    return Step::Reply(Err(Status::unavailable(e)));
                }
            }
            // Only a batch this node could apply becomes an entry.
            if let Err(e) = decode::<Vec<Proposal<S::Command>>>(&body) {
                return Step::Reply(Err(Status::invalid_argument(format!("not a proposal: {e}"))));
            }
            let (responder, rx) = ProgressResponder::complete_only();
            match raft.write(Request(body.to_vec())).with_leader(*leader).responder(responder).await {
                Ok(()) => {
                    waiting.push_back(rx);
                    Step::Continue
                }
                Err(e) => Step::Reply(Err(Status::unavailable(e.to_string()))),
            }
        }
    }
}
