//! Environment overrides: `STRAIT_A__B=value` sets key `a.b`.

use super::*;

// ------------------------------------------------------------------------------------------
// Environment overrides
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

#[derive(Debug)]
pub(super) struct Override {
    pub(super) var: String,
    /// the key path as written in errors (`cluster.links[0].name`)
    pub(super) key: String,
    pub(super) path: Vec<Seg>,
    pub(super) value: Node,
}

pub(super) fn parse_overrides(env: &[(String, String)]) -> Result<Vec<Override>, ConfigError> {
    let mut out = Vec::new();
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if !rest.contains("__") {
            continue;
        }
        let names: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        let (key, path) = check_override_path(&names).map_err(|(key, problem)| ConfigError {
            origin: format!("${var}"),
            key,
            problem,
        })?;
        out.push(Override { var: var.clone(), key, path, value: parse_env_value(raw) });
    }
    // Deterministic order; a variable for a parent key applies before those for its children.
    out.sort_by(|a, b| a.var.cmp(&b.var));
    Ok(out)
}

/// Walk the schema along `names`; returns the printable key and typed segments.
pub(super) fn check_override_path(names: &[String]) -> Result<(String, Vec<Seg>), (String, String)> {
    let mut schema: &Schema = &ROOT;
    let mut key = String::new();
    let mut segs = Vec::with_capacity(names.len());
    for name in names {
        if name.is_empty() {
            return Err((key, "empty level in variable name (`____`?)".to_string()));
        }
        match schema {
            Schema::Obj(fields) => match fields.iter().find(|(k, _)| k == name) {
                Some((_, next)) => {
                    key = join(&key, name);
                    segs.push(Seg::Key(name.clone()));
                    schema = next;
                }
                None => {
                    return Err((join(&key, name), format!("unknown key (expected one of: {})", schema_keys(schema))))
                }
            },
            Schema::Map(inner) => {
                key = join(&key, name);
                segs.push(Seg::Key(name.clone()));
                schema = inner;
            }
            Schema::List(inner) => {
                let Ok(i) = name.parse::<usize>() else {
                    return Err((join(&key, name), "expected a list index (0, 1, ...) at this level".to_string()));
                };
                key = index(&key, i);
                segs.push(Seg::Index(i));
                schema = inner;
            }
            Schema::Leaf => {
                return Err((key, format!("a single value; it has no key {name:?}")));
            }
        }
    }
    Ok((key, segs))
}

/// An override value: a HOCON value when it looks like one and parses, else the raw string.
pub(super) fn parse_env_value(raw: &str) -> Node {
    let t = raw.trim();
    match t {
        "true" => return Node::Bool(true),
        "false" => return Node::Bool(false),
        "null" => return Node::Null,
        _ => {}
    }
    if !t.is_empty() && t.parse::<f64>().is_ok_and(f64::is_finite) {
        return Node::Num(t.to_string());
    }
    if t.starts_with(['[', '{', '"']) {
        let text = format!("v = {t}");
        if let Ok(cfg) = hocon::parse_with_env(&text, &HashMap::new()) {
            if let Some(node) = cfg.get("v").and_then(|v| Node::from_hocon(v, "v").ok()) {
                return node;
            }
        }
    }
    Node::Str(raw.to_string())
}

pub(super) fn set_path(node: &mut Node, path: &[Seg], value: Node) -> Result<(), String> {
    let Some((first, rest)) = path.split_first() else {
        merge_into(node, value);
        return Ok(());
    };
    match first {
        Seg::Key(k) => {
            if !matches!(node, Node::Obj(_)) {
                *node = Node::Obj(Vec::new());
            }
            let Node::Obj(entries) = node else {
                return Err("internal: not an object".to_string());
            };
            let pos = match entries.iter().position(|(n, _)| n == k) {
                Some(p) => p,
                None => {
                    entries.push((k.clone(), Node::Null));
                    entries.len() - 1
                }
            };
            match entries.get_mut(pos) {
                Some((_, child)) => set_path(child, rest, value),
                None => Err("internal: lost entry".to_string()),
            }
        }
        Seg::Index(i) => {
            if !matches!(node, Node::List(_)) {
                *node = Node::List(Vec::new());
            }
            let Node::List(items) = node else {
                return Err("internal: not a list".to_string());
            };
            if *i == items.len() {
                items.push(Node::Null);
            }
            let len = items.len();
            match items.get_mut(*i) {
                Some(child) => set_path(child, rest, value),
                None => Err(format!("list index {i} is past the end of the list ({len} elements)")),
            }
        }
    }
}

pub(super) fn merge_into(node: &mut Node, value: Node) {
    match (node, value) {
        (Node::Obj(existing), Node::Obj(new)) => {
            for (k, v) in new {
                match existing.iter_mut().find(|(n, _)| *n == k) {
                    Some((_, old)) => merge_into(old, v),
                    None => existing.push((k, v)),
                }
            }
        }
        (slot, value) => *slot = value,
    }
}
