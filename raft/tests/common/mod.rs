//! Test support for strait-raft: a small key/value state machine whose `Append` makes a double
//! application visible, and a cluster of in-process nodes on 127.0.0.1 ephemeral ports, each
//! with its own sled directory, talking real gRPC.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use strait_raft::{RaftConfig, RaftNode, StateMachine};

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kv {
    pub map: BTreeMap<String, String>,
    pub applied: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KvCmd {
    Set(String, String),
    /// Appends `value,` to the key: applying twice shows.
    Append(String, String),
}

impl StateMachine for Kv {
    type Command = KvCmd;
    type Response = u64;
    type Event = ();

    fn apply(&mut self, batch: Vec<KvCmd>, _events: &mut Vec<()>) -> Vec<u64> {
        batch
            .into_iter()
            .map(|c| {
                match c {
                    KvCmd::Set(k, v) => {
                        self.map.insert(k, v);
                    }
                    KvCmd::Append(k, v) => {
                        let e = self.map.entry(k).or_default();
                        e.push_str(&v);
                        e.push(',');
                    }
                }
                self.applied += 1;
                self.applied
            })
            .collect()
    }

    fn snapshot(&self) -> Result<Vec<u8>, String> {
        strait_raft::encode(self).map_err(|e| e.to_string())
    }

    fn restore(&mut self, bytes: &[u8], _events: &mut Vec<()>) -> Result<(), String> {
        *self = strait_raft::decode(bytes).map_err(|e| e.to_string())?;
        Ok(())
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_test_writer()
        .try_init();
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "strait-raft-{tag}-{}-{}-{:08x}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Poll `f` until it returns Some, or panic after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub struct Cluster {
    pub cfg: RaftConfig,
    pub addrs: BTreeMap<u64, String>,
    pub nodes: BTreeMap<u64, RaftNode<Kv>>,
    pending: BTreeMap<u64, tokio::net::TcpListener>,
    dirs: BTreeMap<u64, TempDir>,
}

impl Cluster {
    /// Reserve addresses for nodes 1..=n (all seeds); start none.
    pub async fn new(n: u64, tweak: impl FnOnce(&mut RaftConfig)) -> Cluster {
        init_tracing();
        let mut cfg = RaftConfig { cluster: "test".into(), ..Default::default() };
        tweak(&mut cfg);
        let mut addrs = BTreeMap::new();
        let mut pending = BTreeMap::new();
        let mut dirs = BTreeMap::new();
        for id in 1..=n {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            addrs.insert(id, l.local_addr().expect("addr").to_string());
            pending.insert(id, l);
            dirs.insert(id, TempDir::new(&format!("n{id}")));
        }
        cfg.seeds = addrs.clone();
        Cluster { cfg, addrs, nodes: BTreeMap::new(), pending, dirs }
    }

    pub fn config_of(&self, id: u64) -> RaftConfig {
        RaftConfig { id, advertise: self.addrs[&id].clone(), ..self.cfg.clone() }
    }

    /// Start (or restart) node `id` on its address and directory.
    pub async fn start(&mut self, id: u64) -> RaftNode<Kv> {
        let listener = match self.pending.remove(&id) {
            Some(l) => l,
            None => {
                // Restart: the port is free again once the old server is gone.
                let addr = self.addrs[&id].clone();
                wait_for(&format!("port {addr} of node {id} to be free"), Duration::from_secs(5), || {
                    let addr = addr.clone();
                    async move { tokio::net::TcpListener::bind(&addr).await.ok() }
                })
                .await
            }
        };
        tracing::info!("== start node {id}");
        let node = RaftNode::start(self.config_of(id), &self.dirs[&id].0, listener, None)
            .await
            .unwrap_or_else(|e| panic!("start node {id}: {e}"));
        self.nodes.insert(id, node.clone());
        node
    }

    pub async fn stop(&mut self, id: u64) {
        tracing::info!("== stop node {id}");
        if let Some(n) = self.nodes.remove(&id) {
            n.shutdown().await;
        }
    }

    pub fn node(&self, id: u64) -> &RaftNode<Kv> {
        self.nodes.get(&id).unwrap_or_else(|| panic!("node {id} is not running"))
    }

    /// Wait until one running node leads with a lease, and every running node agrees (excluding
    /// `not`); returns its id.
    pub async fn wait_leader(&self, not: Option<u64>) -> u64 {
        wait_for("a leader with a lease that every running node follows", Duration::from_secs(10), || async {
            let leaders: Vec<u64> = self
                .nodes
                .iter()
                .filter(|(_, n)| n.leadership().borrow().is_leader_with_lease())
                .map(|(id, _)| *id)
                .collect();
            match leaders.as_slice() {
                [l] if Some(*l) != not => {
                    let all = self.nodes.values().all(|n| n.leadership().borrow().leader == Some(*l));
                    all.then_some(*l)
                }
                _ => None,
            }
        })
        .await
    }

    /// Wait until every running node has applied a state for which `pred` holds.
    pub async fn wait_all(&self, what: &str, pred: impl Fn(&Kv) -> bool) {
        for (id, n) in &self.nodes {
            wait_for(&format!("node {id}: {what}"), Duration::from_secs(10), || async {
                n.read(|kv| pred(kv)).await.then_some(())
            })
            .await;
        }
    }

    pub async fn shutdown(mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}
