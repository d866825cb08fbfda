//! A published application message as the broker holds it: shared by every subscriber it goes
//! to (`Arc<Message>`), serialisable so that queues and retained messages can be stored.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::mqtt::packet::{Properties, Publish, QoS, SubOptions};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    /// QoS as published.
    pub qos: QoS,
    pub retain: bool,
    /// Properties passed through to subscribers (payload format, content type, response topic,
    /// correlation data, user properties). Subscription ids and alias are per delivery.
    pub properties: Properties,
    /// Client id of the publisher (for no-local), empty for system messages.
    pub publisher: Arc<str>,
    /// Wall-clock expiry, milliseconds since the Unix epoch (v5 message expiry).
    pub expires_at_ms: Option<u64>,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Message {
    /// Build from a PUBLISH whose topic is already resolved and validated.
    pub fn from_publish(p: Publish, topic: Arc<str>, publisher: Arc<str>) -> Message {
        let mut properties = p.properties;
        let expires_at_ms = properties.message_expiry_interval.take().map(|s| now_ms() + u64::from(s) * 1000);
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        Message { topic, payload: p.payload, qos: p.qos, retain: p.retain, properties, publisher, expires_at_ms }
    }

    /// Remaining lifetime in whole seconds (rounded up), `Some(0)` when expired, `None` when the
    /// message never expires.
    pub fn remaining_secs(&self, now_ms: u64) -> Option<u32> {
        self.expires_at_ms.map(|at| {
            if at <= now_ms {
                0
            } else {
                (at - now_ms).div_ceil(1000).min(u64::from(u32::MAX)) as u32
            }
        })
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.remaining_secs(now_ms) == Some(0)
    }
}

/// One message on its way to one session: the QoS and retain flag it is delivered with and the
/// subscription identifiers of the matching subscriptions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub msg: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub sub_ids: Vec<u32>,
    /// In a cluster: the message's sequence number in the session's replicated queue (a
    /// durable delivery to a persistent session); acknowledged through Raft when completed.
    pub seq: Option<u64>,
}

impl Delivery {
    /// A live (not retained-on-subscribe) delivery under subscription options `opts`.
    pub fn live(msg: &Arc<Message>, opts: &SubOptions, sub_ids: Vec<u32>) -> Delivery {
        Delivery {
            msg: msg.clone(),
            qos: msg.qos.min(opts.qos),
            retain: msg.retain && opts.retain_as_published,
            sub_ids,
            seq: None,
        }
    }
}
