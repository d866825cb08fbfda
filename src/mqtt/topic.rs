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

#[cfg(test)]
mod tests {
    use super::*;

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
