//! The configuration as a value tree (our copy of HOCON's) and the schema of allowed keys.

// ------------------------------------------------------------------------------------------
// Value tree
// ------------------------------------------------------------------------------------------

/// Our own copy of the HOCON value tree (ordered, mutable for overrides).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Node {
    Obj(Vec<(String, Node)>),
    List(Vec<Node>),
    Str(String),
    Num(String),
    Bool(bool),
    Null,
}

impl Node {
    pub(super) fn from_hocon(v: &hocon::HoconValue, path: &str) -> Result<Node, Fail> {
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

pub(super) fn root_node(cfg: &hocon::Config) -> Result<Node, Fail> {
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

pub(super) fn describe(n: &Node) -> String {
    match n {
        Node::Obj(_) => "an object".to_string(),
        Node::List(_) => "a list".to_string(),
        Node::Str(s) => format!("{s:?}"),
        Node::Num(r) => r.clone(),
        Node::Bool(b) => b.to_string(),
        Node::Null => "null".to_string(),
    }
}

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub(super) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// A decode failure before the origin is known.
#[derive(Debug)]
pub(super) struct Fail {
    pub(super) key: String,
    pub(super) problem: String,
}

impl Fail {
    pub(super) fn new(key: impl Into<String>, problem: impl Into<String>) -> Fail {
        Fail { key: key.into(), problem: problem.into() }
    }

    pub(super) fn expected(key: impl Into<String>, what: &str, found: &Node) -> Fail {
        Fail::new(key, format!("expected {what}, found {}", describe(found)))
    }
}

pub(super) type R<T> = Result<T, Fail>;

// ------------------------------------------------------------------------------------------
// Key schema (used for unknown-key errors and for checking environment overrides)
// ------------------------------------------------------------------------------------------

pub(super) enum Schema {
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

pub(super) const NODE: Schema = Schema::Obj(&[("name", L), ("data_dir", L)]);
pub(super) const TCP: Schema = Schema::Obj(&[("enable", L), ("bind", L), ("max_connections", L)]);
pub(super) const SSL: Schema = Schema::Obj(&[
    ("enable", L),
    ("bind", L),
    ("certfile", L),
    ("keyfile", L),
    ("cacertfile", L),
    ("verify", L),
    ("fail_if_no_peer_cert", L),
    ("max_connections", L),
]);
pub(super) const TCP_MAP: Schema = Schema::Map(&TCP);
pub(super) const SSL_MAP: Schema = Schema::Map(&SSL);
pub(super) const LISTENERS: Schema = Schema::Obj(&[("tcp", TCP_MAP), ("ssl", SSL_MAP)]);
pub(super) const MQTT: Schema = Schema::Obj(&[
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
pub(super) const API: Schema =
    Schema::Obj(&[("enable", L), ("bind", L), ("api_key", L), ("api_secret", L), ("bootstrap_file", L)]);
pub(super) const AUTHN: Schema =
    Schema::Obj(&[("allow_anonymous", L), ("password_file", L), ("allow_sha512_hashes", L)]);
pub(super) const AUTHZ: Schema = Schema::Obj(&[("acl_file", L), ("no_match", L)]);
pub(super) const LINK_SSL: Schema =
    Schema::Obj(&[("enable", L), ("cacertfile", L), ("certfile", L), ("keyfile", L), ("verify", L)]);
pub(super) const LINK: Schema = Schema::Obj(&[
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
pub(super) const EMQX_LINK_KEYS: &[(&str, &str)] = &[
    ("pool_size", "one connection per link carries everything here (ordered, exactly once)"),
    ("resource_opts", "the outbox is the link session at the remote (max_outbox, max_outbox_bytes)"),
    ("tcp_opts", "socket options are not configurable per link"),
];
pub(super) const STATIC: Schema = Schema::Obj(&[("seeds", L)]);
pub(super) const RAFT: Schema = Schema::Obj(&[
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
pub(super) const RAFT_SSL: Schema = Schema::Obj(&[("enable", L), ("certfile", L), ("keyfile", L), ("cacertfile", L)]);
pub(super) const CLUSTER: Schema = Schema::Obj(&[
    ("name", L),
    ("discovery_strategy", L),
    ("static", STATIC),
    ("links", Schema::List(&LINK)),
    ("raft", RAFT),
]);
pub(super) const LOG: Schema = Schema::Obj(&[("level", L), ("format", L)]);
pub(super) const ROOT: Schema = Schema::Obj(&[
    ("node", NODE),
    ("listeners", LISTENERS),
    ("mqtt", MQTT),
    ("api", API),
    ("authentication", AUTHN),
    ("authorization", AUTHZ),
    ("cluster", CLUSTER),
    ("log", LOG),
]);

pub(super) fn schema_keys(s: &Schema) -> String {
    match s {
        Schema::Obj(fields) => fields.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", "),
        _ => String::new(),
    }
}
