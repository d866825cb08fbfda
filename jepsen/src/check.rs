//! Checkers over a recorded history. Each checker returns a [`Verdict`]; [`check_all`] runs them
//! all. Every checker is linear or `n log n` in the history size (hash maps, one pass or two).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::history::{pair_ops, sorted_ops, Kind, Op, Pair, Phase, F};

/// How many offending ops a verdict keeps.
const MAX_OFFENDING: usize = 20;
/// How many violations a summary spells out.
const MAX_IN_SUMMARY: usize = 5;
/// A minority node may still acknowledge this long after it was cut off (leader lease).
const MINORITY_GRACE_US: u64 = 2_000_000;

/// The result of one checker.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub name: &'static str,
    pub ok: bool,
    pub summary: String,
    /// Ops showing the violation (at most 20 kept).
    pub offending: Vec<Op>,
    /// How many things the checker looked at (messages, deliveries, connects, nodes, reads...).
    pub checked: u64,
}

/// Tunables of the checkers.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    /// Every node must serve probes again within this long after the final heal.
    pub recovery_bound_ms: u64,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig { recovery_bound_ms: 30_000 }
    }
}

/// Runs every checker.
pub fn check_all(ops: &[Op], cfg: &CheckConfig) -> Vec<Verdict> {
    vec![
        lost(ops),
        phantom(ops),
        duplicates(ops),
        order(ops),
        session_resume(ops),
        minority_ack(ops),
        recovery(ops, cfg),
        retained(ops),
    ]
}

/// Collects violations: the first few descriptions and offending ops, and a count.
struct Violations {
    count: u64,
    notes: Vec<String>,
    offending: Vec<Op>,
}

impl Violations {
    fn new() -> Self {
        Violations { count: 0, notes: Vec::new(), offending: Vec::new() }
    }

    fn add(&mut self, note: impl FnOnce() -> String, ops: &[&Op]) {
        self.count += 1;
        if self.notes.len() < MAX_IN_SUMMARY {
            self.notes.push(note());
        }
        for op in ops {
            if self.offending.len() < MAX_OFFENDING && !self.offending.iter().any(|o| o.index == op.index) {
                self.offending.push((*op).clone());
            }
        }
    }

    fn notes(&self) -> String {
        let more = self.count.saturating_sub(self.notes.len() as u64);
        if more > 0 {
            format!("{}; ... {} more", self.notes.join("; "), more)
        } else {
            self.notes.join("; ")
        }
    }

    fn verdict(self, name: &'static str, checked: u64, ok_summary: String, what: &str) -> Verdict {
        if self.count == 0 {
            Verdict { name, ok: true, summary: ok_summary, offending: Vec::new(), checked }
        } else {
            let summary = format!("{} {what}: {}", self.count, self.notes());
            Verdict { name, ok: false, summary, offending: self.offending, checked }
        }
    }
}

/// MQTT topic-filter matching: `+` matches one level, `#` (last) the rest including the parent
/// level; topics starting with `$` are not matched by a filter starting with a wildcard.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
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

/// The final heal, after which the cluster must serve again.
#[derive(Debug, Clone, Copy)]
struct Heal {
    /// Index of the last nemesis `Stop` op; `None` without one (then every op is "after").
    index: Option<u64>,
    /// Its `mono_us`; the first op's without a nemesis stop.
    mono_us: u64,
}

impl Heal {
    fn precedes(&self, op: &Op) -> bool {
        self.index.is_none_or(|i| op.index > i)
    }
}

/// The last nemesis `Stop` op; without one, the first op. `None` for an empty history.
fn final_heal(sorted: &[&Op]) -> Option<Heal> {
    let last_stop = sorted
        .iter()
        .rev()
        .find(|o| matches!(&o.f, F::Nemesis { phase: Phase::Stop, .. }))
        .map(|o| Heal { index: Some(o.index), mono_us: o.mono_us });
    last_stop.or_else(|| sorted.first().map(|o| Heal { index: None, mono_us: o.mono_us }))
}

