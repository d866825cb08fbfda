//! Shared test harness: in-process nodes on ephemeral ports with self-cleaning temp data dirs,
//! bounded waits, rumqttc v4/v5 clients whose incoming packets arrive on a channel
//! (`clients.rs`), and a raw client on the broker's own codec for byte-exact checks (`raw.rs`).
#![allow(dead_code, unused_imports)]

pub mod certs;
pub mod clients;
pub mod procs;
pub mod raw;
pub mod wire;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use strait::config::Config;
use strait::node::Node;

/// Upper bound for any single expected event (a packet, a state change).
pub const WAIT: Duration = Duration::from_secs(5);

/// Window used to prove that something does NOT happen.
pub const QUIET: Duration = Duration::from_millis(300);

/// A fresh temporary directory, left for the test to remove (process tests own their files).
pub fn tempdir(tag: &str) -> PathBuf {
    TempDir::new(tag).keep()
}

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "strait-t-{tag}-{}-{}-{:08x}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create temp dir {}: {e}", dir.display()));
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Keep the directory (no removal on drop); its path.
    pub fn keep(self) -> PathBuf {
        let p = self.0.clone();
        std::mem::forget(self);
        p
    }

    /// `path()` joined with `name`, as a string for config text.
    pub fn file(&self, name: &str) -> String {
        self.0.join(name).to_str().expect("utf-8 temp path").to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One in-process node. `extra` is HOCON appended after the test defaults (later keys win).
pub struct TestNode {
    pub node: Node,
    pub mqtt: SocketAddr,
    pub api: SocketAddr,
    pub dir: TempDir,
    extra: String,
}

pub fn config_text(data_dir: &Path, extra: &str) -> String {
    format!(
        "node.data_dir = \"{}\"\nlisteners.tcp.default.bind = \"127.0.0.1:0\"\napi.bind = \"127.0.0.1:0\"\n{extra}\n",
        data_dir.join("data").display()
    )
}

pub async fn start(extra: &str) -> TestNode {
    start_in(TempDir::new("node"), extra).await
}

/// Start a node whose data lives in `dir` (reused across a restart).
pub async fn start_in(dir: TempDir, extra: &str) -> TestNode {
    let text = config_text(dir.path(), extra);
    let cfg = Config::parse_str(&text, "test", std::iter::empty())
        .unwrap_or_else(|e| panic!("test config rejected: {e}\n--- config ---\n{text}"));
    let node = Node::start(cfg).await.unwrap_or_else(|e| panic!("node start: {e}"));
    let mqtt = node.listener("tcp.default").expect("listener tcp.default bound");
    let api = node.api_addr.expect("api bound");
    TestNode { node, mqtt, api, dir, extra: extra.to_string() }
}

impl TestNode {
    /// Orderly shutdown (bounded); returns the data dir for a restart.
    pub async fn stop(self) -> TempDir {
        tokio::time::timeout(Duration::from_secs(10), self.node.shutdown())
            .await
            .expect("node shutdown finished within 10 s");
        self.dir
    }

    /// Shut down and start again on the same data dir with the same config.
    pub async fn restart(self) -> TestNode {
        let extra = self.extra.clone();
        let dir = self.stop().await;
        start_in(dir, &extra).await
    }

    pub fn port(&self) -> u16 {
        self.mqtt.port()
    }

    /// Wait until `client_id` has a session with no live connection.
    pub async fn wait_offline(&self, client_id: &str) {
        let b = self.node.broker.clone();
        wait_for(
            || b.session(client_id).is_some_and(|s| !s.is_connected()),
            WAIT,
            &format!("session {client_id} to be offline"),
        )
        .await;
    }

    /// Wait until `client_id`'s session is connected and has a subscription to `filter`.
    pub async fn wait_subscribed(&self, client_id: &str, filter: &str) {
        let b = self.node.broker.clone();
        wait_for(
            || b.session(client_id).is_some_and(|s| s.is_connected() && s.lock().subscriptions.contains_key(filter)),
            WAIT,
            &format!("{client_id} subscribed to {filter}"),
        )
        .await;
    }

    /// Wait until any connected session has a subscription to `filter` (clients with ids we
    /// do not control, e.g. mosquitto_sub).
    pub async fn wait_any_subscribed(&self, filter: &str) {
        let b = self.node.broker.clone();
        wait_for(
            || b.sessions().iter().any(|s| s.is_connected() && s.lock().subscriptions.contains_key(filter)),
            WAIT,
            &format!("a connected subscription to {filter}"),
        )
        .await;
    }

    /// Wait until `client_id`'s queue holds `n` messages.
    pub async fn wait_queued(&self, client_id: &str, n: usize) {
        let b = self.node.broker.clone();
        wait_for(
            || b.session(client_id).is_some_and(|s| s.lock().queue.len() == n),
            WAIT,
            &format!("{n} messages queued for {client_id}"),
        )
        .await;
    }
}

/// Test logs at info level, through the test harness's capture (once per test binary).
pub fn init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_test_writer()
        .try_init();
}

/// 127.0.0.1:`port`.
pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Poll `cond` every 10 ms until it holds; panics naming `what` after `timeout`.
pub async fn wait_for(mut cond: impl FnMut() -> bool, timeout: Duration, what: &str) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Await `fut` for at most `t`, panicking with `what` on timeout.
pub async fn within<T>(t: Duration, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(t, fut).await.unwrap_or_else(|_| panic!("timed out after {t:?} waiting for {what}"))
}

/// Fail with a clear message when a stock client binary is missing (never skip silently).
pub fn require_binary(bin: &str) {
    let found =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file())).unwrap_or(false);
    assert!(
        found,
        "`{bin}` is not installed or not on PATH: install the Debian packages mosquitto-clients and mosquitto \
         (./scripts/test.sh does this) — interop tests refuse to pass without them"
    );
}
