//! Configuration: a HOCON file (EMQX-style) → a typed, validated [`Config`].
//!
//! # Sources, in order of precedence (later wins)
//!
//! 1. Built-in defaults ([`Config::default`]: one TCP listener `default` on `0.0.0.0:1883`, the
//!    HTTP API on `0.0.0.0:18083`, data in `./data`).
//! 2. The HOCON file ([`Config::load`]). `include` works relative to the file's directory (a
//!    missing file is skipped, as HOCON specifies, unless written `include required("...")`),
//!    and `${VAR}` / `${?VAR}` substitutions resolve against the environment passed in.
//! 3. Environment overrides: `STRAIT_A__B__C=value` sets key `a.b.c` (the name after `STRAIT_` is
//!    lowercased and `__` separates levels; a numeric level indexes a list, e.g.
//!    `STRAIT_CLUSTER__LINKS__0__TOPICS`). Only names containing `__` are overrides, so variables
//!    such as `STRAIT_CONFIG` or `STRAIT_LOG` are left to the CLI. The value is read as a HOCON
//!    value when it looks like one and parses (numbers, `true`/`false`, `null`, `"quoted"`,
//!    `[lists]`, `{objects}`), otherwise it is taken verbatim as a string (so a password such as
//!    `p#ss` is not cut at the `#`). An object value merges into an existing object; anything
//!    else replaces. Overriding a key that does not exist is an error naming the variable.
//!
//! If the file has no `listeners.tcp` at all, the `default` TCP listener (`0.0.0.0:1883`) is
//! added before the overrides are applied. Setting a listener to `null` removes it (e.g.
//! `STRAIT_LISTENERS__TCP__DEFAULT=null`). `null` anywhere else means "use the default".
//!
//! # Value rules
//!
//! - **Durations** (`retry_interval`, `session_expiry_interval`, ...): a string of one or more
//!   `<number><unit>` parts (`"30s"`, `"5 seconds"`, `"2h"`, `"1h30m"`, `"1500ms"`; units `ns`,
//!   `us`, `ms`, `s`/`sec`/`second(s)`, `m`/`min`/`minute(s)`, `h`/`hour(s)`, `d`/`day(s)`), or a
//!   bare number, which always means **seconds** (`session_expiry_interval = 7200`).
//! - **Sizes** (`max_packet_size`): an integer number of bytes, or a number with a unit `B`,
//!   `K`/`KB`/`KiB`, `M`/`MB`/`MiB`, `G`/`GB`/`GiB` (case-insensitive; all powers of 1024, as in
//!   EMQX: `"1MB"` = 1048576).
//! - **bind**: a port (`1883` → `0.0.0.0:1883`), `"ip:port"` (`"127.0.0.1:1883"`), or
//!   `"[v6]:port"` (`"[::1]:1883"`). Port 0 (ephemeral) is allowed and never conflicts.
//! - **server** (cluster links): `"host:port"`, a comma-separated string `"h1:p1,h2:p2"`, or a
//!   list of `"host:port"` strings; IPv6 hosts in brackets. The port is required.
//! - Booleans accept `true`/`false` (also `yes`/`no`/`on`/`off`); integers given as quoted
//!   digit strings are accepted too.
//! - `mqtt.server_keepalive`: absent, `null` or `"disabled"` → none; `mqtt.max_subscriptions`:
//!   `null` or `"infinity"` → unlimited (absent: 10,000); a listener's `max_connections = infinity` →
//!   `usize::MAX`.
//! - `listeners.ssl.*.verify`: `verify_peer` | `verify_none` (default). An enabled SSL
//!   listener needs `certfile` and `keyfile`, and `cacertfile` when it verifies peers.
//! - `cluster.links[].ssl.verify`: `verify_peer` (default: the remote's certificate is checked
//!   against `cacertfile`, else the system's roots) | `verify_none`.
//! - `log.level`: `trace`, `debug`, `info`, `warn` (`warning`), `error`, `off`, or a tracing
//!   filter directive containing `=` (e.g. `"info,strait::cluster=debug"`), passed through.
//!
//! # Validation
//!
//! Unknown keys are errors naming the full key path and the keys allowed there; a wrong type or
//! out-of-range value names the key, what was expected and what was found; list elements are
//! written `cluster.links[0].server`. Errors display as `{origin}: {key}: {problem}`, where the
//! origin is the file (or `$STRAIT_...` when the offending value came from that variable); HOCON
//! syntax errors display as `{origin}:{line}:{col}: {problem}`.
//!
//! Cluster links: a link may not be named like `cluster.name` (self-link), link names must be
//! unique and usable in a topic level (non-empty, no `/`, `+`, `#`), every `server` must parse,
//! `clientid` (default `clink-{cluster.name}`) may not be empty, topic filters must be valid,
//! not shared (`$share/`) and not under the reserved `$LINK/`. A filter covered by another
//! filter of the same link (`a/b` under `a/#`, or a duplicate) is dropped with a warning in
//! [`Config::warnings`].
//!
//! Listeners: no two enabled listeners (TCP, SSL, API) may bind the same port on the same
//! address; a wildcard address (`0.0.0.0`, `::`) clashes with any address of its family on that
//! port (`::` with IPv4 too, as Linux sockets are dual-stack by default).
//!
//! # Example
//!
//! ```hocon
//! node { name = "strait@10.0.0.1", data_dir = "/var/lib/strait" }
//! listeners.tcp.default.bind = 1883
//! listeners.tcp.clink.bind = 11883
//! mqtt { max_packet_size = "1MB", session_expiry_interval = 2h }
//! authentication { allow_anonymous = false, password_file = "/etc/strait/passwd" }
//! authorization { acl_file = "/etc/strait/acl", no_match = deny }
//! cluster {
//!   name = "cluster-us-east"
//!   static.seeds = ["strait@10.0.0.1", "strait@10.0.0.2"]
//!   links = [{ name = "cluster-eu-west", server = "eu.example.net:11883", topics = ["#"] }]
//! }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::mqtt::topic::{covers, valid_filter};

/// Prefix of environment overrides (`STRAIT_MQTT__MAX_INFLIGHT=64`).
pub const ENV_PREFIX: &str = "STRAIT_";

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
    pub keys: Vec<(String, strait_raft::Secret)>,
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
    pub secret: Option<strait_raft::Secret>,
    /// key `cluster.raft.ssl { enable, certfile, keyfile, cacertfile }`: mutual TLS between
    /// nodes (each presents a certificate the CA signed, naming the host its peers dial).
    #[serde(skip)]
    pub tls: Option<strait_raft::TlsFiles>,
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

/// A configuration error. Displays as `{origin}: {key}: {problem}`, or `{origin}: {problem}`
/// when `key` is empty (HOCON syntax errors carry `file:line:col` in `origin`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {}{problem}", key_prefix(.key))]
pub struct ConfigError {
    pub origin: String,
    pub key: String,
    pub problem: String,
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

impl Config {
    /// Parse FILE (HOCON), apply env overrides from `env` (pass std::env::vars()), validate.
    pub fn load(path: &Path, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: origin.clone(),
            key: String::new(),
            problem: format!("cannot read config file: {e}"),
        })?;
        let base = path.parent().map(Path::to_path_buf);
        build(Some((&text, base)), &origin, env.into_iter().collect())
    }

    /// Same for text (tests); `origin` is used in error messages in place of the file name.
    pub fn parse_str(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        build(Some((text, None)), origin, env.into_iter().collect())
    }

    /// Defaults + env overrides only (for `strait` with no args).
    pub fn from_env(env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        build(None, "environment", env.into_iter().collect())
    }
}

// ------------------------------------------------------------------------------------------
// Loading pipeline
// ------------------------------------------------------------------------------------------

fn build(
    source: Option<(&str, Option<PathBuf>)>,
    origin: &str,
    env: Vec<(String, String)>,
) -> Result<Config, ConfigError> {
    let overrides = parse_overrides(&env)?;
    let mut root = match source {
        Some((text, base)) => parse_hocon(text, origin, base, &env)?,
        None => Node::Obj(Vec::new()),
    };
    ensure_default_listener(&mut root);
    for o in &overrides {
        set_path(&mut root, &o.path, o.value.clone()).map_err(|problem| ConfigError {
            origin: format!("${}", o.var),
            key: o.key.clone(),
            problem,
        })?;
    }
    decode(&root).map_err(|fail| {
        // Blame the variable that set (a parent of) the offending key, if any.
        let blamed = overrides.iter().filter(|o| key_within(&fail.key, &o.key)).max_by_key(|o| o.key.len());
        ConfigError {
            origin: blamed.map_or_else(|| origin.to_string(), |o| format!("${}", o.var)),
            key: fail.key,
            problem: fail.problem,
        }
    })
}

/// Whether `key` is `prefix` or below it.
fn key_within(key: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || key == prefix
        || key.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

fn parse_hocon(text: &str, origin: &str, base: Option<PathBuf>, env: &[(String, String)]) -> Result<Node, ConfigError> {
    let mut opts = hocon::ParseOptions::defaults()
        .with_origin_description(origin.to_string())
        .with_env(env.iter().cloned().collect::<HashMap<_, _>>());
    if let Some(base) = base {
        opts = opts.with_base_dir(base);
    }
    let parsed = hocon::parse_string_with_options(text, opts).map_err(|e| hocon_error(origin, e))?;
    root_node(&parsed).map_err(|f| ConfigError { origin: origin.to_string(), key: f.key, problem: f.problem })
}

fn hocon_error(origin: &str, e: hocon::HoconError) -> ConfigError {
    let at = |line: usize, col: usize, problem: String| ConfigError {
        origin: format!("{origin}:{line}:{col}"),
        key: String::new(),
        problem,
    };
    match e {
        hocon::HoconError::Parse(p) => at(p.line, p.col, p.message),
        hocon::HoconError::Resolve(r) => at(r.line, r.col, r.message),
        hocon::HoconError::Config(c) => ConfigError {
            origin: origin.to_string(),
            key: String::new(),
            problem: c
                .message
                .strip_prefix(origin)
                .and_then(|m| m.strip_prefix(": "))
                .unwrap_or(&c.message)
                .to_string(),
        },
        other => ConfigError { origin: origin.to_string(), key: String::new(), problem: other.to_string() },
    }
}

/// If the document has no `listeners.tcp`, add `listeners.tcp.default = {}` (→ 0.0.0.0:1883).
fn ensure_default_listener(root: &mut Node) {
    let Node::Obj(top) = root else { return };
    let listeners = match top.iter().position(|(k, _)| k == "listeners") {
        Some(i) => &mut top[i].1,
        None => {
            top.push(("listeners".to_string(), Node::Obj(Vec::new())));
            match top.last_mut() {
                Some((_, n)) => n,
                None => return,
            }
        }
    };
    if matches!(listeners, Node::Null) {
        *listeners = Node::Obj(Vec::new());
    }
    let Node::Obj(entries) = listeners else {
        return; // a type error, reported by decode
    };
    let has_tcp = entries.iter().any(|(k, v)| k == "tcp" && !matches!(v, Node::Null));
    if !has_tcp {
        entries.retain(|(k, _)| k != "tcp");
        entries.push(("tcp".to_string(), Node::Obj(vec![("default".to_string(), Node::Obj(Vec::new()))])));
    }
}

// ------------------------------------------------------------------------------------------
// Value tree
// ------------------------------------------------------------------------------------------

/// Our own copy of the HOCON value tree (ordered, mutable for overrides).
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Obj(Vec<(String, Node)>),
    List(Vec<Node>),
    Str(String),
    Num(String),
    Bool(bool),
    Null,
}

