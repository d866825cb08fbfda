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
    let pw = PasswordFile::parse_str(&text, "pw", true).unwrap();
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
fn sha512_lines_are_refused_unless_allowed() {
    let e = PasswordFile::parse_str(CAROL_SHA512, "pw", false).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.starts_with("pw:1: ") && e.contains("allow_sha512_hashes"), "{e}");
    let pw = PasswordFile::parse_str(CAROL_SHA512, "pw", true).unwrap();
    assert!(pw.verify("carol", b"hunter2"));
    assert!(pw.is_cached("carol", b"hunter2"), "a success is remembered");
    assert!(pw.verify("carol", b"hunter2"));
    assert!(!pw.verify("carol", b"hunter3"), "another password is checked in full");
}

#[test]
fn fixture_file_loads() {
    let pw = PasswordFile::load(&fixture("passwd"), true).unwrap();
    assert_eq!(pw.len(), 4);
    assert!(pw.verify("dave", b""));
    assert!(pw.verify("carol", b"hunter2"));
    let e = PasswordFile::load(Path::new("/nonexistent/pw"), false).unwrap_err();
    assert!(e.to_string().starts_with("/nonexistent/pw: "), "{e}");
}

#[test]
fn hash_password_roundtrip() {
    let value = hash_password("s3cret");
    assert!(value.starts_with("$7$100000$"), "{value}");
    let parts: Vec<&str> = value.split('$').collect();
    assert_eq!(B64.decode(parts[3]).unwrap().len(), SALT_LEN);
    assert_eq!(B64.decode(parts[4]).unwrap().len(), KEY_LEN);
    let pw = PasswordFile::parse_str(&format!("u:{value}"), "pw", false).unwrap();
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
        let e = PasswordFile::parse_str(text, "pw", true).unwrap_err().to_string();
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
        std::process::Command::new("mosquitto_passwd").args(args).output().map(|o| o.status.success()).unwrap_or(false)
    };
    let f = file.to_string_lossy().to_string();
    if !run(&["-c", "-b", &f, "user", "pa ss:wörd"]) {
        eprintln!("mosquitto_passwd not available; skipping live test");
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    assert!(run(&["-H", "sha512", "-b", &f, "old", "legacy"]));
    let pw = PasswordFile::load(&file, true).unwrap();
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
fn filters_as_written_and_reads_per_topic() {
    let a = acl(AclVerdict::Allow);
    // admin may subscribe to `#` (rule 1 covers only what is under secret/), but reads
    // nothing under secret/: rule 1 is checked per delivered topic
    assert!(a.check("c1", Some("admin"), Subscribe, "#"));
    assert!(a.check("c1", Some("admin"), Subscribe, "+/x"));
    assert!(!a.check("c1", Some("admin"), Subscribe, "secret/a"));
    assert!(!a.check("c1", Some("admin"), Subscribe, "secret/#"));
    assert!(a.check("c1", Some("admin"), Subscribe, "other/#"));
    assert!(a.checks_reads());
    assert!(!a.may_read("c1", Some("admin"), "secret/a"));
    assert!(a.may_read("c1", Some("admin"), "other/a"));
    assert!(a.may_read("mon", Some("m"), "metrics/cpu"), "an eq rule reads as a filter");
    assert!(!Acl::parse_str("allow all all #\n", "acl", AclVerdict::Deny).unwrap().checks_reads());
    assert!(a.check("c1", Some("admin"), Publish, "secret/a"));
    // shared subscriptions are checked by their inner filter
    assert!(!a.check("c1", Some("admin"), Subscribe, "$share/g/secret/#"));
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
    assert!(a.may_read("c", None, "$SYS/x") && !a.may_read("c", None, "x"));
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
