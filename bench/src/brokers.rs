//! The brokers under test: Strait (single node, a 3-node cluster, two linked regions), mosquitto
//! (single, two bridged) and rumqttd, each started fresh for every scenario on loopback ports,
//! in a temporary directory, and stopped (SIGTERM, then SIGKILL) afterwards.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Strait,
    Mosquitto,
    Rumqttd,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Strait => "strait",
            Kind::Mosquitto => "mosquitto",
            Kind::Rumqttd => "rumqttd",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Kind> {
        Ok(match s {
            "strait" => Kind::Strait,
            "mosquitto" => Kind::Mosquitto,
            "rumqttd" => Kind::Rumqttd,
            other => bail!("unknown broker `{other}` (strait, mosquitto, rumqttd)"),
        })
    }
}

/// Where the broker binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub strait: PathBuf,
    pub mosquitto: PathBuf,
    pub rumqttd: PathBuf,
    pub profile: Profile,
}

/// The settings the brokers run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Strait with the defaults of the shipped `config/` examples (nothing tuned: 32 in
    /// flight, queues of 1,000, heartbeat 100 ms); mosquitto with its own defaults.
    Shipped,
    /// Every broker with `INFLIGHT` and `QUEUE` (the first wave's figures).
    Tuned,
}

impl Profile {
    pub fn parse(s: &str) -> anyhow::Result<Profile> {
        match s {
            "shipped" => Ok(Profile::Shipped),
            "tuned" => Ok(Profile::Tuned),
            other => bail!("unknown profile {other:?} (shipped, tuned)"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Profile::Shipped => "shipped",
            Profile::Tuned => "tuned",
        }
    }

    /// Strait's `mqtt { ... }` line.
    fn strait_mqtt(self) -> String {
        match self {
            Profile::Shipped => String::new(),
            Profile::Tuned => format!("mqtt {{ max_inflight = {INFLIGHT}, max_mqueue_len = {QUEUE} }}\n"),
        }
    }

    /// mosquitto's queue settings.
    fn mosquitto_queues(self) -> String {
        match self {
            Profile::Shipped => String::new(),
            Profile::Tuned => format!("max_inflight_messages {INFLIGHT}\nmax_queued_messages {QUEUE}\n"),
        }
    }
}

impl Binaries {
    pub fn path(&self, k: Kind) -> &Path {
        match k {
            Kind::Strait => &self.strait,
            Kind::Mosquitto => &self.mosquitto,
            Kind::Rumqttd => &self.rumqttd,
        }
    }

