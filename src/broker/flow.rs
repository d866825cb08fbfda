//! What a publisher waits for before it reads on: a connected subscriber whose queue it filled
//! past half (TCP backpressure on the publisher instead of drops), here or elsewhere.

use std::sync::Arc;
use std::time::Duration;

use super::control::Congestion;
use super::session::Session;
use super::Broker;

impl Congestion {
    /// Wait, at most `max`, until it has drained below a quarter.
    pub async fn wait(&self, broker: &Broker, max: Duration) {
        match self {
            Congestion::Session(s) => broker.wait_drained(s, max).await,
            Congestion::Remote(d) => d.drained(max).await,
        }
    }

    pub fn is_session(&self, s: &Arc<Session>) -> bool {
        matches!(self, Congestion::Session(x) if Arc::ptr_eq(x, s))
    }
}

impl Broker {
    /// Wait (bounded by `max`) until `session`'s queue is below a quarter of its bound.
    pub async fn wait_drained(&self, session: &Session, max: Duration) {
        let low = self.mqtt.max_mqueue_len / 4;
        let _ = tokio::time::timeout(max, async {
            loop {
                let notified = session.drained.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if session.lock().queue.len() <= low || !session.is_connected() {
                    break;
                }
                notified.await;
            }
        })
        .await;
    }
}
