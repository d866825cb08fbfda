//! Clients and subscriptions: list, show, kick.

use super::*;

pub(super) fn client_json(s: &crate::broker::session::Session) -> serde_json::Value {
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

pub(super) async fn clients(State(s): State<ApiState>) -> Json<serde_json::Value> {
    let mut list: Vec<_> = s.broker.sessions();
    list.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    let data: Vec<_> = list.iter().map(|x| client_json(x)).collect();
    Json(json!({ "data": data, "meta": { "count": data.len() } }))
}

pub(super) async fn client(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    let Some(x) = s.broker.session(&id) else { return not_found(&id) };
    let mut v = client_json(&x);
    // (A link client's session is an outbox, with its link's bound.)
    let bound = s.broker.bound_of(&x);
    v["mqueue_max"] = json!(bound.max_len);
    v["mqueue_max_bytes"] = json!(bound.max_bytes);
    if let Some(c) = s.cluster() {
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

pub(super) fn not_found(id: &str) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"code": "CLIENTID_NOT_FOUND", "message": format!("client {id} not found")})))
        .into_response()
}

pub(super) async fn kick(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    if let Some(c) = s.cluster() {
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
                    Err(e) => unavailable(e.to_string()),
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

pub(super) async fn subscriptions(State(s): State<ApiState>) -> Json<serde_json::Value> {
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
