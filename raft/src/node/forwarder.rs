//! The ordered forwarding stream, follower side (`net::forward` is the leader's): batches sent
//! to the leader on one gRPC stream, answered in the order they were sent.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;

use futures_util::StreamExt;

use super::*;

/// Who waits for the replies still due, in send order; `closed` once the replies have ended
/// (nobody is answered after that).
#[derive(Default)]
struct Waiting {
    closed: bool,
    queue: VecDeque<oneshot::Sender<Option<ClientWriteResponse<C>>>>,
}

/// An open stream to the leader.
pub(super) struct Forwarder {
    pub leader: u64,
    tx: mpsc::Sender<Bytes>,
    waiting: Arc<Mutex<Waiting>>,
    broken: Arc<AtomicBool>,
}

impl Forwarder {
    /// Send one batch; the receiver yields its committed answer, or None when it failed or the
    /// stream broke first (the batch may or may not have been committed). None: not sent.
    pub fn send(&self, bytes: Bytes) -> Option<oneshot::Receiver<Option<ClientWriteResponse<C>>>> {
        let (tx, rx) = oneshot::channel();
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if w.closed {
            return None;
        }
        // Sent under the lock, so the reply reader pairs replies with waiters in send order.
        self.tx.try_send(bytes).ok()?;
        w.queue.push_back(tx);
        Some(rx)
    }

    /// The stream failed (a reply said so, or it ended): open a new one for the next batch.
    pub fn broken(&self) -> bool {
        self.broken.load(Ordering::Acquire) || self.tx.is_closed()
    }
}

impl<S: StateMachine> Inner<S> {
    /// Open a forwarding stream to leader `l`; None when it cannot be opened now (then batches
    /// go one at a time through `call`).
    pub(super) async fn open_stream(&self, l: u64) -> Option<Forwarder> {
        let mut client = self.client_for(l)?;
        let (tx, rx) = mpsc::channel::<Bytes>(self.cfg.max_in_flight.max(1));
        let outgoing = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
        let req = net::request(&self.me, l, outgoing);
        let replies = match tokio::time::timeout(self.cfg.election_min, client.forward_stream(req)).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => {
                tracing::debug!(leader = l, "forwarding stream refused: {status}");
                return None;
            }
            Err(_) => return None,
        };
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        let broken = Arc::new(AtomicBool::new(false));
        let (w, b, cancel) = (waiting.clone(), broken.clone(), self.cancel.clone());
        self.tracker.spawn(async move {
            let mut replies = replies;
            loop {
                let item = tokio::select! {
                    _ = cancel.cancelled() => break,
                    m = replies.next() => m,
                };
                let Some(Ok(bytes)) = item else { break };
                let answer = match decode_raft::<WriteResult>(&bytes) {
                    Ok(Ok(resp)) => Some(resp),
                    _ => {
                        b.store(true, Ordering::Release);
                        None
                    }
                };
                let next = w.lock().unwrap_or_else(|e| e.into_inner()).queue.pop_front();
                match next {
                    Some(tx) => {
                        let _ = tx.send(answer);
                    }
                    None => break,
                }
            }
            b.store(true, Ordering::Release);
            let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
            w.closed = true;
            w.queue.clear();
        });
        Some(Forwarder { leader: l, tx, waiting, broken })
    }
}
