//! Cluster links: EMQX's `/api/v5/cluster/links` (list, show, create, change, delete, metrics).

use super::*;

#[derive(serde::Deserialize, Default)]
pub(super) struct LinksQuery {
    /// `true`: this node's own view, never the leader's.
    local: Option<bool>,
    /// `all`: every route in `routes` (otherwise the first 1,000; `route_count` has the total).
    routes: Option<String>,
}

/// Routes listed in a link's status unless `?routes=all`.
pub(super) const SHOWN_ROUTES: usize = 1000;

impl LinksQuery {
    fn max_routes(&self) -> usize {
        if self.routes.as_deref() == Some("all") {
            usize::MAX
        } else {
            SHOWN_ROUTES
        }
    }
}

/// The links as this node sees them (`node` names it). Only the Raft leader holds the link
/// connections; the others show `standby`.
pub(super) fn local_links(s: &ApiState, max_routes: usize) -> Vec<serde_json::Value> {
    let node = s.cluster().map(|c| c.node_name.clone()).unwrap_or_else(|| s.node.to_string());
    s.links
        .statuses()
        .iter()
        .map(|x| {
            let mut v = x.to_json(max_routes);
            v["node"] = json!(node);
            v
        })
        .collect()
}

/// The links as the Raft leader sees them (it holds the connections): asked over its HTTP API
/// when this node is not the leader; this node's own view when the leader cannot be asked.
pub(super) async fn leader_links(s: &ApiState, max_routes: usize) -> Vec<serde_json::Value> {
    let Some(c) = s.cluster() else { return local_links(s, max_routes) };
    let l = c.leadership();
    let Some(leader) = l.leader.filter(|id| *id != c.id) else { return local_links(s, max_routes) };
    let api = c.read(move |st| st.nodes.get(&leader).and_then(|n| n.api.clone())).await;
    if let Some(api) = api {
        let all = if max_routes == usize::MAX { "&routes=all" } else { "" };
        let path = format!("/api/v5/cluster/links?local=true{all}");
        if let Some(v) = http_get_json(&api, &path, s.own.as_deref()).await {
            // (A leader of the previous release answers `{data, meta}`.)
            if let Some(data) = v.as_array().or_else(|| v["data"].as_array()) {
                return data.clone();
            }
        }
    }
    local_links(s, max_routes)
}

/// A small HTTP/1.1 GET to another node's API (2 s bound); its JSON body.
pub(super) async fn http_get_json(addr: &str, path: &str, auth: Option<&str>) -> Option<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        if !text.starts_with("HTTP/1.1 200") {
            return None;
        }
        let (_, body) = text.split_once("\r\n\r\n")?;
        serde_json::from_str(body).ok()
    };
    tokio::time::timeout(std::time::Duration::from_secs(2), fut).await.ok().flatten()
}

pub(super) async fn links(State(s): State<ApiState>, q: axum::extract::Query<LinksQuery>) -> Json<serde_json::Value> {
    let data =
        if q.local == Some(true) { local_links(&s, q.max_routes()) } else { leader_links(&s, q.max_routes()).await };
    // A JSON array, as EMQX answers (its scripts index it directly).
    Json(json!(data))
}

pub(super) fn link_not_found(name: &str) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"code": "LINK_NOT_FOUND", "message": format!("no link named {name}")})))
        .into_response()
}

pub(super) async fn link(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    q: axum::extract::Query<LinksQuery>,
) -> Response {
    let all =
        if q.local == Some(true) { local_links(&s, q.max_routes()) } else { leader_links(&s, q.max_routes()).await };
    match all.into_iter().find(|l| l["name"] == name.as_str()) {
        Some(l) => Json(l).into_response(),
        None => link_not_found(&name),
    }
}

pub(super) async fn link_metrics(State(s): State<ApiState>, Path(name): Path<String>) -> Response {
    match leader_links(&s, SHOWN_ROUTES).await.into_iter().find(|l| l["name"] == name.as_str()) {
        Some(l) => Json(json!({
            "name": l["name"],
            "node": l["node"],
            "status": l["status"],
            "routes": l["route_count"],
            "inflight": l["inflight"],
            "messages_received": l["messages_received"],
            "messages_published": l["messages_published"],
            "messages_duplicate": l["messages_duplicate"],
            "messages_dropped": l["messages_dropped"],
            "connects": l["connects"],
            "outbox": outbox(&s, &name).await,
        }))
        .into_response(),
        None => link_not_found(&name),
    }
}

/// The other direction: what this cluster holds for the remote's link client (its session
/// here): messages queued for it, filters it subscribed, whether it is connected.
pub(super) async fn outbox(s: &ApiState, name: &str) -> serde_json::Value {
    if let Some(c) = s.cluster() {
        let name = name.to_string();
        return c
            .read(move |st| {
                let e = st.sessions.iter().find(|(_, e)| e.link.as_deref() == Some(name.as_str()));
                match e {
                    Some((id, e)) => json!({
                        "clientid": id,
                        "connected": e.connected,
                        "depth": e.queue.len(),
                        "bytes": e.queue_bytes,
                        "dropped": e.dropped,
                        "routes": e.subscriptions.len(),
                    }),
                    None => serde_json::Value::Null,
                }
            })
            .await;
    }
    match s.broker.sessions().into_iter().find(|x| x.link_remote().as_deref() == Some(name)) {
        Some(x) => {
            let st = x.lock();
            json!({
                "clientid": &*x.client_id,
                "connected": x.is_connected(),
                "depth": st.queue.len(),
                "bytes": st.queue.bytes(),
                "dropped": x.dropped.load(std::sync::atomic::Ordering::Relaxed),
                "inflight": st.inflight.len(),
                "routes": st.subscriptions.len(),
            })
        }
        None => serde_json::Value::Null,
    }
}

