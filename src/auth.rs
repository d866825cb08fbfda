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
//! Matching: for publish, the rule's filter must match the topic name. For subscribe, an
//! `allow` rule matches when its filter covers the requested filter (every topic the
//! subscription can receive is allowed); a `deny` rule matches when its filter intersects the
//! requested filter, so `deny all subscribe secret/#` also denies subscribing to `#`. Filters
//! starting with a wildcard do not reach topics starting with `$` (MQTT-4.7.2-1). A shared
//! subscription `$share/<group>/<filter>` is checked as `<filter>`.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use sha2::{Digest, Sha512};

use crate::config::AclVerdict;
use crate::mqtt::topic::{covers, intersects, matches, parse_shared, valid_filter};

/// Iterations used by [`hash_password`] (mosquitto_passwd's default).
pub const HASH_ITERATIONS: u32 = 101;
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
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Users and password hashes from a mosquitto-format password file.
#[derive(Clone)]
pub struct PasswordFile {
    users: HashMap<String, Hash>,
    /// verified against when the user is unknown, so that timing does not reveal usernames
    dummy: Hash,
}

impl fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile").field("users", &self.users.len()).finish_non_exhaustive()
    }
}

impl PasswordFile {
    /// Read a password file; errors name `file:line`.
    pub fn load(path: &Path) -> Result<PasswordFile, AuthError> {
        PasswordFile::parse_str(&read(path)?, &path.display().to_string())
    }

    /// Parse password-file text; `origin` stands for the file name in errors.
    pub fn parse_str(text: &str, origin: &str) -> Result<PasswordFile, AuthError> {
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
            if let Some(prev) = first_lines.insert(user.to_string(), line) {
                return Err(fail(format!("duplicate user {user:?} (first on line {prev})")));
            }
            users.insert(user.to_string(), hash);
        }
        Ok(PasswordFile {
            users,
            dummy: Hash::Pbkdf2 { iterations: HASH_ITERATIONS, salt: vec![0; SALT_LEN], key: vec![0; KEY_LEN] },
        })
    }

    /// Whether `username` exists and `password` is theirs (constant-time compare).
    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        match self.users.get(username) {
            Some(hash) => hash.matches(password),
            None => {
                let _ = self.dummy.matches(password);
                false
            }
        }
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

/// Whether some topic can match both filters, honouring the `$` rule (a filter starting with
/// a wildcard never reaches `$` topics).
fn overlaps(a: &str, b: &str) -> bool {
    let wild = |f: &str| f.starts_with(['+', '#']);
    let dollar = |f: &str| f.starts_with('$');
    if (wild(a) && dollar(b)) || (wild(b) && dollar(a)) {
        return false;
    }
    intersects(a, b)
}