    pub fn available(&self, k: Kind) -> bool {
        let p = self.path(k);
        p.is_file() || which(p).is_some()
    }
}

pub fn which(p: &Path) -> Option<PathBuf> {
    if p.components().count() > 1 {
        return p.is_file().then(|| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(p)).find(|c| c.is_file())
}

/// A free loopback port (bound, then released; never handed out twice by this process).
pub fn free_port() -> anyhow::Result<u16> {
    use std::sync::Mutex;
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    for _ in 0..100 {
        let l = TcpListener::bind("127.0.0.1:0").context("binding a probe port")?;
        let port = l.local_addr()?.port();
        let mut given = GIVEN.lock().map_err(|_| anyhow::anyhow!("port list poisoned"))?;
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
    bail!("no free port found")
}

/// One running broker process.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, up to 5 s for a clean exit, then SIGKILL.
    pub fn stop(&mut self) {
        if !self.alive() {
            return;
        }
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running deployment under test: its processes and the addresses clients use.
pub struct Deployment {
    pub procs: Vec<Proc>,
    /// MQTT address per node (a single broker has one; linked regions: region A's then B's).
    pub mqtt: Vec<SocketAddr>,
    /// HTTP API per node (Strait only).
    pub api: Vec<SocketAddr>,
    pub dir: PathBuf,
}

impl Deployment {
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|p| p.pid()).collect()
    }

    /// True while every process runs and every node accepts TCP connections.
    pub fn healthy(&mut self) -> bool {
        self.procs.iter_mut().all(|p| p.alive())
            && self.mqtt.iter().all(|a| TcpStream::connect_timeout(a, Duration::from_secs(2)).is_ok())
    }

    pub fn stop(&mut self) {
        for p in &mut self.procs {
            p.stop();
        }
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn scratch(tag: &str) -> anyhow::Result<PathBuf> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "strait-bench-{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

fn spawn(bin: &Path, args: &[&str], dir: &Path, name: &str) -> anyhow::Result<Proc> {
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let child = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(Proc { name: name.to_string(), child, log })
}

/// Waits until `addr` accepts TCP connections (bounded), or the process died.
fn wait_listening(p: &mut Proc, addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if !p.alive() {
            let log = std::fs::read_to_string(&p.log).unwrap_or_default();
            bail!("{} exited before listening on {addr}; its log:\n{log}", p.name);
        }
        if Instant::now() > deadline {
            bail!("{} not listening on {addr} after {within:?}", p.name);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The broker settings every peer gets, so that they are compared on equal terms: 100
/// outgoing QoS>0 messages in flight per client, queues of 100,000 messages, no persistence
/// to disk beyond what the broker always does, warnings-only logs.
pub const INFLIGHT: u32 = 100;
pub const QUEUE: u32 = 100_000;

pub fn single(kind: Kind, bins: &Binaries) -> anyhow::Result<Deployment> {
    let dir = scratch(kind.name())?;
    let port = free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut api = Vec::new();
    let mut proc = match kind {
        Kind::Strait => {
            let api_port = free_port()?;
            api.push(([127, 0, 0, 1], api_port).into());
            let cfg = format!(
                "node {{ name = \"bench@127.0.0.1\", data_dir = \"{data}\" }}\n\
                 listeners.tcp.default {{ bind = \"127.0.0.1:{port}\", max_connections = 200000 }}\n\
                 api.bind = \"127.0.0.1:{api_port}\"\n\
                 {mqtt}\
                 log.level = warn\n",
                data = dir.join("data").display(),
                mqtt = bins.profile.strait_mqtt(),
            );
            let f = dir.join("strait.hocon");
            std::fs::write(&f, cfg)?;
            spawn(&bins.strait, &["run", "--config", &f.to_string_lossy()], &dir, "strait")?
        }
        Kind::Mosquitto => {
            let f = dir.join("mosquitto.conf");
            std::fs::write(&f, mosquitto_conf(port, &bins.profile.mosquitto_queues()))?;
            spawn(&bins.mosquitto, &["-c", &f.to_string_lossy()], &dir, "mosquitto")?
        }
        Kind::Rumqttd => {
            let f = dir.join("rumqttd.toml");
            std::fs::write(&f, rumqttd_conf(port, free_port()?))?;
            spawn(&bins.rumqttd, &["-c", &f.to_string_lossy(), "-q"], &dir, "rumqttd")?
        }
    };
    wait_listening(&mut proc, addr, Duration::from_secs(15))?;
    Ok(Deployment { procs: vec![proc], mqtt: vec![addr], api, dir })
}

fn mosquitto_conf(port: u16, extra: &str) -> String {
    format!(
        "listener {port} 127.0.0.1\nallow_anonymous true\n\
         persistence false\nset_tcp_nodelay true\nlog_dest stderr\n\
         log_type error\nlog_type warning\n{extra}"
    )
}

fn rumqttd_conf(port: u16, console: u16) -> String {
    format!(
        "id = 0\n\n[router]\nid = 0\nmax_connections = 200000\nmax_outgoing_packet_count = 200\n\
         max_segment_size = 104857600\nmax_segment_count = 10\n\n[v4.1]\nname = \"v4-1\"\n\
         listen = \"127.0.0.1:{port}\"\nnext_connection_delay_ms = 0\n\
         [v4.1.connections]\nconnection_timeout_ms = 60000\nmax_payload_size = 1048576\n\
         max_inflight_count = {INFLIGHT}\ndynamic_filters = true\n\n[console]\n\
         listen = \"127.0.0.1:{console}\"\n"
    )
}

/// The example certificates the shipped `config/` clusters use for node-to-node mutual TLS (all
/// for 127.0.0.1), and their API key: the bench runs what ships.
const SHIPPED_CERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/certs/us-east");
const API_KEY: &str = "ops";
const API_SECRET: &str = "example-api-secret-replace-me";
/// `Authorization` header value for API_KEY:API_SECRET.
const API_AUTH: &str = "Basic b3BzOmV4YW1wbGUtYXBpLXNlY3JldC1yZXBsYWNlLW1l";

/// A Strait cluster of `n` nodes named `name`, optionally linked to another cluster
/// (`links`: HOCON text of the `links = [...]` value) with its own clink listener.
struct StraitNode {
    mqtt: u16,
    api: u16,
    raft: u16,
    clink: u16,
}

fn strait_cluster(
    bins: &Binaries,
    dir: &Path,
    cluster: &str,
    nodes: &[StraitNode],
    links: &str,
    procs: &mut Vec<Proc>,
) -> anyhow::Result<()> {
    let seeds: Vec<String> =
        nodes.iter().enumerate().map(|(i, n)| format!("\"n{}@127.0.0.1:{}\"", i + 1, n.raft)).collect();
    for (i, n) in nodes.iter().enumerate() {
        let cfg = format!(
            "node {{ name = \"n{id}@127.0.0.1\", data_dir = \"{data}\" }}\n\
             cluster {{\n  name = \"{cluster}\"\n  static.seeds = [{seeds}]\n\
               raft {{ bind = \"127.0.0.1:{raft}\", heartbeat_interval = 100ms, election_timeout = 300ms, secret = \"bench-{cluster}-secret-0123456789\",\n\
                 ssl {{ certfile = \"{certs}/node{c}.pem\", keyfile = \"{certs}/node{c}.key\", cacertfile = \"{certs}/ca.pem\" }} }}\n\
               links = {links}\n}}\n\
             listeners.tcp.default {{ bind = \"127.0.0.1:{mqtt}\", max_connections = 200000 }}\n\
             listeners.tcp.clink {{ bind = \"127.0.0.1:{clink}\" }}\n\
             api {{ bind = \"127.0.0.1:{api}\", api_key = \"{API_KEY}\", api_secret = \"{API_SECRET}\" }}\n\
             {tuning}\
             log.level = warn\n",
            tuning = bins.profile.strait_mqtt(),
            id = i + 1,
            c = i % 3 + 1,
            certs = SHIPPED_CERTS,
            data = dir.join(format!("{cluster}-n{}", i + 1)).display(),
            seeds = seeds.join(", "),
            raft = n.raft,
            mqtt = n.mqtt,
            clink = n.clink,
            api = n.api,
        );
        let f = dir.join(format!("{cluster}-n{}.hocon", i + 1));
        std::fs::write(&f, cfg)?;
        procs.push(spawn(
            &bins.strait,
            &["run", "--config", &f.to_string_lossy()],
            dir,
            &format!("{cluster}-n{}", i + 1),
        )?);
    }
    Ok(())
}

fn ports(n: usize) -> anyhow::Result<Vec<StraitNode>> {
    (0..n)
        .map(|_| Ok(StraitNode { mqtt: free_port()?, api: free_port()?, raft: free_port()?, clink: free_port()? }))
        .collect()
}

fn loopback(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

/// A 3-node Strait cluster; waits until every node reports the cluster ready on its API.
pub fn strait_cluster3(bins: &Binaries) -> anyhow::Result<Deployment> {
    let dir = scratch("cluster")?;
    let nodes = ports(3)?;
    let mut procs = Vec::new();
    strait_cluster(bins, &dir, "bench", &nodes, "[]", &mut procs)?;
    let mut d = Deployment {
        procs,
        mqtt: nodes.iter().map(|n| loopback(n.mqtt)).collect(),
        api: nodes.iter().map(|n| loopback(n.api)).collect(),
        dir,
    };
    for i in 0..3 {
        let addr = d.mqtt[i];
        wait_listening(&mut d.procs[i], addr, Duration::from_secs(30))?;
    }
    Ok(d)
}

/// Two linked regions. Strait: two 3-node clusters (`nodes_per_region`) linked symmetrically
/// on `linked/#`; mosquitto: two brokers, the second bridged to the first on `linked/#` both
/// ways at QoS 1. `mqtt[0..n]` are region A's nodes, `mqtt[n..]` region B's.
pub fn linked(kind: Kind, bins: &Binaries, nodes_per_region: usize) -> anyhow::Result<Deployment> {
    let dir = scratch("linked")?;
    match kind {
        Kind::Strait => {
            let a = ports(nodes_per_region)?;
            let b = ports(nodes_per_region)?;
            let servers =
                |r: &[StraitNode]| r.iter().map(|n| format!("127.0.0.1:{}", n.clink)).collect::<Vec<_>>().join(",");
            let link = |name: &str, server: String, client: &str| {
                format!(
                    "[{{ name = \"{name}\", server = \"{server}\", clientid = \"{client}\", username = \"clink\", password = \"example-link-password-replace-me\", topics = [\"linked/#\"] }}]"
                )
            };
            let mut procs = Vec::new();
            strait_cluster(bins, &dir, "bench-a", &a, &link("bench-b", servers(&b), "clink-a"), &mut procs)?;
            strait_cluster(bins, &dir, "bench-b", &b, &link("bench-a", servers(&a), "clink-b"), &mut procs)?;
            let mut d = Deployment {
                procs,
                mqtt: a.iter().chain(b.iter()).map(|n| loopback(n.mqtt)).collect(),
                api: a.iter().chain(b.iter()).map(|n| loopback(n.api)).collect(),
                dir,
            };
            for i in 0..d.mqtt.len() {
                let addr = d.mqtt[i];
                wait_listening(&mut d.procs[i], addr, Duration::from_secs(30))?;
            }
            Ok(d)
        }
        Kind::Mosquitto => {
            let pa = free_port()?;
            let pb = free_port()?;
            let fa = dir.join("a.conf");
            let fb = dir.join("b.conf");
            let queues = bins.profile.mosquitto_queues();
            std::fs::write(&fa, mosquitto_conf(pa, &queues))?;
            let bridge = format!(
                "connection to-a\naddress 127.0.0.1:{pa}\ntopic linked/# both 1\ncleansession false\n\
                 clientid bridge-b\ntry_private true\nrestart_timeout 1\n"
            );
            std::fs::write(&fb, mosquitto_conf(pb, &format!("{queues}{bridge}")))?;
            let mut pa_proc = spawn(&bins.mosquitto, &["-c", &fa.to_string_lossy()], &dir, "mosquitto-a")?;
            wait_listening(&mut pa_proc, loopback(pa), Duration::from_secs(10))?;
            let mut pb_proc = spawn(&bins.mosquitto, &["-c", &fb.to_string_lossy()], &dir, "mosquitto-b")?;
            wait_listening(&mut pb_proc, loopback(pb), Duration::from_secs(10))?;
            Ok(Deployment {
                procs: vec![pa_proc, pb_proc],
                mqtt: vec![loopback(pa), loopback(pb)],
                api: Vec::new(),
                dir,
            })
        }
        Kind::Rumqttd => bail!("rumqttd has no link/bridge scenario here"),
    }
}

/// Starts a stopped Strait node again with its existing config and data (failover runs).
pub fn restart_strait(d: &mut Deployment, bins: &Binaries, index: usize) -> anyhow::Result<()> {
    let name = d.procs[index].name.clone();
    let cfg = d.dir.join(format!("{name}.hocon"));
    let log_keep = d.dir.join(format!("{name}.log.{}", std::process::id()));
    let _ = std::fs::rename(&d.procs[index].log, log_keep);
    let p = spawn(&bins.strait, &["run", "--config", &cfg.to_string_lossy()], &d.dir, &name)?;
    d.procs[index] = p;
    let addr = d.mqtt[index];
    wait_listening(&mut d.procs[index], addr, Duration::from_secs(30))
}

/// A minimal HTTP/1.1 GET on loopback returning the body (the Strait admin API).
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {API_AUTH}\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    if !out.starts_with("HTTP/1.1 200") {
        bail!("GET {path} on {addr}: {}", out.lines().next().unwrap_or(""));
    }
    Ok(body)
}

/// CPU time (user + system) of a process in seconds, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / tick)
}

/// Resident set size in KiB, from /proc/PID/status.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}
