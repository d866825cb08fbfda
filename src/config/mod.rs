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

mod decode;
mod env;
mod links;
#[cfg(test)]
mod tests;
mod tree;
mod types;
mod values;

use decode::*;
use env::*;
use links::*;
pub use links::{link_from_json, link_to_json, LINK_STATUS_FIELDS};
use tree::*;
pub use types::*;
use values::*;

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
