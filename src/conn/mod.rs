//! One MQTT client connection: CONNECT handshake, the packet loop, keep-alive, outbound
//! delivery from the session queue, takeover and shutdown.
//!
//! ```text
//!  accept ──▶ awaiting CONNECT ──(CONNACK 0)──▶ connected ──▶ closing (DISCONNECT/close) ──▶ detach
//!                 │ timeout / bad packet / refused                   ▲ kick (takeover, admin,
//!                 └──────────────────────────────▶ closed            │       shutdown), error
//! ```
//! Owned by the listener's accept loop (one task per connection). The task owns the socket; it
//! takes the session lock briefly to move messages between the session queue and its write buffer.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use crate::auth::AclAction;
use crate::broker::control::{Admission, Commit, CommitError, LinkAuth, LinkHello, LinkHooks, Op, Outcome, Replica};
use crate::broker::message::{now_ms, Delivery, Message};
use crate::broker::session::{Inflight, Kick, Session};
use crate::broker::Attached;
use crate::broker::{granted_qos, Broker, Deferred};
use crate::metrics::inc;
use crate::mqtt::codec::{self, CodecError};
use crate::mqtt::packet::{reason, *};
use crate::mqtt::topic;

mod acks;
mod connect;
mod inbound;
mod outbound;

use acks::*;
pub use outbound::encode_delivery;

/// Stop pulling from the session queue while this much is waiting to be written.
const HIGH_WATER: usize = 64 * 1024;
/// Read buffer of an idle connection; a connection whose reads fill it gets `BUSY_READ`.
const IDLE_READ: usize = 512;
const BUSY_READ: usize = 16 * 1024;
/// A read this large means traffic (a PINGREQ is 2 bytes, a PUBACK 4).
const BUSY_MARK: usize = 64;
/// Acknowledgements waiting for a cluster commit before this connection stops reading.
const PENDING_MAX: usize = 256;