/// Commit one link change (through Raft, or to sled on a single node).
/// `expect`: whether the link must exist (Some(true)) or must not (Some(false)); checked in
/// the replicated state, so two nodes cannot both create one name. Ok(false): it did not hold.
pub(super) async fn commit_link(
    s: &ApiState,
    name: &str,
    spec: Option<String>,
    drop_sessions: bool,
    expect: bool,
) -> Result<bool, String> {
    match s.cluster() {
        Some(c) => {
            let cmd = crate::cluster::Command::LinkSet {
                name: name.to_string(),
                spec,
                drop_sessions,
                expect: Some(expect),
                in_file: s.links.in_file(name),
            };
            let rs = c.commit_wait(vec![cmd]).await.map_err(|e| format!("committing the link change: {e}"))?;
            Ok(!rs.iter().any(|r| matches!(r.outcome, crate::cluster::Outcome::Stale)))
        }
        None => s
            .links
            .set_local(&s.broker, name, spec, drop_sessions, expect)
            .map_err(|e| format!("storing the link change: {e}")),
    }
}

/// Validate a link's JSON; the error names the key.
pub(super) fn validate_link(s: &ApiState, v: &serde_json::Value) -> Result<crate::config::LinkConfig, String> {
    let (l, warnings) = crate::config::link_from_json(v, s.links.cluster_name())?;
    for w in warnings {
        tracing::warn!(link = %l.name, "{w}");
    }
    Ok(l)
}

pub(super) fn exists(name: &str) -> Response {
    let msg = format!("a link named {name} exists (PUT changes it)");
    (StatusCode::BAD_REQUEST, Json(json!({"code": "ALREADY_EXISTS", "message": msg}))).into_response()
}

pub(super) fn link_json(l: &crate::config::LinkConfig) -> serde_json::Value {
    crate::config::link_to_json(l, false)
}

/// `POST /api/v5/cluster/links`: create a link (same keys as `cluster.links[]`).
pub(super) async fn create_link(State(s): State<ApiState>, JsonBody(v): JsonBody) -> Response {
    let l = match validate_link(&s, &v) {
        Ok(l) => l,
        Err(e) => return bad_request(e),
    };
    if s.links.get(&l.name).is_some() {
        return exists(&l.name);
    }
    let spec = crate::config::link_to_json(&l, true).to_string();
    match commit_link(&s, &l.name, Some(spec), false, false).await {
        Err(e) => return unavailable(e),
        Ok(false) => return exists(&l.name),
        Ok(true) => {}
    }
    tracing::info!(link = %l.name, "api.link.created");
    (StatusCode::CREATED, Json(link_json(&l))).into_response()
}

pub(super) async fn update_link(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    JsonBody(v): JsonBody,
) -> Response {
    let Some(old) = s.links.get(&name) else { return link_not_found(&name) };
    let Some(changes) = v.as_object() else { return bad_request("expected a link object".into()) };
    if changes.get("name").is_some_and(|n| n != name.as_str()) {
        return bad_request(format!("name: a link cannot be renamed (the path names {name})"));
    }
    let mut merged = crate::config::link_to_json(&old, true);
    let new_password = changes.get("password").is_some_and(|p| p != "******");
    for (k, val) in changes {
        if k == "password" && val == "******" {
            continue;
        }
        merged[k] = val.clone();
    }
    let l = match validate_link(&s, &merged) {
        Ok(l) => l,
        Err(e) => return bad_request(e),
    };
    // Stored credentials are never sent to an address they were not given for.
    if l.server != old.server && old.password.is_some() && !new_password {
        return bad_request(
            "password: changing a link's server requires its password again (stored credentials are never sent to a new address)"
                .into(),
        );
    }
    let spec = crate::config::link_to_json(&l, true).to_string();
    match commit_link(&s, &name, Some(spec), !l.enable, true).await {
        Err(e) => return unavailable(e),
        Ok(false) => return link_not_found(&name),
        Ok(true) => {}
    }
    tracing::info!(link = %name, "api.link.updated");
    Json(link_json(&l)).into_response()
}

/// `DELETE /api/v5/cluster/links/link/{name}`: stop the link; its session (and routes) end
/// here and at the remote.
pub(super) async fn delete_link(State(s): State<ApiState>, Path(name): Path<String>) -> Response {
    if s.links.get(&name).is_none() {
        return link_not_found(&name);
    }
    match commit_link(&s, &name, None, true, true).await {
        Err(e) => return unavailable(e),
        Ok(false) => return link_not_found(&name),
        Ok(true) => {}
    }
    tracing::info!(link = %name, "api.link.deleted");
    StatusCode::NO_CONTENT.into_response()
}
