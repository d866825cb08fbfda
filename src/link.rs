//! Cluster linking (the seed's quick start): this cluster receives what is published in a
//! remote cluster, where subscribers here want it.
//!
//! A link `{ name = <remote cluster>, server = <its link listener>, clientid, topics }` means:
//! this cluster is interested in messages of the remote cluster that match `topics`. The link
//! is one MQTT 5 connection, owned by this cluster's Raft leader (a single node is its own
//! leader), to the remote's link listener, with a persistent session (clean start false), so
//! messages the remote accepted for us wait there while the link is down or changes hands:
//!
//! - Route sync: the link subscribes, in the remote cluster, to every filter subscribed here
//!   (on any node of this cluster) that intersects the link's `topics`, and unsubscribes what is
//!   no longer wanted. The remote commits each of these route changes to its Raft log before it
//!   acknowledges (its SUBSCRIBE path). Propagation is asynchronous: a message published there
//!   before the route arrived is not forwarded.
//! - Messages: each PUBLISH from the remote is published here as from `$link:<remote>`, and
//!   acknowledged to the remote only after it is committed here where that is needed (retained,
//!   QoS≥1 to persistent sessions); a lost acknowledgement means a redelivery, never a loss.
//! - No loops, no transit: a message that came in over a link is never sent out over one.
//! - Leader change: the old leader drops its link connections when its lease ends; the new
//!   leader connects with the same client id (the remote takes the session over: 0x8E fences a
//!   stale leader) and resumes the session with everything not yet acknowledged.
//!
//! The remote side accepts a link client only if it has a link configured to this cluster's
//! name (the client names its cluster in a CONNECT user property).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Filter, Packet as RPacket, Publish as RPublish, RetainForwardRule};
use rumqttc::v5::mqttbytes::QoS as RQoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::broker::message::{now_ms, Message};
use crate::broker::{Broker, LINK_PUBLISHER};
use crate::config::{Config, LinkConfig};
use crate::mqtt::connection::{LINK_PROPERTY, LINK_VERSION, LINK_VERSION_PROPERTY};
use crate::mqtt::packet::{Properties, QoS};
use crate::mqtt::topic;

/// Session expiry asked of the remote for the link's session: a week of outage.
const LINK_SESSION_EXPIRY: u32 = 7 * 24 * 3600;

/// What the API shows of one link.
pub struct LinkStatus {
    pub name: String,
    pub servers: Vec<String>,
    pub topics: Vec<String>,
    pub enabled: bool,
    state: Mutex<State>,
    pub received: AtomicU64,
    pub published: AtomicU64,
    pub connects: AtomicU64,
}

#[derive(Clone, Default)]
struct State {
    status: &'static str,
    server: Option<String>,
    since_ms: u64,
    last_error: Option<String>,
    routes: Vec<String>,
}

impl LinkStatus {
    fn new(l: &LinkConfig) -> LinkStatus {
        LinkStatus {
            name: l.name.clone(),
            servers: l.server.iter().map(|s| format!("{}:{}", s.host, s.port)).collect(),
            topics: l.topics.clone(),
            enabled: l.enable,
            state: Mutex::new(State {
                status: if l.enable { "starting" } else { "disabled" },
                since_ms: now_ms(),
                ..State::default()
            }),
            received: AtomicU64::new(0),
            published: AtomicU64::new(0),
            connects: AtomicU64::new(0),
        }
    }

    fn set(&self, status: &'static str, server: Option<String>, error: Option<String>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.status != status || st.server != server {
            st.since_ms = now_ms();
        }
        st.status = status;
        st.server = server;
        if error.is_some() {
            st.last_error = error;
        }
    }

    fn set_routes(&self, routes: &BTreeSet<String>) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).routes = routes.iter().cloned().collect();
    }

    pub fn route_count(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).routes.len()
    }

    pub fn status(&self) -> &'static str {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).status
    }

    pub fn to_json(&self) -> serde_json::Value {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        json!({
            "name": self.name,
            "enable": self.enabled,
            "server": self.servers,
            "topics": self.topics,
            "status": st.status,
            "connected_server": st.server,
            "status_since_ms": st.since_ms,
            "last_error": st.last_error,
            "routes": st.routes,
            "messages_received": self.received.load(Ordering::Relaxed),
            "messages_published": self.published.load(Ordering::Relaxed),
            "connects": self.connects.load(Ordering::Relaxed),
        })
    }
}

