//! Broker counters and gauges, rendered in the Prometheus text format by the API.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[derive(Default)]
pub struct Metrics {
    pub connections: AtomicI64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    /// HTTP API requests refused for want of a valid API key.
    pub api_denied: AtomicU64,
    /// Retained messages refused (or delivered without being retained) past the retained bounds.
    pub retained_refused: AtomicU64,
    /// Failed logins answered late (the per-address login throttle).
    pub logins_throttled: AtomicU64,
    pub sessions: AtomicI64,
    pub subscriptions: AtomicI64,
    pub retained: AtomicI64,
    pub messages_in: [AtomicU64; 3],
    pub messages_out: [AtomicU64; 3],
    pub messages_dropped: AtomicU64,
    pub messages_dropped_qos0_evicted: AtomicU64,
    pub messages_dropped_oldest: AtomicU64,
    pub messages_expired: AtomicU64,
    pub messages_no_subscribers: AtomicU64,
    pub messages_denied: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub malformed_packets: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub auth_failures: AtomicU64,
    pub keepalive_timeouts: AtomicU64,
    pub send_timeouts: AtomicU64,
    pub wills_published: AtomicU64,
    /// Requests refused at a configured bound, by [`Limit`].
    pub limits_hit: [AtomicU64; Limit::ALL.len()],
}

/// The per-client bounds a request can run into (each a config key under `mqtt`).
#[derive(Clone, Copy)]
pub enum Limit {
    /// max_subscriptions (SUBACK 0x97)
    Subscriptions,
    /// max_topic_alias (DISCONNECT 0x94)
    TopicAlias,
    /// max_clientid_len (CONNACK 0x85)
    ClientIdLength,
    /// the Receive Maximum we advertise, max_inflight (DISCONNECT 0x93)
    ReceiveMaximum,
    /// max_user_properties (DISCONNECT 0x95)
    UserProperties,
    /// max_packet_size (DISCONNECT 0x95)
    PacketSize,
}

impl Limit {
    pub const ALL: [Limit; 6] = [
        Limit::Subscriptions,
        Limit::TopicAlias,
        Limit::ClientIdLength,
        Limit::ReceiveMaximum,
        Limit::UserProperties,
        Limit::PacketSize,
    ];