impl Node {
    fn from_hocon(v: &hocon::HoconValue, path: &str) -> Result<Node, Fail> {
        use hocon::{HoconValue, ScalarType};
        match v {
            HoconValue::Object(map) => {
                let mut out = Vec::with_capacity(map.len());
                for (k, v) in map.iter() {
                    out.push((k.clone(), Node::from_hocon(v, &join(path, k))?));
                }
                Ok(Node::Obj(out))
            }
            HoconValue::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| Node::from_hocon(v, &index(path, i)))
                .collect::<Result<Vec<_>, _>>()
                .map(Node::List),
            HoconValue::Scalar(s) => Ok(match s.value_type {
                ScalarType::Number => Node::Num(s.raw.clone()),
                ScalarType::Boolean => match v.as_bool() {
                    Some(b) => Node::Bool(b),
                    None => Node::Str(s.raw.clone()),
                },
                ScalarType::Null => Node::Null,
                _ => Node::Str(s.raw.clone()),
            }),
            _ => Err(Fail::new(path, "unresolved substitution")),
        }
    }
}

fn root_node(cfg: &hocon::Config) -> Result<Node, Fail> {
    let mut out = Vec::new();
    for k in cfg.keys() {
        let quoted = format!("\"{}\"", k.replace('\\', "\\\\").replace('"', "\\\""));
        match cfg.get(&quoted) {
            Some(v) => out.push((k.to_string(), Node::from_hocon(v, k)?)),
            None => return Err(Fail::new(k, "cannot read this key")),
        }
    }
    Ok(Node::Obj(out))
}

fn describe(n: &Node) -> String {
    match n {
        Node::Obj(_) => "an object".to_string(),
        Node::List(_) => "a list".to_string(),
        Node::Str(s) => format!("{s:?}"),
        Node::Num(r) => r.clone(),
        Node::Bool(b) => b.to_string(),
        Node::Null => "null".to_string(),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// A decode failure before the origin is known.
#[derive(Debug)]
struct Fail {
    key: String,
    problem: String,
}

impl Fail {
    fn new(key: impl Into<String>, problem: impl Into<String>) -> Fail {
        Fail { key: key.into(), problem: problem.into() }
    }

    fn expected(key: impl Into<String>, what: &str, found: &Node) -> Fail {
        Fail::new(key, format!("expected {what}, found {}", describe(found)))
    }
}

type R<T> = Result<T, Fail>;

// ------------------------------------------------------------------------------------------
// Key schema (used for unknown-key errors and for checking environment overrides)
// ------------------------------------------------------------------------------------------

enum Schema {
    /// a value of any shape, decoded by hand
    Leaf,
    /// an object with exactly these keys allowed
    Obj(&'static [(&'static str, Schema)]),
    /// an object with free-form keys (listener names)
    Map(&'static Schema),
    /// a list of elements
    List(&'static Schema),
}

use Schema::Leaf as L;

const NODE: Schema = Schema::Obj(&[("name", L), ("data_dir", L)]);
const TCP: Schema = Schema::Obj(&[("enable", L), ("bind", L), ("max_connections", L)]);
const SSL: Schema = Schema::Obj(&[
    ("enable", L),
    ("bind", L),
    ("certfile", L),
    ("keyfile", L),
    ("cacertfile", L),
    ("verify", L),
    ("fail_if_no_peer_cert", L),
    ("max_connections", L),
]);
const TCP_MAP: Schema = Schema::Map(&TCP);
const SSL_MAP: Schema = Schema::Map(&SSL);
const LISTENERS: Schema = Schema::Obj(&[("tcp", TCP_MAP), ("ssl", SSL_MAP)]);
const MQTT: Schema = Schema::Obj(&[
    ("max_packet_size", L),
    ("max_clientid_len", L),
    ("max_topic_levels", L),
    ("max_qos_allowed", L),
    ("max_topic_alias", L),
    ("retain_available", L),
    ("wildcard_subscription", L),
    ("shared_subscription", L),
    ("server_keepalive", L),
    ("keepalive_multiplier", L),
    ("session_expiry_interval", L),
    ("max_inflight", L),
    ("max_mqueue_len", L),
    ("max_mqueue_bytes", L),
    ("mqueue_overflow", L),
    ("mqueue_store_qos0", L),
    ("max_awaiting_rel", L),
    ("await_rel_timeout", L),
    ("retry_interval", L),
    ("connect_timeout", L),
    ("max_user_properties", L),
    ("max_send_buffer", L),
    ("send_timeout", L),
    ("max_subscriptions", L),
    ("max_retained_messages", L),
    ("max_retained_bytes", L),
]);
const API: Schema =
    Schema::Obj(&[("enable", L), ("bind", L), ("api_key", L), ("api_secret", L), ("bootstrap_file", L)]);
const AUTHN: Schema = Schema::Obj(&[("allow_anonymous", L), ("password_file", L), ("allow_sha512_hashes", L)]);
const AUTHZ: Schema = Schema::Obj(&[("acl_file", L), ("no_match", L)]);
const LINK_SSL: Schema =
    Schema::Obj(&[("enable", L), ("cacertfile", L), ("certfile", L), ("keyfile", L), ("verify", L)]);
const LINK: Schema = Schema::Obj(&[
    ("name", L),
    ("enable", L),
    ("server", L),
    ("clientid", L),
    ("username", L),
    ("password", L),
    ("topics", L),
    ("ssl", LINK_SSL),
    ("retry_interval", L),
    ("max_inflight", L),
    ("max_outbox", L),
    ("max_outbox_bytes", L),
    // EMQX's, accepted so that its configs start; they have no effect here (a warning says so).
    ("pool_size", L),
    ("resource_opts", L),
    ("tcp_opts", L),
]);
/// Keys of an EMQX cluster link that Strait accepts without acting on them, and why.
const EMQX_LINK_KEYS: &[(&str, &str)] = &[
    ("pool_size", "one connection per link carries everything here (ordered, exactly once)"),
    ("resource_opts", "the outbox is the link session at the remote (max_outbox, max_outbox_bytes)"),
    ("tcp_opts", "socket options are not configurable per link"),
];
const STATIC: Schema = Schema::Obj(&[("seeds", L)]);
const RAFT: Schema = Schema::Obj(&[
    ("bind", L),
    ("heartbeat_interval", L),
    ("election_timeout", L),
    ("snapshot_every", L),
    ("commit_timeout", L),
    ("node_down_after", L),
    ("secret", L),
    ("secret_file", L),
    ("ssl", RAFT_SSL),
]);
const RAFT_SSL: Schema = Schema::Obj(&[("enable", L), ("certfile", L), ("keyfile", L), ("cacertfile", L)]);
const CLUSTER: Schema = Schema::Obj(&[
    ("name", L),
    ("discovery_strategy", L),
    ("static", STATIC),
    ("links", Schema::List(&LINK)),
    ("raft", RAFT),
]);
const LOG: Schema = Schema::Obj(&[("level", L), ("format", L)]);
const ROOT: Schema = Schema::Obj(&[
    ("node", NODE),
    ("listeners", LISTENERS),
    ("mqtt", MQTT),
    ("api", API),
    ("authentication", AUTHN),
    ("authorization", AUTHZ),
    ("cluster", CLUSTER),
    ("log", LOG),
]);

fn schema_keys(s: &Schema) -> String {
    match s {
        Schema::Obj(fields) => fields.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", "),
        _ => String::new(),
    }
}

// ------------------------------------------------------------------------------------------
// Environment overrides
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

#[derive(Debug)]
struct Override {
    var: String,
    /// the key path as written in errors (`cluster.links[0].name`)
    key: String,
    path: Vec<Seg>,
    value: Node,
}

fn parse_overrides(env: &[(String, String)]) -> Result<Vec<Override>, ConfigError> {
    let mut out = Vec::new();
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if !rest.contains("__") {
            continue;
        }
        let names: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        let (key, path) = check_override_path(&names).map_err(|(key, problem)| ConfigError {
            origin: format!("${var}"),
            key,
            problem,
        })?;
        out.push(Override { var: var.clone(), key, path, value: parse_env_value(raw) });
    }
    // Deterministic order; a variable for a parent key applies before those for its children.
    out.sort_by(|a, b| a.var.cmp(&b.var));
    Ok(out)
}

/// Walk the schema along `names`; returns the printable key and typed segments.
fn check_override_path(names: &[String]) -> Result<(String, Vec<Seg>), (String, String)> {
    let mut schema: &Schema = &ROOT;
    let mut key = String::new();
    let mut segs = Vec::with_capacity(names.len());
    for name in names {
        if name.is_empty() {
            return Err((key, "empty level in variable name (`____`?)".to_string()));
        }
        match schema {
            Schema::Obj(fields) => match fields.iter().find(|(k, _)| k == name) {
                Some((_, next)) => {
                    key = join(&key, name);
                    segs.push(Seg::Key(name.clone()));
                    schema = next;
                }
                None => {
                    return Err((join(&key, name), format!("unknown key (expected one of: {})", schema_keys(schema))))
                }
            },
            Schema::Map(inner) => {
                key = join(&key, name);
                segs.push(Seg::Key(name.clone()));
                schema = inner;
            }
            Schema::List(inner) => {
                let Ok(i) = name.parse::<usize>() else {
                    return Err((join(&key, name), "expected a list index (0, 1, ...) at this level".to_string()));
                };
                key = index(&key, i);
                segs.push(Seg::Index(i));
                schema = inner;
            }
            Schema::Leaf => {
                return Err((key, format!("a single value; it has no key {name:?}")));
            }
        }
    }
    Ok((key, segs))
}