/// Start one supervisor per configured link (each runs on every node; only the leader's
/// connects).
pub fn start(cfg: &Config, broker: Arc<Broker>, cancel: CancellationToken, tracker: &TaskTracker) {
    let tracker_for_links = tracker.clone();
    let mut statuses = Vec::new();
    for l in &cfg.cluster.links {
        let status = Arc::new(LinkStatus::new(l));
        statuses.push(status.clone());
        if !l.enable {
            continue;
        }
        let span = tracing::info_span!("link", name = %l.name);
        let ctx = Ctx { broker: broker.clone(), cancel: cancel.clone(), tracker: tracker_for_links.clone() };
        tracker.spawn(supervise(l.clone(), cfg.cluster.name.clone(), ctx, status).instrument(span));
    }
    let _ = broker.links.set(statuses);
}

fn is_leader(broker: &Broker) -> bool {
    match broker.cluster() {
        None => true,
        Some(c) => c.leadership().is_leader_with_lease(),
    }
}

/// What a link's tasks share with the node.
#[derive(Clone)]
struct Ctx {
    broker: Arc<Broker>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

async fn supervise(link: LinkConfig, me: String, ctx: Ctx, status: Arc<LinkStatus>) {
    let (broker, cancel) = (&ctx.broker, &ctx.cancel);
    let mut next_server = 0usize;
    let mut last_logged: Option<String> = None;
    loop {
        if cancel.is_cancelled() {
            break;
        }
        if !is_leader(broker) {
            status.set("standby", None, None);
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            continue;
        }
        if let Some(server) = link.server.get(next_server % link.server.len().max(1)) {
            let addr = format!("{}:{}", server.host, server.port);
            status.set("connecting", Some(addr.clone()), None);
            match run(&link, &me, &ctx, &status, &server.host, server.port).await {
                Ok(()) => {
                    status.set("standby", None, None);
                    last_logged = None;
                    continue;
                }
                Err((e, was_connected)) => {
                    // Logged once per change of error, not once per retry.
                    if last_logged.as_deref() != Some(e.as_str()) {
                        tracing::warn!(server = %addr, "link connection: {e} (retrying every {:?})", link.retry_interval);
                        last_logged = Some(e.clone());
                    }
                    status.set("disconnected", Some(addr), Some(e));
                    if was_connected {
                        // It worked a moment ago: try again at once (same server), not after
                        // the retry interval.
                        tokio::select! {
                            _ = cancel.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        }
                        continue;
                    }
                    next_server += 1;
                }
            }
        } else {
            status.set("error", None, Some("no server configured".into()));
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(link.retry_interval.max(Duration::from_millis(100))) => {}
        }
    }
}

/// The filters this cluster wants from the link: every local subscription (any node, shared
/// groups by their inner filter) that intersects one of the link's topics.
fn desired_routes(broker: &Broker, topics: &[String]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for s in broker.sessions() {
        if s.link.load(Ordering::Relaxed) {
            continue;
        }
        let st = s.lock();
        for f in st.subscriptions.keys() {
            let inner = match topic::parse_shared(f) {
                Some(Ok((_, inner))) => inner,
                Some(Err(_)) => continue,
                None => f.as_str(),
            };
            if topics.iter().any(|t| topic::intersects(t, inner)) {
                out.insert(inner.to_string());
            }
        }
    }
    out
}

/// One link connection, until it fails (Err, with whether it had connected), or this node
/// stops leading or shuts down (Ok).
async fn run(
    link: &LinkConfig,
    me: &str,
    ctx: &Ctx,
    status: &Arc<LinkStatus>,
    host: &str,
    port: u16,
) -> Result<(), (String, bool)> {
    let (broker, cancel) = (&ctx.broker, &ctx.cancel);
    let mut opts = MqttOptions::new(link.clientid.clone(), host, port);
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(LINK_SESSION_EXPIRY));
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_manual_acks(true);
    opts.set_receive_maximum(Some(link.max_inflight.max(1)));
    opts.set_user_properties(vec![
        (LINK_PROPERTY.to_string(), me.to_string()),
        (LINK_VERSION_PROPERTY.to_string(), LINK_VERSION.to_string()),
    ]);
    opts.set_max_packet_size(Some(broker.mqtt.max_packet_size));
    if let Some(u) = &link.username {
        opts.set_credentials(u.clone(), link.password.clone().unwrap_or_default());
    }
    if link.ssl.enable {
        let tls = tls_client_config(link).map_err(|e| (format!("TLS configuration: {e}"), false))?;
        opts.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::new(tls))));
    }
    let (client, mut el) = AsyncClient::new(opts, 1024);
    let addr = format!("{host}:{port}");
    let mut connected = false;
    let mut subscribed: BTreeSet<String> = BTreeSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let result = loop {
        if connected {
            let want = desired_routes(broker, &link.topics);
            if want != subscribed {
                let add: Vec<Filter> = want
                    .difference(&subscribed)
                    .map(|f| Filter {
                        path: f.clone(),
                        qos: RQoS::AtLeastOnce,
                        nolocal: false,
                        preserve_retain: false,
                        retain_forward_rule: RetainForwardRule::Never,
                    })
                    .collect();
                let remove: Vec<String> = subscribed.difference(&want).cloned().collect();
                if !add.is_empty() {
                    tracing::info!(routes = ?add.iter().map(|f| &f.path).collect::<Vec<_>>(), "link: subscribing");
                    if let Err(e) = client.try_subscribe_many(add) {
                        break Err(format!("subscribe: {e}"));
                    }
                }
                let mut failed = None;
                for f in remove {
                    tracing::info!(route = %f, "link: unsubscribing");
                    if let Err(e) = client.try_unsubscribe(f) {
                        failed = Some(format!("unsubscribe: {e}"));
                        break;
                    }
                }
                if let Some(e) = failed {
                    break Err(e);
                }
                status.set_routes(&want);
                subscribed = want;
            }
        }
        let routes_changed = broker.routes_changed.notified();
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            _ = routes_changed => {}
            _ = tick.tick() => {
                if !is_leader(broker) {
                    tracing::info!("link: no longer the leader; handing the link over");
                    break Ok(());
                }
            }
            ev = el.poll() => match ev {
                Ok(Event::Incoming(RPacket::ConnAck(a))) => {
                    connected = true;
                    status.connects.fetch_add(1, Ordering::Relaxed);
                    // Subscribe the whole set again (idempotent): a SUBSCRIBE sent on a
                    // connection that died before the remote committed it would be missing.
                    subscribed.clear();
                    tracing::info!(server = %addr, session_present = a.session_present, "link: connected");
                    status.set("connected", Some(addr.clone()), None);
                }
                Ok(Event::Incoming(RPacket::Publish(p))) => {
                    if let Some(wait) = on_publish(link, ctx, status, &client, p) {
                        wait.await;
                    }
                }
                Ok(Event::Incoming(RPacket::Disconnect(d))) => {
                    break Err(format!("disconnected by the remote: {:?}", d.reason_code));
                }
                Ok(_) => {}
                Err(e) => break Err(format!("{e}")),
            },
        }
    };
    let _ = client.try_disconnect();
    result.map_err(|e| (e, connected))
}

