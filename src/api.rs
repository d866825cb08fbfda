//! HTTP admin API (axum) and Prometheus `/metrics`: views of the broker, the client kick,
//! cluster membership and link management. Guarded by API keys (see [`guard`]). Served by a
//! task the node owns; stops with the broker's shutdown token.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde_json::json;

use crate::broker::session::Kick;
use crate::broker::Broker;

#[derive(Clone)]
struct ApiState {
    broker: Arc<Broker>,
    node: Arc<str>,
    started: Instant,
    /// API keys and their secrets; empty: open to whoever reaches the (loopback) bind.
    keys: Arc<Vec<(String, strait_raft::Secret)>>,
    /// `Authorization` header value this node sends to another node's API (its first key).
    own: Option<Arc<str>>,
}

pub fn router(broker: Arc<Broker>, node: String, keys: Vec<(String, strait_raft::Secret)>) -> Router {
    use base64::Engine;
    let own = keys.first().map(|(k, sec)| {
        Arc::from(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{k}:{}", sec.0))))
    });
    let state = ApiState { broker, node: node.into(), started: Instant::now(), keys: Arc::new(keys), own };
    Router::new()
        .route("/api/v5/status", get(status))
        .route("/api/v5/ready", get(ready))
        .route("/api/v5/clients", get(clients))
        .route("/api/v5/clients/{id}", get(client).delete(kick))
        .route("/api/v5/subscriptions", get(subscriptions))
        .route("/api/v5/cluster", get(cluster))
        .route("/api/v5/cluster/nodes", axum::routing::post(add_node))
        .route("/api/v5/cluster/nodes/{name}", delete(remove_node))
        .route("/api/v5/cluster/links", get(links).post(create_link))
        .route("/api/v5/cluster/links/link/{name}", get(link).put(update_link).delete(delete_link))
        .route("/api/v5/cluster/links/link/{name}/metrics", get(link_metrics))
        .route("/api/v5/log", get(log_level).put(set_log_level))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            (StatusCode::NOT_FOUND, Json(json!({"code": "NOT_FOUND", "message": "no such endpoint"})))
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Every route but `/api/v5/status` (a health check that says only "running") needs an API key
/// when keys are configured (HTTP Basic `key:secret`, EMQX's convention). A request with a
/// body must say `Content-Type: application/json`, and a browser's cross-site request (it
/// carries `Origin`) may not change anything: a web page cannot drive the API.
async fn guard(State(s): State<ApiState>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let headers = req.headers();
    // Health checks: alive, and ready (for a load balancer or a Kubernetes readiness probe).
    let open = matches!(req.uri().path(), "/api/v5/status" | "/api/v5/ready");
    if !open && !s.keys.is_empty() && !authorized(&s.keys, headers.get(header::AUTHORIZATION)) {
        s.broker.metrics.api_denied.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let body =
            json!({"code": "BAD_API_KEY_OR_SECRET", "message": "this API needs an API key: HTTP Basic key:secret"});
        return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Basic realm=\"strait\"")], Json(body))
            .into_response();
    }
    let method = req.method();
    let changes = !matches!(*method, axum::http::Method::GET | axum::http::Method::HEAD);
    if changes && headers.contains_key(header::ORIGIN) {
        let body = json!({"code": "FORBIDDEN", "message": "cross-origin requests may not change anything"});
        return (StatusCode::FORBIDDEN, Json(body)).into_response();
    }
    let has_body = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim() != "0")
        || headers.contains_key(header::TRANSFER_ENCODING);
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")));
    if has_body && !json_type {
        let body = json!({"code": "UNSUPPORTED_MEDIA_TYPE", "message": "a request body must be Content-Type: application/json"});
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, Json(body)).into_response();
    }
    next.run(req).await
}

/// HTTP Basic `key:secret` against the configured keys (the secret compared in constant time).
fn authorized(keys: &[(String, strait_raft::Secret)], value: Option<&axum::http::HeaderValue>) -> bool {
    use base64::Engine;
    let Some(b64) = value.and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Basic ")) else {
        return false;
    };
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else { return false };
    let Ok(text) = String::from_utf8(raw) else { return false };
    let Some((key, secret)) = text.split_once(':') else { return false };
    keys.iter().any(|(k, sec)| k == key && crate::auth::ct_eq(secret.as_bytes(), sec.0.as_bytes()))
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    broker: Arc<Broker>,
    node: String,
    keys: Vec<(String, strait_raft::Secret)>,
) {
    let token = broker.shutdown.clone();
    let app = router(broker, node, keys);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned()).await {
        tracing::error!(error = %e, "api.serve failed");
    }
}

