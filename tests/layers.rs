//! The node's modules depend one way: `node` (wiring) → `api` → `link` → `cluster` →
//! {`conn`, `listener`} → `broker` → {`auth`, `config`, `metrics`, `logging`} → `mqtt`, and
//! the Raft crate only below `cluster`. Calls back up go through traits the lower layer defines
//! (`broker::control`). This test reads every source file and fails on an import against the
//! grain, naming the file and the import.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What each top-level module may import from the crate.
fn allowed() -> BTreeMap<&'static str, &'static [&'static str]> {
    BTreeMap::from([
        ("mqtt", &[][..]),
        ("logging", &[][..]),
        ("metrics", &[][..]),
        ("config", &["mqtt"][..]),
        ("auth", &["config", "mqtt"][..]),
        ("broker", &["auth", "config", "metrics", "mqtt"][..]),
        ("conn", &["broker", "auth", "config", "metrics", "mqtt"][..]),
        ("listener", &["conn", "broker", "config", "metrics", "mqtt"][..]),
        ("cluster", &["broker", "config", "metrics", "mqtt"][..]),
        ("link", &["cluster", "broker", "auth", "config", "metrics", "mqtt"][..]),
        ("api", &["link", "cluster", "broker", "auth", "config", "logging", "metrics", "mqtt"][..]),
    ])
}

/// Modules that may use the Raft crate.
const RAFT_USERS: &[&str] = &["cluster", "node"];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `crate::x` paths in code (comments and strings are not code, but a doc link such as
/// [`crate::auth::Acl`] names no dependency either: lines starting with `//` are skipped).
fn crate_refs(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if name.is_empty() && after.starts_with('{') {
                // `use crate::{a, b::c}`: every top-level name in the braces.
                let inner: String = after[1..].chars().take_while(|c| *c != '}').collect();
                for part in inner.split(',') {
                    let top: String =
                        part.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    if !top.is_empty() {
                        out.push((n + 1, top));
                    }
                }
            }
            let len = name.len();
            if !name.is_empty() {
                out.push((n + 1, name));
            }
            rest = &after[len..];
        }
    }
    out
}

#[test]
fn modules_depend_one_way() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let allowed = allowed();
    let mut wrong = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&root).expect("under src");
        let module = rel.components().next().and_then(|c| c.as_os_str().to_str()).unwrap_or("");
        let module = module.trim_end_matches(".rs");
        let text = std::fs::read_to_string(f).expect("read source");
        if let Some(ok) = allowed.get(module) {
            for (line, dep) in crate_refs(&text) {
                if dep != module && !ok.contains(&dep.as_str()) {
                    wrong.push(format!("src/{}:{line}: {module} imports crate::{dep}", rel.display()));
                }
            }
        }
        if !RAFT_USERS.contains(&module) {
            for (n, line) in text.lines().enumerate() {
                if !line.trim_start().starts_with("//") && line.contains("strait_raft") {
                    wrong.push(format!("src/{}:{}: {module} uses the Raft crate", rel.display(), n + 1));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layering (node → api → link → cluster → conn/listener → broker → auth/config/metrics → mqtt):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_checker_sees_imports() {
    let refs = crate_refs("use crate::{broker::Broker, mqtt::topic};\n// crate::api in a comment\nlet x = crate::cluster::Command::Barrier;");
    let names: Vec<&str> = refs.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["broker", "mqtt", "cluster"]);
}

/// No source file outside tests grows past 600 lines (the node's and the Raft crate's).
#[test]
fn source_files_stay_small() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    sources(&root.join("raft/src"), &mut files);
    let big: Vec<String> = files
        .iter()
        .filter(|f| !f.to_string_lossy().contains("tests"))
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).ok()?.lines().count();
            (n > 600).then(|| format!("{}: {n} lines", f.strip_prefix(root).unwrap_or(f).display()))
        })
        .collect();
    assert!(big.is_empty(), "source files over 600 lines (split them):\n{}", big.join("\n"));
}