/// Publish one message from the remote here; acknowledge it once it is safe.
fn on_publish(
    link: &LinkConfig,
    ctx: &Ctx,
    status: &Arc<LinkStatus>,
    client: &AsyncClient,
    p: RPublish,
) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> {
    let broker = &ctx.broker;
    status.received.fetch_add(1, Ordering::Relaxed);
    let topic_name = String::from_utf8_lossy(&p.topic).to_string();
    let wanted = topic::valid_topic_name(&topic_name) && link.topics.iter().any(|t| topic::matches(t, &topic_name));
    if !wanted {
        let _ = client.try_ack(&p);
        return None;
    }
    let qos = match p.qos {
        RQoS::AtMostOnce => QoS::AtMostOnce,
        RQoS::AtLeastOnce => QoS::AtLeastOnce,
        RQoS::ExactlyOnce => QoS::ExactlyOnce,
    };
    let mut properties = Properties::default();
    let mut expires_at_ms = None;
    if let Some(pp) = &p.properties {
        properties.payload_format_indicator = pp.payload_format_indicator;
        properties.content_type = pp.content_type.clone();
        properties.response_topic = pp.response_topic.clone();
        properties.correlation_data = pp.correlation_data.clone();
        properties.user_properties = pp.user_properties.clone();
        expires_at_ms = pp.message_expiry_interval.map(|s| now_ms() + u64::from(s) * 1000);
    }
    let msg = Message {
        topic: topic_name.as_str().into(),
        payload: p.payload.clone(),
        qos,
        retain: false,
        properties,
        publisher: format!("{LINK_PUBLISHER}{}", link.name).into(),
        expires_at_ms,
    };
    let published = broker.publish(Arc::new(msg));
    status.published.fetch_add(1, Ordering::Relaxed);
    match broker.cluster().filter(|_| !published.commands.is_empty()) {
        None => {
            let _ = client.try_ack(&p);
        }
        Some(c) => {
            let client = client.clone();
            // Proposed now, in arrival order (the remote's publisher order); only the wait for
            // the outcome runs in the background. (Proposing from the spawned task let two
            // messages race for the Raft queue: jepsen's link-kill-holder run caught
            // persistent subscribers receiving them out of order.)
            let done = c.commit(published.commands);
            ctx.tracker.spawn(async move {
                match done.await {
                    Ok(Ok(_)) => {
                        let _ = client.ack(&p).await;
                    }
                    // Not acknowledged: the remote redelivers it on the next link connection.
                    Ok(Err(e)) => tracing::warn!("link: a message could not be committed here: {e}"),
                    Err(_) => tracing::warn!("link: node shutting down before a commit finished"),
                }
            });
        }
    }
    let broker = broker.clone();
    published.congested.map(|c| {
        Box::pin(async move { c.wait(&broker, Duration::from_millis(500)).await })
            as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
    })
}

