//! A regional cluster of real `strait` processes on 127.0.0.1 ephemeral ports: start, SIGKILL,
//! SIGSTOP/SIGCONT, restart, and wait on the HTTP API with deadlines. Every node's log goes to a
//! file in the cluster's temp dir; on a panic the logs' tails are printed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::TempDir;

pub struct ProcNode {
    pub name: String,
    pub mqtt: u16,
    pub api: u16,
    pub raft: u16,
    /// The link listener (`listeners.tcp.clink`), enabled by `link_to`.
    pub clink: u16,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

pub struct ProcCluster {
    pub cluster: String,
    pub nodes: Vec<ProcNode>,
    pub dir: TempDir,
}

/// Distinct ports free right now. All are held until all are chosen (so none repeats), then
/// released for the nodes to bind moments later.
/// Never hands out the same port twice in one test process (clusters of one test are
/// configured one after the other, so a released port could otherwise come back).
/// The cluster secret of every test cluster.
pub const TEST_SECRET: &str = "strait-test-cluster-secret";
/// The API key of every test cluster (its API needs it, as in production).
pub const TEST_API_KEY: &str = "test";
pub const TEST_API_SECRET: &str = "strait-test-api-secret";

pub fn free_ports(n: usize) -> Vec<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let mut held = Vec::new();
    let mut out = Vec::new();
    while out.len() < n {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = l.local_addr().expect("local addr").port();
        if !given.contains(&port) {
            given.push(port);
            out.push(port);
        }
        held.push(l);
    }
    out
}

impl ProcCluster {
    /// Write configs for `n` seed nodes of cluster `name` (tweak: extra HOCON for every node)
    /// and start them all.
    pub fn start(n: usize, extra: &str) -> ProcCluster {
        let mut c = ProcCluster::configure("cluster-test", n, n, extra);
        for i in 0..n {
            c.spawn(i);
        }
        c
    }

    /// Configure `n` nodes of which the first `seeds` are the seed list; start none.
    pub fn configure(cluster: &str, n: usize, seeds: usize, extra: &str) -> ProcCluster {
        let dir = TempDir::new("proc-cluster");
        let mut nodes = Vec::new();
        let mut ports = free_ports(n * 4).into_iter();
        let mut port = move || ports.next().expect("port");
        for i in 0..n {
            nodes.push(ProcNode {
                name: format!("n{}@127.0.0.1", i + 1),
                mqtt: port(),
                api: port(),
                raft: port(),
                clink: port(),
                config: dir.path().join(format!("n{}.hocon", i + 1)),
                log: dir.path().join(format!("n{}.log", i + 1)),
                child: None,
            });
        }
        let seed_list: Vec<String> = nodes[..seeds].iter().map(|n| format!("\"{}:{}\"", n.name, n.raft)).collect();
        for (i, n) in nodes.iter().enumerate() {
            let text = format!(
                "node {{ name = \"{name}\", data_dir = \"{data}\" }}\n\
                 cluster {{\n  name = \"{cluster}\"\n  static.seeds = [{seeds}]\n  raft {{ bind = \"127.0.0.1:{raft}\", election_timeout = 300ms, node_down_after = 2s, commit_timeout = 3s, secret = \"{TEST_SECRET}\", ssl {{ certfile = \"{certs}/server.pem\", keyfile = \"{certs}/server.key\", cacertfile = \"{certs}/ca.pem\" }} }}\n}}\n\
                 listeners.tcp.default.bind = \"127.0.0.1:{mqtt}\"\n\
                 api {{ bind = \"127.0.0.1:{api}\", api_key = {TEST_API_KEY}, api_secret = \"{TEST_API_SECRET}\" }}\n{extra}\n",
                name = n.name,
                certs = test_certs().display(),
                data = dir.path().join(format!("data{}", i + 1)).display(),
                seeds = seed_list.join(", "),
                raft = n.raft,
                mqtt = n.mqtt,
                api = n.api,
            );
            std::fs::write(&n.config, text).expect("write config");
        }
        ProcCluster { cluster: cluster.to_string(), nodes, dir }
    }

    /// Link this cluster to `other` (this cluster wants `topics` from it) and open this
    /// cluster's link listener; appended to every node's config (HOCON merges the objects).
    pub fn link_to(&self, other: &ProcCluster, topics: &str) {
        self.link_to_many(&[other], topics);
    }

    /// Links to several clusters (one `links` list), each wanting `topics`.
    pub fn link_to_many(&self, others: &[&ProcCluster], topics: &str) {
        self.link_to_with(others, topics, "");
    }