async fn status(State(s): State<ApiState>, headers: axum::http::HeaderMap) -> Json<serde_json::Value> {
    // Open for health checks, so without a key it says only that the node runs.
    if !s.keys.is_empty() && !authorized(&s.keys, headers.get(header::AUTHORIZATION)) {
        return Json(json!({"status": "running"}));
    }
    let m = &s.broker.metrics;
    use std::sync::atomic::Ordering::Relaxed;
    Json(json!({
        "node": &*s.node,
        "version": env!("CARGO_PKG_VERSION"),
        "status": "running",
        "uptime_secs": s.started.elapsed().as_secs(),
        "connections": m.connections.load(Relaxed),
        "sessions": s.broker.sessions().len(),
        "retained": s.broker.retained_count(),
    }))
}

/// Ready to serve: a single node always; a cluster node while it sees a leader with a lease
/// (a partitioned minority answers 503, so a load balancer sends nobody there).
async fn ready(State(s): State<ApiState>) -> Response {
    let ok = s.broker.cluster().is_none_or(|c| c.available());
    let code = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(json!({"ready": ok}))).into_response()
}

fn client_json(s: &crate::broker::session::Session) -> serde_json::Value {
    let st = s.lock();
    json!({
        "clientid": &*s.client_id,
        "username": st.username,
        "connected": st.conn.is_some() || s.is_connected(),
        "node_id": match s.owner.load(std::sync::atomic::Ordering::Relaxed) { 0 => None, n => Some(n.to_string()) },
        "proto_ver": st.protocol.level(),
        "expiry_interval": st.expiry_interval,
        "subscriptions_cnt": st.subscriptions.len(),
        "mqueue_len": st.queue.len(),
        "mqueue_bytes": st.queue.bytes(),
        "inflight_cnt": st.inflight.len(),
        "awaiting_rel_cnt": st.awaiting_rel.len(),
        "mqueue_dropped": s.dropped.load(std::sync::atomic::Ordering::Relaxed),
        "created_at_ms": s.created_at_ms,
    })
}

async fn clients(State(s): State<ApiState>) -> Json<serde_json::Value> {
    let mut list: Vec<_> = s.broker.sessions();
    list.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    let data: Vec<_> = list.iter().map(|x| client_json(x)).collect();
    Json(json!({ "data": data, "meta": { "count": data.len() } }))
}

async fn client(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    let Some(x) = s.broker.session(&id) else { return not_found(&id) };
    let mut v = client_json(&x);
    // (A link client's session is an outbox, with its link's bound.)
    let bound = s.broker.bound_of(&x);
    v["mqueue_max"] = json!(bound.max_len);
    v["mqueue_max_bytes"] = json!(bound.max_bytes);
    if let Some(c) = s.broker.cluster() {
        // The replicated queue, whichever node serves the session (this may be a stub).
        let q = c.read(|st| st.sessions.get(&id).map(|e| (e.queue.len(), e.queue_bytes, e.dropped))).await;
        if let Some((len, bytes, dropped)) = q {
            v["mqueue_len"] = json!(len);
            v["mqueue_bytes"] = json!(bytes);
            v["mqueue_dropped"] = json!(dropped);
        }
    }
    Json(v).into_response()
}

fn not_found(id: &str) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"code": "CLIENTID_NOT_FOUND", "message": format!("client {id} not found")})))
        .into_response()
}

async fn kick(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    if let Some(c) = s.broker.cluster() {
        // In a cluster: a client connected here is kicked; an offline session is removed
        // through Raft (from every node); one connected elsewhere is kicked by its node.
        if s.broker.kick(&id, Kick::Admin) {
            return StatusCode::NO_CONTENT.into_response();
        }
        let entry = c.read(|st| st.sessions.get(&id).map(|e| (e.connected, e.owner))).await;
        return match entry {
            None => not_found(&id),
            Some((true, owner)) => {
                let name = c.read(|st| st.nodes.get(&owner).map(|n| n.name.clone())).await;
                (
                    StatusCode::CONFLICT,
                    Json(json!({"code": "CONNECTED_ELSEWHERE", "message": format!(
                        "client {id} is connected to node {}; DELETE it there",
                        name.unwrap_or_else(|| owner.to_string())
                    )})),
                )
                    .into_response()
            }
            Some((false, _)) => {
                match c.commit_wait(vec![crate::cluster::Command::Remove { client_id: id.clone() }]).await {
                    Ok(_) => StatusCode::NO_CONTENT.into_response(),
                    Err(e) => unavailable(e),
                }
            }
        };
    }
    // A connected client is kicked (MQTT 5: DISCONNECT 0x98); an offline session is discarded.
    if s.broker.kick(&id, Kick::Admin) {
        tracing::info!(client_id = %id, "api.client_kicked");
        StatusCode::NO_CONTENT.into_response()
    } else if s.broker.remove_offline_session(&id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        not_found(&id)
    }
}

