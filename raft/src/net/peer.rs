//! A node-to-node data plane for the application, beside Raft on the same gRPC port: one
//! long-lived client stream per peer, items batched into frames, delivered in the order they
//! were sent. Best effort: items queued while a peer is unreachable are dropped (counted), the
//! stream reconnects with backoff. What must survive goes through Raft instead.
//!
//! Backpressure end to end: the receiver may ask to wait before it reads on (its consumer is
//! slow); HTTP/2 flow control then stalls the sender's stream, its queue fills, and the
//! application sees `PeerSender::congested` and slows its producers.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use super::{channel, request, Faults, Identity, MAX_MESSAGE};

#[allow(clippy::all, dead_code)]
pub(crate) mod pb {
    include!(concat!(env!("OUT_DIR"), "/strait.peer.Peer.rs"));
}

/// Items per frame at most.
const FRAME_ITEMS: usize = 512;
/// Bytes per frame at most (before the last item).
const FRAME_BYTES: usize = 1 << 20;

/// A wait the receiver asks for before it reads on.
pub type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the application does with items from a peer. Returning a wait pauses this stream
/// (and, through flow control, the sender) until it completes.
pub trait PeerHandler: Send + Sync + 'static {
    fn on_item(&self, from: u64, item: Bytes) -> Option<Wait>;
}

struct PeerSvc<H> {
    me: Identity,
    handler: Arc<H>,
    faults: Arc<Faults>,
}

#[tonic::async_trait]
impl<H: PeerHandler> pb::peer_server::Peer for PeerSvc<H> {
    async fn stream(&self, request: Request<Streaming<Bytes>>) -> Result<Response<Bytes>, Status> {
        let md = request.metadata();
        self.me.authenticate(md)?;
        let cluster = md.get(super::META_CLUSTER).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        if cluster != *self.me.cluster {
            return Err(Status::failed_precondition(format!(
                "cluster name mismatch: this node belongs to cluster {:?}, the caller to {cluster:?}",
                self.me.cluster
            )));
        }
        let from = md.get(super::META_FROM).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        let Some(from) = from else { return Err(Status::invalid_argument("missing sender id")) };
        let mut stream = request.into_inner();
        while let Some(frame) = stream.next().await {
            let mut frame = frame?;
            if self.faults.pass(from).await.is_err() {
                continue;
            }
            while frame.remaining() >= 4 {
                let n = frame.get_u32() as usize;
                if n > frame.remaining() {
                    return Err(Status::invalid_argument("truncated item in frame"));
                }
                if let Some(wait) = self.handler.on_item(from, frame.split_to(n)) {
                    wait.await;
                }
            }
        }
        Ok(Response::new(Bytes::new()))
    }
}

/// The gRPC service to pass to `RaftNode::start` as `extra` routes.
pub fn routes<H: PeerHandler>(me: Identity, handler: Arc<H>, faults: Arc<Faults>) -> tonic::service::Routes {
    let svc = pb::peer_server::PeerServer::new(PeerSvc { me, handler, faults }).max_decoding_message_size(MAX_MESSAGE);
    tonic::service::Routes::new(svc)
}

/// The sending side of the stream to one peer.
pub struct PeerSender {
    tx: mpsc::Sender<Bytes>,
    cap: usize,
    drained: Notify,
    pub dropped: AtomicU64,
    pub sent: AtomicU64,
}

impl PeerSender {
    /// Items waiting to be sent.
    pub fn depth(&self) -> usize {
        self.cap - self.tx.capacity()
    }

    /// More than half the queue is waiting: producers should slow down.
    pub fn congested(&self) -> bool {
        self.depth() > self.cap / 2
    }

    /// Wait (at most `max`) until the queue is below a quarter of its bound.
    pub async fn wait_drained(&self, max: Duration) {
        let _ = tokio::time::timeout(max, async {
            loop {
                let n = self.drained.notified();
                tokio::pin!(n);
                n.as_mut().enable();
                if self.depth() <= self.cap / 4 {
                    break;
                }
                n.await;
            }
        })
        .await;
    }

    /// Queue one item; false (and counted) when the queue is full.
    pub fn send(&self, item: Bytes) -> bool {
        if self.tx.try_send(item).is_ok() {
            self.sent.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// Start the sender task for `target` at `addr`; it lives until `cancel`.
pub fn spawn_sender(
    me: Identity,
    target: u64,
    addr: String,
    faults: Arc<Faults>,
    queue: usize,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Arc<PeerSender> {
    let cap = queue.max(4);
    let (tx, rx) = mpsc::channel(cap);
    let sender =
        Arc::new(PeerSender { tx, cap, drained: Notify::new(), dropped: AtomicU64::new(0), sent: AtomicU64::new(0) });
    tracker.spawn(run_sender(me, target, addr, faults, rx, cancel, sender.clone()));
    sender
}

async fn run_sender(
    me: Identity,
    target: u64,
    addr: String,
    faults: Arc<Faults>,
    mut rx: mpsc::Receiver<Bytes>,
    cancel: CancellationToken,
    sender: Arc<PeerSender>,
) {
    let mut backoff = Duration::from_millis(20);
    'outer: loop {
        if cancel.is_cancelled() {
            break;
        }
        let chan = match channel(&me, &addr, Duration::from_secs(1)) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(target, "peer stream: {e}");
                break;
            }
        };
        let mut client = pb::peer_client::PeerClient::new(chan).max_encoding_message_size(MAX_MESSAGE);
        let (ftx, frx) = mpsc::channel::<Bytes>(2);
        let frames = futures_util::stream::unfold(frx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
        let call = client.stream(request(&me, target, frames));
        tokio::pin!(call);
        loop {
            let first = tokio::select! {
                _ = cancel.cancelled() => break 'outer,
                r = &mut call => {
                    tracing::debug!(target, "peer stream ended: {:?}", r.err());
                    break;
                }
                m = rx.recv() => match m { Some(m) => m, None => break 'outer },
            };
            // Batch what is waiting into one frame.
            let mut frame = BytesMut::with_capacity(first.len() + 4);
            frame.put_u32(first.len() as u32);
            frame.put_slice(&first);
            let mut n = 1;
            while n < FRAME_ITEMS && frame.len() < FRAME_BYTES {
                match rx.try_recv() {
                    Ok(m) => {
                        frame.put_u32(m.len() as u32);
                        frame.put_slice(&m);
                        n += 1;
                    }
                    Err(_) => break,
                }
            }
            if faults.pass(target).await.is_err() {
                sender.dropped.fetch_add(n as u64, Ordering::Relaxed);
                continue;
            }
            tokio::select! {
                _ = cancel.cancelled() => break 'outer,
                r = &mut call => {
                    tracing::debug!(target, "peer stream ended: {:?}", r.err());
                    sender.dropped.fetch_add(n as u64, Ordering::Relaxed);
                    break;
                }
                r = ftx.send(frame.freeze()) => if r.is_err() {
                    sender.dropped.fetch_add(n as u64, Ordering::Relaxed);
                    break;
                },
            }
            if sender.depth() <= sender.cap / 4 {
                sender.drained.notify_waiters();
            }
            backoff = Duration::from_millis(20);
        }
        sender.drained.notify_waiters();
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}
