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
    assert!(e.starts_with("test.conf: mqtt.max_packet_sise: unknown key (expected one of: max_packet_size, "), "{e}");
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

    let c = parse(&link(r#"{ name = "eu", server = "h:1", topics = ["a/b", "a/#", "c/+", "c/d/e", "c/+"] }"#)).unwrap();
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
    assert_eq!(
        e,
        "test.conf: listeners.tcp.other.bind: 127.0.0.1:1883 conflicts with listeners.tcp.default.bind (0.0.0.0:1883)"
    );
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
