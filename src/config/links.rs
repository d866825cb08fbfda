//! `cluster.links[]` in HOCON and as the API's JSON.

use super::*;

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

pub(super) fn decode_link(o: &Obj, cluster_name: &str, warnings: &mut Vec<String>) -> R<LinkConfig> {
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

pub(super) fn decode_servers(o: &Obj) -> R<Vec<ServerAddr>> {
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

pub(super) fn decode_topics(o: &Obj, warnings: &mut Vec<String>) -> R<Vec<String>> {
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