/// Access rules from an ACL file (format in the module doc).
#[derive(Debug, Clone)]
pub struct Acl {
    rules: Vec<Rule>,
    no_match: AclVerdict,
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
        Ok(Acl { rules, no_match })
    }

    /// Whether `client_id` (with `username`, `None` = anonymous) may publish to the topic
    /// name / subscribe to the filter `topic_or_filter`.
    pub fn check(&self, client_id: &str, username: Option<&str>, action: AclAction, topic_or_filter: &str) -> bool {
        let target = match (action, parse_shared(topic_or_filter)) {
            (AclAction::Subscribe, Some(Ok((_, inner)))) => inner,
            _ => topic_or_filter,
        };
        for rule in &self.rules {
            let applies = match action {
                AclAction::Publish => rule.publish,
                AclAction::Subscribe => rule.subscribe,
            };
            if !applies || !who_matches(&rule.who, client_id, username) {
                continue;
            }
            let deny = rule.verdict == AclVerdict::Deny;
            let filter = match rule.expand(client_id, username) {
                Expanded::Filter(f) => f,
                Expanded::Skip => continue,
                Expanded::Unsafe if deny => return false,
                Expanded::Unsafe => continue,
            };
            let hit = if rule.eq {
                filter == target
            } else {
                match action {
                    AclAction::Publish => matches(&filter, target),
                    AclAction::Subscribe if deny => overlaps(&filter, target),
                    AclAction::Subscribe => covers(&filter, target),
                }
            };
            if hit {
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
mod tests {
    use super::*;
    use AclAction::{Publish, Subscribe};

    /// Written by `mosquitto_passwd` 2.0.11 (also in tests/fixtures/auth/passwd).
    const ALICE: &str = "alice:$7$101$CQ5TpMvudbH9QknE$N0L+CDF+Hefo7KCawCx/LJMyOKFXGx5kYaiMgVrpA+y+nUQjwZLv7NMSpv9hNRVtMXjOX9eDiVxxC2L23w5kLA==";
    const BOB: &str = "bob:$7$101$Joe0NEAHsy7Q0iGH$AEyNaZX3qy+5cHILYrZ96FPORPh3Jyjmbo+dgwsc9z09jxnJpgHIDy058SazzIGvdPVVXIP1Mz/YLPiwt91BKA==";
    const CAROL_SHA512: &str = "carol:$6$LB7rrBjPuSHawyEh$kJ/qfrMbkWwaV98QTElLYQUc8hMjvnXLbSFpOiRDvrr/H88GXMWhUXhaMIdBBTJAMVFSnONKtRXvKzuzaiOXDg==";

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/auth").join(name)
    }

    #[test]
    fn mosquitto_lines_verify() {
        let text = format!("# users\n\n{ALICE}\n{BOB}\n  {CAROL_SHA512}  \n");
        let pw = PasswordFile::parse_str(&text, "pw").unwrap();
        assert_eq!(pw.len(), 3);
        assert!(pw.verify("alice", b"secret123"));
        assert!(!pw.verify("alice", b"secret124"));
        assert!(!pw.verify("alice", b""));
        assert!(pw.verify("bob", b"p@ss:w0rd#"));
        assert!(pw.verify("carol", b"hunter2"));
        assert!(!pw.verify("carol", b"hunter3"));
        assert!(!pw.verify("mallory", b"secret123"));
        assert!(!pw.verify("", b""));
    }

    #[test]
    fn fixture_file_loads() {
        let pw = PasswordFile::load(&fixture("passwd")).unwrap();
        assert_eq!(pw.len(), 4);
        assert!(pw.verify("dave", b""));
        assert!(pw.verify("carol", b"hunter2"));
        let e = PasswordFile::load(Path::new("/nonexistent/pw")).unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/pw: "), "{e}");
    }

    #[test]
    fn hash_password_roundtrip() {
        let value = hash_password("s3cret");
        assert!(value.starts_with("$7$101$"), "{value}");
        let parts: Vec<&str> = value.split('$').collect();
        assert_eq!(B64.decode(parts[3]).unwrap().len(), SALT_LEN);
        assert_eq!(B64.decode(parts[4]).unwrap().len(), KEY_LEN);
        let pw = PasswordFile::parse_str(&format!("u:{value}"), "pw").unwrap();
        assert!(pw.verify("u", b"s3cret"));
        assert!(!pw.verify("u", b"s3cre"));
        assert_ne!(hash_password("s3cret"), value, "salt must be random");
        // deterministic form matches mosquitto's line for alice
        let salt = B64.decode("CQ5TpMvudbH9QknE").unwrap();
        assert_eq!(format!("alice:{}", hash_with(b"secret123", &salt, 101)), ALICE);
    }

    #[test]
    fn password_file_errors_name_line() {
        for (text, line, needle) in [
            ("alice\n", 1, "expected username:hash"),
            ("# c\nalice:plain\n", 2, "unsupported password hash"),
            (&format!("{ALICE}\n{ALICE}\n"), 2, "duplicate user \"alice\" (first on line 1)"),
            ("x:$7$abc$AAAA$AAAA\n", 1, "invalid iteration count"),
            ("x:$7$101$!!$AAAA\n", 1, "invalid base64"),
            ("x:$6$AAAA$AAAA\n", 1, "hash is 3 bytes"),
            (":$6$AAAA$AAAA\n", 1, "empty username"),
        ] {
            let e = PasswordFile::parse_str(text, "pw").unwrap_err().to_string();
            assert!(e.starts_with(&format!("pw:{line}: ")), "{e}");
            assert!(e.contains(needle), "{e}");
        }
    }

    /// Against the real tool, when it is installed.
    #[test]
    fn live_mosquitto_passwd() {
        let dir = std::env::temp_dir().join(format!("strait-auth-test-{}", std::process::id()));
        if std::fs::create_dir_all(&dir).is_err() {
            return;
        }
        let file = dir.join("passwd");
        let run = |args: &[&str]| {
            std::process::Command::new("mosquitto_passwd")
                .args(args)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        let f = file.to_string_lossy().to_string();
        if !run(&["-c", "-b", &f, "user", "pa ss:wörd"]) {
            eprintln!("mosquitto_passwd not available; skipping live test");
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
        assert!(run(&["-H", "sha512", "-b", &f, "old", "legacy"]));
        let pw = PasswordFile::load(&file).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(pw.verify("user", "pa ss:wörd".as_bytes()));
        assert!(!pw.verify("user", b"pass"));
        assert!(pw.verify("old", b"legacy"));
    }

    const ACL: &str = r#"
# test rules
deny   all            subscribe  secret/#
allow  user:admin     all        #
allow  all            publish    devices/%c/up/#
allow  all            subscribe  devices/%c/down/#
allow  all            all        users/%u/#
deny   all            publish    users/%u/readonly
allow  client:mon     subscribe  eq metrics/#
deny   anonymous      all        #
allow  all            subscribe  public/#
"#;

    fn acl(no_match: AclVerdict) -> Acl {
        Acl::parse_str(ACL, "acl", no_match).unwrap()
    }

    #[test]
    fn deny_intersection() {
        let a = acl(AclVerdict::Allow);
        // admin is allowed `#` by rule 2, but rule 1 denies anything overlapping secret/#
        assert!(!a.check("c1", Some("admin"), Subscribe, "#"));
        assert!(!a.check("c1", Some("admin"), Subscribe, "+/x"));
        assert!(!a.check("c1", Some("admin"), Subscribe, "secret/a"));
        assert!(a.check("c1", Some("admin"), Subscribe, "other/#"));
        assert!(a.check("c1", Some("admin"), Publish, "secret/a"));
        // shared subscriptions are checked by their inner filter
        assert!(!a.check("c1", Some("admin"), Subscribe, "$share/g/#"));
        assert!(a.check("c1", Some("admin"), Subscribe, "$share/g/other/x"));
    }

    #[test]
    fn substitution() {
        let a = acl(AclVerdict::Deny);
        assert!(a.check("dev1", None, Publish, "devices/dev1/up/temp"));
        assert!(!a.check("dev1", None, Publish, "devices/dev2/up/temp"));
        assert!(a.check("dev1", Some("u"), Subscribe, "devices/dev1/down/#"));
        assert!(a.check("dev1", Some("u"), Subscribe, "devices/dev1/down/+"));
        assert!(!a.check("dev1", Some("u"), Subscribe, "devices/+/down/#"));
        assert!(a.check("c", Some("bob"), Publish, "users/bob/inbox"));
        assert!(a.check("c", Some("bob"), Subscribe, "users/bob/#"));
        assert!(!a.check("c", Some("bob"), Publish, "users/alice/inbox"));
        // %u never matches an anonymous client (and the deny-anonymous rule catches it)
        assert!(!a.check("c", None, Publish, "users//inbox"));
        assert!(!a.check("c", None, Subscribe, "users/#"));
        // a client id that would widen the filter does not get the allow
        assert!(!a.check("a/b", None, Publish, "devices/a/b/up/x"));
        assert!(!a.check("+", None, Publish, "devices/x/up/x"));
        // ...and a deny rule with an unsafe value fails closed
        assert!(!a.check("c", Some("b/o"), Publish, "users/b/o/x"));
        // first match wins: rule 5 allows before rule 6 denies
        assert!(a.check("c", Some("bob"), Publish, "users/bob/readonly"));
    }

    #[test]
    fn who_eq_and_no_match() {
        let a = acl(AclVerdict::Deny);
        assert!(a.check("mon", Some("m"), Subscribe, "metrics/#"));
        assert!(!a.check("mon", Some("m"), Subscribe, "metrics/cpu"));
        assert!(!a.check("other", Some("m"), Subscribe, "metrics/#"));
        assert!(!a.check("anon", None, Subscribe, "public/#"));
        assert!(a.check("c", Some("someone"), Subscribe, "public/#"));
        assert!(a.check("c", Some("someone"), Subscribe, "public/a/b"));
        // no rule matches → no_match
        assert!(!a.check("c", Some("someone"), Publish, "misc"));
        let allow = acl(AclVerdict::Allow);
        assert!(allow.check("c", Some("someone"), Publish, "misc"));
        assert!(!allow.check("c", None, Publish, "misc"));
        // `$` topics are not reached by wildcard-first filters
        let a = Acl::parse_str("deny all subscribe #\n", "acl", AclVerdict::Allow).unwrap();
        assert!(a.check("c", None, Subscribe, "$SYS/#"));
        assert!(!a.check("c", None, Subscribe, "x"));
        let a = Acl::parse_str("deny all subscribe $SYS/#\n", "acl", AclVerdict::Allow).unwrap();
        assert!(a.check("c", None, Subscribe, "#"));
        assert!(!a.check("c", None, Subscribe, "$SYS/+"));
        assert!(Acl::load(&fixture("acl"), AclVerdict::Deny).unwrap().len() > 3);
    }

    #[test]
    fn acl_errors_name_line() {
        for (text, line, needle) in [
            ("allow all publish a\npermit all publish a\n", 2, "expected allow or deny"),
            ("allow who publish a\n", 1, "expected all, anonymous, user:<name>"),
            ("allow user: publish a\n", 1, "expected all, anonymous"),
            ("allow all read a\n", 1, "expected publish, subscribe or all"),
            ("allow all publish\n", 1, "missing topic filter"),
            ("\n\n# c\nallow all publish a/#/b\n", 4, "invalid topic filter"),
            ("allow all publish a%c\n", 1, "must fill a whole topic level"),
            ("deny\n", 1, "missing who"),
        ] {
            let e = Acl::parse_str(text, "acl", AclVerdict::Allow).unwrap_err().to_string();
            assert!(e.starts_with(&format!("acl:{line}: ")), "{e}");
            assert!(e.contains(needle), "{e}");
        }
        let e = Acl::load(Path::new("/nonexistent/acl"), AclVerdict::Allow).unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/acl: "), "{e}");
    }
}
