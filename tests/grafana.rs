//! The Grafana dashboard in `deploy/grafana/strait.json` queries only metrics the binary really
//! exports: every `strait_*` name in its queries is in `/metrics` of a clustered node with a link.

mod common;

use common::procs::{http, ProcCluster};
use common::{init, wait_for};
use std::collections::BTreeSet;
use std::time::Duration;

/// Every `expr` string in the dashboard (panels and their targets, at any depth).
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => exprs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("strait_") {
        let name: String =
            rest[i..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
        rest = &rest[i + name.len()..];
        out.insert(name);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_only_exported_metrics() {
    init();
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/strait.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).expect("read the dashboard")).expect("dashboard JSON");
    let mut all = Vec::new();
    exprs(&dash, &mut all);
    assert!(all.len() >= 10, "the dashboard has its queries: {all:?}");
    let wanted: BTreeSet<String> = all.iter().flat_map(|e| metric_names(e)).collect();

    let c =
        ProcCluster::start(3, r#"cluster.links = [{ name = "far-away", server = "127.0.0.1:9", topics = ["g/#"] }]"#);
    c.wait_ready(&[0, 1, 2]).await;
    let api = c.nodes[0].api;
    let exported = std::sync::Mutex::new(BTreeSet::new());
    wait_for(
        || {
            let Some((200, body)) = http(api, "GET", "/metrics", None) else { return false };
            let names: BTreeSet<String> = body
                .lines()
                .filter_map(|l| l.strip_prefix("# TYPE "))
                .filter_map(|l| l.split_whitespace().next())
                .map(String::from)
                .collect();
            let ok = names.contains("strait_link_connected") && names.contains("strait_raft_term");
            *exported.lock().unwrap_or_else(|e| e.into_inner()) = names;
            ok
        },
        Duration::from_secs(20),
        "/metrics with the cluster's and the link's series",
    )
    .await;
    let exported = exported.into_inner().unwrap_or_else(|e| e.into_inner());
    let missing: Vec<&String> = wanted.iter().filter(|m| !exported.contains(*m)).collect();
    assert!(missing.is_empty(), "the dashboard queries metrics the node does not export: {missing:?}");
}