    /// `link_to_many` with `extra` keys in every link's object (e.g. `max_outbox = 500`).
    pub fn link_to_with(&self, others: &[&ProcCluster], topics: &str, extra: &str) {
        let links: Vec<String> = others
            .iter()
            .map(|other| {
                let servers: Vec<String> = other.nodes.iter().map(|n| format!("127.0.0.1:{}", n.clink)).collect();
                let extra = if extra.is_empty() { String::new() } else { format!(", {extra}") };
                format!(
                    "{{ name = \"{}\", server = \"{}\", clientid = \"clink-{}\", topics = {topics}, retry_interval = 500ms{extra} }}",
                    other.cluster,
                    servers.join(","),
                    self.cluster
                )
            })
            .collect();
        for n in &self.nodes {
            let mut text = std::fs::read_to_string(&n.config).expect("config");
            text.push_str(&format!(
                "cluster {{ links = [ {} ] }}\nlisteners.tcp.clink.bind = \"127.0.0.1:{}\"\n",
                links.join(", "),
                n.clink
            ));
            std::fs::write(&n.config, text).expect("config");
        }
    }

    /// Replace the link's topics (a restart applies it).
    pub fn set_link_topics(&self, topics: &str) {
        for n in &self.nodes {
            let text = std::fs::read_to_string(&n.config).expect("config");
            let start = text.find("topics = ").expect("a link");
            let end = start + text[start..].find(", retry_interval").expect("link end");
            let text = format!("{}topics = {topics}{}", &text[..start], &text[end..]);
            std::fs::write(&n.config, text).expect("config");
        }
    }

