//! Cluster membership (show, add, remove a node) and `/metrics`.

use super::*;

pub(super) async fn cluster(State(s): State<ApiState>) -> Response {
    let Some(c) = s.cluster() else { return no_cluster() };
    let l = c.leadership();
    let m = c.raft.metrics();
    let members = c.raft.members();
    let voters = c.raft.voters();
    let ages = c.raft.heartbeat_ages();
    let infos = c.read(|st| st.nodes.clone()).await;
    let name_of = |id: u64| infos.get(&id).map(|n| n.name.clone()).unwrap_or_else(|| format!("#{id}"));
    let mut nodes = Vec::new();
    for (id, raft_addr) in &members {
        let info = infos.get(id);
        let role = if Some(*id) == l.leader {
            "leader"
        } else if voters.contains(id) {
            "follower"
        } else {
            "learner"
        };
        let reachable = if *id == c.id {
            Some(true)
        } else if let Some(ages) = &ages {
            Some(ages.get(id).copied().flatten().is_some_and(|a| a < std::time::Duration::from_secs(1)))
        } else if Some(*id) == l.leader {
            Some(l.lease)
        } else {
            None
        };
        nodes.push(json!({
            "name": name_of(*id),
            "id": id.to_string(),
            "raft": raft_addr,
            "mqtt": info.map(|i| i.mqtt.clone()).unwrap_or_default(),
            "api": info.and_then(|i| i.api.clone()),
            "role": role,
            "voter": voters.contains(id),
            "reachable": reachable,
        }));
    }
    Json(json!({
        "name": c.cluster_name,
        "node": c.node_name,
        "leader": l.leader.map(name_of),
        "available": c.available(),
        "state": format!("{:?}", l.state).to_lowercase(),
        "term": m.current_term,
        "commit_index": m.local_committed.map(|x| x.index),
        "applied_index": m.last_applied.map(|x| x.index),
        "nodes": nodes,
    }))
    .into_response()
}

#[derive(serde::Deserialize)]
pub(super) struct AddNode {
    /// `name@host[:raft_port]`, as in `cluster.static.seeds`.
    name: String,
    /// Add as a learner only (default: promote to voter once caught up).
    #[serde(default)]
    learner: bool,
}

pub(super) async fn add_node(
    State(s): State<ApiState>,
    body: Result<Json<AddNode>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Some(c) = s.cluster() else { return no_cluster() };
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return bad_request(format!("expected {{\"name\": \"node4@host:raft_port\"}}: {e}")),
    };
    let seed = match crate::config::Seed::parse(&req.name) {
        Ok(s) => s,
        Err(e) => return bad_request(e),
    };
    let id = crate::config::node_id(&seed.name);
    tracing::info!(node = %seed.name, id, addr = %seed.raft_addr, "api.cluster.add_node");
    if let Err(e) = c.raft.add_learner(id, seed.raft_addr.clone()).await {
        return unavailable(format!("adding {}: {e}", seed.name));
    }
    if !req.learner {
        if let Err(e) = c.raft.promote(id).await {
            return unavailable(format!("promoting {}: {e}", seed.name));
        }
    }
    (StatusCode::CREATED, Json(json!({"name": seed.name, "id": id.to_string(), "raft": seed.raft_addr})))
        .into_response()
}

pub(super) async fn remove_node(State(s): State<ApiState>, Path(name): Path<String>) -> Response {
    let Some(c) = s.cluster() else { return no_cluster() };
    let name = crate::config::Seed::parse(&name).map(|s| s.name).unwrap_or(name);
    let id = crate::config::node_id(&name);
    if !c.raft.members().contains_key(&id) {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"code": "NODE_NOT_FOUND", "message": format!("no member named {name}")})),
        )
            .into_response();
    }
    tracing::info!(node = %name, id, "api.cluster.remove_node");
    if let Err(e) = c.raft.remove(id).await {
        return unavailable(format!("removing {name}: {e}"));
    }
    // Its clients' connections end with it: disconnected, wills published (once, here).
    let cmds = vec![
        crate::cluster::Command::NodeDown { node: id, at_ms: crate::broker::message::now_ms() },
        crate::cluster::Command::Leave { node: id },
    ];
    match c.commit_wait(cmds).await {
        Ok(rs) => {
            for r in rs {
                if let crate::cluster::Outcome::Orphaned { wills } = r.outcome {
                    for (client_id, will) in wills {
                        s.broker.publish_will_cluster(&client_id, will);
                    }
                }
            }
        }
        Err(e) => return unavailable(format!("removed from Raft, but its entry stays: {e}")),
    }
    StatusCode::NO_CONTENT.into_response()
}

pub(super) async fn metrics(State(s): State<ApiState>) -> Response {
    let (queued, inflight) = s.broker.queue_depths();
    let subs: usize = s.broker.sessions().iter().map(|x| x.lock().subscriptions.len()).sum();
    s.broker.metrics.subscriptions.store(subs as i64, std::sync::atomic::Ordering::Relaxed);
    s.broker.metrics.sessions.store(s.broker.sessions().len() as i64, std::sync::atomic::Ordering::Relaxed);
    let mut body = s.broker.metrics.render(queued, inflight);
    if let Some(c) = s.cluster() {
        crate::cluster::metrics::render(&mut body, &c);
    }
    let statuses = s.links.statuses();
    crate::link::metrics::render_links(&mut body, &statuses);
    let mut outboxes = Vec::new();
    for l in &statuses {
        let o = outbox(&s, l.name()).await;
        if !o.is_null() {
            let n = |k: &str| o[k].as_u64().unwrap_or(0);
            outboxes.push(crate::link::metrics::Outbox {
                link: l.name().to_string(),
                depth: n("depth"),
                bytes: n("bytes"),
                dropped: n("dropped"),
            });
        }
    }
    crate::link::metrics::render_outboxes(&mut body, &outboxes);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// This node's applied view of the replicated state and its digest: replicas at the same view
/// must agree (jepsen's divergence check after a heal).
pub(super) async fn digest(State(s): State<ApiState>) -> Response {
    let Some(c) = s.cluster() else { return no_cluster() };
    match c.read(|st| (st.view, crate::cluster::state::digest(st))).await {
        (view, Ok(d)) => Json(json!({"view": view, "digest": format!("{d:016x}")})).into_response(),
        (_, Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"message": e}))).into_response(),
    }
}
