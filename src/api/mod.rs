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
use crate::cluster::Cluster;
use crate::config::Config;
use crate::link::Registry;

mod clients;
mod cluster;
mod links;

use clients::*;
use cluster::*;
use links::*;

/// What the API serves from: the broker, and the cluster and links around it.
#[derive(Clone)]
pub struct ApiState {
    broker: Arc<Broker>,
    /// Weak: a request still running after the node's shutdown does not keep the cluster's
    /// store open.
    cluster: Option<std::sync::Weak<Cluster>>,
    links: Arc<Registry>,
    node: Arc<str>,
    started: Instant,
    /// API keys and their secrets; empty: open to whoever reaches the (loopback) bind.
    keys: Arc<Vec<(String, crate::config::Secret)>>,
    /// `Authorization` header value this node sends to another node's API (its first key).
    own: Option<Arc<str>>,
}

impl ApiState {
    pub fn new(broker: Arc<Broker>, cluster: Option<Arc<Cluster>>, links: Arc<Registry>, cfg: &Config) -> ApiState {
        use base64::Engine;
        let keys = cfg.api.keys.clone();
        let own = keys.first().map(|(k, sec)| {
            Arc::from(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{k}:{}", sec.0))))
        });
        let node = cfg.node.name.as_str().into();
        let cluster = cluster.as_ref().map(Arc::downgrade);
        ApiState { broker, cluster, links, node, started: Instant::now(), keys: Arc::new(keys), own }
    }
}

impl ApiState {
    fn cluster(&self) -> Option<Arc<Cluster>> {
        self.cluster.as_ref().and_then(std::sync::Weak::upgrade)
    }
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v5/status", get(status))
        .route("/api/v5/ready", get(ready))
        .route("/api/v5/clients", get(clients))
        .route("/api/v5/clients/{id}", get(client).delete(kick))
        .route("/api/v5/subscriptions", get(subscriptions))
        .route("/api/v5/cluster", get(cluster))
        .route("/api/v5/cluster/digest", get(cluster::digest))
        .route("/api/v5/cluster/nodes", axum::routing::post(add_node))
        .route("/api/v5/cluster/nodes/{name}", delete(remove_node))
        .route("/api/v5/cluster/links", get(links).post(create_link))
        .route("/api/v5/cluster/links/link/{name}", get(link).put(update_link).delete(delete_link))
        .route("/api/v5/cluster/links/link/{name}/metrics", get(link_metrics))
        .route("/api/v5/log", get(log_level).put(set_log_level))
        .route("/metrics", get(metrics))
        .route("/", get(|| async { axum::response::Redirect::to("/dashboard") }))
        .route("/dashboard", get(dashboard))
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
    // (The dashboard page is static: the data it shows comes through the API, with a key.)
    let open = matches!(req.uri().path(), "/api/v5/status" | "/api/v5/ready" | "/dashboard" | "/");
    if !open && !s.keys.is_empty() && !authorized(&s.keys, headers.get(header::AUTHORIZATION)) {
        s.broker.metrics.api_denied.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let body =
            json!({"code": "BAD_API_KEY_OR_SECRET", "message": "this API needs an API key: HTTP Basic key:secret"});
        // A page's own request (the dashboard's fetch) gets no challenge: a browser would put
        // up its login dialog instead of letting the page ask for the key.
        let from_script = headers
            .get("sec-fetch-mode")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|m| !m.eq_ignore_ascii_case("navigate"));
        if from_script {
            return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
        }
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
fn authorized(keys: &[(String, crate::config::Secret)], value: Option<&axum::http::HeaderValue>) -> bool {
    use base64::Engine;
    let Some(b64) = value.and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Basic ")) else {
        return false;
    };
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else { return false };
    let Ok(text) = String::from_utf8(raw) else { return false };
    let Some((key, secret)) = text.split_once(':') else { return false };
    keys.iter().any(|(k, sec)| k == key && crate::auth::ct_eq(secret.as_bytes(), sec.0.as_bytes()))
}

pub async fn serve(listener: tokio::net::TcpListener, state: ApiState) {
    let token = state.broker.shutdown.clone();
    let app = router(state);
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
        "storage_failed": s.broker.storage_failed(),
    }))
}

/// Ready to serve: a single node while its store takes writes; a cluster node while it sees a
/// leader with a lease (a partitioned minority answers 503, so a load balancer sends nobody
/// there).
async fn ready(State(s): State<ApiState>) -> Response {
    let failed = s.broker.storage_failed();
    let ok = s.cluster().is_none_or(|c| c.available()) && failed.is_none();
    let code = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(json!({"ready": ok, "storage_failed": failed}))).into_response()
}

/// The dashboard: one static page compiled into the binary (no build step, nothing fetched
/// from elsewhere). It asks for the API key (or takes `#key=KEY:SECRET`) and polls the API.
async fn dashboard() -> Response {
    const PAGE: &str = include_str!("dashboard.html");
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
            ),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

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
