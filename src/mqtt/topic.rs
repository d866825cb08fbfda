//! Topic names and filters: validation, matching, shared-subscription parsing.
//!
//! Pure functions, called by the codec-facing connection task (validation) and by the router
//! and ACL (matching).

/// A topic name a client may publish to: non-empty, no wildcards, no NUL.
pub fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= 65535 && !topic.contains(['+', '#', '\0'])
}

/// A topic filter: non-empty, no NUL, `+` alone in its level, `#` alone in the last level.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > 65535 || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return false;
        }
        if level.contains('+') && level != "+" {
            return false;
        }
    }
    true
}

/// Whether `filter` matches `topic`. Topics starting with `$` are not matched by filters that
/// start with a wildcard (MQTT-4.7.2-1).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// `$share/{group}/{filter}` → `(group, filter)`. `None` when `filter` is not a shared
/// subscription; `Some(Err)` when it is one but malformed (empty group, wildcard in the group,
/// missing or invalid filter).
pub fn parse_shared(filter: &str) -> Option<Result<(&str, &str), &'static str>> {
    let rest = filter.strip_prefix("$share/")?;
    let Some((group, inner)) = rest.split_once('/') else {
        return Some(Err("shared subscription without a topic filter"));
    };
    if group.is_empty() || group.contains(['+', '#']) {
        return Some(Err("invalid shared subscription group name"));
    }
    if !valid_filter(inner) {
        return Some(Err("invalid topic filter in shared subscription"));
    }
    Some(Ok((group, inner)))
}

/// Whether every topic matched by `inner` is also matched by `outer`.
pub fn covers(outer: &str, inner: &str) -> bool {
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return !(inner.starts_with('$') && outer == "#"),
            (Some("+"), Some(il)) if il != "#" => {}
            (Some(ol), Some(il)) if ol == il => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some topic could match both filters.
pub fn intersects(a: &str, b: &str) -> bool {
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(p), Some(q)) if p == q => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The filter matching exactly the topics that both filters match, None when no topic matches
/// both (`linked/#` ∩ `#` = `linked/#`, `a/+` ∩ `+/b` = `a/b`, `a/#` ∩ `a` = `a`). Wildcards
/// in the first level do not match topics that start with `$`.
pub fn intersection(a: &str, b: &str) -> Option<String> {
    let x: Vec<&str> = a.split('/').collect();
    let y: Vec<&str> = b.split('/').collect();
    let wild = |l: &str| l == "+" || l == "#";
    if (x[0].starts_with('$') && wild(y[0])) || (y[0].starts_with('$') && wild(x[0])) {
        return None;
    }
    let mut out: Vec<&str> = Vec::with_capacity(x.len().max(y.len()));
    for i in 0.. {
        match (x.get(i).copied(), y.get(i).copied()) {
            (Some("#"), _) => {
                out.extend_from_slice(y.get(i..).unwrap_or_default());
                break;
            }
            (_, Some("#")) => {
                out.extend_from_slice(x.get(i..).unwrap_or_default());
                break;
            }
            (Some("+"), Some(q)) => out.push(q),
            (Some(p), Some("+")) => out.push(p),
            (Some(p), Some(q)) if p == q => out.push(p),
            (None, None) => break,
            _ => return None,
        }
    }
    Some(out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intersections() {
        let cases = [
            ("linked/#", "#", Some("linked/#")),
            ("#", "linked/#", Some("linked/#")),
            ("#", "#", Some("#")),
            ("a/+", "+/b", Some("a/b")),
            ("a/#", "a", Some("a")),
            ("a/#", "a/+/c", Some("a/+/c")),
            ("+/#", "#", Some("+/#")),
            ("a/+/c", "a/b/+", Some("a/b/c")),
            ("a/b", "a/c", None),
            ("a/b", "a/b/c", None),
            ("a/+", "a", None),
            ("linked/#", "other/#", None),
            ("#", "$SYS/x", None),
            ("+/x", "$SYS/x", None),
            ("$SYS/#", "$SYS/+", Some("$SYS/+")),
            ("sensors/+/temp", "sensors/#", Some("sensors/+/temp")),
        ];
        for (a, b, want) in cases {
            assert_eq!(intersection(a, b).as_deref(), want, "{a} ∩ {b}");
            if let Some(w) = want {
                // What the intersection matches, both match.
                for t in ["a", "a/b", "a/b/c", "linked/1", "x/b", "sensors/k/temp", "$SYS/x", "other/1"] {
                    if matches(w, t) {
                        assert!(matches(a, t) && matches(b, t), "{t} matched by {w} but not by both {a}, {b}");
                    } else {
                        assert!(!(matches(a, t) && matches(b, t)), "{t} matched by {a} and {b} but not {w}");
                    }
                }
            }
        }
    }

    #[test]
    fn filter_validation() {
        for ok in ["a", "a/b", "#", "+", "a/+/c", "a/#", "+/+", "/", "a//b", "$SYS/#"] {
            assert!(valid_filter(ok), "{ok} should be valid");
        }
        for bad in ["", "a#", "a/#/b", "a+", "a/b+/c", "#/a", "a\0b"] {
            assert!(!valid_filter(bad), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn topic_validation() {
        assert!(valid_topic_name("a/b"));
        assert!(valid_topic_name("/"));
        assert!(!valid_topic_name(""));
        assert!(!valid_topic_name("a/+"));
        assert!(!valid_topic_name("a/#"));
    }

    #[test]
    fn matching() {
        assert!(matches("a/b", "a/b"));
        assert!(matches("a/+", "a/b"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(matches("+/+", "/x"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(matches("a//b", "a//b"));
        assert!(matches("+", ""), "an empty level matches +");
    }

    #[test]
    fn shared() {
        assert_eq!(parse_shared("a/b"), None);
        assert_eq!(parse_shared("$share/g/a/#"), Some(Ok(("g", "a/#"))));
        assert!(matches!(parse_shared("$share/g"), Some(Err(_))));
        assert!(matches!(parse_shared("$share//a"), Some(Err(_))));
        assert!(matches!(parse_shared("$share/g+/a"), Some(Err(_))));
        assert!(matches!(parse_shared("$share/g/a#"), Some(Err(_))));
    }

    #[test]
    fn covering_and_intersection() {
        assert!(covers("#", "a/b"));
        assert!(covers("a/#", "a/+/c"));
        assert!(covers("a/+", "a/b"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/b", "a/+"));
        assert!(intersects("a/+", "+/b"));
        assert!(intersects("a/#", "a"));
        assert!(!intersects("a/b", "a/c"));
        assert!(!intersects("a/b", "a/b/c"));
    }
}