/// No acknowledged QoS ≥ 1 publish is lost for a persistent subscriber: every such publish
/// matching the subscriber's filter, invoked after its subscription was granted, is delivered
/// to it at least once. Persistent subscriber = a client whose connects were all `clean: false`
/// and that holds a granted (QoS ≥ 1) subscription.
///
/// Except what the broker says it dropped: a session's queue is bounded (`mqtt.max_mqueue_len`),
/// and a subscriber kept away long enough loses the overflow by design. Each `Dropped` record
/// (the broker's own count for that client, read at the end) excuses that many missing
/// messages of that client, no more; a client the broker reports no drops for must miss none.
pub fn lost(ops: &[Op]) -> Verdict {
    let sorted = sorted_ops(ops);
    let pairs = pair_ops(&sorted);

    // Persistent clients: connected with clean = false, never with clean = true.
    let mut clean_clients: HashSet<&str> = HashSet::new();
    let mut unclean_clients: HashSet<&str> = HashSet::new();
    let mut delivered: HashSet<(&str, &str)> = HashSet::new();
    let mut dropped: HashMap<&str, u64> = HashMap::new();
    for op in &sorted {
        match &op.f {
            F::Dropped { client_id, count } => {
                *dropped.entry(client_id).or_default() += count;
            }
            F::Connect { client_id, clean: true, .. } => {
                clean_clients.insert(client_id);
            }
            F::Connect { client_id, clean: false, .. } => {
                unclean_clients.insert(client_id);
            }
            F::Deliver { client_id, payload, .. } => {
                delivered.insert((client_id, payload));
            }
            _ => {}
        }
    }

    // (client, filter) -> index of the first granted subscription.
    let persistent = |c: &str| unclean_clients.contains(c) && !clean_clients.contains(c);
    let mut subs: HashMap<(&str, &str), u64> = HashMap::new();
    // topic -> acked QoS>=1 publishes (invoke index, invoke op), in invoke order.
    let mut by_topic: HashMap<&str, Vec<(u64, &Op)>> = HashMap::new();
    for p in &pairs {
        let Some(c) = p.completion.filter(|c| c.kind == Kind::Ok) else { continue };
        match (&p.invoke.f, &c.f) {
            (F::Subscribe { client_id, filter, .. }, F::Subscribe { qos: granted, .. })
                if (1..=2).contains(granted) && persistent(client_id) =>
            {
                subs.entry((client_id, filter)).or_insert(c.index);
            }
            (F::Publish { topic, qos, .. }, _) if *qos >= 1 => {
                by_topic.entry(topic).or_default().push((p.invoke.index, p.invoke));
            }
            _ => {}
        }
    }

    let mut topics: Vec<&str> = by_topic.keys().copied().collect();
    topics.sort_unstable();
    let mut subs: Vec<((&str, &str), u64)> = subs.into_iter().collect();
    subs.sort_unstable();

    // A message may match several filters of one client: check each (client, publish) once.
    let mut checked_pairs: HashSet<(&str, u64)> = HashSet::new();
    let mut missing: BTreeMap<&str, Vec<(&str, &str, &Op)>> = BTreeMap::new();
    for &((client, filter), sub_index) in &subs {
        for topic in &topics {
            if !topic_matches(filter, topic) {
                continue;
            }
            let list = &by_topic[topic];
            let from = list.partition_point(|(i, _)| *i <= sub_index);
            for &(idx, inv) in &list[from..] {
                if !checked_pairs.insert((client, idx)) {
                    continue;
                }
                let F::Publish { payload, .. } = &inv.f else { continue };
                if !delivered.contains(&(client, payload.as_str())) {
                    missing.entry(client).or_default().push((payload, topic, inv));
                }
            }
        }
    }
    let mut v = Violations::new();
    let mut excused = 0usize;
    for (client, list) in &missing {
        let allowed = dropped.get(client).copied().unwrap_or(0);
        if list.len() as u64 <= allowed {
            excused += list.len();
            continue;
        }
        for (payload, topic, inv) in list {
            v.add(
                || {
                    format!(
                        "{client} never received {payload} ({topic}; {} missing, broker reports {allowed} dropped)",
                        list.len()
                    )
                },
                &[inv],
            );
        }
    }
    let checked = checked_pairs.len() as u64;
    let reported: u64 = dropped.values().sum();
    let ok = format!(
        "{checked} acked (subscriber, message) pairs delivered ({} persistent subscriptions); {excused} missing, \
         within the {reported} drops the broker reported",
        subs.len()
    );
    v.verdict("lost", checked, ok, "acked messages lost")
}

/// Every delivered payload was published (invoked, any outcome) to the delivered topic.
pub fn phantom(ops: &[Op]) -> Verdict {
    let mut published: HashMap<&str, Vec<&str>> = HashMap::new();
    for op in ops {
        if let (Kind::Invoke, F::Publish { topic, payload, .. }) = (op.kind, &op.f) {
            published.entry(payload).or_default().push(topic);
        }
    }
    let mut v = Violations::new();
    let mut checked = 0u64;
    for op in sorted_ops(ops) {
        let F::Deliver { client_id, topic, payload, .. } = &op.f else { continue };
        checked += 1;
        match published.get(payload.as_str()) {
            None => v.add(|| format!("{client_id} received {payload} on {topic}, never published"), &[op]),
            Some(topics) if !topics.contains(&topic.as_str()) => {
                v.add(|| format!("{client_id} received {payload} on {topic}, published to {}", topics.join(",")), &[op])
            }
            Some(_) => {}
        }
    }
    v.verdict("phantom", checked, format!("{checked} deliveries all match a publish"), "phantom deliveries")
}

/// Exactly-once: a QoS 2 publish delivered at QoS 2 reaches each client at most once.
/// Other duplicates (QoS 1 redeliveries) are counted, not failed. Retained publishes are
/// excluded: the broker legitimately sends them again on every new subscription.
pub fn duplicates(ops: &[Op]) -> Verdict {
    let mut qos2: HashSet<&str> = HashSet::new();
    let mut retained: HashSet<&str> = HashSet::new();
    for op in ops {
        if let (Kind::Invoke, F::Publish { payload, qos, retain, .. }) = (op.kind, &op.f) {
            if *retain {
                retained.insert(payload);
            } else if *qos == 2 {
                qos2.insert(payload);
            }
        }
    }
    // (client, payload) of every delivery, and the first QoS 2 delivery of QoS 2 publishes.
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    let mut first_qos2: HashMap<(&str, &str), &Op> = HashMap::new();
    let mut v = Violations::new();
    let mut other_dups = 0u64;
    let mut checked = 0u64;
    for op in sorted_ops(ops) {
        let F::Deliver { client_id, payload, qos, .. } = &op.f else { continue };
        checked += 1;
        let key = (client_id.as_str(), payload.as_str());
        let again = !seen.insert(key);
        if *qos == 2 && qos2.contains(key.1) {
            if let Some(first) = first_qos2.get(&key) {
                v.add(|| format!("{client_id} received QoS 2 {payload} again (index {})", op.index), &[first, op]);
                continue;
            }
            first_qos2.insert(key, op);
        }
        if again {
            other_dups += 1;
        }
    }
    let ok = format!("{checked} deliveries, no QoS 2 duplicates, {other_dups} QoS 0/1 (or retained) duplicates");
    let mut verdict = v.verdict("duplicates", checked, ok, "QoS 2 duplicates");
    if !verdict.ok {
        verdict.summary = format!("{} ({other_dups} QoS 0/1 duplicates allowed)", verdict.summary);
    }
    verdict
}

