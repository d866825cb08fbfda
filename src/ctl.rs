//! `strait ctl`: the common operations over a node's HTTP API, for people and scripts.
//!
//! Exit codes: 0 done (and healthy, for `cluster status`), 1 the API refused or the cluster is
//! not healthy, 2 bad usage or config, 3 the API could not be reached.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Args)]
pub struct Ctl {
    /// Read the API address and key from this node config file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The API address (default: the config's api.bind, else 127.0.0.1:18083; env STRAIT_CTL_ADDR).
    #[arg(long)]
    addr: Option<String>,
    /// API key (default: the config's api_key; env STRAIT_API_KEY).
    #[arg(long)]
    api_key: Option<String>,
    /// API secret (default: the config's api_secret; env STRAIT_API_SECRET).
    #[arg(long)]
    api_secret: Option<String>,
    /// Print the API's JSON instead of a summary.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// The cluster: members, roles, leader (exit 1 without a leader).
    Cluster {
        #[command(subcommand)]
        op: ClusterOp,
    },
    /// Cluster links.
    Links {
        #[command(subcommand)]
        op: LinkOp,
    },
    /// Connected clients and sessions.
    Clients {
        #[command(subcommand)]
        op: ClientOp,
    },
    /// The node's log level: show it, or set it (until the next restart).
    Log { level: Option<String> },
}

#[derive(Subcommand)]
enum ClusterOp {
    Status,
}

#[derive(Subcommand)]
enum LinkOp {
    /// One line per link: name, status, server, routes, last error (exit 1 if one is not connected).
    List,
    /// A link's configuration and status.
    Show {
        name: String,
    },
    Enable {
        name: String,
    },
    Disable {
        name: String,
    },
}

#[derive(Subcommand)]
enum ClientOp {
    List,
    /// Disconnect a client (or discard an offline session).
    Kick {
        clientid: String,
    },
}

struct Api {
    addr: SocketAddr,
    auth: Option<String>,
}

enum Fail {
    Usage(String),
    Unreachable(String),
    Refused(String),
}

pub fn run(ctl: Ctl) -> ExitCode {
    let result = Api::new(&ctl).and_then(|api| dispatch(&api, ctl.what, ctl.json));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(Fail::Usage(e)) => {
            eprintln!("strait ctl: {e}");
            ExitCode::from(2)
        }
        Err(Fail::Refused(e)) => {
            eprintln!("strait ctl: {e}");
            ExitCode::from(1)
        }
        Err(Fail::Unreachable(e)) => {
            eprintln!("strait ctl: {e}");
            ExitCode::from(3)
        }
    }
}

impl Api {
    fn new(ctl: &Ctl) -> Result<Api, Fail> {
        let cfg = match &ctl.config {
            Some(f) => {
                let env = std::iter::empty::<(String, String)>();
                Some(strait::config::Config::load(f, env).map_err(|e| Fail::Usage(e.to_string()))?)
            }
            None => None,
        };
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let addr = match ctl.addr.clone().or_else(|| env("STRAIT_CTL_ADDR")) {
            Some(a) => a
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| Fail::Usage(format!("--addr {a:?}: expected host:port")))?,
            None => match &cfg {
                Some(c) => {
                    let mut a = c.api.bind;
                    if a.ip().is_unspecified() {
                        a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                    }
                    a
                }
                None => SocketAddr::from(([127, 0, 0, 1], 18083)),
            },
        };
        let key = ctl.api_key.clone().or_else(|| env("STRAIT_API_KEY"));
        let secret = ctl.api_secret.clone().or_else(|| env("STRAIT_API_SECRET"));
        let (key, secret) = match (key, secret, &cfg) {
            (Some(k), Some(s), _) => (Some(k), Some(s)),
            (None, None, Some(c)) => match c.api.keys.first() {
                Some((k, s)) => (Some(k.clone()), Some(s.0.clone())),
                None => (None, None),
            },
            (None, None, None) => (None, None),
            _ => return Err(Fail::Usage("give both --api-key and --api-secret".into())),
        };
        let auth = key.zip(secret).map(|(k, s)| {
            use base64::Engine;
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{k}:{s}")))
        });
        Ok(Api { addr, auth })
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Fail> {
        let unreachable = |e: std::io::Error| Fail::Unreachable(format!("the API at {}: {e}", self.addr));
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(3)).map_err(unreachable)?;
        s.set_read_timeout(Some(Duration::from_secs(30))).map_err(unreachable)?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.addr);
        if let Some(a) = &self.auth {
            req.push_str(&format!("Authorization: {a}\r\n"));
        }
        if !body.is_empty() {
            req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        req.push_str(&body);
        s.write_all(req.as_bytes()).map_err(unreachable)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(unreachable)?;
        let text = String::from_utf8_lossy(&raw);
        let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code: u16 = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let chunked = head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("transfer-encoding:") && l.contains("chunked")
        });
        let body = if chunked { dechunk(rest) } else { rest.to_string() };
        let v: Value =
            if body.trim().is_empty() { Value::Null } else { serde_json::from_str(&body).unwrap_or(json!(body)) };
        match code {
            200..=299 => Ok(v),
            0 => Err(Fail::Unreachable(format!("the API at {} answered no HTTP", self.addr))),
            _ => {
                let msg = v["message"].as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
                let api_code = v["code"].as_str().map(|c| format!(" {c}")).unwrap_or_default();
                Err(Fail::Refused(format!("{method} {path}: HTTP {code}{api_code}: {msg}")))
            }
        }
    }
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

