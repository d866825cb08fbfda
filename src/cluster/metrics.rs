//! The cluster's series on `/metrics`: Raft and the data plane.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Cluster;

/// Raft and data-plane metrics of a clustered node.
pub fn render(s: &mut String, c: &Cluster) {
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
    // Where commits spend their time (`strait_raft::stages`): per stage, seconds and occurrences.
    let stages = strait_raft::stages::read();
    let _ = writeln!(
        s,
        "# HELP strait_raft_stage_seconds_total Time spent in each stage of a commit (stage: what it covers)\n# TYPE strait_raft_stage_seconds_total counter"
    );
    for (name, _, secs, _) in &stages {
        let _ = writeln!(s, "strait_raft_stage_seconds_total{{stage=\"{name}\"}} {secs:.6}");
    }
    let _ = writeln!(
        s,
        "# HELP strait_raft_stage_total Occurrences of each stage of a commit\n# TYPE strait_raft_stage_total counter"
    );
    for (name, _, _, n) in &stages {
        let _ = writeln!(s, "strait_raft_stage_total{{stage=\"{name}\"}} {n}");
    }
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