    fn label(self) -> &'static str {
        match self {
            Limit::Subscriptions => "max_subscriptions",
            Limit::TopicAlias => "max_topic_alias",
            Limit::ClientIdLength => "max_clientid_len",
            Limit::ReceiveMaximum => "receive_maximum",
            Limit::UserProperties => "max_user_properties",
            Limit::PacketSize => "max_packet_size",
        }
    }
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    pub fn limit_hit(&self, l: Limit) {
        inc(&self.limits_hit[l as usize]);
    }

    /// Prometheus exposition. `queued` is the total of all session queues, `inflight` of all
    /// inflight windows (computed by the caller).
    pub fn render(&self, queued: usize, inflight: usize) -> String {
        let mut s = String::with_capacity(4096);
        let g = |s: &mut String, name: &str, help: &str, kind: &str, v: i64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed) as i64;
        let li = |a: &AtomicI64| a.load(Ordering::Relaxed);
        g(&mut s, "strait_connections", "Open MQTT connections", "gauge", li(&self.connections));
        g(&mut s, "strait_connections_total", "MQTT connections accepted", "counter", ld(&self.connections_total));
        g(
            &mut s,
            "strait_connections_refused_total",
            "Connections refused (CONNACK failure or limit)",
            "counter",
            ld(&self.connections_refused),
        );
        g(
            &mut s,
            "strait_logins_throttled_total",
            "Failed logins whose answer was held back (4th and later failure from one address within a minute)",
            "counter",
            ld(&self.logins_throttled),
        );
        g(
            &mut s,
            "strait_retained_refused_total",
            "Retained messages not stored: max_retained_messages or max_retained_bytes reached",
            "counter",
            ld(&self.retained_refused),
        );
        g(
            &mut s,
            "strait_api_denied_total",
            "HTTP API requests without a valid API key",
            "counter",
            ld(&self.api_denied),
        );
        g(&mut s, "strait_sessions", "Sessions (connected and persistent)", "gauge", li(&self.sessions));
        g(&mut s, "strait_subscriptions", "Subscriptions", "gauge", li(&self.subscriptions));
        g(&mut s, "strait_retained_messages", "Retained messages", "gauge", li(&self.retained));
        for (name, help, arr) in [
            ("strait_messages_received_total", "PUBLISH packets received from clients", &self.messages_in),
            ("strait_messages_sent_total", "PUBLISH packets sent to clients", &self.messages_out),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
            for (q, c) in arr.iter().enumerate() {
                let _ = writeln!(s, "{name}{{qos=\"{q}\"}} {}", c.load(Ordering::Relaxed));
            }
        }
        g(
            &mut s,
            "strait_messages_dropped_total",
            "Messages dropped: refused by a full session queue (drop_newest), or too large for the queue or the client",
            "counter",
            ld(&self.messages_dropped),
        );
        g(
            &mut s,
            "strait_messages_qos0_evicted_total",
            "Queued QoS 0 messages evicted for QoS>=1",
            "counter",
            ld(&self.messages_dropped_qos0_evicted),
        );
        g(
            &mut s,
            "strait_messages_dropped_oldest_total",
            "Queued messages evicted from a full session queue (mqueue_overflow = drop_oldest)",
            "counter",
            ld(&self.messages_dropped_oldest),
        );
        g(&mut s, "strait_messages_expired_total", "Messages dropped on expiry", "counter", ld(&self.messages_expired));
        g(
            &mut s,
            "strait_messages_no_subscribers_total",
            "Messages published with no matching subscriber",
            "counter",
            ld(&self.messages_no_subscribers),
        );
        g(
            &mut s,
            "strait_messages_denied_total",
            "PUBLISH denied by authorization",
            "counter",
            ld(&self.messages_denied),
        );
        g(&mut s, "strait_bytes_received_total", "Bytes read from MQTT clients", "counter", ld(&self.bytes_in));
        g(&mut s, "strait_bytes_sent_total", "Bytes written to MQTT clients", "counter", ld(&self.bytes_out));
        g(
            &mut s,
            "strait_malformed_packets_total",
            "Connections closed for malformed packets",
            "counter",
            ld(&self.malformed_packets),
        );
        g(
            &mut s,
            "strait_protocol_errors_total",
            "Connections closed for protocol errors",
            "counter",
            ld(&self.protocol_errors),
        );
        g(&mut s, "strait_auth_failures_total", "Failed authentications", "counter", ld(&self.auth_failures));
        g(
            &mut s,
            "strait_keepalive_timeouts_total",
            "Connections closed on keep-alive timeout",
            "counter",
            ld(&self.keepalive_timeouts),
        );
        g(
            &mut s,
            "strait_send_timeouts_total",
            "Connections closed because the client read nothing for mqtt.send_timeout",
            "counter",
            ld(&self.send_timeouts),
        );
        g(&mut s, "strait_wills_published_total", "Will messages published", "counter", ld(&self.wills_published));
        let _ = writeln!(
            s,
            "# HELP strait_limits_hit_total Requests refused at a configured per-client bound\n# TYPE strait_limits_hit_total counter"
        );
        for l in Limit::ALL {
            let _ =
                writeln!(s, "strait_limits_hit_total{{limit=\"{}\"}} {}", l.label(), ld(&self.limits_hit[l as usize]));
        }
        g(&mut s, "strait_queued_messages", "Messages waiting in session queues", "gauge", queued as i64);
        g(
            &mut s,
            "strait_inflight_messages",
            "QoS>=1 messages sent and not yet acknowledged",
            "gauge",
            inflight as i64,
        );
        s
    }
}