async fn subscriptions(State(s): State<ApiState>) -> Json<serde_json::Value> {
    let mut data = Vec::new();
    for sess in s.broker.sessions() {
        let st = sess.lock();
        for (filter, sub) in &st.subscriptions {
            data.push(json!({
                "clientid": &*sess.client_id,
                "topic": filter,
                "qos": sub.opts.qos.as_u8(),
                "nl": u8::from(sub.opts.no_local),
                "rap": u8::from(sub.opts.retain_as_published),
                "rh": sub.opts.retain_handling,
                "subid": sub.id,
            }));
        }
    }
    Json(json!({ "data": data, "meta": { "count": data.len() } }))
}

#[derive(serde::Deserialize, Default)]
struct LinksQuery {
    /// `true`: this node's own view, never the leader's.
    local: Option<bool>,
    /// `all`: every route in `routes` (otherwise the first 1,000; `route_count` has the total).
    routes: Option<String>,
}

/// Routes listed in a link's status unless `?routes=all`.
const SHOWN_ROUTES: usize = 1000;

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
fn local_links(s: &ApiState, max_routes: usize) -> Vec<serde_json::Value> {
    let node = s.broker.cluster().map(|c| c.node_name.clone()).unwrap_or_else(|| s.node.to_string());
    s.broker
        .links
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
async fn leader_links(s: &ApiState, max_routes: usize) -> Vec<serde_json::Value> {
    let Some(c) = s.broker.cluster() else { return local_links(s, max_routes) };
    let l = c.leadership();
    let Some(leader) = l.leader.filter(|id| *id != c.id) else { return local_links(s, max_routes) };
    let api = c.read(move |st| st.nodes.get(&leader).and_then(|n| n.api.clone())).await;
    if let Some(api) = api {
        let all = if max_routes == usize::MAX { "&routes=all" } else { "" };
        let path = format!("/api/v5/cluster/links?local=true{all}");
        if let Some(v) = http_get_json(&api, &path, s.own.as_deref()).await {
            if let Some(data) = v["data"].as_array() {
                return data.clone();
            }
        }
    }
    local_links(s, max_routes)
}

/// A small HTTP/1.1 GET to another node's API (2 s bound); its JSON body.
async fn http_get_json(addr: &str, path: &str, auth: Option<&str>) -> Option<serde_json::Value> {
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

async fn links(State(s): State<ApiState>, q: axum::extract::Query<LinksQuery>) -> Json<serde_json::Value> {
    let data =
        if q.local == Some(true) { local_links(&s, q.max_routes()) } else { leader_links(&s, q.max_routes()).await };
    Json(json!({ "data": data, "meta": { "count": data.len() } }))
}

fn link_not_found(name: &str) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"code": "LINK_NOT_FOUND", "message": format!("no link named {name}")})))
        .into_response()
}

async fn link(State(s): State<ApiState>, Path(name): Path<String>, q: axum::extract::Query<LinksQuery>) -> Response {
    let all =
        if q.local == Some(true) { local_links(&s, q.max_routes()) } else { leader_links(&s, q.max_routes()).await };
    match all.into_iter().find(|l| l["name"] == name.as_str()) {
        Some(l) => Json(l).into_response(),
        None => link_not_found(&name),
    }
}

