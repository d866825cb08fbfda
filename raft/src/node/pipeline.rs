//! The proposal pipeline: proposals become entries in the order they were made, with up to
//! `max_in_flight` entries of this node being committed at once.
//!
//! - **On the leader** a batch is handed to this node's own Raft core at once, tagged with the
//!   leader id it was made under (openraft's conditional write). Batches enter the log in the
//!   order they are handed over; their answers are taken in that order too.
//! - **On a follower** a batch goes to the leader on one ordered gRPC stream (`forwarder`,
//!   `net::forward`), where the leader writes the stream's batches in arrival order under the
//!   leader id it held when the stream opened, and answers them in that order. When no stream
//!   can be opened, batches go one at a time (`Inner::call`: a unary forward, retried).
//! - **When the leader moves** (this node starts or stops leading, another node leads, or none
//!   does yet), the batches in the air on the old route are not waited for: an isolated
//!   leader's answers never come, and waiting for them held every proposal of this node for
//!   the whole `propose_timeout` (jepsen: a follower's publishes stalled 5 s when the leader
//!   was cut off). Each is submitted again at once, in order, by the forwarding path. This
//!   keeps the order too: they were all written under the old leader's id, and terms only grow
//!   along a log, so whatever of them any later log holds comes before anything a newer leader
//!   writes, and a resubmitted copy of one that landed is recognised and applied once.
//! - **When a batch in the air fails** (leadership moved, the entry was discarded, or no answer
//!   within `propose_timeout`), every batch behind it is waited for, then each one that failed
//!   is submitted again, in order, by the forwarding path (`Inner::call`), before anything new is
//!   taken. Why this keeps the order: all of them were made under one leader id, so the ones
//!   that reached the log form a prefix of the sequence (a write refused for a changed leader id
//!   is refused for every later one: the id only grows), and a committed entry implies every
//!   entry before it in that log is committed. A batch resubmitted after its first copy was
//!   committed anyway is recognised by its request ids and applied once (`dedup`).

use std::collections::VecDeque;

use std::future::Future;
use std::pin::Pin;

use openraft::impls::ProgressResponder;

use super::forwarder::Forwarder;
use super::*;

/// One entry's worth of proposals, encoded, with who waits for each answer.
pub(super) struct Batch<S: StateMachine> {
    bytes: Bytes,
    waiters: Vec<oneshot::Sender<Result<S::Response, ProposeError>>>,
    /// `propose_timeout` after its oldest proposal was made: however it travels (in the air,
    /// then resubmitted), it is answered by then.
    deadline: Instant,
}

/// What became of a flight: committed (with the core's answer) or to be submitted again.
type Landed = Option<ClientWriteResponse<C>>;

/// Where the batches in the air went: this node's own core, or a stream to the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Local,
    Stream(u64),
}

/// A batch in the air, awaiting its answer.
struct Flight<S: StateMachine> {
    batch: Batch<S>,
    answer: Pin<Box<dyn Future<Output = Landed> + Send>>,
    deadline: Instant,
    sent: std::time::Instant,
    stage: &'static crate::stages::Stage,
    route: Route,
}

impl<S: StateMachine> Flight<S> {
    fn new(batch: Batch<S>, answer: impl Future<Output = Landed> + Send + 'static, route: Route) -> Self {
        let stage = match route {
            Route::Local => &crate::stages::CORE,
            Route::Stream(_) => &crate::stages::FORWARD,
        };
        Flight {
            answer: Box::pin(answer),
            deadline: batch.deadline,
            sent: std::time::Instant::now(),
            stage,
            batch,
            route,
        }
    }
}

async fn land<S: StateMachine>(f: &mut Flight<S>) -> Landed {
    let landed = tokio::time::timeout_at(f.deadline, &mut f.answer).await.ok().flatten();
    if landed.is_some() {
        f.stage.add(f.sent);
    }
    landed
}

