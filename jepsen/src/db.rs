//! The system under test: `strait` processes, one per host namespace, configured as one or two
//! regional clusters (two are linked symmetrically on `#`). Nodes are started, SIGKILLed,
//! SIGSTOPped/SIGCONTed and restarted with their data; clock skew goes through libfaketime
//! when it is installed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::net::{ip_of, Net};

pub const MQTT_PORT: u16 = 1883;
pub const API_PORT: u16 = 18083;
pub const RAFT_PORT: u16 = 7100;
pub const CLINK_PORT: u16 = 11883;

pub const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// One region: a cluster name and its node ids.
#[derive(Debug, Clone)]
pub struct Region {
    pub name: String,
    pub ids: Vec<u32>,
}

pub struct Node {
    pub id: u32,
    pub region: usize,
    pub config: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    pub paused: bool,
    pub faketime: Option<PathBuf>,
}

pub struct Db {
    pub strait: PathBuf,
    pub dir: PathBuf,
    pub regions: Vec<Region>,
    pub nodes: Vec<Node>,
    /// Data directories on a tmpfs of their own (disk-full scenarios), unmounted at the end.
    pub mounts: Vec<PathBuf>,
}

pub fn mqtt_addr(id: u32) -> SocketAddr {
    SocketAddr::from((ip_of(id), MQTT_PORT))
}

/// The nodes' API listens on their test-network address: it needs a key.
const API_KEY: &str = "jepsen";
const API_SECRET: &str = "jepsen-api-secret-0123456789";

pub fn api_addr(id: u32) -> SocketAddr {
    SocketAddr::from((ip_of(id), API_PORT))
}

/// The `Authorization: Basic` value of the nodes' API key.
pub fn api_auth() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{API_KEY}:{API_SECRET}"))
}