/// Why the packet loop ended.
enum Close {
    /// Client sent DISCONNECT; `keep_will` for v5 reason 0x04.
    Normal {
        keep_will: bool,
    },
    /// Network closed or failed without DISCONNECT.
    Abnormal,
    /// We end the connection with this reason (DISCONNECT sent to v5 clients).
    Server(u8, &'static str),
    Kicked(Kick),
}

/// Serve one connection from accept to close. Never panics on client input.
pub async fn serve<R, W>(rd: R, wr: W, peer: SocketAddr, broker: Arc<Broker>, link_only: bool)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let span = tracing::info_span!("conn", %peer, client_id = tracing::field::Empty);
    async move {
        broker.metrics.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        inc(&broker.metrics.connections_total);
        let mut conn = Conn {
            rd,
            wr,
            // Small until used: an idle connection costs a 512-byte read buffer and an empty
            // write buffer (it grows on the first write); see `grow_inbuf` for busy ones.
            inbuf: BytesMut::with_capacity(IDLE_READ),
            outbuf: BytesMut::new(),
            busy_read: false,
            peer,
            broker: broker.clone(),
            link_only,
        };
        conn.run().await;
        broker.metrics.connections.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
    .instrument(span)
    .await
}

struct Conn<R, W> {
    rd: R,
    wr: W,
    inbuf: BytesMut,
    outbuf: BytesMut,
    peer: SocketAddr,
    broker: Arc<Broker>,
    /// The link listener: only other clusters' link clients are accepted.
    link_only: bool,
    /// The read buffer was switched to `BUSY_READ` (see `grow_inbuf`).
    busy_read: bool,
}

/// State of a connection after a successful CONNECT.
struct Live {
    session: Arc<Session>,
    conn_id: u64,
    kick_rx: mpsc::Receiver<Kick>,
    protocol: Protocol,
    client_id: Arc<str>,
    username: Option<String>,
    /// Boxed: most connections have none, and `Live` lives as long as the connection.
    will: Option<Box<Will>>,
    keep_alive: Option<Duration>,
    aliases: HashMap<u16, String>,
    /// Client's Maximum Packet Size (v5), u32::MAX when not given.
    max_out: usize,
    /// Client asked not to get reason strings / user properties on errors.
    problem_info: bool,
    connect_expiry: u32,
    /// A connected subscriber whose queue this connection's publishes filled past half: stop
    /// reading until it drains (TCP backpressure on the publisher instead of drops).
    throttle: Option<crate::broker::Congestion>,
    /// Acknowledgements in order, some waiting for cluster commits.
    pending: VecDeque<Pending>,
    /// Entries of `pending` holding deliveries back (a QoS 2 message being committed, and the
    /// messages published behind it): while any is, new messages' deliveries queue too.
    held: usize,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Conn<R, W> {
    async fn run(&mut self) {
        let connect = match Box::pin(self.read_connect()).await {
            Some(c) => c,
            None => return,
        };
        // The CONNECT phases run boxed: their state would otherwise widen the connection's
        // task for its whole life (the task is one allocation sized for its largest state).
        let Some(mut live) = Box::pin(self.accept_connect(*connect)).await else { return };
        tracing::Span::current().record("client_id", &*live.client_id);
        tracing::debug!(protocol = ?live.protocol, "conn.connected");
        let close = self.packet_loop(&mut live).await;
        let will = match &close {
            Close::Normal { keep_will: false } => None,
            _ => live.will.take().map(|w| *w),
        };
        match close {
            Close::Server(code, why) => {
                tracing::info!(peer = %self.peer, reason = code, why, "conn.closed_by_server");
                Box::pin(self.send_disconnect(&live, code, Some(why))).await;
            }
            Close::Kicked(k) => {
                let (code, why) = match k {
                    Kick::TakenOver => (reason::SESSION_TAKEN_OVER, None),
                    Kick::Admin => (reason::ADMINISTRATIVE_ACTION, None),
                    Kick::Shutdown => (reason::SERVER_SHUTTING_DOWN, None),
                    Kick::Unavailable => (reason::SERVER_UNAVAILABLE, Some("this node is cut off from its cluster")),
                };
                Box::pin(self.send_disconnect(&live, code, why)).await;
            }
            Close::Normal { .. } | Close::Abnormal => {}
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.wr.shutdown()).await;
        self.broker.detach(&live.session, live.conn_id, will);
        tracing::debug!("conn.closed");
    }

    /// Traffic on a connection that started idle: the first read of `BUSY_MARK` bytes or more
    /// switches to a read buffer *created* at 8 KiB (decoded packets are split off the buffer
    /// and shared, so later growth allocates blocks sized by the buffer's original capacity: a
    /// buffer born at 512 bytes kept reads small and cost 60 % of the QoS 1 throughput,
    /// strait-bench qos1-1to1 130k instead of 330k msgs/s); then a read that fills `IDLE_READ`
    /// makes room for `BUSY_READ`, as before.
    fn grow_inbuf(&mut self, n: usize) {
        if !self.busy_read {
            self.busy_read = true;
            let mut b = BytesMut::with_capacity(8 * 1024 + self.inbuf.len());
            b.extend_from_slice(&self.inbuf);
            self.inbuf = b;
        }
        if n >= IDLE_READ {
            self.inbuf.reserve(BUSY_READ);
        }
    }
}

#[cfg(test)]
mod size_tests {
    /// An idle connection's cost is mostly its task: the future `serve` returns lives in one
    /// allocation for the connection's whole life. Keep it small (big rarely-used states go
    /// behind a Box).
    #[tokio::test]
    async fn the_connection_task_stays_small() {
        let cfg = crate::config::Config::default();
        let broker =
            crate::broker::Broker::new(&cfg, None, tokio_util::sync::CancellationToken::new()).expect("broker");
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let c = tokio::net::TcpStream::connect(l.local_addr().expect("addr")).await.expect("connect");
        let (rd, wr) = c.into_split();
        let peer = l.local_addr().expect("addr");
        let fut = super::serve(rd, wr, peer, broker, false);
        let size = std::mem::size_of_val(&fut);
        eprintln!(
            "connection future: {size} bytes (Live {}, Sleep {}, Will {}, Properties {}, Connect {})",
            std::mem::size_of::<super::Live>(),
            std::mem::size_of::<tokio::time::Sleep>(),
            std::mem::size_of::<crate::mqtt::packet::Will>(),
            std::mem::size_of::<crate::mqtt::packet::Properties>(),
            std::mem::size_of::<crate::mqtt::packet::Connect>(),
        );
        assert!(size <= 2048, "the connection future grew to {size} bytes (it was 1384)");
    }
}