/// An override value: a HOCON value when it looks like one and parses, else the raw string.
fn parse_env_value(raw: &str) -> Node {
    let t = raw.trim();
    match t {
        "true" => return Node::Bool(true),
        "false" => return Node::Bool(false),
        "null" => return Node::Null,
        _ => {}
    }
    if !t.is_empty() && t.parse::<f64>().is_ok_and(f64::is_finite) {
        return Node::Num(t.to_string());
    }
    if t.starts_with(['[', '{', '"']) {
        let text = format!("v = {t}");
        if let Ok(cfg) = hocon::parse_with_env(&text, &HashMap::new()) {
            if let Some(node) = cfg.get("v").and_then(|v| Node::from_hocon(v, "v").ok()) {
                return node;
            }
        }
    }
    Node::Str(raw.to_string())
}

fn set_path(node: &mut Node, path: &[Seg], value: Node) -> Result<(), String> {
    let Some((first, rest)) = path.split_first() else {
        merge_into(node, value);
        return Ok(());
    };
    match first {
        Seg::Key(k) => {
            if !matches!(node, Node::Obj(_)) {
                *node = Node::Obj(Vec::new());
            }
            let Node::Obj(entries) = node else {
                return Err("internal: not an object".to_string());
            };
            let pos = match entries.iter().position(|(n, _)| n == k) {
                Some(p) => p,
                None => {
                    entries.push((k.clone(), Node::Null));
                    entries.len() - 1
                }
            };
            match entries.get_mut(pos) {
                Some((_, child)) => set_path(child, rest, value),
                None => Err("internal: lost entry".to_string()),
            }
        }
        Seg::Index(i) => {
            if !matches!(node, Node::List(_)) {
                *node = Node::List(Vec::new());
            }
            let Node::List(items) = node else {
                return Err("internal: not a list".to_string());
            };
            if *i == items.len() {
                items.push(Node::Null);
            }
            let len = items.len();
            match items.get_mut(*i) {
                Some(child) => set_path(child, rest, value),
                None => Err(format!("list index {i} is past the end of the list ({len} elements)")),
            }
        }
    }
}

fn merge_into(node: &mut Node, value: Node) {
    match (node, value) {
        (Node::Obj(existing), Node::Obj(new)) => {
            for (k, v) in new {
                match existing.iter_mut().find(|(n, _)| *n == k) {
                    Some((_, old)) => merge_into(old, v),
                    None => existing.push((k, v)),
                }
            }
        }
        (slot, value) => *slot = value,
    }
}

// ------------------------------------------------------------------------------------------
// Decoding
// ------------------------------------------------------------------------------------------

/// An object being decoded: its key path and entries.
struct Obj<'n> {
    path: String,
    entries: &'n [(String, Node)],
}

/// View `node` as an object; with an `Obj` schema, reject keys it does not list.
fn object<'n>(node: Option<&'n Node>, path: String, schema: &Schema) -> R<Obj<'n>> {
    let entries: &'n [(String, Node)] = match node {
        None | Some(Node::Null) => &[],
        Some(Node::Obj(e)) => e,
        Some(other) => return Err(Fail::expected(path, "an object", other)),
    };
    if let Schema::Obj(fields) = schema {
        if let Some((k, _)) = entries.iter().find(|(k, _)| !fields.iter().any(|(f, _)| f == k)) {
            return Err(Fail::new(join(&path, k), format!("unknown key (expected one of: {})", schema_keys(schema))));
        }
    }
    Ok(Obj { path, entries })
}

impl<'n> Obj<'n> {
    fn get(&self, k: &str) -> Option<&'n Node> {
        self.entries.iter().find(|(n, _)| n == k).map(|(_, v)| v).filter(|v| !matches!(v, Node::Null))
    }

    fn key(&self, k: &str) -> String {
        join(&self.path, k)
    }

    fn sub(&self, k: &str, schema: &Schema) -> R<Obj<'n>> {
        object(self.get(k), self.key(k), schema)
    }

    fn bool(&self, k: &str, default: bool) -> R<bool> {
        match self.get(k) {
            None => Ok(default),
            Some(n) => as_bool(n).ok_or_else(|| Fail::expected(self.key(k), "a boolean", n)),
        }
    }

    fn int<T: TryFrom<i64>>(&self, k: &str, lo: i64, hi: i64, default: T) -> R<T> {
        match self.get(k) {
            None => Ok(default),
            Some(n) => int_in(n, &self.key(k), lo, hi),
        }
    }

    fn string(&self, k: &str) -> R<Option<String>> {
        match self.get(k) {
            None => Ok(None),
            Some(n) => as_string(n).map(Some).ok_or_else(|| Fail::expected(self.key(k), "a string", n)),
        }
    }

    fn required_string(&self, k: &str) -> R<String> {
        self.string(k)?.ok_or_else(|| Fail::new(self.key(k), "missing required key"))
    }

    fn path(&self, k: &str) -> R<Option<PathBuf>> {
        match self.string(k)? {
            None => Ok(None),
            Some(s) if s.is_empty() => Err(Fail::new(self.key(k), "empty path")),
            Some(s) => Ok(Some(PathBuf::from(s))),
        }
    }

    fn duration(&self, k: &str, default: Duration, allow_zero: bool) -> R<Duration> {
        let Some(n) = self.get(k) else {
            return Ok(default);
        };
        let what = "a duration (\"30s\", \"5 seconds\", \"2h\", or a number of seconds)";
        let d = match n {
            Node::Num(r) | Node::Str(r) => parse_duration(r),
            _ => None,
        }
        .ok_or_else(|| Fail::expected(self.key(k), what, n))?;
        if d.is_zero() && !allow_zero {
            return Err(Fail::new(self.key(k), "must be greater than zero"));
        }
        Ok(d)
    }

    /// A size in bytes ("64MB", 1048576); 0 allowed.
    fn size(&self, k: &str, default: u64) -> R<u64> {
        match self.get(k) {
            None => Ok(default),
            Some(n) => parse_size(n)
                .and_then(|v| u64::try_from(v).ok())
                .ok_or_else(|| Fail::expected(self.key(k), "a size in bytes (e.g. 67108864, \"64MB\", \"512KB\")", n)),
        }
    }

    fn bind(&self, k: &str, default: Option<SocketAddr>) -> R<SocketAddr> {
        match (self.get(k), default) {
            (None, Some(d)) => Ok(d),
            (None, None) => Err(Fail::new(self.key(k), "missing required key (a port or \"ip:port\")")),
            (Some(n), _) => parse_bind(n).ok_or_else(|| {
                Fail::expected(self.key(k), "a port (1883) or \"ip:port\" (\"127.0.0.1:1883\", \"[::1]:1883\")", n)
            }),
        }
    }

    fn verify(&self, k: &str) -> R<bool> {
        match self.get(k) {
            None => Ok(false),
            Some(n) => match as_string(n).as_deref() {
                Some("verify_peer") => Ok(true),
                Some("verify_none") => Ok(false),
                _ => Err(Fail::expected(self.key(k), "\"verify_peer\" or \"verify_none\"", n)),
            },
        }
    }

    /// A list of strings, or one string (split at commas when `split_commas`).
    fn strings(&self, k: &str, split_commas: bool) -> R<Vec<(String, String)>> {
        let key = self.key(k);
        match self.get(k) {
            None => Ok(Vec::new()),
            Some(Node::Str(s)) if split_commas => Ok(s
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| (key.clone(), p.to_string()))
                .collect()),
            Some(Node::Str(s)) => Ok(vec![(key, s.clone())]),
            Some(Node::List(items)) => items
                .iter()
                .enumerate()
                .map(|(i, n)| match n {
                    Node::Str(s) => Ok((index(&key, i), s.clone())),
                    other => Err(Fail::expected(index(&key, i), "a string", other)),
                })
                .collect(),
            Some(other) => Err(Fail::expected(key, "a list of strings", other)),
        }
    }
}

fn as_bool(n: &Node) -> Option<bool> {
    match n {
        Node::Bool(b) => Some(*b),
        Node::Str(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" => Some(true),
            "false" | "no" | "off" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn as_string(n: &Node) -> Option<String> {
    match n {
        Node::Str(s) | Node::Num(s) => Some(s.clone()),
        _ => None,
    }
}

fn as_i64(n: &Node) -> Option<i64> {
    let raw = match n {
        Node::Num(r) => r.as_str(),
        Node::Str(s) => s.trim(),
        _ => return None,
    };
    if let Ok(v) = raw.parse::<i64>() {
        return Some(v);
    }
    // whole numbers written as floats ("1e3", "10.0")
    let f = raw.parse::<f64>().ok()?;
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15 {
        format!("{f:.0}").parse().ok()
    } else {
        None
    }
}

fn int_in<T: TryFrom<i64>>(n: &Node, key: &str, lo: i64, hi: i64) -> R<T> {
    let what = if hi == i64::MAX { format!("an integer >= {lo}") } else { format!("an integer {lo}..={hi}") };
    as_i64(n)
        .filter(|v| (lo..=hi).contains(v))
        .and_then(|v| T::try_from(v).ok())
        .ok_or_else(|| Fail::expected(key, &what, n))
}

fn any_addr(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
}

fn parse_bind(n: &Node) -> Option<SocketAddr> {
    let s = match n {
        Node::Num(r) => r.as_str(),
        Node::Str(s) => s.trim(),
        _ => return None,
    };
    if let Ok(port) = s.parse::<u16>() {
        return Some(any_addr(port));
    }
    if let Some(port) = s.strip_prefix(':') {
        return port.parse().ok().map(any_addr);
    }
    if let Some(port) = s.strip_prefix("localhost:") {
        return port.parse().ok().map(|p| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p));
    }
    s.parse().ok()
}

/// `host:port` or `[v6]:port`.
fn parse_server(s: &str) -> Result<ServerAddr, String> {
    let s = s.trim();
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(format!("invalid server address {s:?}: missing ']'"));
        };
        // No port: 1883, as in EMQX.
        let port = if after.is_empty() { "1883" } else { after.strip_prefix(':').unwrap_or(after) };
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("invalid server address {s:?}: bad IPv6 address"));
        }
        (host, port)
    } else {
        let (host, port) = s.rsplit_once(':').unwrap_or((s, "1883"));
        if host.contains(':') {
            return Err(format!("invalid server address {s:?}: write IPv6 addresses as \"[addr]:port\""));
        }
        (host, port)
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(format!("invalid server address {s:?}: bad host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(ServerAddr { host: host.to_string(), port: p }),
        _ => Err(format!("invalid server address {s:?}: port must be 1..=65535")),
    }
}

/// A decimal number (`12`, `1.5`) → (integer part, fractional digits).
fn split_number(s: &str) -> Option<(u128, &str)> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let int = if int.is_empty() { 0 } else { int.parse().ok()? };
    Some((int, frac))
}

