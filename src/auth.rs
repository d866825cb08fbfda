//! Authentication (a mosquitto-compatible password file) and authorization (an ACL file).
//!
//! # Password file
//!
//! The format is mosquitto's `password_file`, so it can be managed with the stock tool:
//! `mosquitto_passwd -c -b /etc/strait/passwd alice secret`. One user per line:
//!
//! ```text
//! # comments and blank lines are ignored
//! alice:$7$101$CQ5TpMvudbH9QknE$N0L+CDF+...kLA==
//! carol:$6$LB7rrBjPuSHawyEh$kJ/qfrMbkWwaV98Q...OXDg==
//! ```
//!
//! - `$7$<iterations>$<salt>$<hash>`: PBKDF2-HMAC-SHA512 (mosquitto ≥ 2.0, default 101
//!   iterations), `hash` the derived key (64 bytes);
//! - `$6$<salt>$<hash>`: SHA-512 over the password bytes followed by the raw salt bytes
//!   (mosquitto ≤ 1.6);
//!
//! salt and hash in standard base64. The username is everything before the first `:`.
//! Plain-text passwords are rejected. [`hash_password`] produces a `$7$` value.
//!
//! # ACL file
//!
//! One rule per line, `#` starts a comment line (only at the start of a line: `#` inside a rule
//! is the MQTT wildcard). The first matching rule wins; when none matches, the configured
//! `authorization.no_match` verdict applies.
//!
//! ```text
//! # verdict  who              action     topic filter
//! deny       all              subscribe  $SYS/#
//! allow      user:admin       all        #
//! allow      all              publish    devices/%c/up/#
//! allow      all              subscribe  devices/%c/down/#
//! allow      all              all        users/%u/#
//! allow      client:monitor   subscribe  eq metrics/#
//! deny       anonymous        all        #
//! allow      all              subscribe  public/#
//! ```
//!
//! - verdict: `allow` | `deny`;
//! - who: `all` | `user:<name>` | `client:<id>` | `anonymous` (a client that gave no username);
//! - action: `publish` | `subscribe` | `all`;
//! - topic filter: the rest of the line. `%c` is replaced by the client id and `%u` by the
//!   username; a rule using `%u` never matches an anonymous client. If the substituted value is
//!   empty or contains `/`, `+`, `#` (it could reach other clients' topics), an `allow` rule does
//!   not match and a `deny` rule does (fail closed). A leading `eq ` means literal equality
//!   instead of wildcard matching (`eq a/#` only matches subscribing to exactly `a/#`).
//!
//! Matching, as mosquitto and EMQX do it: for publish, the rule's filter must match the topic
//! name. For subscribe, the filter *as written* is checked: a rule matches when its filter
//! covers the requested filter (every topic the subscription can receive is under the rule), so
//! `deny all subscribe secret/#` refuses `secret/#` and `secret/a` but not `#`. Read access is
//! then enforced per delivered message: a message goes to a subscriber only if the subscribe
//! rules, matched against its topic name, allow it: a `#` subscriber beside
//! `deny all subscribe secret/#` receives everything except `secret/...`. Filters starting
//! with a wildcard do not reach topics starting with `$` (MQTT-4.7.2-1). A shared subscription
//! `$share/<group>/<filter>` is checked as `<filter>`.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use sha2::{Digest, Sha512};

use crate::config::AclVerdict;
use crate::mqtt::topic::{covers, matches, parse_shared, valid_filter};

/// Iterations used by [`hash_password`]. mosquitto_passwd writes 101 (read, never written
/// here); 100,000 makes an offline guess ~1,000 times dearer. A successful check is cached
/// (keyed by a per-process secret), so a reconnecting client costs one SHA-256.
pub const HASH_ITERATIONS: u32 = 100_000;
/// Verified logins remembered (then the cache starts over).
const CACHE_MAX: usize = 100_000;
const SALT_LEN: usize = 12;
const KEY_LEN: usize = 64;

/// Standard alphabet, padding optional when decoding, always written when encoding.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{origin}:{line}: {problem}")]
    Parse { origin: String, line: usize, problem: String },
}

fn read(path: &Path) -> Result<String, AuthError> {
    std::fs::read_to_string(path).map_err(|source| AuthError::Io { path: path.display().to_string(), source })
}

// ------------------------------------------------------------------------------------------
// Password file
// ------------------------------------------------------------------------------------------

#[derive(Clone)]
enum Hash {
    Pbkdf2 { iterations: u32, salt: Vec<u8>, key: Vec<u8> },
    Sha512 { salt: Vec<u8>, key: Vec<u8> },
}

