//! The value tree → `Config`, section by section, with port clash checks.

use super::*;

pub(super) fn decode(root: &Node) -> R<Config> {
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

pub(super) fn decode_node(o: &Obj) -> R<NodeConfig> {
    let d = NodeConfig::default();
    let name = o.string("name")?.unwrap_or(d.name);
    if name.trim().is_empty() {
        return Err(Fail::new(o.key("name"), "must not be empty"));
    }
    Ok(NodeConfig { name, data_dir: o.path("data_dir")?.unwrap_or(d.data_dir) })
}

pub(super) fn decode_listeners(o: &Obj) -> R<Listeners> {
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
pub(super) fn max_connections(l: &Obj, default: usize) -> R<usize> {
    match l.get("max_connections") {
        Some(Node::Str(s)) if s == "infinity" => Ok(usize::MAX),
        Some(n) => int_in(n, &l.key("max_connections"), 1, i64::MAX)
            .map_err(|_| Fail::expected(l.key("max_connections"), "an integer >= 1 or \"infinity\"", n)),
        None => Ok(default),
    }
}

pub(super) fn decode_mqtt(o: &Obj) -> R<MqttConfig> {
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

pub(super) fn decode_api(o: &Obj) -> R<ApiConfig> {
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

pub(super) fn api_key(key: String, k: String, secret: String) -> R<(String, Secret)> {
    if k.is_empty() || k.contains(':') {
        return Err(Fail::new(key, "an API key must be non-empty and without ':'"));
    }
    if secret.chars().count() < 16 {
        return Err(Fail::new(key, format!("the secret of API key {k:?} is too short: at least 16 characters")));
    }
    Ok((k, Secret(secret)))
}

pub(super) fn decode_authn(o: &Obj) -> R<AuthnConfig> {
    let d = AuthnConfig::default();
    Ok(AuthnConfig {
        allow_anonymous: o.bool("allow_anonymous", d.allow_anonymous)?,
        password_file: o.path("password_file")?,
        allow_sha512_hashes: o.bool("allow_sha512_hashes", d.allow_sha512_hashes)?,
    })
}

pub(super) fn decode_authz(o: &Obj) -> R<AuthzConfig> {
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

pub(super) fn decode_log(o: &Obj) -> R<LogConfig> {
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

pub(super) fn decode_cluster(o: &Obj, warnings: &mut Vec<String>) -> R<ClusterConfig> {
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

pub(super) fn decode_raft(o: &Obj) -> R<RaftTiming> {
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
pub(super) fn decode_raft_tls(o: &Obj) -> R<Option<TlsFiles>> {
    if !o.bool("enable", o.get("certfile").is_some())? {
        return Ok(None);
    }
    let read = |k: &str| -> R<Vec<u8>> {
        let p = o
            .path(k)?
            .ok_or_else(|| Fail::new(o.key(k), "required with cluster.raft.ssl (mutual TLS between nodes)"))?;
        std::fs::read(&p).map_err(|e| Fail::new(o.key(k), format!("cannot read {}: {e}", p.display())))
    };
    Ok(Some(TlsFiles { cert: read("certfile")?, key: read("keyfile")?, ca: read("cacertfile")? }))
}

/// `secret` or `secret_file` (its contents, trimmed); at least 16 characters.
pub(super) fn decode_secret(o: &Obj) -> R<Option<Secret>> {
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
    Ok(Some(Secret(secret)))
}

/// Two enabled listeners on the same address:port.
pub(super) fn check_ports(cfg: &Config) -> R<()> {
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

pub(super) fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() == 0 || a.port() != b.port() {
        return false;
    }
    let (x, y) = (a.ip(), b.ip());
    x == y
        || (x.is_unspecified() && (x.is_ipv6() || y.is_ipv4()))
        || (y.is_unspecified() && (y.is_ipv6() || x.is_ipv4()))
}