/// `number * factor`, exactly for up to 18 fractional digits; `None` on overflow.
fn scale(int: u128, frac: &str, factor: u128) -> Option<u128> {
    let mut total = int.checked_mul(factor)?;
    let frac = &frac[..frac.len().min(18)];
    if !frac.is_empty() {
        let digits: u128 = frac.parse().ok()?;
        let denom = 10u128.checked_pow(u32::try_from(frac.len()).ok()?)?;
        total = total.checked_add(digits.checked_mul(factor)? / denom)?;
    }
    Some(total)
}

/// See the module doc: `"30s"`, `"5 seconds"`, `"1h30m"`, or a bare number of seconds.
fn parse_duration(s: &str) -> Option<Duration> {
    const NS: u128 = 1_000_000_000;
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Some((int, frac)) = split_number(s) {
        return nanos_to_duration(scale(int, frac, NS)?);
    }
    let mut rest = s;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (int, frac) = split_number(&rest[..num_len])?;
        rest = rest[num_len..].trim_start();
        let unit_len = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len());
        let factor: u128 = match rest[..unit_len].to_ascii_lowercase().as_str() {
            "ns" | "nanos" | "nanosecond" | "nanoseconds" => 1,
            "us" | "micros" | "microsecond" | "microseconds" => 1_000,
            "ms" | "millis" | "millisecond" | "milliseconds" => 1_000_000,
            "s" | "sec" | "secs" | "second" | "seconds" => NS,
            "m" | "min" | "mins" | "minute" | "minutes" => 60 * NS,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600 * NS,
            "d" | "day" | "days" => 86_400 * NS,
            _ => return None,
        };
        total = total.checked_add(scale(int, frac, factor)?)?;
        rest = rest[unit_len..].trim_start();
    }
    nanos_to_duration(total)
}

fn nanos_to_duration(n: u128) -> Option<Duration> {
    let secs = u64::try_from(n / 1_000_000_000).ok()?;
    let nanos = u32::try_from(n % 1_000_000_000).ok()?;
    Some(Duration::new(secs, nanos))
}

/// See the module doc: bytes, or a number with a 1024-based unit.
fn parse_size(n: &Node) -> Option<u128> {
    let s = match n {
        Node::Num(r) => r.as_str(),
        Node::Str(s) => s.trim(),
        _ => return None,
    };
    let num_len = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (int, frac) = split_number(&s[..num_len])?;
    let factor: u128 = match s[num_len..].trim().to_ascii_lowercase().as_str() {
        "" | "b" | "byte" | "bytes" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    scale(int, frac, factor)
}

fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() == 0 {
        match secs {
            0 => "0s".to_string(),
            s if s % 86_400 == 0 => format!("{}d", s / 86_400),
            s if s % 3600 == 0 => format!("{}h", s / 3600),
            s if s % 60 == 0 => format!("{}m", s / 60),
            s => format!("{s}s"),
        }
    } else if d.subsec_nanos() % 1_000_000 == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}ns", d.as_nanos())
    }
}

fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&fmt_duration(*d))
}

fn ser_secret<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("******"),
        None => s.serialize_none(),
    }
}

/// A cluster or link name: used as a topic level in `$LINK/...`.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("must not be empty".to_string())
    } else if name.contains(['/', '+', '#', '\0']) || name.chars().any(char::is_whitespace) {
        Err(format!("invalid name {name:?}: no '/', '+', '#' or whitespace allowed"))
    } else {
        Ok(())
    }
}

fn decode(root: &Node) -> R<Config> {
    let top = object(Some(root), String::new(), &ROOT)?;
    let mut warnings = Vec::new();
    let config = Config {
        node: decode_node(&top.sub("node", &NODE)?)?,
        listeners: decode_listeners(&top.sub("listeners", &LISTENERS)?)?,
        mqtt: decode_mqtt(&top.sub("mqtt", &MQTT)?)?,
        api: decode_api(&top.sub("api", &API)?)?,
        authentication: decode_authn(&top.sub("authentication", &AUTHN)?)?,
        authorization: decode_authz(&top.sub("authorization", &AUTHZ)?)?,
        cluster: decode_cluster(&top.sub("cluster", &CLUSTER)?, &mut warnings)?,
        log: decode_log(&top.sub("log", &LOG)?)?,
        warnings,
    };
    check_ports(&config)?;
    let mut config = config;
    if !config.cluster.seeds.is_empty() {
        let me = &config.node.name;
        let named = config.cluster.seeds.iter().any(|s| Seed::parse(s).map(|x| &x.name == me).unwrap_or(false));
        if !named {
            config.warnings.push(format!(
                "cluster.static.seeds: node.name {me:?} is not in the list: this node will not bootstrap a cluster; \
                 it waits to be added (POST /api/v5/cluster/nodes on a member)"
            ));
        }
        if !me.contains('@') {
            return Err(Fail::new(
                "node.name".to_string(),
                format!("{me:?}: in a cluster the name must be name@host (peers reach this node at host)"),
            ));
        }
    }
    Ok(config)
}

fn decode_node(o: &Obj) -> R<NodeConfig> {
    let d = NodeConfig::default();
    let name = o.string("name")?.unwrap_or(d.name);
    if name.trim().is_empty() {
        return Err(Fail::new(o.key("name"), "must not be empty"));
    }
    Ok(NodeConfig { name, data_dir: o.path("data_dir")?.unwrap_or(d.data_dir) })
}

fn decode_listeners(o: &Obj) -> R<Listeners> {
    let mut out = Listeners { tcp: BTreeMap::new(), ssl: BTreeMap::new() };
    let tcp = o.sub("tcp", &TCP_MAP)?;
    for (name, node) in tcp.entries {
        if matches!(node, Node::Null) {
            continue;
        }
        let l = object(Some(node), tcp.key(name), &TCP)?;
        if name.is_empty() {
            return Err(Fail::new(l.path, "empty listener name"));
        }
        let d = TcpListenerConfig::default();
        let default_bind = (name == "default").then_some(d.bind);
        out.tcp.insert(
            name.clone(),
            TcpListenerConfig {
                enable: l.bool("enable", d.enable)?,
                bind: l.bind("bind", default_bind)?,
                max_connections: max_connections(&l, d.max_connections)?,
            },
        );
    }
    let ssl = o.sub("ssl", &SSL_MAP)?;
    for (name, node) in ssl.entries {
        if matches!(node, Node::Null) {
            continue;
        }
        let l = object(Some(node), ssl.key(name), &SSL)?;
        if name.is_empty() {
            return Err(Fail::new(l.path, "empty listener name"));
        }
        let d = SslListenerConfig::default();
        let enable = l.bool("enable", d.enable)?;
        let required = |k: &str| -> R<PathBuf> {
            match l.path(k)? {
                Some(p) => Ok(p),
                None if !enable => Ok(PathBuf::new()),
                None => Err(Fail::new(l.key(k), "missing required key for an enabled SSL listener")),
            }
        };
        let certfile = required("certfile")?;
        let keyfile = required("keyfile")?;
        let cacertfile = l.path("cacertfile")?;
        let verify_peer = l.verify("verify")?;
        if enable && verify_peer && cacertfile.is_none() {
            return Err(Fail::new(
                l.key("cacertfile"),
                "required with verify = verify_peer (the CAs that client certificates must chain to)",
            ));
        }
        out.ssl.insert(
            name.clone(),
            SslListenerConfig {
                enable,
                bind: l.bind("bind", Some(d.bind))?,
                certfile,
                keyfile,
                cacertfile,
                verify_peer,
                fail_if_no_peer_cert: l.bool("fail_if_no_peer_cert", d.fail_if_no_peer_cert)?,
                max_connections: max_connections(&l, d.max_connections)?,
            },
        );
    }
    Ok(out)
}

/// `max_connections`: an integer >= 1, or "infinity" (EMQX's default) for no limit.
fn max_connections(l: &Obj, default: usize) -> R<usize> {
    match l.get("max_connections") {
        Some(Node::Str(s)) if s == "infinity" => Ok(usize::MAX),
        Some(n) => int_in(n, &l.key("max_connections"), 1, i64::MAX)
            .map_err(|_| Fail::expected(l.key("max_connections"), "an integer >= 1 or \"infinity\"", n)),
        None => Ok(default),
    }
}