impl Hash {
    fn parse(value: &str) -> Result<Hash, String> {
        let b64 = |what: &str, s: &str| B64.decode(s).map_err(|e| format!("invalid base64 in the {what}: {e}"));
        if let Some(rest) = value.strip_prefix("$7$") {
            let mut parts = rest.split('$');
            let (Some(iter), Some(salt), Some(key), None) = (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err("expected $7$<iterations>$<salt>$<hash>".to_string());
            };
            let iterations = iter
                .parse::<u32>()
                .ok()
                .filter(|i| *i > 0)
                .ok_or_else(|| format!("invalid iteration count {iter:?}"))?;
            let salt = b64("salt", salt)?;
            let key = b64("hash", key)?;
            if key.is_empty() || key.len() > KEY_LEN {
                return Err(format!("hash is {} bytes, expected {KEY_LEN}", key.len()));
            }
            Ok(Hash::Pbkdf2 { iterations, salt, key })
        } else if let Some(rest) = value.strip_prefix("$6$") {
            let Some((salt, key)) = rest.split_once('$') else {
                return Err("expected $6$<salt>$<hash>".to_string());
            };
            let salt = b64("salt", salt)?;
            let key = b64("hash", key)?;
            if key.len() != KEY_LEN {
                return Err(format!("hash is {} bytes, expected {KEY_LEN}", key.len()));
            }
            Ok(Hash::Sha512 { salt, key })
        } else {
            Err("unsupported password hash (expected a $7$ or $6$ value as written by \
                 mosquitto_passwd; plain-text passwords are not accepted)"
                .to_string())
        }
    }

    fn matches(&self, password: &[u8]) -> bool {
        match self {
            Hash::Pbkdf2 { iterations, salt, key } => {
                let mut out = [0u8; KEY_LEN];
                let out = &mut out[..key.len()];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, out);
                ct_eq(out, key)
            }
            Hash::Sha512 { salt, key } => {
                let mut h = Sha512::new();
                h.update(password);
                h.update(salt);
                ct_eq(&h.finalize(), key)
            }
        }
    }
}

/// Constant-time (for equal lengths) byte comparison.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Users and password hashes from a mosquitto-format password file.
pub struct PasswordFile {
    users: HashMap<String, Hash>,
    /// verified against when the user is unknown, so that timing does not reveal usernames
    dummy: Hash,
    /// username → SHA-256(process key, username, password) of its last successful login
    verified: std::sync::Mutex<HashMap<String, [u8; 32]>>,
    cache_key: [u8; 32],
}

impl fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile").field("users", &self.users.len()).finish_non_exhaustive()
    }
}

impl PasswordFile {
    /// Read a password file; errors name `file:line`. `allow_sha512`: accept mosquitto 1.x's
    /// `$6$` lines (one unsalted-iteration SHA-512: refused unless asked for).
    pub fn load(path: &Path, allow_sha512: bool) -> Result<PasswordFile, AuthError> {
        PasswordFile::parse_str(&read(path)?, &path.display().to_string(), allow_sha512)
    }

    /// Parse password-file text; `origin` stands for the file name in errors.
    pub fn parse_str(text: &str, origin: &str, allow_sha512: bool) -> Result<PasswordFile, AuthError> {
        let mut users = HashMap::new();
        let mut first_lines: HashMap<String, usize> = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let fail = |problem: String| AuthError::Parse { origin: origin.to_string(), line, problem };
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let Some((user, value)) = trimmed.split_once(':') else {
                return Err(fail("expected username:hash".to_string()));
            };
            if user.is_empty() {
                return Err(fail("empty username".to_string()));
            }
            let hash = Hash::parse(value.trim()).map_err(|p| fail(format!("user {user:?}: {p}")))?;
            if matches!(hash, Hash::Sha512 { .. }) && !allow_sha512 {
                return Err(fail(format!(
                    "user {user:?}: a $6$ (single SHA-512) hash is too cheap to guess; rehash it with \
                     `strait passwd` (or mosquitto_passwd 2.x), or set authentication.allow_sha512_hashes = true"
                )));
            }
            if let Some(prev) = first_lines.insert(user.to_string(), line) {
                return Err(fail(format!("duplicate user {user:?} (first on line {prev})")));
            }
            users.insert(user.to_string(), hash);
        }
        Ok(PasswordFile {
            users,
            dummy: Hash::Pbkdf2 { iterations: HASH_ITERATIONS, salt: vec![0; SALT_LEN], key: vec![0; KEY_LEN] },
            verified: std::sync::Mutex::new(HashMap::new()),
            cache_key: rand::random(),
        })
    }

    fn fingerprint(&self, username: &str, password: &[u8]) -> [u8; 32] {
        let mut h = sha2::Sha256::new();
        h.update(self.cache_key);
        h.update((username.len() as u64).to_le_bytes());
        h.update(username.as_bytes());
        h.update(password);
        h.finalize().into()
    }

    /// Whether `username` exists and `password` is theirs (constant-time compare).
    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        let fp = self.fingerprint(username, password);
        if self.cached(username, &fp) {
            return true;
        }
        let ok = match self.users.get(username) {
            Some(hash) => hash.matches(password),
            None => {
                let _ = self.dummy.matches(password);
                false
            }
        };
        if ok {
            let mut v = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if v.len() >= CACHE_MAX {
                v.clear();
            }
            v.insert(username.to_string(), fp);
        }
        ok
    }

    /// Whether checking this login needs the full hash (not a cached success): callers run
    /// such checks off the async workers.
    pub fn is_cached(&self, username: &str, password: &[u8]) -> bool {
        self.cached(username, &self.fingerprint(username, password))
    }

    fn cached(&self, username: &str, fp: &[u8; 32]) -> bool {
        self.verified.lock().unwrap_or_else(|e| e.into_inner()).get(username).is_some_and(|v| ct_eq(v, fp))
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file has no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// A `$7$` (PBKDF2-HMAC-SHA512, [`HASH_ITERATIONS`], random 12-byte salt) value for a
/// password-file line `username:<value>`, as `mosquitto_passwd` writes it.
pub fn hash_password(password: &str) -> String {
    let salt: [u8; SALT_LEN] = rand::random();
    hash_with(password.as_bytes(), &salt, HASH_ITERATIONS)
}

fn hash_with(password: &[u8], salt: &[u8], iterations: u32) -> String {
    let mut key = [0u8; KEY_LEN];
    pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut key);
    format!("$7${iterations}${}${}", B64.encode(salt), B64.encode(key))
}