/// A CA and one node certificate naming every node's address, made with openssl in `dir`:
/// the nodes run mutual TLS between them, as a production cluster should.
fn make_certs(dir: &Path, ids: &[u32]) -> anyhow::Result<()> {
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .with_context(|| "running openssl (apt-get install openssl)")?;
        if !out.status.success() {
            anyhow::bail!("openssl {:?}: {}", args, String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=jepsen-ca"]);
    run(&ca)?;
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend(["-keyout", "node.key", "-out", "node.csr", "-subj", "/CN=jepsen-node"]);
    run(&csr)?;
    let sans: Vec<String> = ids.iter().map(|i| format!("IP:{}", ip_of(*i))).collect();
    std::fs::write(dir.join("ext.cnf"), format!("subjectAltName={}\n", sans.join(",")))?;
    run(&[
        "x509",
        "-req",
        "-in",
        "node.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "node.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ])
}

fn config(id: u32, region: &Region, other: Option<&Region>, data: &Path, certs: &Path) -> String {
    let ip = ip_of(id);
    let seeds: Vec<String> = region.ids.iter().map(|i| format!("\"n{i}@{}:{RAFT_PORT}\"", ip_of(*i))).collect();
    let links = match other {
        None => "[]".to_string(),
        Some(o) => {
            let servers: Vec<String> = o.ids.iter().map(|i| format!("{}:{CLINK_PORT}", ip_of(*i))).collect();
            format!(
                "[ {{ name = \"{}\", server = \"{}\", clientid = \"clink-{}\", username = \"clink\", password = \"jepsen-link-password\", topics = [\"#\"] }} ]",
                o.name,
                servers.join(","),
                region.name
            )
        }
    };
    format!(
        "node {{ name = \"n{id}@{ip}\", data_dir = \"{data}\" }}\n\
         cluster {{\n  name = \"{cluster}\"\n  static.seeds = [{seeds}]\n\
           raft {{ bind = \"{ip}:{RAFT_PORT}\", heartbeat_interval = 100ms, election_timeout = 300ms, secret = \"jepsen-{cluster}-secret-0123456789\",\n             ssl {{ certfile = \"{certs}/node.pem\", keyfile = \"{certs}/node.key\", cacertfile = \"{certs}/ca.pem\" }} }}\n\
           links = {links}\n}}\n\
         listeners.tcp.default.bind = \"{ip}:{MQTT_PORT}\"\n\
         listeners.tcp.clink.bind = \"{ip}:{CLINK_PORT}\"\n\
         api {{ bind = \"{ip}:{API_PORT}\", api_key = \"{API_KEY}\", api_secret = \"{API_SECRET}\" }}\n\
         mqtt {{ session_expiry_interval = 1h }}\n\
         log.level = info\n",
        data = data.display(),
        certs = certs.display(),
        cluster = region.name,
        seeds = seeds.join(", "),
    )
}

impl Db {
    /// Writes every node's config (nothing starts yet).
    /// With `tmpfs`, every node's data directory is a small file system of its own (one disk
    /// per node, to fill).
    pub fn new(strait: PathBuf, dir: PathBuf, regions: Vec<Region>, faketime: bool, tmpfs: bool) -> anyhow::Result<Db> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut nodes = Vec::new();
        let mut mounts = Vec::new();
        let all: Vec<u32> = regions.iter().flat_map(|r| r.ids.iter().copied()).collect();
        make_certs(&dir, &all)?;
        for (ri, r) in regions.iter().enumerate() {
            let other = if regions.len() > 1 { regions.get(1 - ri.min(1)) } else { None };
            for &id in &r.ids {
                let cfg = dir.join(format!("n{id}.hocon"));
                if tmpfs {
                    let data = dir.join(format!("data-n{id}"));
                    crate::disk::mount_tmpfs(&data)?;
                    mounts.push(data);
                }
                std::fs::write(&cfg, config(id, r, other, &dir.join(format!("data-n{id}")), &dir))?;
                let fake = if faketime {
                    let f = dir.join(format!("n{id}.faketime"));
                    std::fs::write(&f, "+0s")?;
                    Some(f)
                } else {
                    None
                };
                nodes.push(Node {
                    id,
                    region: ri,
                    config: cfg,
                    log: dir.join(format!("n{id}.log")),
                    child: None,
                    paused: false,
                    faketime: fake,
                });
            }
        }
        Ok(Db { strait, dir, regions, nodes, mounts })
    }

    pub fn ids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    pub fn node_mut(&mut self, id: u32) -> anyhow::Result<&mut Node> {
        self.nodes.iter_mut().find(|n| n.id == id).with_context(|| format!("no node {id}"))
    }

    pub fn start(&mut self, net: &Net, id: u32) -> anyhow::Result<()> {
        let strait = self.strait.clone();
        let ns = net.host(id)?.ns.clone();
        let n = self.node_mut(id)?;
        if n.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&n.log)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns]).arg(&strait).arg("run").arg("--config").arg(&n.config);
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        // The node dies with the harness (a crashed or interrupted run leaves no process).
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        if let Some(f) = &n.faketime {
            cmd.env("LD_PRELOAD", FAKETIME_LIB)
                .env("FAKETIME_TIMESTAMP_FILE", f)
                .env("FAKETIME_CACHE_DURATION", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        n.child = Some(cmd.spawn().with_context(|| format!("starting {} in {ns}", strait.display()))?);
        n.paused = false;
        Ok(())
    }

    pub fn start_all(&mut self, net: &Net) -> anyhow::Result<()> {
        for id in self.ids() {
            self.start(net, id)?;
        }
        Ok(())
    }

    fn signal(&mut self, id: u32, sig: i32) -> anyhow::Result<()> {
        let n = self.node_mut(id)?;
        if let Some(c) = &n.child {
            // SAFETY: kill(2) on our own child.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
        Ok(())
    }

    pub fn kill(&mut self, id: u32) -> anyhow::Result<()> {
        self.resume(id)?;
        let n = self.node_mut(id)?;
        if let Some(mut c) = n.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        Ok(())
    }

    pub fn pause(&mut self, id: u32) -> anyhow::Result<()> {
        self.signal(id, libc::SIGSTOP)?;
        self.node_mut(id)?.paused = true;
        Ok(())
    }

    pub fn resume(&mut self, id: u32) -> anyhow::Result<()> {
        if self.node_mut(id)?.paused {
            self.signal(id, libc::SIGCONT)?;
            self.node_mut(id)?.paused = false;
        }
        Ok(())
    }

    /// Sets a node's clock offset (libfaketime syntax: "+30s", "-2m", "+0s").
    pub fn skew(&mut self, id: u32, offset: &str) -> anyhow::Result<()> {
        let n = self.node_mut(id)?;
        let f = n.faketime.as_ref().context("clock skew needs the node started with libfaketime")?;
        std::fs::write(f, offset)?;
        Ok(())
    }

    /// Every node running and not paused; clocks back to true time.
    pub fn heal(&mut self, net: &Net) -> anyhow::Result<()> {
        for id in self.ids() {
            self.resume(id)?;
            if self.node_mut(id)?.faketime.is_some() {
                self.skew(id, "+0s")?;
            }
            let dead = {
                let n = self.node_mut(id)?;
                match &mut n.child {
                    Some(c) => !matches!(c.try_wait(), Ok(None)),
                    None => true,
                }
            };
            if dead {
                self.node_mut(id)?.child = None;
                self.start(net, id)?;
            }
        }
        Ok(())
    }

    pub fn stop_all(&mut self) {
        for id in self.ids() {
            let _ = self.kill(id);
        }
    }

    /// Nodes whose process exited by itself (not killed by the harness): a crash.
    pub fn crashed(&mut self) -> Vec<(u32, String)> {
        let mut out = Vec::new();
        for n in &mut self.nodes {
            if let Some(c) = &mut n.child {
                if let Ok(Some(status)) = c.try_wait() {
                    out.push((n.id, status.to_string()));
                }
            }
        }
        out
    }

    /// The node the region's members name as leader (asking each reachable node's API).
    pub fn leader(&self, region: usize) -> Option<u32> {
        for &id in &self.regions.get(region)?.ids {
            let Ok(body) = http_get(api_addr(id), "/api/v5/cluster") else { continue };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else { continue };
            if let Some(l) = v["leader"].as_str() {
                if let Some(n) = l.strip_prefix('n').and_then(|s| s.split('@').next()).and_then(|s| s.parse().ok()) {
                    return Some(n);
                }
            }
        }
        None
    }

    /// The node of `region` that serves the other region's link client (`clink-<other>`), as
    /// the region's members report it (the connected session's owner).
    pub fn link_server(&self, region: usize, other: usize) -> Option<u32> {
        let client = format!("clink-{}", self.regions.get(other)?.name);
        for &id in &self.regions.get(region)?.ids {
            let Ok(body) = http_get(api_addr(id), &format!("/api/v5/clients/{client}")) else { continue };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else { continue };
            if v["connected"] != true {
                continue;
            }
            let owner = v["node_id"].as_str()?.to_string();
            let c: serde_json::Value = serde_json::from_str(&http_get(api_addr(id), "/api/v5/cluster").ok()?).ok()?;
            let node = c["nodes"].as_array()?.iter().find(|n| n["id"] == owner.as_str())?;
            return node["name"].as_str()?.strip_prefix('n')?.split('@').next()?.parse().ok();
        }
        None
    }

    /// Waits until every node of every region reports its cluster available.
    pub fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let mut missing = Vec::new();
            for n in &self.nodes {
                let ok = http_get(api_addr(n.id), "/api/v5/cluster")
                    .ok()
                    .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
                    .is_some_and(|v| v["available"] == true);
                if !ok {
                    missing.push(n.id);
                }
            }
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("nodes {missing:?} not available within {within:?} (logs in {})", self.dir.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until each region's link reports `connected` on some node.
    pub fn wait_links(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let up = self.regions.iter().all(|r| {
                r.ids.iter().any(|id| {
                    http_get(api_addr(*id), "/api/v5/cluster/links")
                        .ok()
                        .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
                        .is_some_and(|v| v[0]["status"] == "connected")
                })
            });
            if up {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("links not connected within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.stop_all();
        for m in &self.mounts {
            crate::disk::umount(m);
        }
    }
}

/// A minimal HTTP/1.1 GET with short timeouts; the body of a 200 answer.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let auth = api_auth();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {auth}\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    if !out.starts_with("HTTP/1.1 200") {
        bail!("GET {path} on {addr}: {}", out.lines().next().unwrap_or(""));
    }
    Ok(out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}