    pub fn spawn(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&n.log).expect("log file");
        let err = log.try_clone().expect("log file");
        // STRAIT_TEST_BIN runs another build (e.g. target/release/strait, for figures).
        let bin = std::env::var("STRAIT_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_strait").to_string());
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&n.config)
            .env("RUST_LOG", "info,openraft=error")
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn strait");
        tracing::info!("== started {} (pid {})", n.name, child.id());
        n.child = Some(child);
    }

    fn signal(&mut self, i: usize, sig: i32) {
        if let Some(c) = &self.nodes[i].child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self, i: usize) {
        tracing::info!("== SIGKILL {}", self.nodes[i].name);
        self.signal(i, libc::SIGKILL);
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.wait();
        }
    }

    pub fn pause(&mut self, i: usize) {
        tracing::info!("== SIGSTOP {}", self.nodes[i].name);
        self.signal(i, libc::SIGSTOP);
    }

    pub fn resume(&mut self, i: usize) {
        tracing::info!("== SIGCONT {}", self.nodes[i].name);
        self.signal(i, libc::SIGCONT);
    }

    /// Node `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("data{}", i + 1))
    }

    /// Wait (bounded) for node `i` to exit by itself; its exit code, None if it still runs.
    pub async fn wait_exit(&mut self, i: usize, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(c) = self.nodes[i].child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.nodes[i].child = None;
                    return Some(st.code().unwrap_or(-1));
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id of node `i` while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(|c| c.id())
    }

    /// GET the cluster status of node `i` (None while it does not answer).
    pub fn status(&self, i: usize) -> Option<Value> {
        http_get(self.nodes[i].api, "/api/v5/cluster").and_then(|(code, body)| {
            if code == 200 {
                serde_json::from_str(&body).ok()
            } else {
                None
            }
        })
    }

    /// Wait until every node in `up` reports the same leader, available, with all of `up`
    /// reachable; returns the leader's index.
    pub async fn wait_ready(&self, up: &[usize]) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let sts: Vec<Option<Value>> = up.iter().map(|i| self.status(*i)).collect();
            let leaders: Vec<Option<String>> =
                sts.iter().map(|s| s.as_ref().and_then(|v| v["leader"].as_str().map(String::from))).collect();
            let all_available = sts.iter().all(|s| s.as_ref().is_some_and(|v| v["available"] == true));
            if all_available && leaders.windows(2).all(|w| w[0] == w[1]) {
                if let Some(Some(l)) = leaders.first() {
                    if let Some(idx) = self.nodes.iter().position(|n| &n.name == l) {
                        // Every up node has announced its addresses, and every up node has
                        // applied every announcement (a node's registration is what tells a
                        // wiped node, later, that it ran: tests/disks.rs).
                        let known = sts.iter().all(|s| {
                            s.as_ref().is_some_and(|v| {
                                up.iter().all(|i| {
                                    v["nodes"].as_array().is_some_and(|ns| {
                                        ns.iter()
                                            .any(|n| n["name"] == self.nodes[*i].name.as_str() && n["api"].is_string())
                                    })
                                })
                            })
                        });
                        if known {
                            return idx;
                        }
                    }
                }
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("cluster not ready within 30 s; last statuses: {sts:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until the leader's link named `name` is connected with `route` among its routes
    /// (None: any routes); returns its status.
    pub async fn wait_link(&self, name: &str, route: Option<&str>) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for i in 0..self.nodes.len() {
                let Some((200, body)) = http_get(self.nodes[i].api, "/api/v5/cluster/links") else { continue };
                let Ok(v) = serde_json::from_str::<Value>(&body) else { continue };
                let Some(l) = v.as_array().and_then(|a| a.iter().find(|l| l["name"] == name).cloned()) else {
                    continue;
                };
                let routed = route.is_none_or(|r| l["routes"].as_array().is_some_and(|rs| rs.iter().any(|x| x == r)));
                if l["status"] == "connected" && routed {
                    return l;
                }
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("link {name} of {} not connected with route {route:?} within 20 s", self.cluster);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until node `i` answers on its HTTP API (it is listening).
    pub async fn wait_up(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_get(self.nodes[i].api, "/api/v5/status").map(|r| r.0) != Some(200) {
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("node {} not up within 20 s", self.nodes[i].name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until node `i` reports `available == want`.
    pub async fn wait_available(&self, i: usize, want: bool, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.status(i).is_some_and(|v| v["available"] == want) {
                return;
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("node {} not available={want} within {within:?}", self.nodes[i].name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One line per up node: its links (status, server, routes, counters, last error) and
    /// the link clients it serves (queue and inflight): what a failure message should carry.
    pub fn links_report(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let links = http_get(n.api, "/api/v5/cluster/links")
                .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
                .map(|v| {
                    let pick = |l: &Value| {
                        json!({"name": l["name"], "status": l["status"], "server": l["connected_server"],
                            "routes": l["routes"], "inflight": l["inflight"], "received": l["messages_received"],
                            "published": l["messages_published"], "dup": l["messages_duplicate"], "connects": l["connects"],
                            "error": l["last_error"]})
                    };
                    v.as_array().map(|a| a.iter().map(pick).collect::<Vec<_>>()).unwrap_or_default()
                });
            let clients =
                http_get(n.api, "/api/v5/clients").and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok()).map(|v| {
                    let pick = |c: &Value| {
                        json!({"id": c["clientid"], "connected": c["connected"], "node": c["node_id"],
                            "mqueue": c["mqueue_len"], "inflight": c["inflight_cnt"], "dropped": c["mqueue_dropped"]})
                    };
                    v.as_array().map(|a| a.iter().map(pick).collect::<Vec<_>>()).unwrap_or_default()
                });
            out.push_str(&format!(
                "\n  {}@{}: links {} clients {}",
                self.cluster,
                n.name,
                json!(links),
                json!(clients)
            ));
        }
        out
    }

    pub fn dump_logs(&self) {
        for n in &self.nodes {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            let keep = std::env::var("STRAIT_TEST_LOG_LINES").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
            let tail: Vec<&str> = text.lines().rev().take(keep).collect();
            eprintln!("----- {} (last {keep} lines) -----", n.name);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                // SAFETY: kill(2) on our own child's pid (SIGCONT first: a stopped child).
                unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// The certificates every test cluster's nodes present to each other (mutual TLS between
/// nodes, as a production cluster should run): one CA and one certificate for 127.0.0.1, made
/// once per test binary.
pub fn test_certs() -> &'static std::path::Path {
    static CERTS: std::sync::OnceLock<TempDir> = std::sync::OnceLock::new();
    CERTS
        .get_or_init(|| {
            let d = TempDir::new("node-certs");
            super::certs::make_certs(d.path());
            d
        })
        .path()
}

/// The `Authorization` header line for the test clusters' API key.
pub fn test_api_auth() -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{TEST_API_KEY}:{TEST_API_SECRET}"));
    format!("Authorization: Basic {b64}")
}

/// A minimal HTTP/1.1 request with the test API key; returns (status, body).
pub fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        test_api_auth(),
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((code, body))
}

pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http(port, "GET", path, None)
}

/// Resident memory of process `pid` in KB (0 when it cannot be read).
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