async fn link_metrics(State(s): State<ApiState>, Path(name): Path<String>) -> Response {
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
async fn outbox(s: &ApiState, name: &str) -> serde_json::Value {
    if let Some(c) = s.broker.cluster() {
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

/// A JSON body (`guard` has checked its `Content-Type`); 400 otherwise.
struct JsonBody(serde_json::Value);

impl<S: Send + Sync> axum::extract::FromRequest<S> for JsonBody {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(IntoResponse::into_response)?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| bad_request(format!("expected a link object in JSON: {e}")))
    }
}

/// Commit one link change (through Raft, or to sled on a single node).
/// `expect`: whether the link must exist (Some(true)) or must not (Some(false)); checked in
/// the replicated state, so two nodes cannot both create one name. Ok(false): it did not hold.
async fn commit_link(
    s: &ApiState,
    name: &str,
    spec: Option<String>,
    drop_sessions: bool,
    expect: bool,
) -> Result<bool, String> {
    match s.broker.cluster() {
        Some(c) => {
            let cmd = crate::cluster::Command::LinkSet {
                name: name.to_string(),
                spec,
                drop_sessions,
                expect: Some(expect),
                in_file: s.broker.links.in_file(name),
            };
            let rs = c.commit_wait(vec![cmd]).await.map_err(|e| format!("committing the link change: {e}"))?;
            Ok(!rs.iter().any(|r| matches!(r.outcome, crate::cluster::Outcome::Stale)))
        }
        None => s
            .broker
            .set_link_local(name, spec, drop_sessions, expect)
            .map_err(|e| format!("storing the link change: {e}")),
    }
}

/// Validate a link's JSON; the error names the key.
fn validate_link(s: &ApiState, v: &serde_json::Value) -> Result<crate::config::LinkConfig, String> {
    let (l, warnings) = crate::config::link_from_json(v, s.broker.links.cluster_name())?;
    for w in warnings {
        tracing::warn!(link = %l.name, "{w}");
    }
    Ok(l)
}

fn exists(name: &str) -> Response {
    let msg = format!("a link named {name} exists (PUT changes it)");
    (StatusCode::BAD_REQUEST, Json(json!({"code": "ALREADY_EXISTS", "message": msg}))).into_response()
}

fn link_json(l: &crate::config::LinkConfig) -> serde_json::Value {
    crate::config::link_to_json(l, false)
}

/// `POST /api/v5/cluster/links`: create a link (same keys as `cluster.links[]`).
async fn create_link(State(s): State<ApiState>, JsonBody(v): JsonBody) -> Response {
    let l = match validate_link(&s, &v) {
        Ok(l) => l,
        Err(e) => return bad_request(e),
    };
    if s.broker.links.get(&l.name).is_some() {
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

/// `PUT /api/v5/cluster/links/link/{name}`: change a link; keys not given keep their value
/// (a password of `******` too). A changed `topics` re-bootstraps its routes.
/// This node's log filter.
async fn log_level() -> Json<serde_json::Value> {
    Json(json!({"level": crate::logging::level()}))
}

/// Change this node's log filter at runtime: `{"level": "debug"}` or a directive like
/// `"info,strait::link=debug"`. Until the next restart (the config file's `log.level` then).
async fn set_log_level(JsonBody(v): JsonBody) -> Response {
    let Some(level) = v.get("level").and_then(|l| l.as_str()) else {
        return bad_request("expected {\"level\": \"debug\"} (or a filter directive)".into());
    };
    match crate::logging::set_level(level) {
        Ok(()) => Json(json!({"level": crate::logging::level()})).into_response(),
        Err(e) => bad_request(format!("level: {e}")),
    }
}

async fn update_link(State(s): State<ApiState>, Path(name): Path<String>, JsonBody(v): JsonBody) -> Response {
    let Some(old) = s.broker.links.get(&name) else { return link_not_found(&name) };
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
async fn delete_link(State(s): State<ApiState>, Path(name): Path<String>) -> Response {
    if s.broker.links.get(&name).is_none() {
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

fn no_cluster() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"code": "NOT_CLUSTERED", "message": "this node runs without a cluster (cluster.static.seeds is empty)"})),
    )
        .into_response()
}

fn bad_request(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"code": "BAD_REQUEST", "message": msg}))).into_response()
}

fn unavailable(msg: String) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"code": "CLUSTER_UNAVAILABLE", "message": msg}))).into_response()
}

async fn cluster(State(s): State<ApiState>) -> Response {
    let Some(c) = s.broker.cluster() else { return no_cluster() };
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
struct AddNode {
    /// `name@host[:raft_port]`, as in `cluster.static.seeds`.
    name: String,
    /// Add as a learner only (default: promote to voter once caught up).
    #[serde(default)]
    learner: bool,
}

async fn add_node(
    State(s): State<ApiState>,
    body: Result<Json<AddNode>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Some(c) = s.broker.cluster() else { return no_cluster() };
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

async fn remove_node(State(s): State<ApiState>, Path(name): Path<String>) -> Response {
    let Some(c) = s.broker.cluster() else { return no_cluster() };
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

async fn metrics(State(s): State<ApiState>) -> Response {
    let (queued, inflight) = s.broker.queue_depths();
    let subs: usize = s.broker.sessions().iter().map(|x| x.lock().subscriptions.len()).sum();
    s.broker.metrics.subscriptions.store(subs as i64, std::sync::atomic::Ordering::Relaxed);
    s.broker.metrics.sessions.store(s.broker.sessions().len() as i64, std::sync::atomic::Ordering::Relaxed);
    let mut body = s.broker.metrics.render(queued, inflight);
    if let Some(c) = s.broker.cluster() {
        crate::metrics::render_cluster(&mut body, &c);
    }
    let statuses = s.broker.links.statuses();
    crate::metrics::render_links(&mut body, &statuses);
    let mut outboxes = Vec::new();
    for l in &statuses {
        let o = outbox(&s, l.name()).await;
        if !o.is_null() {
            let n = |k: &str| o[k].as_u64().unwrap_or(0);
            outboxes.push(crate::metrics::Outbox {
                link: l.name().to_string(),
                depth: n("depth"),
                bytes: n("bytes"),
                dropped: n("dropped"),
            });
        }
    }
    crate::metrics::render_outboxes(&mut body, &outboxes);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