fn decode_mqtt(o: &Obj) -> R<MqttConfig> {
    let d = MqttConfig::default();
    let max_packet_size = match o.get("max_packet_size") {
        None => d.max_packet_size,
        Some(n) => parse_size(n)
            .filter(|v| (2..=268_435_455).contains(v))
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| {
                Fail::expected(
                    o.key("max_packet_size"),
                    "a size 2..=268435455 bytes (e.g. 1048576, \"1MB\", \"256KB\")",
                    n,
                )
            })?,
    };
    let server_keepalive = match o.get("server_keepalive") {
        None => None,
        Some(Node::Str(s)) if s == "disabled" => None,
        Some(n) => Some(
            int_in(n, &o.key("server_keepalive"), 1, i64::from(u16::MAX))
                .map_err(|_| Fail::expected(o.key("server_keepalive"), "an integer 1..=65535 or \"disabled\"", n))?,
        ),
    };
    let keepalive_multiplier = match o.get("keepalive_multiplier") {
        None => d.keepalive_multiplier,
        Some(n) => match n {
            Node::Num(r) | Node::Str(r) => r.trim().parse::<f64>().ok(),
            _ => None,
        }
        .filter(|v| v.is_finite() && *v >= 1.0 && *v <= 1000.0)
        .ok_or_else(|| Fail::expected(o.key("keepalive_multiplier"), "a number >= 1.0", n))?,
    };
    let max_subscriptions = match o.get("max_subscriptions") {
        None => d.max_subscriptions,
        Some(Node::Null) => None,
        Some(Node::Str(s)) if s == "infinity" => None,
        Some(n) => Some(
            int_in(n, &o.key("max_subscriptions"), 0, i64::MAX)
                .map_err(|_| Fail::expected(o.key("max_subscriptions"), "an integer >= 0 or \"infinity\"", n))?,
        ),
    };
    Ok(MqttConfig {
        max_packet_size,
        max_clientid_len: o.int("max_clientid_len", 23, 65535, d.max_clientid_len)?,
        max_topic_levels: o.int("max_topic_levels", 1, 65535, d.max_topic_levels)?,
        max_qos_allowed: o.int("max_qos_allowed", 0, 2, d.max_qos_allowed)?,
        max_topic_alias: o.int("max_topic_alias", 0, 65535, d.max_topic_alias)?,
        retain_available: o.bool("retain_available", d.retain_available)?,
        wildcard_subscription: o.bool("wildcard_subscription", d.wildcard_subscription)?,
        shared_subscription: o.bool("shared_subscription", d.shared_subscription)?,
        server_keepalive,
        keepalive_multiplier,
        session_expiry_interval: o.duration("session_expiry_interval", d.session_expiry_interval, true)?,
        max_inflight: o.int("max_inflight", 1, 65535, d.max_inflight)?,
        max_mqueue_len: o.int("max_mqueue_len", 0, i64::from(u32::MAX), d.max_mqueue_len)?,
        max_mqueue_bytes: o.size("max_mqueue_bytes", d.max_mqueue_bytes)?,
        mqueue_overflow: match o.string("mqueue_overflow")?.as_deref() {
            None | Some("drop_oldest") => Overflow::DropOldest,
            Some("drop_newest") => Overflow::DropNewest,
            Some(other) => {
                return Err(Fail::new(
                    o.key("mqueue_overflow"),
                    format!("expected \"drop_oldest\" or \"drop_newest\", found {other:?}"),
                ))
            }
        },
        mqueue_store_qos0: o.bool("mqueue_store_qos0", d.mqueue_store_qos0)?,
        max_awaiting_rel: o.int("max_awaiting_rel", 1, i64::MAX, d.max_awaiting_rel)?,
        await_rel_timeout: o.duration("await_rel_timeout", d.await_rel_timeout, false)?,
        retry_interval: o.duration("retry_interval", d.retry_interval, false)?,
        connect_timeout: o.duration("connect_timeout", d.connect_timeout, false)?,
        max_subscriptions,
        max_retained_messages: o.int("max_retained_messages", 0, i64::MAX, d.max_retained_messages)?,
        max_retained_bytes: o.size("max_retained_bytes", d.max_retained_bytes)?,
        max_user_properties: o.int("max_user_properties", 0, 65535, d.max_user_properties)?,
        max_send_buffer: match o.size("max_send_buffer", d.max_send_buffer as u64)? {
            v if v < 4096 => return Err(Fail::new(o.key("max_send_buffer"), "expected at least 4KB".to_string())),
            v => usize::try_from(v).unwrap_or(usize::MAX),
        },
        send_timeout: o.duration("send_timeout", d.send_timeout, false)?,
    })
}

fn decode_api(o: &Obj) -> R<ApiConfig> {
    let d = ApiConfig::default();
    let enable = o.bool("enable", d.enable)?;
    let bind = o.bind("bind", Some(d.bind))?;
    let mut keys = Vec::new();
    match (o.string("api_key")?, o.string("api_secret")?) {
        (Some(k), Some(sec)) => keys.push(api_key(o.key("api_secret"), k, sec)?),
        (Some(_), None) => return Err(Fail::new(o.key("api_secret"), "required with api_key")),
        (None, Some(_)) => return Err(Fail::new(o.key("api_key"), "required with api_secret")),
        (None, None) => {}
    }
    if let Some(p) = o.path("bootstrap_file")? {
        let key = o.key("bootstrap_file");
        let text = std::fs::read_to_string(&p)
            .map_err(|e| Fail::new(key.clone(), format!("cannot read {}: {e}", p.display())))?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.splitn(3, ':');
            let (k, sec) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let here = format!("{key} ({} line {})", p.display(), i + 1);
            keys.push(api_key(here, k.to_string(), sec.to_string())?);
        }
    }
    if enable && keys.is_empty() && !bind.ip().is_loopback() {
        return Err(Fail::new(
            o.key("bind"),
            format!(
                "{bind} is reachable from other machines: set api.api_key and api.api_secret (or \
                 api.bootstrap_file) so that callers must authenticate, or bind to 127.0.0.1"
            ),
        ));
    }
    Ok(ApiConfig { enable, bind, keys })
}

fn api_key(key: String, k: String, secret: String) -> R<(String, strait_raft::Secret)> {
    if k.is_empty() || k.contains(':') {
        return Err(Fail::new(key, "an API key must be non-empty and without ':'"));
    }
    if secret.chars().count() < 16 {
        return Err(Fail::new(key, format!("the secret of API key {k:?} is too short: at least 16 characters")));
    }
    Ok((k, strait_raft::Secret(secret)))
}

fn decode_authn(o: &Obj) -> R<AuthnConfig> {
    let d = AuthnConfig::default();
    Ok(AuthnConfig {
        allow_anonymous: o.bool("allow_anonymous", d.allow_anonymous)?,
        password_file: o.path("password_file")?,
        allow_sha512_hashes: o.bool("allow_sha512_hashes", d.allow_sha512_hashes)?,
    })
}

fn decode_authz(o: &Obj) -> R<AuthzConfig> {
    let no_match = match o.get("no_match") {
        None => AclVerdict::default(),
        Some(n) => match as_string(n).as_deref() {
            Some("allow") => AclVerdict::Allow,
            Some("deny") => AclVerdict::Deny,
            _ => return Err(Fail::expected(o.key("no_match"), "allow or deny", n)),
        },
    };
    Ok(AuthzConfig { acl_file: o.path("acl_file")?, no_match })
}

fn decode_log(o: &Obj) -> R<LogConfig> {
    let level = match o.string("level")? {
        None => LogConfig::default().level,
        Some(s) => {
            let lower = s.trim().to_ascii_lowercase();
            match lower.as_str() {
                "trace" | "debug" | "info" | "warn" | "error" | "off" => lower,
                "warning" => "warn".to_string(),
                _ if s.contains('=') => s,
                _ => {
                    return Err(Fail::new(
                        o.key("level"),
                        format!(
                            "expected trace, debug, info, warn, error, off or a filter \
                             directive like \"info,strait=debug\", found {s:?}"
                        ),
                    ))
                }
            }
        }
    };
    let json = match o.string("format")?.as_deref() {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => return Err(Fail::new(o.key("format"), format!("expected text or json, found {other:?}"))),
    };
    Ok(LogConfig { level, json })
}

fn decode_cluster(o: &Obj, warnings: &mut Vec<String>) -> R<ClusterConfig> {
    let name = o.string("name")?.unwrap_or_else(|| ClusterConfig::default().name);
    check_name(&name).map_err(|p| Fail::new(o.key("name"), p))?;
    if let Some(n) = o.get("discovery_strategy") {
        // accepted for EMQX compatibility; seeds are used whenever present
        if !matches!(as_string(n).as_deref(), Some("manual" | "static")) {
            return Err(Fail::expected(o.key("discovery_strategy"), "\"manual\" or \"static\"", n));
        }
    }
    let st = o.sub("static", &STATIC)?;
    let seeds = st
        .strings("seeds", true)?
        .into_iter()
        .map(|(key, s)| {
            let s = s.trim().to_string();
            if s.is_empty() {
                Err(Fail::new(key, "empty seed"))
            } else {
                Seed::parse(&s).map_err(|p| Fail::new(key, p))?;
                Ok(s)
            }
        })
        .collect::<R<Vec<_>>>()?;
    let ro = o.sub("raft", &RAFT)?;
    let raft = decode_raft(&ro)?;
    if !seeds.is_empty() && raft.secret.is_none() {
        return Err(Fail::new(
            ro.key("secret"),
            "required in a cluster (cluster.static.seeds is set): the same secret on every node, at least 16 \
             characters (e.g. from `openssl rand -hex 24`), or secret_file naming a file that holds it; \
             a peer that does not prove it is refused",
        ));
    }
    let links_key = o.key("links");
    let items: &[Node] = match o.get("links") {
        None => &[],
        Some(Node::List(items)) => items,
        Some(other) => return Err(Fail::expected(links_key, "a list of link objects", other)),
    };
    let mut links: Vec<LinkConfig> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let key = index(&links_key, i);
        if !matches!(item, Node::Obj(_)) {
            return Err(Fail::expected(key, "a link object", item));
        }
        let lo = object(Some(item), key, &LINK)?;
        let link = decode_link(&lo, &name, warnings)?;
        if let Some(j) = links.iter().position(|l| l.name == link.name) {
            return Err(Fail::new(
                lo.key("name"),
                format!("duplicate link name {:?} (also {})", link.name, join(&index(&links_key, j), "name")),
            ));
        }
        links.push(link);
    }
    Ok(ClusterConfig { name, seeds, links, raft })
}

fn decode_raft(o: &Obj) -> R<RaftTiming> {
    let d = RaftTiming::default();
    let heartbeat_interval = o.duration("heartbeat_interval", d.heartbeat_interval, false)?;
    let election_timeout = o.duration("election_timeout", d.election_timeout, false)?;
    if election_timeout < heartbeat_interval * 2 {
        return Err(Fail::new(
            o.key("election_timeout"),
            format!("must be at least twice heartbeat_interval ({heartbeat_interval:?}), got {election_timeout:?}"),
        ));
    }
    let snapshot_every = match o.get("snapshot_every") {
        None => d.snapshot_every,
        Some(n) => match as_string(n).and_then(|s| s.parse::<u64>().ok()) {
            Some(v) if v > 0 => v,
            _ => return Err(Fail::expected(o.key("snapshot_every"), "a positive integer", n)),
        },
    };
    Ok(RaftTiming {
        bind: o.bind("bind", Some(d.bind))?,
        heartbeat_interval,
        election_timeout,
        snapshot_every,
        commit_timeout: o.duration("commit_timeout", d.commit_timeout, false)?,
        node_down_after: o.duration("node_down_after", d.node_down_after, false)?,
        secret: decode_secret(o)?,
        tls: decode_raft_tls(&o.sub("ssl", &RAFT_SSL)?)?,
    })
}

/// `cluster.raft.ssl`: the three PEM files, read now (a missing one names its key).
fn decode_raft_tls(o: &Obj) -> R<Option<strait_raft::TlsFiles>> {
    if !o.bool("enable", o.get("certfile").is_some())? {
        return Ok(None);
    }
    let read = |k: &str| -> R<Vec<u8>> {
        let p = o
            .path(k)?
            .ok_or_else(|| Fail::new(o.key(k), "required with cluster.raft.ssl (mutual TLS between nodes)"))?;
        std::fs::read(&p).map_err(|e| Fail::new(o.key(k), format!("cannot read {}: {e}", p.display())))
    };
    Ok(Some(strait_raft::TlsFiles { cert: read("certfile")?, key: read("keyfile")?, ca: read("cacertfile")? }))
}