// ------------------------------------------------------------------------------------------
// ACL
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AclAction {
    Publish,
    Subscribe,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    All,
    User(String),
    Client(String),
    Anonymous,
}

#[derive(Debug, Clone)]
struct Rule {
    verdict: AclVerdict,
    who: Who,
    publish: bool,
    subscribe: bool,
    /// literal equality instead of wildcard matching
    eq: bool,
    filter: String,
}

/// What a rule's filter becomes for one client.
enum Expanded<'a> {
    Filter(std::borrow::Cow<'a, str>),
    /// the rule cannot match this client (`%u` for an anonymous client)
    Skip,
    /// a substituted value could widen the filter: allow rules skip, deny rules match
    Unsafe,
}

impl Rule {
    fn expand<'a>(&'a self, client_id: &str, username: Option<&str>) -> Expanded<'a> {
        if !self.filter.contains('%') {
            return Expanded::Filter(self.filter.as_str().into());
        }
        let uses_c = self.filter.contains("%c");
        let uses_u = self.filter.contains("%u");
        if uses_u && username.is_none() {
            return Expanded::Skip;
        }
        let bad = |v: &str| v.is_empty() || v.contains(['/', '+', '#', '\0']);
        if (uses_c && bad(client_id)) || (uses_u && username.is_some_and(bad)) {
            return Expanded::Unsafe;
        }
        // one pass over the rule text, so a substituted value cannot inject "%u"
        Expanded::Filter(substitute(&self.filter, client_id, username.unwrap_or("")).into())
    }
}