/// The rustls client configuration of a TLS link (`links[].ssl`): trust anchors from
/// `cacertfile` (else the system's roots), a client certificate when `certfile`/`keyfile` are
/// set, and no server verification with `verify = verify_none`. Errors name the file.
pub fn tls_client_config(link: &LinkConfig) -> Result<tokio_rustls::rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let ssl = &link.ssl;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if ssl.verify_peer {
        let mut roots = rustls::RootCertStore::empty();
        match &ssl.cacertfile {
            Some(ca) => {
                let certs = CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
                for c in certs {
                    let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
                    roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!("{}: no certificate found", ca.display()));
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                for c in native.certs {
                    let _ = roots.add(c);
                }
                if roots.is_empty() {
                    return Err("no system root certificates found: set ssl.cacertfile".into());
                }
            }
        }
        builder.with_root_certificates(roots)
    } else {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    };
    match (&ssl.certfile, &ssl.keyfile) {
        (Some(cert), Some(key)) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("{}: {e}", cert.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: {e}", cert.display()))?;
            let k = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
            builder.with_client_auth_cert(certs, k).map_err(|e| format!("{}: {e}", key.display()))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// `verify = verify_none`: accepts any server certificate (signatures still checked).
#[derive(Debug)]
struct NoVerify(Arc<tokio_rustls::rustls::crypto::CryptoProvider>);

impl tokio_rustls::rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<tokio_rustls::rustls::client::danger::ServerCertVerified, tokio_rustls::rustls::Error> {
        Ok(tokio_rustls::rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<tokio_rustls::rustls::client::danger::HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        tokio_rustls::rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<tokio_rustls::rustls::client::danger::HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        tokio_rustls::rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<tokio_rustls::rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