/// `secret` or `secret_file` (its contents, trimmed); at least 16 characters.
fn decode_secret(o: &Obj) -> R<Option<strait_raft::Secret>> {
    let (key, secret) = match (o.string("secret")?, o.path("secret_file")?) {
        (Some(_), Some(_)) => return Err(Fail::new(o.key("secret_file"), "set secret or secret_file, not both")),
        (Some(s), None) => (o.key("secret"), s),
        (None, Some(p)) => {
            let text = std::fs::read_to_string(&p)
                .map_err(|e| Fail::new(o.key("secret_file"), format!("cannot read {}: {e}", p.display())))?;
            (o.key("secret_file"), text.trim().to_string())
        }
        (None, None) => return Ok(None),
    };
    if secret.chars().count() < 16 {
        return Err(Fail::new(key, "too short: at least 16 characters (e.g. from `openssl rand -hex 24`)"));
    }
    Ok(Some(strait_raft::Secret(secret)))
}

/// A link from the HTTP API's JSON body: the keys, defaults and checks of `cluster.links[]`
/// (errors name the key, e.g. `topics[0]: invalid topic filter "a/#/b"`). Also returns the
/// warnings (filters covered by another of the link's filters).
pub fn link_from_json(v: &serde_json::Value, cluster_name: &str) -> Result<(LinkConfig, Vec<String>), String> {
    fn node(v: &serde_json::Value) -> Node {
        match v {
            serde_json::Value::Null => Node::Null,
            serde_json::Value::Bool(b) => Node::Bool(*b),
            serde_json::Value::Number(n) => Node::Num(n.to_string()),
            serde_json::Value::String(s) => Node::Str(s.clone()),
            serde_json::Value::Array(a) => Node::List(a.iter().map(node).collect()),
            serde_json::Value::Object(o) => Node::Obj(o.iter().map(|(k, v)| (k.clone(), node(v))).collect()),
        }
    }
    let mut n = node(v);
    let Node::Obj(fields) = &mut n else {
        return Err("expected a link object".into());
    };
    // What GET shows besides the configuration (status and counters): a GET → edit → PUT round
    // trip sends it back; it is not configuration and is dropped.
    fields.retain(|(k, _)| !LINK_STATUS_FIELDS.contains(&k.as_str()));
    let mut warnings = Vec::new();
    let link = object(Some(&n), String::new(), &LINK)
        .and_then(|o| decode_link(&o, cluster_name, &mut warnings))
        .map_err(|f| if f.key.is_empty() { f.problem } else { format!("{}: {}", f.key, f.problem) })?;
    Ok((link, warnings))
}

/// Read-only fields of a link's status on the API.
pub const LINK_STATUS_FIELDS: &[&str] = &[
    "status",
    "connected_server",
    "status_since_ms",
    "last_error",
    "node",
    "route_count",
    "routes",
    "routes_refused",
    "routes_refused_count",
    "routes_pending",
    "routes_wanted",
    "routes_truncated",
    "inflight",
    "messages_received",
    "messages_published",
    "messages_duplicate",
    "messages_dropped",
    "connects",
];

/// The JSON of a link, as the API takes it; the password as `******` unless `reveal`.
pub fn link_to_json(l: &LinkConfig, reveal: bool) -> serde_json::Value {
    let password = l.password.as_ref().map(|p| if reveal { p.clone() } else { "******".to_string() });
    serde_json::json!({
        "name": l.name,
        "enable": l.enable,
        "server": l.server.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        "clientid": l.clientid,
        "username": l.username,
        "password": password,
        "topics": l.topics,
        "ssl": {
            "enable": l.ssl.enable,
            "cacertfile": l.ssl.cacertfile,
            "certfile": l.ssl.certfile,
            "keyfile": l.ssl.keyfile,
            "verify": if l.ssl.verify_peer { "verify_peer" } else { "verify_none" },
        },
        "retry_interval": fmt_duration(l.retry_interval),
        "max_inflight": l.max_inflight,
        "max_outbox": l.max_outbox,
        "max_outbox_bytes": l.max_outbox_bytes,
    })
}

fn decode_link(o: &Obj, cluster_name: &str, warnings: &mut Vec<String>) -> R<LinkConfig> {
    let name = o.required_string("name")?;
    check_name(&name).map_err(|p| Fail::new(o.key("name"), p))?;
    if name == cluster_name {
        return Err(Fail::new(
            o.key("name"),
            format!(
                "link name {name:?} equals cluster.name: a link names the remote cluster, \
                 and a cluster cannot link to itself"
            ),
        ));
    }
    let server = decode_servers(o)?;
    for (k, why) in EMQX_LINK_KEYS {
        if o.get(k).is_some() {
            warnings.push(format!("{}: accepted for EMQX compatibility, no effect here: {why}", o.key(k)));
        }
    }
    let clientid = o.string("clientid")?.unwrap_or_else(|| format!("clink-{cluster_name}"));
    if clientid.is_empty() {
        return Err(Fail::new(o.key("clientid"), "must not be empty"));
    }
    let ssl = o.sub("ssl", &LINK_SSL)?;
    let ssl = LinkSslConfig {
        enable: ssl.bool("enable", false)?,
        cacertfile: ssl.path("cacertfile")?,
        certfile: ssl.path("certfile")?,
        keyfile: ssl.path("keyfile")?,
        // A link verifies the remote cluster's certificate unless told not to (its CA file, or
        // the system's roots): encryption without knowing who answers is not what a link
        // across regions wants.
        verify_peer: ssl.get("verify").is_none() || ssl.verify("verify")?,
    };
    Ok(LinkConfig {
        enable: o.bool("enable", true)?,
        server,
        clientid,
        username: o.string("username")?,
        password: o.string("password")?,
        topics: decode_topics(o, warnings)?,
        ssl,
        retry_interval: o.duration("retry_interval", Duration::from_secs(5), false)?,
        max_inflight: o.int("max_inflight", 1, 4096, DEFAULT_LINK_INFLIGHT)?,
        max_outbox: o.int("max_outbox", 1, i64::from(u32::MAX), DEFAULT_LINK_OUTBOX)?,
        max_outbox_bytes: o.size("max_outbox_bytes", DEFAULT_LINK_OUTBOX_BYTES)?,
        name,
    })
}

fn decode_servers(o: &Obj) -> R<Vec<ServerAddr>> {
    let key = o.key("server");
    let Some(node) = o.get("server") else {
        return Err(Fail::new(key, "missing required key (\"host:port\", \"h1:p1,h2:p2\" or a list)"));
    };
    let servers = match node {
        Node::Str(s) => {
            s.split(',').map(|part| parse_server(part).map_err(|p| Fail::new(key.clone(), p))).collect::<R<Vec<_>>>()?
        }
        Node::List(items) => items
            .iter()
            .enumerate()
            .map(|(i, n)| match n {
                Node::Str(s) => parse_server(s).map_err(|p| Fail::new(index(&key, i), p)),
                other => Err(Fail::expected(index(&key, i), "a \"host:port\" string", other)),
            })
            .collect::<R<Vec<_>>>()?,
        other => return Err(Fail::expected(key, "\"host:port\", \"h1:p1,h2:p2\" or a list of \"host:port\"", other)),
    };
    if servers.is_empty() {
        return Err(Fail::new(key, "at least one server address is required"));
    }
    Ok(servers)
}

fn decode_topics(o: &Obj, warnings: &mut Vec<String>) -> R<Vec<String>> {
    let raw = o.strings("topics", false)?;
    for (key, f) in &raw {
        if !valid_filter(f) {
            return Err(Fail::new(key, format!("invalid topic filter {f:?}")));
        }
        if f.starts_with("$LINK/") || f == "$LINK" {
            return Err(Fail::new(
                key,
                format!("topic filter {f:?}: $LINK/ is reserved for cluster-link control traffic"),
            ));
        }
        if f.starts_with("$share/") || f.starts_with("$queue/") {
            return Err(Fail::new(key, format!("topic filter {f:?}: shared subscriptions cannot be linked")));
        }
    }
    let mut kept = Vec::with_capacity(raw.len());
    for (i, (key, f)) in raw.iter().enumerate() {
        let coverer = raw.iter().enumerate().find(|(j, (_, g))| *j != i && covers(g, f) && (!covers(f, g) || *j < i));
        match coverer {
            Some((_, (gkey, g))) => {
                warnings.push(format!("{key}: topic filter {f:?} is covered by {g:?} ({gkey}); removed"))
            }
            None => kept.push(f.clone()),
        }
    }
    Ok(kept)
}

/// Two enabled listeners on the same address:port.
fn check_ports(cfg: &Config) -> R<()> {
    let mut binds: Vec<(String, SocketAddr)> = Vec::new();
    for (name, l) in &cfg.listeners.tcp {
        if l.enable {
            binds.push((format!("listeners.tcp.{name}.bind"), l.bind));
        }
    }
    for (name, l) in &cfg.listeners.ssl {
        if l.enable {
            binds.push((format!("listeners.ssl.{name}.bind"), l.bind));
        }
    }
    if cfg.api.enable {
        binds.push(("api.bind".to_string(), cfg.api.bind));
    }
    for (i, (key, addr)) in binds.iter().enumerate() {
        if let Some((other_key, other)) = binds[..i].iter().find(|(_, b)| clash(*b, *addr)) {
            return Err(Fail::new(key.clone(), format!("{addr} conflicts with {other_key} ({other})")));
        }
    }
    Ok(())
}

fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() == 0 || a.port() != b.port() {
        return false;
    }
    let (x, y) = (a.ip(), b.ip());
    x == y
        || (x.is_unspecified() && (x.is_ipv6() || y.is_ipv4()))
        || (y.is_unspecified() && (y.is_ipv6() || x.is_ipv4()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_str(text, "test.conf", no_env())
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(c) => panic!("expected an error for {text:?}, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    const SEED: &str = r##"
cluster {
  name = "cluster-us-east"
  links = [
    {
      name = "cluster-eu-west"
      server = "emqx.us-east.myinfra.net:11883"
      clientid = "clink-us-east"
      topics = ["#"]
    }
  ]
}
listeners {
  tcp.clink {
    bind = 11883
  }
}
"##;

    #[test]
    fn defaults() {
        let c = Config::default();
        assert_eq!(c.listeners.tcp.len(), 1);
        assert_eq!(c.listeners.tcp["default"].bind, "0.0.0.0:1883".parse().unwrap());
        assert!(c.listeners.tcp["default"].enable);
        assert_eq!(c.api.bind, "127.0.0.1:18083".parse().unwrap());
        assert_eq!(c.node.data_dir, PathBuf::from("./data"));
        assert_eq!(c.node.name, "strait@127.0.0.1");
        assert_eq!(c.mqtt.max_packet_size, 1_048_576);
        assert_eq!(c.mqtt.session_expiry_interval, Duration::from_secs(7200));
        assert_eq!(c.mqtt.max_inflight, 32);
        assert_eq!(c.mqtt.server_keepalive, None);
        assert_eq!(c.mqtt.max_subscriptions, Some(10_000));
        assert_eq!(c.cluster.name, "strait");
        assert_eq!(c.authorization.no_match, AclVerdict::Allow);
        assert!(c.authentication.allow_anonymous);
        assert_eq!(c.log.level, "info");
        // An empty file and an empty environment give exactly the defaults.
        assert_eq!(parse("").unwrap(), c);
        assert_eq!(Config::from_env(no_env()).unwrap(), c);
        assert_eq!(parse("# just a comment\n").unwrap(), c);
    }

    #[test]
    fn emqx_link_snippet() {
        let c = parse(SEED).unwrap();
        assert_eq!(c.cluster.name, "cluster-us-east");
        assert_eq!(c.cluster.links.len(), 1);
        let l = &c.cluster.links[0];
        assert_eq!(l.name, "cluster-eu-west");
        assert_eq!(l.server, vec![ServerAddr { host: "emqx.us-east.myinfra.net".into(), port: 11883 }]);
        assert_eq!(l.server[0].to_string(), "emqx.us-east.myinfra.net:11883");
        assert_eq!(l.clientid, "clink-us-east");
        assert_eq!(l.topics, vec!["#"]);
        assert!(l.enable);
        assert_eq!(l.retry_interval, Duration::from_secs(5));
        assert_eq!(l.max_inflight, DEFAULT_LINK_INFLIGHT);
        assert!(!l.ssl.enable);
        // The file has listeners.tcp, so only the clink listener exists.
        assert_eq!(c.listeners.tcp.len(), 1);
        assert_eq!(c.listeners.tcp["clink"].bind, "0.0.0.0:11883".parse().unwrap());
        assert!(c.warnings.is_empty());
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config/emqx_link.conf");
        assert_eq!(Config::load(&path, no_env()).unwrap(), c);
        // seeds: a list or a comma-separated string (here from the environment)
        let secret = ("STRAIT_CLUSTER__RAFT__SECRET", "0123456789abcdef");
        let c = Config::load(&path, env(&[("STRAIT_CLUSTER__STATIC__SEEDS", "s@a, s@b"), secret])).unwrap();
        assert_eq!(c.cluster.seeds, vec!["s@a", "s@b"]);
        // A cluster without a secret does not start; a short one neither.
        let e = Config::load(&path, env(&[("STRAIT_CLUSTER__STATIC__SEEDS", "s@a")])).unwrap_err().to_string();
        assert!(e.contains("cluster.raft.secret") && e.contains("required"), "{e}");
        let short = ("STRAIT_CLUSTER__RAFT__SECRET", "short");
        let e = Config::load(&path, env(&[("STRAIT_CLUSTER__STATIC__SEEDS", "s@a"), short])).unwrap_err().to_string();
        assert!(e.contains("cluster.raft.secret") && e.contains("too short"), "{e}");
        assert!(!format!("{c:?}").contains("0123456789abcdef"), "the secret never shows in Debug output");
    }

    #[test]
    fn fixture_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config/full.conf");
        let c = Config::load(&path, env(&[("DATA", "/var/lib/strait")])).unwrap();
        assert_eq!(c.node.data_dir, PathBuf::from("/var/lib/strait"));
        assert_eq!(c.listeners.tcp.len(), 2);
        assert_eq!(c.listeners.ssl["default"].certfile, PathBuf::from("/etc/strait/cert.pem"));
        assert!(c.listeners.ssl["default"].verify_peer);
        assert_eq!(c.mqtt.max_packet_size, 256 * 1024);
        assert_eq!(c.mqtt.session_expiry_interval, Duration::from_secs(3600));
        assert_eq!(c.mqtt.retry_interval, Duration::from_secs(5));
        assert_eq!(c.mqtt.server_keepalive, Some(60));
        assert_eq!(c.mqtt.max_subscriptions, Some(10));
        assert_eq!(c.authorization.no_match, AclVerdict::Deny);
        assert_eq!(c.cluster.seeds, vec!["strait@10.0.0.1", "strait@10.0.0.2"]);
        assert_eq!(c.cluster.links[0].server.len(), 2);
        assert_eq!(c.cluster.links[0].clientid, "clink-us");
        assert_eq!(c.cluster.links[0].password.as_deref(), Some("s3cret"));
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains("\"******\""), "{json}");
        assert!(!json.contains("s3cret"), "{json}");
        assert!(json.contains("\"session_expiry_interval\":\"1h\""), "{json}");

        let missing = Config::load(Path::new("/nonexistent/strait.conf"), no_env()).unwrap_err();
        assert!(missing.to_string().starts_with("/nonexistent/strait.conf: cannot read"));
    }

    #[test]
    fn bind_forms() {
        let c = parse(
            r#"listeners.tcp.a.bind = 1883
               listeners.tcp.b.bind = "127.0.0.2:1884"
               listeners.tcp.c.bind = "[::1]:1885"
               api.bind = "127.0.0.1:8080""#,
        )
        .unwrap();
        assert_eq!(c.listeners.tcp["a"].bind, "0.0.0.0:1883".parse().unwrap());
        assert_eq!(c.listeners.tcp["b"].bind, "127.0.0.2:1884".parse().unwrap());
        assert_eq!(c.listeners.tcp["c"].bind, "[::1]:1885".parse().unwrap());
        assert_eq!(c.api.bind, "127.0.0.1:8080".parse().unwrap());
        let e = err(r#"listeners.tcp.a.bind = "nowhere""#);
        assert!(e.starts_with("test.conf: listeners.tcp.a.bind: expected a port"), "{e}");
        let e = err("listeners.tcp.a.enable = true");
        assert_eq!(e, "test.conf: listeners.tcp.a.bind: missing required key (a port or \"ip:port\")");
    }

    #[test]
    fn servers() {
        let base = |server: &str| format!(r#"cluster.links = [{{ name = "b", server = {server}, topics = ["a/#"] }}]"#);
        let c = parse(&base(r#""h1:1,h2:2""#)).unwrap();
        assert_eq!(c.cluster.links[0].server.len(), 2);
        assert_eq!(c.cluster.links[0].server[1].to_string(), "h2:2");
        let c = parse(&base(r#"["h1:1", "[::1]:2"]"#)).unwrap();
        assert_eq!(c.cluster.links[0].server[1].host, "::1");
        assert_eq!(c.cluster.links[0].server[1].to_string(), "[::1]:2");
        assert_eq!(c.cluster.links[0].clientid, "clink-strait");

        // No port: 1883, as in EMQX.
        let c = parse(&base(r#""h1,[::1]""#)).unwrap();
        assert_eq!(c.cluster.links[0].server[0].to_string(), "h1:1883");
        assert_eq!(c.cluster.links[0].server[1].to_string(), "[::1]:1883");
        // GET → PUT round trip: the status fields and nulls of a link's JSON are taken back.
        let mut shown = link_to_json(&c.cluster.links[0], false);
        for (k, v) in [("status", "connected"), ("connected_server", "h1:1"), ("last_error", "x")] {
            shown[k] = serde_json::json!(v);
        }
        shown["routes"] = serde_json::json!(["a/#"]);
        shown["password"] = serde_json::Value::Null;
        let (back, _) = link_from_json(&shown, "strait").expect("round trip");
        assert_eq!(back, c.cluster.links[0]);
        // EMQX's link keys are accepted, each with a warning naming it.
        let c = parse(
            r#"cluster.links = [{ name = "b", server = "h1", topics = ["a/#"], pool_size = 8,
                 resource_opts { health_check_interval = 15s }, tcp_opts { nodelay = true } }]"#,
        )
        .unwrap();
        for k in ["pool_size", "resource_opts", "tcp_opts"] {
            assert!(
                c.warnings.iter().any(|w| w.starts_with(&format!("cluster.links[0].{k}: accepted for EMQX"))),
                "{k}: {:?}",
                c.warnings
            );
        }
        let e = err(&base(r#"["h1:1", "h2:x"]"#));
        assert!(e.starts_with("test.conf: cluster.links[0].server[1]: invalid server address"), "{e}");
        let e = err(r#"cluster.links = [{ name = "b" }]"#);
        assert!(e.starts_with("test.conf: cluster.links[0].server: missing required key"), "{e}");
    }

    #[test]
    fn durations_and_sizes() {
        let c = parse(
            r#"mqtt {
                 session_expiry_interval = 7200
                 retry_interval = 5 seconds
                 await_rel_timeout = 1h30m
                 connect_timeout = "1500ms"
                 max_packet_size = 1MB
               }"#,
        )
        .unwrap();
        assert_eq!(c.mqtt.session_expiry_interval, Duration::from_secs(7200));
        assert_eq!(c.mqtt.retry_interval, Duration::from_secs(5));
        assert_eq!(c.mqtt.await_rel_timeout, Duration::from_secs(5400));
        assert_eq!(c.mqtt.connect_timeout, Duration::from_millis(1500));
        assert_eq!(c.mqtt.max_packet_size, 1_048_576);
        assert_eq!(
            parse("mqtt.session_expiry_interval = 2h").unwrap().mqtt.session_expiry_interval,
            Duration::from_secs(7200)
        );
        assert_eq!(parse("mqtt.max_packet_size = \"256KB\"").unwrap().mqtt.max_packet_size, 262_144);
        assert_eq!(parse("mqtt.max_packet_size = 1000").unwrap().mqtt.max_packet_size, 1000);
        let e = err("mqtt.max_packet_size = 1GB");
        assert!(e.starts_with("test.conf: mqtt.max_packet_size: expected a size 2..=268435455"), "{e}");
        let e = err("mqtt.retry_interval = soon");
        assert!(e.starts_with("test.conf: mqtt.retry_interval: expected a duration"), "{e}");
        let e = err("mqtt.retry_interval = 0s");
        assert_eq!(e, "test.conf: mqtt.retry_interval: must be greater than zero");
        assert_eq!(parse("mqtt.server_keepalive = disabled").unwrap().mqtt.server_keepalive, None);
        assert_eq!(
            parse("listeners.tcp.default.max_connections = infinity").unwrap().listeners.tcp["default"].max_connections,
            usize::MAX
        );
        assert_eq!(parse("mqtt.max_subscriptions = infinity").unwrap().mqtt.max_subscriptions, None);
    }

    #[test]
    fn unknown_keys_and_types() {
        let e = err("mqtt.max_packet_sise = 10");
        assert!(
            e.starts_with("test.conf: mqtt.max_packet_sise: unknown key (expected one of: max_packet_size, "),
            "{e}"
        );
        let e = err("mqtt { max_inflight = abc }");
        assert_eq!(e, "test.conf: mqtt.max_inflight: expected an integer 1..=65535, found \"abc\"");
        let e = err("mqtt.max_inflight = 0");
        assert_eq!(e, "test.conf: mqtt.max_inflight: expected an integer 1..=65535, found 0");
        let e = err("bogus = 1");
        assert!(e.starts_with("test.conf: bogus: unknown key (expected one of: node, listeners"), "{e}");
        let e = err(r#"cluster.links = [{ name = "b", server = "h:1", extra = 1 }]"#);
        assert!(e.starts_with("test.conf: cluster.links[0].extra: unknown key"), "{e}");
        let e = err("listeners.tcp.default.bindd = 1");
        assert!(e.starts_with("test.conf: listeners.tcp.default.bindd: unknown key"), "{e}");
        let e = err("mqtt.retain_available = maybe");
        assert_eq!(e, "test.conf: mqtt.retain_available: expected a boolean, found \"maybe\"");
        let e = err("mqtt = 5");
        assert_eq!(e, "test.conf: mqtt: expected an object, found 5");
        let e = err("authorization.no_match = perhaps");
        assert!(e.starts_with("test.conf: authorization.no_match: expected allow or deny"), "{e}");
    }

    #[test]
    fn link_validation() {
        let link = |body: &str| format!("cluster {{ name = \"us\"\n links = [{body}] }}");
        let e = err(&link(r#"{ name = "us", server = "h:1" }"#));
        assert!(e.starts_with("test.conf: cluster.links[0].name: link name \"us\" equals cluster.name"), "{e}");
        let e = err(&link(r#"{ name = "eu", server = "h:1" }, { name = "eu", server = "h:2" }"#));
        assert_eq!(e, "test.conf: cluster.links[1].name: duplicate link name \"eu\" (also cluster.links[0].name)");
        let e = err(&link(r#"{ name = "eu", server = "h:1", topics = ["a/#/b"] }"#));
        assert_eq!(e, "test.conf: cluster.links[0].topics[0]: invalid topic filter \"a/#/b\"");
        let e = err(&link(r#"{ name = "eu", server = "h:1", topics = ["ok", "$LINK/x"] }"#));
        assert!(
            e.starts_with("test.conf: cluster.links[0].topics[1]: topic filter \"$LINK/x\": $LINK/ is reserved"),
            "{e}"
        );
        let e = err(&link(r#"{ name = "eu", server = "h:1", clientid = "" }"#));
        assert_eq!(e, "test.conf: cluster.links[0].clientid: must not be empty");
        let e = err(&link(r#"{ name = "e/u", server = "h:1" }"#));
        assert!(e.starts_with("test.conf: cluster.links[0].name: invalid name"), "{e}");

        let c =
            parse(&link(r#"{ name = "eu", server = "h:1", topics = ["a/b", "a/#", "c/+", "c/d/e", "c/+"] }"#)).unwrap();
        assert_eq!(c.cluster.links[0].topics, vec!["a/#", "c/+", "c/d/e"]);
        assert_eq!(c.cluster.links[0].clientid, "clink-us");
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert_eq!(
            c.warnings[0],
            "cluster.links[0].topics[0]: topic filter \"a/b\" is covered by \"a/#\" (cluster.links[0].topics[1]); removed"
        );
        assert!(c.warnings[1].starts_with("cluster.links[0].topics[4]: "), "{:?}", c.warnings);
    }

    #[test]
    fn port_conflicts() {
        let e = err("listeners.tcp.default.bind = 1883\nlisteners.tcp.other.bind = \"127.0.0.1:1883\"");
        assert_eq!(e, "test.conf: listeners.tcp.other.bind: 127.0.0.1:1883 conflicts with listeners.tcp.default.bind (0.0.0.0:1883)");
        let e = err("api { bind = 1883, api_key = k, api_secret = \"0123456789abcdef\" }");
        assert!(e.starts_with("test.conf: api.bind: 0.0.0.0:1883 conflicts with listeners.tcp.default.bind"), "{e}");
        let e = err("listeners.ssl.s { bind = 1883, certfile = c, keyfile = k }");
        assert!(e.starts_with("test.conf: listeners.ssl.s.bind: "), "{e}");
        // disabled listeners, different addresses and port 0 do not clash
        parse("listeners.tcp.a.bind = \"127.0.0.1:1883\"\nlisteners.tcp.b.bind = \"127.0.0.2:1883\"").unwrap();
        parse("listeners.tcp.a.bind = 0\nlisteners.tcp.b.bind = 0\napi.bind = \"127.0.0.1:0\"").unwrap();
        parse("listeners.tcp.default.bind = 1883\nlisteners.tcp.b { bind = 1883, enable = false }").unwrap();
        let e = err("listeners.ssl.s { certfile = c, keyfile = k, verify = verify_peer }");
        assert!(e.starts_with("test.conf: listeners.ssl.s.cacertfile: required with verify = verify_peer"), "{e}");
        let e = err("listeners.ssl.s.bind = 8884");
        assert_eq!(e, "test.conf: listeners.ssl.s.certfile: missing required key for an enabled SSL listener");
    }

    #[test]
    fn env_overrides() {
        let c = Config::from_env(env(&[
            ("STRAIT_LISTENERS__TCP__DEFAULT__BIND", "127.0.0.1:2883"),
            ("STRAIT_MQTT__MAX_INFLIGHT", "64"),
            ("STRAIT_CLUSTER__NAME", "us"),
            ("STRAIT_CLUSTER__LINKS", r##"[{name = "eu", server = "eu.example:11883", topics = ["#"]}]"##),
            ("STRAIT_CLUSTER__LINKS__0__PASSWORD", "p#ss word"),
            ("STRAIT_CONFIG", "/etc/strait.conf"), // not an override: no `__`
            ("PATH", "/usr/bin"),
        ]))
        .unwrap();
        assert_eq!(c.listeners.tcp["default"].bind, "127.0.0.1:2883".parse().unwrap());
        assert_eq!(c.mqtt.max_inflight, 64);
        assert_eq!(c.cluster.links[0].name, "eu");
        assert_eq!(c.cluster.links[0].topics, vec!["#"]);
        assert_eq!(c.cluster.links[0].clientid, "clink-us");
        assert_eq!(c.cluster.links[0].password.as_deref(), Some("p#ss word"));

        // on top of a file
        let c = Config::parse_str(
            SEED,
            "f",
            env(&[
                ("STRAIT_LISTENERS__TCP__CLINK__BIND", "11884"),
                ("STRAIT_CLUSTER__LINKS__0__TOPICS", r#"["a/#", "b"]"#),
            ]),
        )
        .unwrap();
        assert_eq!(c.listeners.tcp["clink"].bind.port(), 11884);
        assert_eq!(c.cluster.links[0].topics, vec!["a/#", "b"]);

        // remove the default listener
        let c = Config::from_env(env(&[("STRAIT_LISTENERS__TCP__DEFAULT", "null")])).unwrap();
        assert!(c.listeners.tcp.is_empty());

        let e = Config::from_env(env(&[("STRAIT_MQTT__NOPE", "1")])).unwrap_err();
        assert!(
            e.to_string().starts_with("$STRAIT_MQTT__NOPE: mqtt.nope: unknown key (expected one of: max_packet_size"),
            "{e}"
        );
        let e = Config::from_env(env(&[("STRAIT_MQTT__MAX_INFLIGHT", "abc")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "$STRAIT_MQTT__MAX_INFLIGHT: mqtt.max_inflight: expected an integer 1..=65535, found \"abc\""
        );
        let e = Config::from_env(env(&[("STRAIT_CLUSTER__LINKS__X__NAME", "a")])).unwrap_err();
        assert!(
            e.to_string().starts_with("$STRAIT_CLUSTER__LINKS__X__NAME: cluster.links.x: expected a list index"),
            "{e}"
        );
        let e = Config::from_env(env(&[("STRAIT_CLUSTER__LINKS__0__SSL__BOGUS", "1")])).unwrap_err();
        assert!(e.to_string().starts_with("$STRAIT_CLUSTER__LINKS__0__SSL__BOGUS: cluster.links[0].ssl.bogus: unknown key (expected one of: enable, cacertfile"), "{e}");
        let e = Config::from_env(env(&[("STRAIT_CLUSTER__LINKS__3__NAME", "a")])).unwrap_err();
        assert!(e.to_string().contains("past the end"), "{e}");
        let e = Config::from_env(env(&[("STRAIT_MQTT__MAX_INFLIGHT__X", "1")])).unwrap_err();
        assert!(e.to_string().starts_with("$STRAIT_MQTT__MAX_INFLIGHT__X: mqtt.max_inflight: "), "{e}");
    }

    #[test]
    fn syntax_errors_have_line_and_col() {
        for bad in ["a = [1, 2", "x = 1\ny = {\n", "a = }"] {
            let e = parse(bad).unwrap_err();
            assert!(e.key.is_empty(), "{e:?}");
            let s = e.to_string();
            let mut parts = s.splitn(4, ':');
            assert_eq!(parts.next(), Some("test.conf"), "{s}");
            assert!(parts.next().is_some_and(|l| l.parse::<usize>().is_ok()), "{s}");
            assert!(parts.next().is_some_and(|c| c.parse::<usize>().is_ok()), "{s}");
        }
        let e = parse("a = ${missing}").unwrap_err().to_string();
        assert!(e.starts_with("test.conf:1:"), "{e}");
    }

    #[test]
    fn substitution_uses_given_env() {
        let c = Config::parse_str("node.name = ${NAME}", "t", env(&[("NAME", "n1@h")])).unwrap();
        assert_eq!(c.node.name, "n1@h");
    }

    #[test]
    fn duration_parser() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2 h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Some(Duration::from_secs(86400)));
        assert_eq!(parse_duration("100"), Some(Duration::from_secs(100)));
        assert_eq!(parse_duration("10 parsecs"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(fmt_duration(Duration::from_secs(300)), "5m");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1500ms");
    }
}