fn substitute(filter: &str, client_id: &str, username: &str) -> String {
    let mut out = String::with_capacity(filter.len() + 16);
    let mut rest = filter;
    while let Some(pos) = rest.find('%') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('c') {
            out.push_str(client_id);
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('u') {
            out.push_str(username);
            rest = tail;
        } else {
            out.push('%');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Access rules from an ACL file (format in the module doc).
#[derive(Debug, Clone)]
pub struct Acl {
    rules: Vec<Rule>,
    no_match: AclVerdict,
    /// Some subscribe rule denies: deliveries are checked per topic.
    read_checks: bool,
}

impl Acl {
    /// Read an ACL file; errors name `file:line`.
    pub fn load(path: &Path, no_match: AclVerdict) -> Result<Acl, AuthError> {
        Acl::parse_str(&read(path)?, &path.display().to_string(), no_match)
    }

    /// Parse ACL text; `origin` stands for the file name in errors.
    pub fn parse_str(text: &str, origin: &str, no_match: AclVerdict) -> Result<Acl, AuthError> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let rule = parse_rule(line).map_err(|problem| AuthError::Parse {
                origin: origin.to_string(),
                line: i + 1,
                problem,
            })?;
            rules.push(rule);
        }
        let read_checks = rules.iter().any(|r| r.subscribe && r.verdict == AclVerdict::Deny);
        Ok(Acl { rules, no_match, read_checks })
    }

    /// Whether `client_id` (with `username`, `None` = anonymous) may publish to the topic
    /// name / subscribe to the filter `topic_or_filter`.
    pub fn check(&self, client_id: &str, username: Option<&str>, action: AclAction, topic_or_filter: &str) -> bool {
        let target = match (action, parse_shared(topic_or_filter)) {
            (AclAction::Subscribe, Some(Ok((_, inner)))) => inner,
            _ => topic_or_filter,
        };
        let applies = |r: &Rule| match action {
            AclAction::Publish => r.publish,
            AclAction::Subscribe => r.subscribe,
        };
        self.first_match(client_id, username, applies, |rule, filter| {
            if rule.eq {
                filter == target
            } else {
                match action {
                    AclAction::Publish => matches(filter, target),
                    AclAction::Subscribe => covers(filter, target),
                }
            }
        })
    }

    /// Whether deliveries need `may_read` (a subscription allowed as written can still reach
    /// denied topics only when some subscribe rule denies).
    pub fn checks_reads(&self) -> bool {
        self.read_checks
    }

    /// Whether a message on `topic` may be delivered to this subscriber: the subscribe rules,
    /// first match wins, matched against the topic name (an `eq` rule as a filter).
    pub fn may_read(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool {
        self.first_match(client_id, username, |r| r.subscribe, |_, filter| matches(filter, topic))
    }

    /// The verdict of the first rule that `applies`, names this client and `hit`s with its
    /// expanded filter; `no_match` when none does. A deny rule whose substitution is unsafe
    /// matches (fail closed); an allow rule then does not.
    fn first_match(
        &self,
        client_id: &str,
        username: Option<&str>,
        applies: impl Fn(&Rule) -> bool,
        hit: impl Fn(&Rule, &str) -> bool,
    ) -> bool {
        for rule in self.rules.iter().filter(|r| applies(r)) {
            if !who_matches(&rule.who, client_id, username) {
                continue;
            }
            let deny = rule.verdict == AclVerdict::Deny;
            let filter = match rule.expand(client_id, username) {
                Expanded::Filter(f) => f,
                Expanded::Skip => continue,
                Expanded::Unsafe if deny => return false,
                Expanded::Unsafe => continue,
            };
            if hit(rule, &filter) {
                return !deny;
            }
        }
        self.no_match == AclVerdict::Allow
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

fn who_matches(who: &Who, client_id: &str, username: Option<&str>) -> bool {
    match who {
        Who::All => true,
        Who::Anonymous => username.is_none(),
        Who::User(u) => username == Some(u.as_str()),
        Who::Client(c) => client_id == c,
    }
}

/// Split off the first whitespace-separated word.
fn word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

fn parse_rule(line: &str) -> Result<Rule, String> {
    const USAGE: &str = "expected `allow|deny <who> publish|subscribe|all <topic filter>`";
    let (verdict, rest) = word(line);
    let verdict = match verdict {
        "allow" => AclVerdict::Allow,
        "deny" => AclVerdict::Deny,
        other => return Err(format!("expected allow or deny, found {other:?}; {USAGE}")),
    };
    let (who, rest) = word(rest);
    let who = match who {
        "all" => Who::All,
        "anonymous" => Who::Anonymous,
        "" => return Err(format!("missing who; {USAGE}")),
        other => match other.split_once(':') {
            Some(("user", name)) if !name.is_empty() => Who::User(name.to_string()),
            Some(("client", id)) if !id.is_empty() => Who::Client(id.to_string()),
            _ => return Err(format!("expected all, anonymous, user:<name> or client:<id>, found {other:?}")),
        },
    };
    let (action, rest) = word(rest);
    let (publish, subscribe) = match action {
        "publish" => (true, false),
        "subscribe" => (false, true),
        "all" => (true, true),
        "" => return Err(format!("missing action; {USAGE}")),
        other => return Err(format!("expected publish, subscribe or all, found {other:?}")),
    };
    let mut filter = rest.trim();
    let mut eq = false;
    if let Some(f) = filter.strip_prefix("eq ").or_else(|| filter.strip_prefix("eq\t")) {
        eq = true;
        filter = f.trim_start();
    }
    if filter.is_empty() {
        return Err(format!("missing topic filter; {USAGE}"));
    }
    if filter.split('/').any(|level| level != "%c" && level != "%u" && (level.contains("%c") || level.contains("%u"))) {
        return Err(format!("invalid topic filter {filter:?}: %c and %u must fill a whole topic level"));
    }
    if !valid_filter(&substitute(filter, "c", "u")) {
        return Err(format!("invalid topic filter {filter:?}"));
    }
    Ok(Rule { verdict, who, publish, subscribe, eq, filter: filter.to_string() })
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
