//! One node: opens storage, builds the broker, binds every listener and the API, and owns the
//! shutdown of all of them. The one place that starts and stops a node's parts.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api;
use crate::broker::session::Kick;
use crate::broker::storage::{Storage, StorageError};
use crate::broker::{Broker, BrokerError};
use crate::cluster::{Cluster, ClusterError};
use crate::config::Config;
use crate::link;
use crate::listener::{self, ListenerError};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Listener(#[from] ListenerError),
    #[error("api.bind: cannot bind {addr}: {source}")]
    ApiBind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

pub struct Node {
    pub broker: Arc<Broker>,
    /// Bound MQTT listeners: (name, address), e.g. ("tcp.default", 127.0.0.1:1883).
    pub listeners: Vec<(String, SocketAddr)>,
    pub api_addr: Option<SocketAddr>,
    /// Membership of a regional cluster (when `cluster.static.seeds` is set).
    pub cluster: Option<Arc<Cluster>>,
    /// The links in force and their status.
    pub links: Arc<link::Registry>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Node {
    /// Start every part. Binding happens before anything serves, so a port conflict fails the
    /// start with a message naming the listener.
    pub async fn start(cfg: Config) -> Result<Node, NodeError> {
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        std::fs::create_dir_all(&cfg.node.data_dir).map_err(|e| StorageError::Open {
            path: cfg.node.data_dir.display().to_string(),
            source: sled::Error::Io(e),
        })?;
        // The store holds session state, queued messages and link credentials: owner only.
        {
            use std::os::unix::fs::PermissionsExt;
            if let Err(e) = std::fs::set_permissions(&cfg.node.data_dir, std::fs::Permissions::from_mode(0o700)) {
                tracing::warn!(dir = %cfg.node.data_dir.display(), "cannot make the data directory owner-only: {e}");
            }
        }
        let clustered = !cfg.cluster.seeds.is_empty();
        // In a cluster, Raft (in data_dir/raft) is the store; the single-node sled store is not used.
        let storage = if clustered { None } else { Some(Storage::open(&cfg.node.data_dir)?) };
        let links = Arc::new(link::Registry::new(&cfg, storage.clone())?);
        let broker = Broker::new(&cfg, storage, shutdown.clone())?;
        broker.set_link_hooks(links.clone());

        let mut bound = Vec::new();
        for (name, l) in &cfg.listeners.tcp {
            if !l.enable {
                continue;
            }
            bound.push(listener::bind(&format!("tcp.{name}"), l.bind, l.max_connections).await?);
        }
        for (name, l) in &cfg.listeners.ssl {
            if !l.enable {
                continue;
            }
            let full = format!("ssl.{name}");
            let acceptor = listener::tls_acceptor(&full, l)?;
            let mut b = listener::bind(&full, l.bind, l.max_connections).await?;
            b.tls = Some(acceptor);
            bound.push(b);
        }
        let api_listener = if cfg.api.enable {
            let l = tokio::net::TcpListener::bind(cfg.api.bind)
                .await
                .map_err(|source| NodeError::ApiBind { addr: cfg.api.bind, source })?;
            Some(l)
        } else {
            None
        };

        let cluster = if clustered {
            let mqtt = bound.iter().filter_map(|b| b.listener.local_addr().ok()).map(|a| a.to_string()).collect();
            let api = api_listener.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string());
            // The API's link changes come committed, in order, through the cluster's view.
            let registry = links.clone();
            let follow: crate::cluster::LinksListener = Box::new(move |o| registry.set_overrides(o));
            Some(Cluster::start(&cfg, broker.clone(), mqtt, api, follow, shutdown.clone(), tracker.clone()).await?)
        } else {
            None
        };
        link::start(&cfg, broker.clone(), cluster.clone(), links.clone(), shutdown.clone(), &tracker);
        let mut listeners = Vec::new();
        for b in bound {
            if let Ok(addr) = b.listener.local_addr() {
                tracing::info!(listener = %b.name, %addr, "listener.started");
                listeners.push((b.name.clone(), addr));
            }
            tracker.spawn(listener::serve(b, broker.clone(), tracker.clone()));
        }
        let api_addr = match api_listener {
            Some(l) => {
                let addr = l.local_addr().ok();
                tracing::info!(addr = ?addr, "api.started");
                let state = api::ApiState::new(broker.clone(), cluster.clone(), links.clone(), &cfg);
                tracker.spawn(api::serve(l, state));
                addr
            }
            None => None,
        };
        tracker.spawn(broker.clone().run_housekeeping());
        Ok(Node { broker, listeners, api_addr, cluster, links, shutdown, tracker })
    }

    /// Address of the listener named e.g. "tcp.default".
    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    /// Orderly stop: v5 clients get DISCONNECT 0x8B, every task ends, storage is flushed.
    pub async fn shutdown(self) {
        tracing::info!("node.shutting_down");
        for s in self.broker.sessions() {
            self.broker.kick(&s.client_id, Kick::Shutdown);
        }
        self.shutdown.cancel();
        if let Some(c) = &self.cluster {
            c.raft.shutdown().await;
        }
        self.tracker.close();
        if tokio::time::timeout(std::time::Duration::from_secs(5), self.tracker.wait()).await.is_err() {
            tracing::warn!("node.shutdown: tasks still running after 5 s");
        }
        self.broker.checkpoint(true);
        tracing::info!("node.stopped");
    }
}
