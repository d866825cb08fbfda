//! The links' series on `/metrics`: per link, and per remote cluster's outbox here.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::LinkStatus;

type LinkSeries = (&'static str, &'static str, &'static str, fn(&LinkStatus) -> u64);

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

/// Per-link metrics (labels: link = the remote cluster's name).
pub fn render_links(s: &mut String, links: &[std::sync::Arc<LinkStatus>]) {
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
