//! The typed configuration a node runs with, and its defaults.

use super::*;

// ------------------------------------------------------------------------------------------
// Public types
// ------------------------------------------------------------------------------------------

/// The whole node configuration. `Default` is the single-node default (see the module doc).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Config {
    pub node: NodeConfig,
    pub listeners: Listeners,
    pub mqtt: MqttConfig,
    pub api: ApiConfig,
    pub authentication: AuthnConfig,
    pub authorization: AuthzConfig,
    pub cluster: ClusterConfig,
    pub log: LogConfig,
    /// non-fatal notes found during validation (e.g. a link filter covered by another), each
    /// "key.path: text"
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeConfig {
    /// "strait@127.0.0.1"
    pub name: String,
    /// "./data"
    pub data_dir: PathBuf,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig { name: "strait@127.0.0.1".to_string(), data_dir: PathBuf::from("./data") }
    }
}

/// Listeners by name. `Default` is the single `tcp.default` listener on `0.0.0.0:1883`. A TCP
/// listener named `clink` is the cluster-link listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listeners {
    pub tcp: BTreeMap<String, TcpListenerConfig>,
    pub ssl: BTreeMap<String, SslListenerConfig>,
}

impl Default for Listeners {
    fn default() -> Self {
        let mut tcp = BTreeMap::new();
        tcp.insert("default".to_string(), TcpListenerConfig { bind: any_addr(1883), ..TcpListenerConfig::default() });
        Listeners { tcp, ssl: BTreeMap::new() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcpListenerConfig {
    pub enable: bool,
    pub bind: SocketAddr,
    pub max_connections: usize,
}

impl Default for TcpListenerConfig {
    fn default() -> Self {
        TcpListenerConfig { enable: true, bind: any_addr(1883), max_connections: 100_000 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SslListenerConfig {
    pub enable: bool,
    /// default 0.0.0.0:8883
    pub bind: SocketAddr,
    /// required when the listener is enabled
    pub certfile: PathBuf,
    /// required when the listener is enabled
    pub keyfile: PathBuf,
    pub cacertfile: Option<PathBuf>,
    /// key `verify` = "verify_peer" | "verify_none" (default verify_none)
    pub verify_peer: bool,
    pub fail_if_no_peer_cert: bool,
    pub max_connections: usize,
}

impl Default for SslListenerConfig {
    fn default() -> Self {
        SslListenerConfig {
            enable: true,
            bind: any_addr(8883),
            certfile: PathBuf::new(),
            keyfile: PathBuf::new(),
            cacertfile: None,
            verify_peer: false,
            fail_if_no_peer_cert: false,
            max_connections: 100_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MqttConfig {
    /// default 1 MiB; range 2..=268435455
    pub max_packet_size: u32,
    pub max_clientid_len: usize,
    pub max_topic_levels: usize,
    /// 0..=2
    pub max_qos_allowed: u8,
    /// 0 disables topic aliases
    pub max_topic_alias: u16,
    pub retain_available: bool,
    pub wildcard_subscription: bool,
    pub shared_subscription: bool,
    /// none when absent or "disabled"
    pub server_keepalive: Option<u16>,
    /// >= 1.0
    pub keepalive_multiplier: f64,
    /// expiry for 3.1.1 persistent sessions and the cap for 5.0 requests
    #[serde(serialize_with = "ser_duration")]
    pub session_expiry_interval: Duration,
    /// our Receive Maximum and the outbound window cap (1..=65535)
    pub max_inflight: u16,
    /// per session queue; 0 queues nothing
    pub max_mqueue_len: usize,
    /// per session queue, bytes (topic + payload + 64 per message); 0 = no byte bound
    pub max_mqueue_bytes: u64,
    /// what a message that finds its session's queue full does: evict the oldest queued
    /// message (`drop_oldest`, EMQX's behaviour) or go (`drop_newest`, mosquitto's)
    pub mqueue_overflow: Overflow,
    pub mqueue_store_qos0: bool,
    pub max_awaiting_rel: usize,
    #[serde(serialize_with = "ser_duration")]
    pub await_rel_timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub retry_interval: Duration,
    /// a TCP client that sends no CONNECT in this time is dropped
    #[serde(serialize_with = "ser_duration")]
    pub connect_timeout: Duration,
    /// per client; none = unlimited ("infinity" also accepted); default 10,000
    pub max_subscriptions: Option<usize>,
    /// retained messages kept (a new retained topic past it is refused: 0x97); 0 = no bound
    pub max_retained_messages: usize,
    /// their bytes (topic + payload + 64 per message); 0 = no bound
    pub max_retained_bytes: u64,
    /// user properties one packet may carry (more: 0x95 and disconnect)
    pub max_user_properties: usize,
    /// bytes queued for a client's socket before we stop reading from it (and stop filling
    /// it from its session)
    pub max_send_buffer: usize,
    /// a client whose socket accepts nothing for this long while we have bytes for it is
    /// disconnected (EMQX's `send_timeout`)
    #[serde(serialize_with = "ser_duration")]
    pub send_timeout: Duration,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            max_packet_size: 1024 * 1024,
            max_clientid_len: 65535,
            max_topic_levels: 128,
            max_qos_allowed: 2,
            max_topic_alias: 1024,
            retain_available: true,
            wildcard_subscription: true,
            shared_subscription: true,
            server_keepalive: None,
            keepalive_multiplier: 1.5,
            session_expiry_interval: Duration::from_secs(2 * 3600),
            max_inflight: 32,
            max_mqueue_len: 1000,
            max_mqueue_bytes: 64 * 1024 * 1024,
            mqueue_overflow: Overflow::DropOldest,
            mqueue_store_qos0: true,
            max_awaiting_rel: 100,
            await_rel_timeout: Duration::from_secs(300),
            retry_interval: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(15),
            max_subscriptions: Some(10_000),
            max_retained_messages: 1_000_000,
            max_user_properties: 1024,
            max_send_buffer: 1024 * 1024,
            send_timeout: Duration::from_secs(15),
            max_retained_bytes: 1024 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiConfig {
    pub enable: bool,
    /// 127.0.0.1:18083: reachable from this machine only unless configured.
    pub bind: SocketAddr,
    /// keys `api.api_key` + `api.api_secret`, and the lines `key:secret[:role]` of
    /// `api.bootstrap_file` (EMQX's `api_key.bootstrap_file` format): callers authenticate with
    /// HTTP Basic `key:secret`. Empty: only a loopback bind is allowed, and it is open to local
    /// users.
    #[serde(skip)]
    pub keys: Vec<(String, Secret)>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig { enable: true, bind: SocketAddr::from(([127, 0, 0, 1], 18083)), keys: Vec::new() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthnConfig {
    /// true
    pub allow_anonymous: bool,
    /// mosquitto `password_file` format, see [`crate::auth::PasswordFile`]
    pub password_file: Option<PathBuf>,
    /// accept mosquitto 1.x `$6$` lines (false: the file is refused, naming the line)
    pub allow_sha512_hashes: bool,
}

impl Default for AuthnConfig {
    fn default() -> Self {
        AuthnConfig { allow_anonymous: true, password_file: None, allow_sha512_hashes: false }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct AuthzConfig {
    /// see [`crate::auth::Acl`]
    pub acl_file: Option<PathBuf>,
    /// verdict when no ACL rule matches (default allow)
    pub no_match: AclVerdict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AclVerdict {
    #[default]
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterConfig {
    /// "strait"
    pub name: String,
    /// key `cluster.static.seeds`: node names, each optionally with its Raft port
    /// (`node1@127.0.0.1:7101`; without a port, 7101). Empty: no cluster (a single node
    /// without Raft).
    pub seeds: Vec<String>,
    pub links: Vec<LinkConfig>,
    pub raft: RaftTiming,
}

/// key `cluster.raft`: this node's Raft/gRPC listener and the Raft timing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RaftTiming {
    /// key `cluster.raft.bind` (default 0.0.0.0:7101). Peers reach it at the host of
    /// `node.name` and this port.
    pub bind: SocketAddr,
    pub heartbeat_interval: Duration,
    /// key `cluster.raft.election_timeout`: the minimum; the maximum is twice it.
    pub election_timeout: Duration,
    /// key `cluster.raft.snapshot_every`: entries between snapshots.
    pub snapshot_every: u64,
    /// key `cluster.raft.commit_timeout`: how long a write needing a commit (CONNECT,
    /// SUBSCRIBE, retained, QoS>=1 to a persistent session) waits for the cluster.
    pub commit_timeout: Duration,
    /// key `cluster.raft.node_down_after`: a node unreachable this long has its sessions
    /// marked disconnected and their wills published by the leader.
    pub node_down_after: Duration,
    /// key `cluster.raft.secret` (or `secret_file`): the secret every node of the cluster
    /// shares; an RPC that does not prove it is refused before anything is read. Required with
    /// seeds.
    #[serde(skip)]
    pub secret: Option<Secret>,
    /// key `cluster.raft.ssl { enable, certfile, keyfile, cacertfile }`: mutual TLS between
    /// nodes (each presents a certificate the CA signed, naming the host its peers dial).
    #[serde(skip)]
    pub tls: Option<TlsFiles>,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            bind: SocketAddr::from(([0, 0, 0, 0], 7101)),
            // 100 ms: an idle cluster costs ~1 % of a core per node in heartbeats (50 ms doubled
            // it); a follower still misses three before it stands for election.
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(300),
            snapshot_every: 10_000,
            commit_timeout: Duration::from_secs(5),
            node_down_after: Duration::from_secs(5),
            secret: None,
            tls: None,
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig { name: "strait".to_string(), seeds: Vec::new(), links: Vec::new(), raft: RaftTiming::default() }
    }
}

/// A seed (or a node's own identity): its name and Raft address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    pub name: String,
    pub raft_addr: String,
}

impl Seed {
    /// `name@host[:port]` → name `name@host`, Raft address `host:port` (port 7101 when absent).
    pub fn parse(s: &str) -> Result<Seed, String> {
        let (name, port) = match s.rsplit_once(':') {
            Some((n, p)) if !n.contains(']') || n.ends_with(']') => {
                (n, p.parse::<u16>().map_err(|_| format!("{s:?}: bad Raft port {p:?}"))?)
            }
            _ => (s, 7101),
        };
        let host = name
            .split_once('@')
            .map(|(_, h)| h)
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("{s:?}: expected name@host[:raft_port], e.g. \"node1@127.0.0.1:7101\""))?;
        Ok(Seed { name: name.to_string(), raft_addr: format!("{host}:{port}") })
    }
}

/// A node's Raft id: a stable hash of its name (FNV-1a, never 0).
pub fn node_id(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

/// One cluster link (to the remote cluster named `name`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkConfig {
    pub name: String,
    pub enable: bool,
    pub server: Vec<ServerAddr>,
    /// default "clink-{cluster.name}"
    pub clientid: String,
    pub username: Option<String>,
    /// serialized as "******"
    #[serde(serialize_with = "ser_secret")]
    pub password: Option<String>,
    /// validated, with filters covered by another filter of the link removed
    pub topics: Vec<String>,
    pub ssl: LinkSslConfig,
    /// 5s
    #[serde(serialize_with = "ser_duration")]
    pub retry_interval: Duration,
    /// 256 (DEFAULT_LINK_INFLIGHT): messages the remote may have in flight on the link
    pub max_inflight: u16,
    /// The outbox: what this cluster queues for the remote's link client while it is away or
    /// slow (its session here), in messages and bytes; full, the oldest message is dropped.
    pub max_outbox: usize,
    pub max_outbox_bytes: u64,
}

/// Default `links[].max_outbox`: an hour of a 25 msg/s stream, or ten minutes at 160 msg/s.
pub const DEFAULT_LINK_OUTBOX: usize = 100_000;
/// Default `links[].max_outbox_bytes`.
pub const DEFAULT_LINK_OUTBOX_BYTES: u64 = 256 * 1024 * 1024;

/// What a full session queue does with one more message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    DropOldest,
    DropNewest,
}

/// Default `links[].max_inflight`: every message over a link is committed here before it is
/// acknowledged, so the window must cover a few commit round trips at full rate.
pub const DEFAULT_LINK_INFLIGHT: u16 = 256;

/// A `host:port` to connect to. `host` is stored without IPv6 brackets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerAddr {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Serialize for ServerAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct LinkSslConfig {
    pub enable: bool,
    pub cacertfile: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub verify_peer: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogConfig {
    /// "info"
    pub level: String,
    /// one JSON object per line (for log shippers) instead of text
    pub json: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".to_string(), json: false }
    }
}

/// A secret from the configuration (the cluster secret, an API key's secret): never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Node-to-node TLS (`cluster.raft.ssl`): the PEM files, read when the config is loaded.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub ca: Vec<u8>,
}

impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsFiles(..)")
    }
}