/// Per (subscriber, publisher), in real-time order: if a publish completed `Ok` before another
/// publish of the same publisher was invoked, a subscriber that receives both receives the
/// first one first (first deliveries only; QoS 1 redeliveries do not count). A publish that
/// never completed (indeterminate) is concurrent with everything after its invoke, so it may
/// surface late without breaking order: MQTT orders the messages of one connection, and an
/// indeterminate publish's connection is gone.
pub fn order(ops: &[Op]) -> Verdict {
    let sorted = sorted_ops(ops);
    // payload -> (invoke index, index of the Ok completion when there is one)
    let mut publishes: HashMap<&str, (u64, Option<u64>)> = HashMap::new();
    for pair in pair_ops(&sorted) {
        if let F::Publish { payload, .. } = &pair.invoke.f {
            let ok = pair.completion.filter(|c| c.kind == Kind::Ok).map(|c| c.index);
            publishes.insert(payload, (pair.invoke.index, ok));
        }
    }
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    // (subscriber, publisher) -> (largest invoke index delivered so far, that delivery)
    let mut latest: HashMap<(&str, &str), (u64, &Op)> = HashMap::new();
    let mut v = Violations::new();
    let mut checked = 0u64;
    for op in &sorted {
        let F::Deliver { client_id, payload, publisher, seq, .. } = &op.f else { continue };
        if !seen.insert((client_id, payload)) {
            continue;
        }
        checked += 1;
        let Some(&(invoked, ok)) = publishes.get(payload.as_str()) else { continue };
        let key = (client_id.as_str(), publisher.as_str());
        match latest.get_mut(&key) {
            None => {
                latest.insert(key, (invoked, op));
            }
            Some((max_invoked, prev)) => {
                if let Some(done) = ok {
                    if done < *max_invoked {
                        let prev_payload = match &prev.f {
                            F::Deliver { payload, .. } => payload.clone(),
                            _ => String::new(),
                        };
                        v.add(
                            || format!("{client_id} got {publisher} seq {seq} after {prev_payload}, published after seq {seq} was acknowledged"),
                            &[prev, op],
                        );
                    }
                }
                if invoked > *max_invoked {
                    *max_invoked = invoked;
                    *prev = op;
                }
            }
        }
    }
    let ok = format!("{checked} first deliveries in publisher order ({} streams)", latest.len());
    v.verdict("order", checked, ok, "order inversions")
}

/// A client reconnecting with `clean: false` after it had a persistent session with a
/// subscription gets `session_present = true`. A clean connect in between discards the session.
pub fn session_resume(ops: &[Op]) -> Verdict {
    #[derive(Default)]
    struct State {
        /// Had an Ok clean=false connect (a persistent session exists).
        connected: bool,
        /// Had an Ok subscribe while the session existed.
        subscribed: bool,
    }
    let sorted = sorted_ops(ops);
    let mut states: HashMap<&str, State> = HashMap::new();
    let mut v = Violations::new();
    let mut checked = 0u64;
    for op in &sorted {
        match (&op.f, op.kind) {
            (F::Connect { client_id, clean: true, .. }, _) => {
                // A clean connect (even an indeterminate one) may have discarded the session.
                states.remove(client_id.as_str());
            }
            (F::Connect { client_id, clean: false, session_present }, Kind::Ok) => {
                let st = states.entry(client_id).or_default();
                if st.connected && st.subscribed {
                    checked += 1;
                    if *session_present != Some(true) {
                        v.add(|| format!("{client_id} reconnected with session_present={session_present:?}"), &[op]);
                    }
                }
                st.connected = true;
            }
            (F::Subscribe { client_id, .. }, Kind::Ok) => {
                if let Some(st) = states.get_mut(client_id.as_str()) {
                    st.subscribed |= st.connected;
                }
            }
            _ => {}
        }
    }
    v.verdict("session_resume", checked, format!("{checked} resumed sessions all present"), "sessions lost")
}

