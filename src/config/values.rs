//! Reading values from the tree: objects, scalars, durations, sizes, addresses.

use super::*;

// ------------------------------------------------------------------------------------------
// Decoding
// ------------------------------------------------------------------------------------------

/// An object being decoded: its key path and entries.
pub(super) struct Obj<'n> {
    pub(super) path: String,
    pub(super) entries: &'n [(String, Node)],
}

/// View `node` as an object; with an `Obj` schema, reject keys it does not list.
pub(super) fn object<'n>(node: Option<&'n Node>, path: String, schema: &Schema) -> R<Obj<'n>> {
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
    pub(super) fn get(&self, k: &str) -> Option<&'n Node> {
        self.entries.iter().find(|(n, _)| n == k).map(|(_, v)| v).filter(|v| !matches!(v, Node::Null))
    }

    pub(super) fn key(&self, k: &str) -> String {
        join(&self.path, k)
    }

    pub(super) fn sub(&self, k: &str, schema: &Schema) -> R<Obj<'n>> {
        object(self.get(k), self.key(k), schema)
    }

    pub(super) fn bool(&self, k: &str, default: bool) -> R<bool> {
        match self.get(k) {
            None => Ok(default),
            Some(n) => as_bool(n).ok_or_else(|| Fail::expected(self.key(k), "a boolean", n)),
        }
    }

    pub(super) fn int<T: TryFrom<i64>>(&self, k: &str, lo: i64, hi: i64, default: T) -> R<T> {
        match self.get(k) {
            None => Ok(default),
            Some(n) => int_in(n, &self.key(k), lo, hi),
        }
    }

    pub(super) fn string(&self, k: &str) -> R<Option<String>> {
        match self.get(k) {
            None => Ok(None),
            Some(n) => as_string(n).map(Some).ok_or_else(|| Fail::expected(self.key(k), "a string", n)),
        }
    }

    pub(super) fn required_string(&self, k: &str) -> R<String> {
        self.string(k)?.ok_or_else(|| Fail::new(self.key(k), "missing required key"))
    }

    pub(super) fn path(&self, k: &str) -> R<Option<PathBuf>> {
        match self.string(k)? {
            None => Ok(None),
            Some(s) if s.is_empty() => Err(Fail::new(self.key(k), "empty path")),
            Some(s) => Ok(Some(PathBuf::from(s))),
        }
    }

    pub(super) fn duration(&self, k: &str, default: Duration, allow_zero: bool) -> R<Duration> {
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
    pub(super) fn size(&self, k: &str, default: u64) -> R<u64> {
        match self.get(k) {
            None => Ok(default),
            Some(n) => parse_size(n)
                .and_then(|v| u64::try_from(v).ok())
                .ok_or_else(|| Fail::expected(self.key(k), "a size in bytes (e.g. 67108864, \"64MB\", \"512KB\")", n)),
        }
    }

    pub(super) fn bind(&self, k: &str, default: Option<SocketAddr>) -> R<SocketAddr> {
        match (self.get(k), default) {
            (None, Some(d)) => Ok(d),
            (None, None) => Err(Fail::new(self.key(k), "missing required key (a port or \"ip:port\")")),
            (Some(n), _) => parse_bind(n).ok_or_else(|| {
                Fail::expected(self.key(k), "a port (1883) or \"ip:port\" (\"127.0.0.1:1883\", \"[::1]:1883\")", n)
            }),
        }
    }

    pub(super) fn verify(&self, k: &str) -> R<bool> {
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
    pub(super) fn strings(&self, k: &str, split_commas: bool) -> R<Vec<(String, String)>> {
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

pub(super) fn as_bool(n: &Node) -> Option<bool> {
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

pub(super) fn as_string(n: &Node) -> Option<String> {
    match n {
        Node::Str(s) | Node::Num(s) => Some(s.clone()),
        _ => None,
    }
}

pub(super) fn as_i64(n: &Node) -> Option<i64> {
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

pub(super) fn int_in<T: TryFrom<i64>>(n: &Node, key: &str, lo: i64, hi: i64) -> R<T> {
    let what = if hi == i64::MAX { format!("an integer >= {lo}") } else { format!("an integer {lo}..={hi}") };
    as_i64(n)
        .filter(|v| (lo..=hi).contains(v))
        .and_then(|v| T::try_from(v).ok())
        .ok_or_else(|| Fail::expected(key, &what, n))
}

pub(super) fn any_addr(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
}

pub(super) fn parse_bind(n: &Node) -> Option<SocketAddr> {
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
pub(super) fn parse_server(s: &str) -> Result<ServerAddr, String> {
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
pub(super) fn split_number(s: &str) -> Option<(u128, &str)> {
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
pub(super) fn scale(int: u128, frac: &str, factor: u128) -> Option<u128> {
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
pub(super) fn parse_duration(s: &str) -> Option<Duration> {
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

pub(super) fn nanos_to_duration(n: u128) -> Option<Duration> {
    let secs = u64::try_from(n / 1_000_000_000).ok()?;
    let nanos = u32::try_from(n % 1_000_000_000).ok()?;
    Some(Duration::new(secs, nanos))
}

/// See the module doc: bytes, or a number with a 1024-based unit.
pub(super) fn parse_size(n: &Node) -> Option<u128> {
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

pub(super) fn fmt_duration(d: Duration) -> String {
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

pub(super) fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&fmt_duration(*d))
}

pub(super) fn ser_secret<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("******"),
        None => s.serialize_none(),
    }
}

/// A cluster or link name: used as a topic level in `$LINK/...`.
pub(super) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("must not be empty".to_string())
    } else if name.contains(['/', '+', '#', '\0']) || name.chars().any(char::is_whitespace) {
        Err(format!("invalid name {name:?}: no '/', '+', '#' or whitespace allowed"))
    } else {
        Ok(())
    }
}
