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

/// Raft and data-plane metrics of a clustered node.
pub fn render_cluster(s: &mut String, c: &crate::cluster::Cluster) {
    let l = c.leadership();
    let m = c.raft.metrics();
    let cm = &c.metrics;
    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut g = |name: &str, help: &str, kind: &str, v: u64| {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    };
    g("strait_raft_term", "Current Raft term", "gauge", m.current_term);
    g(
        "strait_raft_is_leader",
        "1 when this node leads with a valid lease",
        "gauge",
        u64::from(l.is_leader_with_lease()),
    );
    g(
        "strait_raft_available",
        "1 when this node can commit (leader lease or a leader heard recently)",
        "gauge",
        u64::from(l.lease),
    );
    g("strait_raft_commit_index", "Last committed log index", "gauge", m.local_committed.map(|x| x.index).unwrap_or(0));
    g("strait_raft_applied_index", "Last applied log index", "gauge", m.last_applied.map(|x| x.index).unwrap_or(0));
    g("strait_raft_leader_changes_total", "Leader changes seen by this node", "counter", ld(&cm.leader_changes));
    g("strait_cluster_proposals_total", "Commands proposed by this node", "counter", ld(&cm.proposals));
    g(
        "strait_cluster_proposal_failures_total",
        "Proposals that failed (no leader, timeout)",
        "counter",
        ld(&cm.proposal_failures),
    );
    let sum = ld(&cm.commit_latency_us_sum) as f64 / 1e6;
    let _ = writeln!(
        s,
        "# HELP strait_cluster_commit_seconds_sum Time from proposal to local apply, summed over commits\n# TYPE strait_cluster_commit_seconds_sum counter\nstrait_cluster_commit_seconds_sum {sum:.6}"
    );
    let mut g = |name: &str, help: &str, kind: &str, v: u64| {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    };
    g("strait_dataplane_forwarded_total", "Deliveries sent to other nodes", "counter", ld(&cm.forwarded));
    g(
        "strait_dataplane_dropped_total",
        "Deliveries to other nodes dropped (peer queue full or unreachable)",
        "counter",
        ld(&cm.forward_dropped),
    );
    g(
        "strait_cluster_enqueued_total",
        "Durable deliveries committed for persistent sessions",
        "counter",
        ld(&cm.enqueued),
    );
    g("strait_cluster_acks_total", "Durable deliveries acknowledged by clients", "counter", ld(&cm.acks));
}

type LinkSeries = (&'static str, &'static str, &'static str, fn(&crate::link::LinkStatus) -> u64);

/// Per-link metrics (labels: link = the remote cluster's name).
/// What this cluster holds for a remote cluster's link client (its session here).
pub struct Outbox {
    pub link: String,
    pub depth: u64,
    pub bytes: u64,
    pub dropped: u64,
}

pub fn render_outboxes(s: &mut String, outboxes: &[Outbox]) {
    if outboxes.is_empty() {
        return;
    }
    type Series = (&'static str, &'static str, &'static str, fn(&Outbox) -> u64);
    let series: [Series; 3] = [
        ("strait_link_outbox_messages", "Messages queued here for the remote cluster's link client", "gauge", |o| {
            o.depth
        }),
        ("strait_link_outbox_bytes", "Bytes queued here for the remote cluster's link client", "gauge", |o| o.bytes),
        ("strait_link_outbox_dropped_total", "Messages dropped from a full outbox (oldest first)", "counter", |o| {
            o.dropped
        }),
    ];
    for (name, help, kind, f) in series {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for o in outboxes {
            let _ = writeln!(s, "{name}{{link=\"{}\"}} {}", o.link, f(o));
        }
    }
}

pub fn render_links(s: &mut String, links: &[std::sync::Arc<crate::link::LinkStatus>]) {
    if links.is_empty() {
        return;
    }
    let series: [LinkSeries; 7] = [
        ("strait_link_connected", "1 when this node holds the link's connection", "gauge", |l| {
            u64::from(l.status() == "connected")
        }),
        ("strait_link_routes", "Filters subscribed in the remote cluster for this one", "gauge", |l| {
            l.route_count() as u64
        }),
        ("strait_link_messages_received_total", "Messages received over the link", "counter", |l| {
            l.received.load(Ordering::Relaxed)
        }),
        ("strait_link_messages_published_total", "Messages from the link published here", "counter", |l| {
            l.published.load(Ordering::Relaxed)
        }),
        (
            "strait_link_messages_duplicate_total",
            "Redelivered link messages recognised as duplicates",
            "counter",
            |l| l.duplicates.load(Ordering::Relaxed),
        ),
        ("strait_link_messages_dropped_total", "Link messages outside the link's topics, dropped", "counter", |l| {
            l.dropped.load(Ordering::Relaxed)
        }),
        ("strait_link_connects_total", "Link connections established", "counter", |l| {
            l.connects.load(Ordering::Relaxed)
        }),
    ];
    for (name, help, kind, f) in series {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for l in links {
            let _ = writeln!(s, "{name}{{link=\"{}\"}} {}", l.name(), f(l));
        }
    }
}