/// No publish or subscribe is acknowledged by a node cut off in a minority: an op invoked at
/// least 2 s after a partition started and acknowledged `Ok` before it healed, on a node of that
/// partition's minority, is a violation.
pub fn minority_ack(ops: &[Op]) -> Verdict {
    struct Window<'a> {
        name: &'a str,
        start: &'a Op,
        minority: &'a [u32],
        open: bool,
    }
    let sorted = sorted_ops(ops);
    let mut windows: Vec<Window> = Vec::new();
    let mut active: Vec<usize> = Vec::new();
    // Open invokes of publishes/subscribes made while some window was active.
    let mut open: HashMap<(u32, u64), (&Op, Vec<usize>)> = HashMap::new();
    let mut v = Violations::new();
    let mut checked = 0u64;
    for op in &sorted {
        match &op.f {
            F::Nemesis { name, phase: Phase::Start, minority, .. } if !minority.is_empty() => {
                active.push(windows.len());
                windows.push(Window { name, start: op, minority, open: true });
            }
            F::Nemesis { name, phase: Phase::Stop, .. } => {
                if let Some(pos) = active.iter().rposition(|&w| windows[w].name == name) {
                    windows[active[pos]].open = false;
                    active.remove(pos);
                }
            }
            F::Publish { .. } | F::Subscribe { .. } => {
                if op.kind == Kind::Invoke {
                    if !active.is_empty() {
                        open.insert((op.process, op.id), (*op, active.clone()));
                    }
                    continue;
                }
                let Some((inv, ws)) = open.remove(&(op.process, op.id)) else { continue };
                if op.kind != Kind::Ok {
                    continue;
                }
                let Some(node) = inv.node.or(op.node) else { continue };
                for &w in &ws {
                    let win = &windows[w];
                    if !win.open || !win.minority.contains(&node) {
                        continue;
                    }
                    checked += 1;
                    if inv.mono_us >= win.start.mono_us.saturating_add(MINORITY_GRACE_US) {
                        let after_ms = (inv.mono_us - win.start.mono_us) / 1000;
                        v.add(
                            || {
                                format!(
                                    "{} acked by minority node {node} during {} ({after_ms} ms after start)",
                                    inv.f.name(),
                                    win.name
                                )
                            },
                            &[win.start, inv, op],
                        );
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    let ok = format!("{} partitions, {checked} ops acked by a minority node within the grace period", windows.len());
    v.verdict("minority_ack", checked, ok, "ops acked by a minority")
}

/// Every node that was probed serves again (an `Ok` probe invoked after the final heal) within
/// `recovery_bound_ms` of the final heal (the last nemesis stop; the first op if none).
pub fn recovery(ops: &[Op], cfg: &CheckConfig) -> Verdict {
    #[derive(Default)]
    struct Node<'a> {
        /// The earliest Ok completion of a probe invoked after the heal.
        first_ok: Option<&'a Op>,
        /// The node's last probe op (for context when it never recovered).
        last: Option<&'a Op>,
    }
    let sorted = sorted_ops(ops);
    let Some(heal) = final_heal(&sorted) else {
        return Verdict { name: "recovery", ok: true, summary: "empty history".into(), offending: vec![], checked: 0 };
    };
    let pairs = pair_ops(&sorted);
    let mut nodes: HashMap<u32, Node> = HashMap::new();
    for op in &sorted {
        if let (F::Probe {}, Some(n)) = (&op.f, op.node) {
            nodes.entry(n).or_default().last = Some(op);
        }
    }
    for p in pairs.iter().filter(|p| matches!(p.invoke.f, F::Probe {}) && heal.precedes(p.invoke)) {
        let (Some(node), Some(c)) = (p.node(), p.completion) else { continue };
        if c.kind != Kind::Ok {
            continue;
        }
        let n = nodes.entry(node).or_default();
        if n.first_ok.is_none_or(|b| c.mono_us < b.mono_us) {
            n.first_ok = Some(c);
        }
    }
    let mut nodes: Vec<(u32, Node)> = nodes.into_iter().collect();
    nodes.sort_unstable_by_key(|(n, _)| *n);
    let heal_op = heal.index.and_then(|i| sorted.binary_search_by_key(&i, |o| o.index).ok().map(|k| sorted[k]));
    let bound_us = cfg.recovery_bound_ms.saturating_mul(1000);
    let mut offending: Vec<Op> = heal_op.into_iter().cloned().collect();
    let mut ok = true;
    let mut parts = Vec::new();
    for (node, n) in &nodes {
        match n.first_ok {
            Some(c) => {
                let took = c.mono_us.saturating_sub(heal.mono_us);
                if took > bound_us {
                    ok = false;
                    offending.push(c.clone());
                    parts.push(format!("node {node}: {} ms (> {} ms)", took / 1000, cfg.recovery_bound_ms));
                } else {
                    parts.push(format!("node {node}: {} ms", took / 1000));
                }
            }
            None => {
                ok = false;
                offending.extend(n.last.cloned());
                parts.push(format!("node {node}: no Ok probe after the heal"));
            }
        }
    }
    if ok {
        offending.clear();
    }
    offending.truncate(MAX_OFFENDING);
    let summary = if parts.is_empty() { "no probes".to_string() } else { parts.join(", ") };
    Verdict { name: "recovery", ok, summary, offending, checked: nodes.len() as u64 }
}

/// Retained messages converge: the final reads of a topic (Ok `RetainRead`s invoked after the
/// final heal and after every retained publish to the topic) agree, and return the value of a
/// retained publish that may have been applied last: the last one acknowledged, or one that
/// could have been applied after it (Ok or indeterminate, not finished before an Ok publish
/// began). `None` only if no retained publish to the topic ever completed Ok.
pub fn retained(ops: &[Op]) -> Verdict {
    struct Topic<'a> {
        /// Retained publishes: (pair, payload)
        writes: Vec<(Pair<'a>, &'a str)>,
        /// Index of the last op (invoke or completion) of any retained publish.
        last_write_op: u64,
        reads: Vec<Pair<'a>>,
    }
    let sorted = sorted_ops(ops);
    let Some(heal) = final_heal(&sorted) else {
        return Verdict { name: "retained", ok: true, summary: "no final reads".into(), offending: vec![], checked: 0 };
    };
    let pairs = pair_ops(&sorted);
    let mut topics: HashMap<&str, Topic> = HashMap::new();
    for p in &pairs {
        match &p.invoke.f {
            F::Publish { topic, payload, retain: true, .. } => {
                let t = topics.entry(topic).or_insert(Topic { writes: vec![], last_write_op: 0, reads: vec![] });
                let last = p.completion.map_or(p.invoke.index, |c| c.index);
                t.last_write_op = t.last_write_op.max(last);
                t.writes.push((*p, payload));
            }
            F::RetainRead { topic, .. } if p.is_ok() && heal.precedes(p.invoke) => {
                topics.entry(topic).or_insert(Topic { writes: vec![], last_write_op: 0, reads: vec![] }).reads.push(*p);
            }
            _ => {}
        }
    }
    let mut names: Vec<&str> = topics.keys().copied().collect();
    names.sort_unstable();
    let mut v = Violations::new();
    let mut checked = 0u64;
    let mut read_topics = 0u64;
    for name in names {
        let t = &topics[name];
        let finals: Vec<&Pair> = t.reads.iter().filter(|r| r.invoke.index > t.last_write_op).collect();
        if finals.is_empty() {
            continue;
        }
        read_topics += 1;
        checked += finals.len() as u64;
        // The latest invoke among acknowledged writes: a write that finished before it began
        // was certainly overwritten.
        let max_ok_invoke = t.writes.iter().filter(|(p, _)| p.is_ok()).map(|(p, _)| p.invoke.index).max();
        let mut acceptable: HashSet<Option<&str>> = HashSet::new();
        match max_ok_invoke {
            None => {
                acceptable.insert(None);
                // Indeterminate writes may have happened too.
                for (p, payload) in &t.writes {
                    if p.outcome() != Some(Kind::Fail) {
                        acceptable.insert(Some(payload));
                    }
                }
            }
            Some(m) => {
                for (p, payload) in &t.writes {
                    let outcome = p.outcome();
                    let end = p.completion.map_or(u64::MAX, |c| if c.kind == Kind::Ok { c.index } else { u64::MAX });
                    if outcome != Some(Kind::Fail) && end > m {
                        acceptable.insert(Some(payload));
                    }
                }
            }
        }
        // An empty retained payload clears the retained message.
        if acceptable.contains(&Some("")) {
            acceptable.insert(None);
        }
        let value_of = |p: &Pair| -> Option<String> {
            match p.completion.map(|c| &c.f) {
                Some(F::RetainRead { value, .. }) => value.clone(),
                _ => None,
            }
        };
        let first = value_of(finals[0]);
        let mut bad: Vec<&Op> = Vec::new();
        for r in &finals {
            let value = value_of(r);
            if value != first || !acceptable.contains(&value.as_deref()) {
                bad.extend(r.completion);
            }
        }
        if !bad.is_empty() {
            let values: Vec<Option<String>> = {
                let mut vs: Vec<Option<String>> = finals.iter().map(|r| value_of(r)).collect();
                vs.sort();
                vs.dedup();
                vs
            };
            let mut allowed: Vec<Option<&str>> = acceptable.iter().copied().collect();
            allowed.sort();
            v.add(|| format!("{name}: final reads {values:?}, acceptable {allowed:?}"), &bad);
        }
    }
    if read_topics == 0 {
        return Verdict { name: "retained", ok: true, summary: "no final reads".into(), offending: vec![], checked: 0 };
    }
    let ok = format!("{checked} final reads of {read_topics} topics agree on an acceptable value");
    v.verdict("retained", checked, ok, "topics with bad final retained values")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::NEMESIS;

    /// Builds synthetic histories with a manual clock.
    struct H {
        ops: Vec<Op>,
        next_id: u64,
        now_us: u64,
    }

    impl H {
        fn new() -> Self {
            H { ops: Vec::new(), next_id: 0, now_us: 0 }
        }

        fn push(&mut self, process: u32, id: u64, kind: Kind, node: Option<u32>, f: F) {
            self.now_us += 1000;
            let index = self.ops.len() as u64;
            self.ops.push(Op {
                index,
                process,
                id,
                kind,
                node,
                wall_ms: 1_700_000_000_000 + self.now_us / 1000,
                mono_us: self.now_us,
                f,
                error: None,
            });
        }

        /// Advances the clock by `ms`.
        fn sleep(&mut self, ms: u64) -> &mut Self {
            self.now_us += ms * 1000;
            self
        }

        fn invoke(&mut self, process: u32, node: Option<u32>, f: F) -> u64 {
            let id = self.next_id;
            self.next_id += 1;
            self.push(process, id, Kind::Invoke, node, f);
            id
        }

        fn complete(&mut self, process: u32, id: u64, kind: Kind, node: Option<u32>, f: F) {
            self.push(process, id, kind, node, f);
        }

        fn event(&mut self, process: u32, kind: Kind, node: Option<u32>, f: F) {
            let id = self.next_id;
            self.next_id += 1;
            self.push(process, id, kind, node, f);
        }

        fn op(&mut self, process: u32, node: Option<u32>, f: F, kind: Kind) -> &mut Self {
            let id = self.invoke(process, node, f.clone());
            self.complete(process, id, kind, node, f);
            self
        }

        fn connect(&mut self, process: u32, client: &str, clean: bool, present: Option<bool>) -> &mut Self {
            let f = F::Connect { client_id: client.into(), clean, session_present: None };
            let id = self.invoke(process, Some(1), f);
            let f = F::Connect { client_id: client.into(), clean, session_present: present };
            self.complete(process, id, Kind::Ok, Some(1), f);
            self
        }

        fn subscribe(&mut self, process: u32, client: &str, filter: &str) -> &mut Self {
            self.op(
                process,
                Some(1),
                F::Subscribe { client_id: client.into(), filter: filter.into(), qos: 1 },
                Kind::Ok,
            )
        }

        fn pub_f(publisher: &str, seq: u64, topic: &str, qos: u8, retain: bool) -> F {
            F::Publish {
                publisher: publisher.into(),
                seq,
                topic: topic.into(),
                payload: format!("{publisher}-{seq}"),
                qos,
                retain,
            }
        }

        /// A publish on node 1 with the given outcome.
        #[allow(clippy::too_many_arguments)]
        fn publish(&mut self, process: u32, publisher: &str, seq: u64, topic: &str, qos: u8, kind: Kind) -> &mut Self {
            self.publish_on(process, 1, publisher, seq, topic, qos, false, kind)
        }

        #[allow(clippy::too_many_arguments)]
        fn publish_on(
            &mut self,
            process: u32,
            node: u32,
            publisher: &str,
            seq: u64,
            topic: &str,
            qos: u8,
            retain: bool,
            kind: Kind,
        ) -> &mut Self {
            self.op(process, Some(node), Self::pub_f(publisher, seq, topic, qos, retain), kind)
        }

        fn deliver(
            &mut self,
            process: u32,
            client: &str,
            topic: &str,
            publisher: &str,
            seq: u64,
            qos: u8,
        ) -> &mut Self {
            let f = F::Deliver {
                client_id: client.into(),
                topic: topic.into(),
                payload: format!("{publisher}-{seq}"),
                qos,
                dup: false,
                publisher: publisher.into(),
                seq,
            };
            self.event(process, Kind::Ok, Some(1), f);
            self
        }

        fn nemesis(&mut self, name: &str, phase: Phase, minority: &[u32]) -> &mut Self {
            let f = F::Nemesis {
                name: name.into(),
                phase,
                nodes: vec![1, 2, 3],
                minority: minority.to_vec(),
                detail: String::new(),
            };
            self.event(NEMESIS, Kind::Info, None, f);
            self
        }

        fn probe(&mut self, process: u32, node: u32, kind: Kind) -> &mut Self {
            self.op(process, Some(node), F::Probe {}, kind)
        }

        fn read(&mut self, process: u32, topic: &str, value: Option<&str>) -> &mut Self {
            let id = self.invoke(process, Some(1), F::RetainRead { topic: topic.into(), value: None });
            let f = F::RetainRead { topic: topic.into(), value: value.map(str::to_string) };
            self.complete(process, id, Kind::Ok, Some(1), f);
            self
        }
    }

    fn assert_ok(v: Verdict) {
        assert!(v.ok, "{} should pass: {}", v.name, v.summary);
    }

    fn assert_fail(v: Verdict) -> Verdict {
        assert!(!v.ok, "{} should fail: {}", v.name, v.summary);
        assert!(!v.offending.is_empty(), "{}: no offending ops", v.name);
        v
    }

    #[test]
    fn topic_matching() {
        assert!(topic_matches("a/b", "a/b"));
        assert!(!topic_matches("a/b", "a/c"));
        assert!(topic_matches("a/+", "a/b"));
        assert!(!topic_matches("a/+", "a/b/c"));
        assert!(topic_matches("a/+/c", "a//c"));
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(topic_matches("#", "a/b"));
        assert!(!topic_matches("#", "$SYS/x"));
        assert!(!topic_matches("+/x", "$SYS/x"));
        assert!(topic_matches("$SYS/#", "$SYS/x"));
        assert!(!topic_matches("a/b", "a/b/c"));
        assert!(!topic_matches("a/b/c", "a/b"));
    }

    fn persistent_sub(h: &mut H) -> &mut H {
        h.connect(1, "sub", false, Some(false)).subscribe(1, "sub", "t/#")
    }

    #[test]
    fn lost_accepts_delivered_and_indeterminate() {
        let mut h = H::new();
        h.publish(2, "p", 1, "t/a", 1, Kind::Ok); // before the subscription: not required
        persistent_sub(&mut h);
        h.publish(2, "p", 2, "t/a", 1, Kind::Ok)
            .publish(2, "p", 3, "t/b", 2, Kind::Info) // indeterminate, not delivered: fine
            .publish(2, "p", 4, "t/a", 1, Kind::Fail)
            .publish(2, "p", 5, "t/a", 0, Kind::Ok) // QoS 0 may be lost
            .publish(2, "p", 6, "other", 1, Kind::Ok) // does not match
            .deliver(1, "sub", "t/a", "p", 2, 1);
        let v = lost(&h.ops);
        assert_ok(v.clone());
        assert_eq!(v.checked, 1);
    }

    #[test]
    fn lost_rejects_acked_undelivered() {
        let mut h = H::new();
        persistent_sub(&mut h);
        h.publish(2, "p", 1, "t/a", 1, Kind::Ok)
            .publish(2, "p", 2, "t/a/b", 2, Kind::Ok)
            .deliver(1, "sub", "t/a", "p", 1, 1)
            .deliver(3, "other", "t/a/b", "p", 2, 1); // delivered to someone else only
        let v = assert_fail(lost(&h.ops));
        assert_eq!(v.offending.len(), 1);
        assert!(matches!(&v.offending[0].f, F::Publish { seq: 2, .. }));
    }

    #[test]
    fn lost_excuses_only_as_many_as_the_broker_reports_dropped() {
        let mut h = H::new();
        persistent_sub(&mut h);
        for seq in 1..=5 {
            h.publish(2, "p", seq, "t/a", 1, Kind::Ok);
        }
        h.deliver(1, "sub", "t/a", "p", 4, 1).deliver(1, "sub", "t/a", "p", 5, 1);
        // Three missing; the broker reports two drops for "sub" (and some for another client).
        h.event(9, Kind::Ok, None, F::Dropped { client_id: "sub".into(), count: 2 });
        h.event(9, Kind::Ok, None, F::Dropped { client_id: "other".into(), count: 10 });
        let v = assert_fail(lost(&h.ops));
        assert_eq!(v.offending.len(), 3, "all of that client's missing messages are shown");
        h.event(9, Kind::Ok, None, F::Dropped { client_id: "sub".into(), count: 1 });
        assert_ok(lost(&h.ops));
    }

    #[test]
    fn lost_ignores_subscriber_without_persistent_connect() {
        let mut h = H::new();
        h.subscribe(1, "sub", "t/#").publish(2, "p", 1, "t/a", 1, Kind::Ok);
        assert_ok(lost(&h.ops));
    }

    #[test]
    fn lost_ignores_clean_subscriber() {
        let mut h = H::new();
        h.connect(1, "sub", false, Some(false)).subscribe(1, "sub", "t/#").connect(1, "sub", true, Some(false));
        h.publish(2, "p", 1, "t/a", 1, Kind::Ok);
        assert_ok(lost(&h.ops));
    }

    #[test]
    fn phantom_accepts_published() {
        let mut h = H::new();
        h.publish(2, "p", 1, "t", 1, Kind::Info).publish(2, "p", 2, "t", 1, Kind::Fail);
        h.deliver(1, "sub", "t", "p", 1, 1).deliver(1, "sub", "t", "p", 2, 1);
        assert_ok(phantom(&h.ops));
    }

    #[test]
    fn phantom_rejects_unpublished_and_wrong_topic() {
        let mut h = H::new();
        h.publish(2, "p", 1, "t", 1, Kind::Ok).deliver(1, "sub", "t", "p", 7, 1);
        assert_fail(phantom(&h.ops));
        let mut h = H::new();
        h.publish(2, "p", 1, "t", 1, Kind::Ok).deliver(1, "sub", "u", "p", 1, 1);
        assert_fail(phantom(&h.ops));
    }

    #[test]
    fn duplicates_allows_qos1_redelivery() {
        let mut h = H::new();
        h.publish(2, "p", 1, "t", 1, Kind::Ok).publish(2, "p", 2, "t", 2, Kind::Ok);
        h.deliver(1, "sub", "t", "p", 1, 1).deliver(1, "sub", "t", "p", 1, 1).deliver(1, "sub", "t", "p", 2, 2);
        h.deliver(3, "sub2", "t", "p", 2, 2); // another client: fine
        let v = duplicates(&h.ops);
        assert_ok(v.clone());
        assert!(v.summary.contains("1 QoS 0/1"), "{}", v.summary);
    }

    #[test]
    fn duplicates_rejects_qos2_twice() {
        let mut h = H::new();
        h.publish(2, "p", 1, "t", 2, Kind::Ok);
        h.deliver(1, "sub", "t", "p", 1, 2).deliver(1, "sub", "t", "p", 1, 2);
        let v = assert_fail(duplicates(&h.ops));
        assert_eq!(v.offending.len(), 2);
        // a QoS 1 delivery first does not hide two QoS 2 ones
        let mut h = H::new();
        h.publish(2, "p", 1, "t", 2, Kind::Ok);
        h.deliver(1, "sub", "t", "p", 1, 1).deliver(1, "sub", "t", "p", 1, 2).deliver(1, "sub", "t", "p", 1, 2);
        assert_fail(duplicates(&h.ops));
    }

    #[test]
    fn order_accepts_redelivery_of_earlier_payload() {
        let mut h = H::new();
        for seq in 1..=4 {
            h.publish(9, "p", seq, "t", 1, Kind::Ok);
        }
        h.publish(8, "q", 1, "t", 1, Kind::Ok);
        h.deliver(1, "sub", "t", "p", 1, 1)
            .deliver(1, "sub", "t", "p", 2, 1)
            .deliver(1, "sub", "t", "p", 1, 1) // QoS 1 redelivery: not a first delivery
            .deliver(1, "sub", "t", "q", 1, 1) // another publisher
            .deliver(1, "sub", "t", "p", 4, 1) // gaps are fine
            .deliver(3, "sub2", "t", "p", 2, 1); // another subscriber
        assert_ok(order(&h.ops));
    }

    #[test]
    fn order_rejects_inversion() {
        let mut h = H::new();
        for seq in 1..=3 {
            h.publish(9, "p", seq, "t", 1, Kind::Ok);
        }
        h.deliver(1, "sub", "t", "p", 1, 1).deliver(1, "sub", "t", "p", 3, 1).deliver(1, "sub", "t", "p", 2, 1);
        let v = assert_fail(order(&h.ops));
        assert!(v.summary.contains("seq 2 after p-3"), "{}", v.summary);
    }

    #[test]
    fn order_accepts_a_late_indeterminate_publish() {
        // Seen in a partition run: p-2 timed out on a minority node (Info), the publisher went
        // on elsewhere with p-3; p-2 surfaced after the heal. It never completed, so it is
        // concurrent with p-3 and may come after it.
        let mut h = H::new();
        h.publish(9, "p", 1, "t", 1, Kind::Ok).publish(9, "p", 2, "t", 1, Kind::Info).publish(
            9,
            "p",
            3,
            "t",
            1,
            Kind::Ok,
        );
        h.deliver(1, "sub", "t", "p", 1, 1).deliver(1, "sub", "t", "p", 3, 1).deliver(1, "sub", "t", "p", 2, 1);
        assert_ok(order(&h.ops));
        // ...but an acknowledged p-1 must not come after p-3.
        let mut h = H::new();
        h.publish(9, "p", 1, "t", 1, Kind::Ok).publish(9, "p", 3, "t", 1, Kind::Ok);
        h.deliver(1, "sub", "t", "p", 3, 1).deliver(1, "sub", "t", "p", 1, 1);
        assert_fail(order(&h.ops));
    }

    #[test]
    fn session_resume_accepts_present_and_never_created() {
        let mut h = H::new();
        h.connect(1, "a", false, Some(false)).subscribe(1, "a", "t").connect(1, "a", false, Some(true));
        // never subscribed: a lost session is not checked
        h.connect(2, "b", false, Some(false)).connect(2, "b", false, Some(false));
        // clean connect in between discards the session
        h.connect(3, "c", false, Some(false)).subscribe(3, "c", "t").connect(3, "c", true, Some(false));
        h.connect(3, "c", false, Some(false));
        let v = session_resume(&h.ops);
        assert_ok(v.clone());
        assert_eq!(v.checked, 1);
    }

    #[test]
    fn session_resume_rejects_lost_session() {
        let mut h = H::new();
        h.connect(1, "a", false, Some(false)).subscribe(1, "a", "t").connect(1, "a", false, Some(false));
        assert_fail(session_resume(&h.ops));
    }

    #[test]
    fn minority_ack_accepts_grace_and_majority() {
        let mut h = H::new();
        h.nemesis("halves", Phase::Start, &[3]);
        h.publish_on(2, 3, "p", 1, "t", 1, false, Kind::Ok); // within the lease grace period
        h.sleep(5000);
        h.publish_on(2, 1, "p", 2, "t", 1, false, Kind::Ok); // majority node
        h.publish_on(2, 3, "p", 3, "t", 1, false, Kind::Info); // minority, not acked
                                                               // invoked in the window, acked after the heal: fine
        let f = H::pub_f("p", 4, "t", 1, false);
        let id = h.invoke(4, Some(3), f.clone());
        h.nemesis("halves", Phase::Stop, &[]);
        h.complete(4, id, Kind::Ok, Some(3), f);
        h.publish_on(2, 3, "p", 5, "t", 1, false, Kind::Ok); // after the heal
        assert_ok(minority_ack(&h.ops));
    }

    #[test]
    fn minority_ack_rejects_minority_ack() {
        let mut h = H::new();
        h.nemesis("halves", Phase::Start, &[3]).sleep(2500);
        h.op(2, Some(3), F::Subscribe { client_id: "s".into(), filter: "t".into(), qos: 1 }, Kind::Ok);
        h.nemesis("halves", Phase::Stop, &[]);
        let v = assert_fail(minority_ack(&h.ops));
        assert_eq!(v.offending.len(), 3);
    }

    #[test]
    fn recovery_accepts_fast_recovery() {
        let mut h = H::new();
        h.probe(1, 1, Kind::Ok).probe(2, 2, Kind::Ok);
        h.nemesis("kill", Phase::Start, &[]).probe(2, 2, Kind::Fail).nemesis("kill", Phase::Stop, &[]);
        h.sleep(400).probe(1, 1, Kind::Ok).probe(2, 2, Kind::Fail).sleep(1000).probe(2, 2, Kind::Ok);
        let v = recovery(&h.ops, &CheckConfig::default());
        assert_ok(v.clone());
        assert!(v.summary.starts_with("node 1: 40"), "{}", v.summary);
        assert_eq!(v.checked, 2);
    }

    #[test]
    fn recovery_accepts_no_nemesis() {
        let mut h = H::new();
        h.probe(1, 1, Kind::Ok);
        assert_ok(recovery(&h.ops, &CheckConfig::default()));
    }

    #[test]
    fn recovery_rejects_slow_or_missing() {
        let mut h = H::new();
        h.probe(1, 1, Kind::Ok).probe(2, 2, Kind::Ok);
        h.nemesis("kill", Phase::Start, &[]).nemesis("kill", Phase::Stop, &[]);
        h.probe(2, 2, Kind::Fail).sleep(31_000).probe(1, 1, Kind::Ok);
        let v = assert_fail(recovery(&h.ops, &CheckConfig::default()));
        assert_eq!(v.offending.len(), 3, "heal, slow ok, last probe of node 2");
        assert!(v.summary.contains("> 30000 ms"), "{}", v.summary);
        assert!(v.summary.contains("node 2: no Ok probe"), "{}", v.summary);
    }

    #[test]
    fn retained_accepts_last_ok_or_later_indeterminate() {
        let mut h = H::new();
        h.publish_on(2, 1, "p", 1, "r", 1, true, Kind::Ok).publish_on(2, 1, "p", 2, "r", 1, true, Kind::Ok);
        h.publish_on(2, 1, "p", 3, "r", 1, true, Kind::Info);
        h.nemesis("x", Phase::Start, &[]).nemesis("x", Phase::Stop, &[]);
        h.read(1, "r", Some("p-3")).read(1, "r", Some("p-3"));
        assert_ok(retained(&h.ops));

        let mut h = H::new();
        h.publish_on(2, 1, "p", 1, "r", 1, true, Kind::Ok).publish_on(2, 1, "p", 2, "r", 1, true, Kind::Info);
        h.read(1, "r", Some("p-1"));
        assert_ok(retained(&h.ops));

        // concurrent writes: either may win
        let mut h = H::new();
        let (fa, fb) = (H::pub_f("a", 1, "r", 1, true), H::pub_f("b", 1, "r", 1, true));
        let ia = h.invoke(2, Some(1), fa.clone());
        let ib = h.invoke(3, Some(1), fb.clone());
        h.complete(3, ib, Kind::Ok, Some(1), fb);
        h.complete(2, ia, Kind::Ok, Some(1), fa);
        h.read(1, "r", Some("b-1"));
        assert_ok(retained(&h.ops));

        // nothing ever acknowledged: None is fine
        let mut h = H::new();
        h.publish_on(2, 1, "p", 1, "r", 1, true, Kind::Fail).read(1, "r", None);
        assert_ok(retained(&h.ops));

        let h = H::new();
        assert_eq!(retained(&h.ops).summary, "no final reads");
    }

    #[test]
    fn retained_rejects_stale_divergent_or_missing() {
        let base = || {
            let mut h = H::new();
            h.publish_on(2, 1, "p", 1, "r", 1, true, Kind::Ok).publish_on(2, 1, "p", 2, "r", 1, true, Kind::Ok);
            h.publish_on(2, 1, "p", 3, "r", 1, true, Kind::Fail);
            h.nemesis("x", Phase::Start, &[]).nemesis("x", Phase::Stop, &[]);
            h
        };
        let mut h = base();
        h.read(1, "r", Some("p-1")); // overwritten
        assert_fail(retained(&h.ops));
        let mut h = base();
        h.read(1, "r", Some("p-3")); // failed write
        assert_fail(retained(&h.ops));
        let mut h = base();
        h.read(1, "r", None); // lost
        assert_fail(retained(&h.ops));
        let mut h = base();
        h.publish_on(2, 1, "p", 4, "r", 1, true, Kind::Info);
        h.read(1, "r", Some("p-2")).read(1, "r", Some("p-4")); // divergent
        assert_fail(retained(&h.ops));
    }

    #[test]
    fn check_all_runs_every_checker() {
        let mut h = H::new();
        persistent_sub(&mut h);
        h.publish(2, "p", 1, "t/a", 2, Kind::Ok).deliver(1, "sub", "t/a", "p", 1, 2).probe(3, 1, Kind::Ok);
        let vs = check_all(&h.ops, &CheckConfig::default());
        assert_eq!(vs.len(), 8);
        for v in vs {
            assert_ok(v);
        }
    }

    /// Large histories stay fast (no quadratic scans).
    #[test]
    fn checkers_scale_linearly() {
        let mut h = H::new();
        for c in 0..10 {
            h.connect(100 + c, &format!("sub{c}"), false, Some(false)).subscribe(100 + c, &format!("sub{c}"), "t/#");
        }
        h.nemesis("halves", Phase::Start, &[3]);
        for seq in 1..=20_000u64 {
            h.publish_on(1, (seq % 3 + 1) as u32, "p", seq, "t/a", 1, seq % 100 == 0, Kind::Ok);
            for c in 0..10 {
                h.deliver(100 + c, &format!("sub{c}"), "t/a", "p", seq, 1);
            }
            if seq % 50 == 0 {
                h.probe(2, (seq % 3 + 1) as u32, Kind::Ok);
            }
        }
        let started = std::time::Instant::now();
        let vs = check_all(&h.ops, &CheckConfig::default());
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "took {:?}", started.elapsed());
        assert!(vs.iter().find(|v| v.name == "lost").is_some_and(|v| v.ok && v.checked == 200_000));
    }
}