fn set_enable(api: &Api, name: &str, enable: bool, as_json: bool) -> Result<bool, Fail> {
    let path = format!("/api/v5/cluster/links/link/{}", segment(name));
    let v = api.call("PUT", &path, Some(&json!({"enable": enable})))?;
    if as_json {
        pretty(&v);
    } else {
        println!("{name}: {}", if enable { "enabled" } else { "disabled" });
    }
    Ok(true)
}

/// A path segment, percent-encoded (client ids may hold any character).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn pretty(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn dispatch(api: &Api, what: What, as_json: bool) -> Result<bool, Fail> {
    match what {
        What::Cluster { op: ClusterOp::Status } => {
            let v = match api.call("GET", "/api/v5/cluster", None) {
                Err(Fail::Refused(e)) if e.contains("NOT_CLUSTERED") => {
                    // A single node is its own healthy cluster.
                    let st = api.call("GET", "/api/v5/status", None)?;
                    println!("single node {} (no cluster): {}", str_of(&st["node"]), str_of(&st["status"]));
                    return Ok(true);
                }
                other => other?,
            };
            if as_json {
                pretty(&v);
            } else {
                println!(
                    "cluster {}  leader {}  term {}  commit {}",
                    str_of(&v["name"]),
                    str_of(&v["leader"]),
                    str_of(&v["term"]),
                    str_of(&v["commit_index"])
                );
                for n in v["nodes"].as_array().into_iter().flatten() {
                    println!(
                        "  {:<28} {:<10} reachable={}",
                        str_of(&n["name"]),
                        str_of(&n["role"]),
                        if n["reachable"].is_null() { "unknown here".to_string() } else { str_of(&n["reachable"]) }
                    );
                }
            }
            Ok(v["leader"].is_string() && v["available"] != false)
        }
        What::Links { op: LinkOp::List } => {
            let v = api.call("GET", "/api/v5/cluster/links", None)?;
            let links = v.as_array().or_else(|| v["data"].as_array()).cloned().unwrap_or_default();
            if as_json {
                pretty(&json!(links));
            } else {
                for l in &links {
                    // The last error is history once connected again: shown only while down.
                    let error = if l["status"] == "connected" { String::new() } else { str_of(&l["last_error"]) };
                    println!(
                        "{:<20} {:<13} server={} routes={} refused={} {error}",
                        str_of(&l["name"]),
                        str_of(&l["status"]),
                        str_of(&l["connected_server"]),
                        str_of(&l["route_count"]),
                        str_of(&l["routes_refused_count"]),
                    );
                }
            }
            Ok(links.iter().all(|l| l["status"] == "connected" || l["status"] == "disabled"))
        }
        What::Links { op: LinkOp::Show { name } } => {
            let mut v = api.call("GET", &format!("/api/v5/cluster/links/link/{}", segment(&name)), None)?;
            if !as_json {
                // The route list can be long: its count says enough here.
                if let Some(o) = v.as_object_mut() {
                    o.remove("routes");
                }
            }
            pretty(&v);
            Ok(true)
        }
        What::Links { op: LinkOp::Enable { name } } => set_enable(api, &name, true, as_json),
        What::Links { op: LinkOp::Disable { name } } => set_enable(api, &name, false, as_json),
        What::Clients { op: ClientOp::List } => {
            let v = api.call("GET", "/api/v5/clients", None)?;
            let clients = v["data"].as_array().cloned().unwrap_or_default();
            if as_json {
                pretty(&json!(clients));
            } else {
                for c in &clients {
                    println!(
                        "{:<32} connected={} node={} queued={}",
                        str_of(&c["clientid"]),
                        str_of(&c["connected"]),
                        str_of(&c["node_id"]),
                        str_of(&c["mqueue_len"])
                    );
                }
            }
            Ok(true)
        }
        What::Clients { op: ClientOp::Kick { clientid } } => {
            api.call("DELETE", &format!("/api/v5/clients/{}", segment(&clientid)), None)?;
            if !as_json {
                println!("{clientid}: kicked");
            }
            Ok(true)
        }
        What::Log { level: None } => {
            let v = api.call("GET", "/api/v5/log", None)?;
            println!("{}", str_of(&v["level"]));
            Ok(true)
        }
        What::Log { level: Some(l) } => {
            let v = api.call("PUT", "/api/v5/log", Some(&json!({"level": l})))?;
            println!("{}", str_of(&v["level"]));
            Ok(true)
        }
    }
}
