//! HTTP admin API (axum) and Prometheus `/metrics`. Read-only views of the broker plus the
//! client kick. Served by a task the node owns; stops with the broker's shutdown token.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::broker::session::Kick;
use crate::broker::Broker;

#[derive(Clone)]
struct ApiState {
    broker: Arc<Broker>,
    node: Arc<str>,
    started: Instant,
}

pub fn router(broker: Arc<Broker>, node: String) -> Router {
    let state = ApiState { broker, node: node.into(), started: Instant::now() };
    Router::new()
        .route("/api/v5/status", get(status))
        .route("/api/v5/clients", get(clients))
        .route("/api/v5/clients/{id}", get(client).delete(kick))
        .route("/api/v5/subscriptions", get(subscriptions))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            (StatusCode::NOT_FOUND, Json(json!({"code": "NOT_FOUND", "message": "no such endpoint"})))
        })
        .with_state(state)
}

pub async fn serve(listener: tokio::net::TcpListener, broker: Arc<Broker>, node: String) {
    let token = broker.shutdown.clone();
    let app = router(broker, node);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned()).await {
        tracing::error!(error = %e, "api.serve failed");
    }
}

async fn status(State(s): State<ApiState>) -> Json<serde_json::Value> {
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

fn client_json(s: &crate::broker::session::Session) -> serde_json::Value {
    let st = s.lock();
    json!({
        "clientid": &*s.client_id,
        "username": st.username,
        "connected": st.conn.is_some(),
        "proto_ver": st.protocol.level(),
        "expiry_interval": st.expiry_interval,
        "subscriptions_cnt": st.subscriptions.len(),
        "mqueue_len": st.queue.len(),
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
    match s.broker.session(&id) {
        Some(x) => Json(client_json(&x)).into_response(),
        None => not_found(&id),
    }
}

fn not_found(id: &str) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"code": "CLIENTID_NOT_FOUND", "message": format!("client {id} not found")})))
        .into_response()
}

async fn kick(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
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

async fn metrics(State(s): State<ApiState>) -> Response {
    let (queued, inflight) = s.broker.queue_depths();
    let subs: usize = s.broker.sessions().iter().map(|x| x.lock().subscriptions.len()).sum();
    s.broker.metrics.subscriptions.store(subs as i64, std::sync::atomic::Ordering::Relaxed);
    s.broker.metrics.sessions.store(s.broker.sessions().len() as i64, std::sync::atomic::Ordering::Relaxed);
    let body = s.broker.metrics.render(queued, inflight);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