pub(super) async fn batcher<S: StateMachine>(inner: Arc<Inner<S>>, mut rx: mpsc::Receiver<Pending<S>>) {
    let depth = inner.cfg.max_in_flight.max(1);
    let mut flights: VecDeque<Flight<S>> = VecDeque::new();
    let mut route = Route::Local;
    let mut stream: Option<Forwarder> = None;
    let mut leadership = inner.leadership.clone();
    loop {
        let room = flights.len() < depth;
        tokio::select! {
            biased;
            _ = inner.cancel.cancelled() => break,
            landed = async {
                match flights.front_mut() {
                    Some(f) => land(f).await,
                    None => std::future::pending().await,
                }
            } => {
                let Some(f) = flights.pop_front() else { continue };
                match landed {
                    Some(resp) => inner.answer(f.batch.waiters, Ok(resp)),
                    None => {
                        inner.recover(Some(f.batch), &mut flights).await;
                        stream = None;
                    }
                }
            }
            _ = leadership.changed(), if !flights.is_empty() => {
                if flights.front().is_some_and(|f| inner.moved(f.route)) {
                    inner.abandon(&mut flights).await;
                    stream = None;
                }
            }
            m = rx.recv(), if room => {
                let Some(first) = m else { break };
                let Some(batch) = inner.gather(first, &mut rx) else { continue };
                inner.dispatch(batch, &mut flights, &mut route, &mut stream).await;
            }
        }
    }
    // Shutting down: everything still queued or in the air is answered.
    for f in flights {
        inner.answer(f.batch.waiters, Err(ProposeError::Shutdown));
    }
    rx.close();
    while let Ok(p) = rx.try_recv() {
        let _ = p.tx.send(Err(ProposeError::Shutdown));
    }
}

impl<S: StateMachine> Inner<S> {
    /// Put `batch` in the air: into this node's core when it leads, else on the stream to the
    /// leader; when neither can take it, commit it here and now through `call`. Batches in the
    /// air on another route are settled first (order across routes is not kept by any one
    /// log writer).
    async fn dispatch(
        &self,
        batch: Batch<S>,
        flights: &mut VecDeque<Flight<S>>,
        route: &mut Route,
        stream: &mut Option<Forwarder>,
    ) {
        let leading = self.raft.as_leader().ok().map(|l| l.to_committed_leader_id());
        let leader = self.leadership.borrow().leader.filter(|l| *l != self.cfg.id);
        let want = match (&leading, leader) {
            (Some(_), _) => Some(Route::Local),
            (None, Some(l)) => Some(Route::Stream(l)),
            (None, None) => None,
        };
        if !flights.is_empty() && want != Some(*route) {
            self.abandon(flights).await;
        }
        if stream.as_ref().is_some_and(|s| s.broken() || Some(Route::Stream(s.leader)) != want) {
            *stream = None;
        }
        match (want, leading) {
            (Some(Route::Local), Some(id)) => {
                let (responder, rx) = ProgressResponder::complete_only();
                let sent = self.raft.write(Request(batch.bytes.to_vec())).with_leader(id).responder(responder).await;
                match sent {
                    Ok(()) => {
                        let answer = async move {
                            match rx.await {
                                Ok(Ok(resp)) => Some(resp),
                                _ => None,
                            }
                        };
                        *route = Route::Local;
                        flights.push_back(Flight::new(batch, answer, Route::Local));
                    }
                    Err(e) => self.answer(batch.waiters, Err(ProposeError::Fatal(e.to_string()))),
                }
            }
            (Some(Route::Stream(l)), _) => {
                if stream.is_none() {
                    *stream = self.open_stream(l).await;
                }
                match stream.as_ref().and_then(|s| s.send(batch.bytes.clone())) {
                    Some(rx) => {
                        *route = Route::Stream(l);
                        flights.push_back(Flight::new(batch, async move { rx.await.ok().flatten() }, *route));
                    }
                    None => {
                        *stream = None;
                        if !flights.is_empty() {
                            self.recover(None, flights).await;
                        }
                        self.submit(batch).await;
                    }
                }
            }
            _ => self.submit(batch).await,
        }
    }

    /// `first` and whatever else is queued (up to `max_batch`), encoded; None when encoding
    /// failed (each waiter is told).
    fn gather(&self, first: Pending<S>, rx: &mut mpsc::Receiver<Pending<S>>) -> Option<Batch<S>> {
        let mut props = vec![first.prop];
        let mut waiters = vec![first.tx];
        let deadline = first.at + self.cfg.propose_timeout;
        let mut queued = vec![first.at];
        while props.len() < self.cfg.max_batch {
            match rx.try_recv() {
                Ok(p) => {
                    props.push(p.prop);
                    waiters.push(p.tx);
                    queued.push(p.at);
                }
                Err(_) => break,
            }
        }
        let encoded = encode(&props);
        for at in queued {
            crate::stages::QUEUE.add(at.into_std());
        }
        match encoded {
            Ok(bytes) => Some(Batch { bytes: Bytes::from(bytes), waiters, deadline }),
            Err(e) => {
                for tx in waiters {
                    let _ = tx.send(Err(ProposeError::Encode(e.to_string())));
                }
                None
            }
        }
    }

