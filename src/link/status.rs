//! What the API shows of one link.

use super::*;

/// What the API shows of one link.
pub struct LinkStatus {
    pub config: LinkConfig,
    state: Mutex<State>,
    pub received: AtomicU64,
    pub published: AtomicU64,
    pub duplicates: AtomicU64,
    pub dropped: AtomicU64,
    pub connects: AtomicU64,
}

#[derive(Clone, Default)]
pub(super) struct State {
    pub(super) status: &'static str,
    pub(super) server: Option<String>,
    pub(super) since_ms: u64,
    pub(super) last_error: Option<String>,
    /// When `last_error` happened: it stays after the link recovers (the last one, not a
    /// current one), and the time tells which.
    pub(super) last_error_ms: Option<u64>,
    pub(super) routes: Vec<String>,
    /// Refused by the remote (the first 100, with why) and how many in all.
    pub(super) refused: Vec<(String, String)>,
    pub(super) refused_count: usize,
    /// Routes on their way (to send, or sent and not acknowledged).
    pub(super) routes_pending: usize,
    /// Routes this cluster wants there.
    pub(super) routes_wanted: usize,
    pub(super) inflight: usize,
}

impl LinkStatus {
    pub(super) fn new(l: &LinkConfig) -> LinkStatus {
        LinkStatus {
            config: l.clone(),
            state: Mutex::new(State {
                status: if l.enable { "starting" } else { "disabled" },
                since_ms: now_ms(),
                ..State::default()
            }),
            received: AtomicU64::new(0),
            published: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            connects: AtomicU64::new(0),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub(super) fn set(&self, status: &'static str, server: Option<String>, error: Option<String>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.status != status || st.server != server {
            st.since_ms = now_ms();
        }
        st.status = status;
        st.server = server;
        if error.is_some() {
            st.last_error = error;
            st.last_error_ms = Some(now_ms());
        }
    }

    /// The route sync's state: what the remote holds, refused, and on its way.
    pub(super) fn set_route_sync(&self, sync: &RouteSync) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.routes = sync.held().iter().cloned().collect();
        st.refused = sync.refused().iter().take(100).map(|(r, why)| (r.clone(), why.clone())).collect();
        st.refused_count = sync.refused().len();
        st.routes_pending = sync.pending();
        st.routes_wanted = sync.wanted_len();
    }

    pub(super) fn set_inflight(&self, n: usize) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).inflight = n;
    }

    pub fn route_count(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).routes.len()
    }

    pub fn status(&self) -> &'static str {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).status
    }

    /// The status as the API shows it, with at most `max_routes` of its routes listed.
    pub fn to_json(&self, max_routes: usize) -> serde_json::Value {
        // Read under the lock, no copy: the route list can be long.
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut v = link_to_json(&self.config, false);
        v["status"] = json!(st.status);
        v["connected_server"] = json!(st.server);
        v["status_since_ms"] = json!(st.since_ms);
        v["last_error"] = json!(st.last_error);
        v["last_error_at_ms"] = json!(st.last_error_ms);
        v["route_count"] = json!(st.routes.len());
        v["routes"] = json!(st.routes.iter().take(max_routes).collect::<Vec<_>>());
        v["routes_truncated"] = json!(st.routes.len() > max_routes);
        v["routes_refused_count"] = json!(st.refused_count);
        v["routes_refused"] = st.refused.iter().map(|(r, why)| json!({"route": r, "reason": why})).collect();
        v["routes_pending"] = json!(st.routes_pending);
        v["routes_wanted"] = json!(st.routes_wanted);
        v["inflight"] = json!(st.inflight);
        v["messages_received"] = json!(self.received.load(Ordering::Relaxed));
        v["messages_published"] = json!(self.published.load(Ordering::Relaxed));
        v["messages_duplicate"] = json!(self.duplicates.load(Ordering::Relaxed));
        v["messages_dropped"] = json!(self.dropped.load(Ordering::Relaxed));
        v["connects"] = json!(self.connects.load(Ordering::Relaxed));
        v
    }
}
