//! MQTT listeners: TCP and TLS accept loops. Each accepted connection becomes a task tracked by
//! the node's `TaskTracker`; a semaphore bounds concurrent connections per listener.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::broker::Broker;
use crate::config::SslListenerConfig;
use crate::conn;
use crate::metrics::inc;

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("listeners.{name}: cannot bind {addr}: {source}")]
    Bind { name: String, addr: SocketAddr, source: std::io::Error },
    #[error("listeners.{name}: {path}: {problem}")]
    Tls { name: String, path: String, problem: String },
}

/// A bound (not yet serving) listener.
pub struct Bound {
    pub name: String,
    pub listener: TcpListener,
    pub tls: Option<TlsAcceptor>,
    pub max_connections: usize,
}

pub async fn bind(name: &str, addr: SocketAddr, max_connections: usize) -> Result<Bound, ListenerError> {
    let listener =
        TcpListener::bind(addr).await.map_err(|source| ListenerError::Bind { name: name.to_string(), addr, source })?;
    Ok(Bound { name: name.to_string(), listener, tls: None, max_connections })
}

pub fn tls_acceptor(name: &str, cfg: &SslListenerConfig) -> Result<TlsAcceptor, ListenerError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let err = |path: &Path, problem: String| ListenerError::Tls {
        name: name.to_string(),
        path: path.display().to_string(),
        problem,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.certfile)
        .map_err(|e| err(&cfg.certfile, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(&cfg.certfile, e.to_string()))?;
    if certs.is_empty() {
        return Err(err(&cfg.certfile, "no certificate found".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.keyfile).map_err(|e| err(&cfg.keyfile, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| err(&cfg.certfile, e.to_string()))?;
    let builder = match (&cfg.cacertfile, cfg.verify_peer) {
        (Some(ca), true) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| err(ca, e.to_string()))? {
                roots.add(c.map_err(|e| err(ca, e.to_string()))?).map_err(|e| err(ca, e.to_string()))?;
            }
            let mut v = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if !cfg.fail_if_no_peer_cert {
                v = v.allow_unauthenticated();
            }
            builder.with_client_cert_verifier(v.build().map_err(|e| err(ca, e.to_string()))?)
        }
        _ => builder.with_no_client_auth(),
    };
    let sc = builder.with_single_cert(certs, key).map_err(|e| err(&cfg.keyfile, e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(sc)))
}

/// Accept until the broker's shutdown token fires.
pub async fn serve(bound: Bound, broker: Arc<Broker>, tracker: TaskTracker) {
    let limit = Arc::new(Semaphore::new(bound.max_connections));
    let name = bound.name;
    // The seed's dedicated link listener serves only other clusters' link clients.
    let link_only = name == "tcp.clink" || name == "ssl.clink";
    loop {
        let accepted = tokio::select! {
            _ = broker.shutdown.cancelled() => break,
            a = bound.listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and similar: back off briefly instead of spinning.
                tracing::warn!(listener = %name, error = %e, "listener.accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            inc(&broker.metrics.connections_refused);
            tracing::warn!(listener = %name, %peer, "listener.max_connections reached: connection refused");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let broker = broker.clone();
        // Separate tasks for plain and TLS connections: a plain connection's task must not
        // reserve room for the (much larger) TLS stream state.
        match bound.tls.clone() {
            None => {
                let (rd, wr) = stream.into_split();
                tracker.spawn(async move {
                    conn::serve(rd, wr, peer, broker, link_only).await;
                    drop(permit);
                });
            }
            Some(acceptor) => {
                tracker.spawn(async move {
                    let handshake = tokio::time::timeout(broker.mqtt.connect_timeout, acceptor.accept(stream)).await;
                    match handshake {
                        Ok(Ok(tls)) => {
                            let (rd, wr) = tokio::io::split(tls);
                            conn::serve(rd, wr, peer, broker, link_only).await;
                        }
                        Ok(Err(e)) => tracing::info!(%peer, error = %e, "tls.handshake failed"),
                        Err(_) => tracing::info!(%peer, "tls.handshake timed out"),
                    }
                    drop(permit);
                });
            }
        }
    }
}