    /// Whether the batches in the air on `route` can no longer be answered there: this node
    /// no longer leads (Local), or another node, or none, leads now (Stream).
    fn moved(&self, route: Route) -> bool {
        let l = self.leadership.borrow();
        match route {
            Route::Local => !l.is_leader(),
            Route::Stream(to) => l.leader != Some(to),
        }
    }

    /// The leader moved away from where the batches in the air went: none is waited for.
    /// Those already answered are answered; the others are submitted again, in order, through
    /// the forwarding path (see the module's note on why the order holds).
    async fn abandon(&self, flights: &mut VecDeque<Flight<S>>) {
        tracing::debug!(in_air = flights.len(), "proposal pipeline: the leader moved, submitting again in order");
        while let Some(mut f) = flights.pop_front() {
            match futures_util::FutureExt::now_or_never(&mut f.answer).flatten() {
                Some(resp) => self.answer(f.batch.waiters, Ok(resp)),
                None => self.submit(f.batch).await,
            }
        }
    }

    /// A flight failed (`failed`, already taken off the front): wait for every flight behind
    /// it (they may still land in the same log, after it), then answer them in order,
    /// submitting again through the forwarding path each one that did not land. If the leader
    /// moves meanwhile, the rest are not waited for (`abandon`).
    async fn recover(&self, failed: Option<Batch<S>>, flights: &mut VecDeque<Flight<S>>) {
        let mut settled: Vec<(Batch<S>, Landed)> = failed.into_iter().map(|b| (b, None)).collect();
        let mut leadership = self.leadership.clone();
        while let Some(mut f) = flights.pop_front() {
            let landed = loop {
                if self.moved(f.route) {
                    break futures_util::FutureExt::now_or_never(&mut f.answer).flatten();
                }
                tokio::select! {
                    landed = land(&mut f) => break landed,
                    r = leadership.changed() => {
                        if r.is_err() {
                            break land(&mut f).await;
                        }
                    }
                }
            };
            settled.push((f.batch, landed));
        }
        let resubmitted = settled.iter().filter(|(_, l)| l.is_none()).count();
        tracing::debug!(resubmitted, of = settled.len(), "proposal pipeline: leadership moved, resubmitting in order");
        for (batch, landed) in settled {
            match landed {
                Some(resp) => self.answer(batch.waiters, Ok(resp)),
                None => self.submit(batch).await,
            }
        }
    }

    /// Commit `batch` wherever the leader is (retrying through leader changes) and answer it.
    pub(super) async fn submit(&self, batch: Batch<S>) {
        let t = std::time::Instant::now();
        let result = self.call_until(Call::Write(batch.bytes), batch.deadline).await;
        crate::stages::FORWARD.add(t);
        self.answer(batch.waiters, result);
    }

    /// Hand each waiter its proposal's response.
    fn answer(
        &self,
        waiters: Vec<oneshot::Sender<Result<S::Response, ProposeError>>>,
        result: Result<ClientWriteResponse<C>, ProposeError>,
    ) {
        let result = result.and_then(|resp| {
            decode::<Vec<Applied<S::Response>>>(&resp.data.0).map_err(|e| ProposeError::Fatal(e.to_string()))
        });
        match result {
            Ok(responses) => {
                let mut responses = responses.into_iter();
                for tx in waiters {
                    let r = match responses.next() {
                        Some(Applied::Done(r)) => Ok(r),
                        Some(Applied::Expired) => Err(ProposeError::Expired),
                        None => Err(ProposeError::Fatal("fewer responses than proposals".into())),
                    };
                    let _ = tx.send(r);
                }
            }
            Err(e) => {
                for tx in waiters {
                    let _ = tx.send(Err(e.clone()));
                }
            }
        }
    }
}
