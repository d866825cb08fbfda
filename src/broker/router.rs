//! Topic trie: filter → subscribers. Called by connection tasks (subscribe, unsubscribe,
//! publish). The trie sits behind one `RwLock` held only for the match walk, never across an
//! `.await`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::mqtt::packet::SubOptions;

use super::session::Session;

#[derive(Clone)]
pub struct Subscriber {
    pub session: Arc<Session>,
    pub opts: SubOptions,
    pub id: Option<u32>,
    /// Counted in the route table (a subscription of this cluster's own clients, not of a
    /// remote cluster's link session): fixed when it is added, so its removal undoes exactly it.
    pub local: bool,
}

#[derive(Default)]
struct SharedGroup {
    members: Vec<Subscriber>,
    next: AtomicUsize,
}

/// A trie level's map, allocated only when it holds something: most nodes are leaves (one
/// per distinct filter), and two empty `HashMap`s were 96 of a leaf's 120 bytes.
#[allow(clippy::box_collection)] // the point: 8 bytes in the node instead of 48
struct Levels<V>(Option<Box<HashMap<Box<str>, V>>>);

impl<V> Default for Levels<V> {
    fn default() -> Self {
        Levels(None)
    }
}

impl<V: Default> Levels<V> {
    fn is_empty(&self) -> bool {
        self.0.is_none()
    }
    fn get(&self, k: &str) -> Option<&V> {
        self.0.as_ref()?.get(k)
    }
    fn get_mut(&mut self, k: &str) -> Option<&mut V> {
        self.0.as_mut()?.get_mut(k)
    }
    fn entry(&mut self, k: &str) -> &mut V {
        self.0.get_or_insert_with(Default::default).entry(k.into()).or_default()
    }
    fn remove(&mut self, k: &str) {
        if let Some(m) = self.0.as_mut() {
            m.remove(k);
            if m.is_empty() {
                self.0 = None;
            }
        }
    }
    fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().flat_map(|m| m.values())
    }
}

#[derive(Default)]
struct Node {
    children: Levels<Node>,
    subs: Vec<Subscriber>,
    shared: Levels<SharedGroup>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subs.is_empty() && self.shared.is_empty()
    }
}

/// A subscriber selected for one message, with the options of the subscription that matched.
pub struct Match {
    pub session: Arc<Session>,
    pub opts: SubOptions,
    pub id: Option<u32>,
    pub shared: bool,
}

#[derive(Default)]
pub struct Router {
    root: RwLock<Node>,
    table: Mutex<RouteTable>,
}

/// Changes of the route table kept for readers that follow it; one that falls further behind
/// reads the whole table again.
const JOURNAL_MAX: usize = 65_536;

/// The distinct filters of local subscriptions (shared ones by their inner filter), with how
/// many subscriptions hold each, and a journal of the filters that appeared or went. Cluster
/// links follow it to keep their routes at the remote exact without walking every session.
#[derive(Default)]
struct RouteTable {
    counts: HashMap<Box<str>, u32>,
    version: u64,
    /// (version after the change, filter, present)
    journal: VecDeque<(u64, Arc<str>, bool)>,
}

impl RouteTable {
    fn change(&mut self, filter: &str, add: bool) {
        let present = if add {
            let n = self.counts.entry(filter.into()).or_insert(0);
            *n += 1;
            *n == 1
        } else {
            match self.counts.get_mut(filter) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    self.counts.remove(filter);
                    true
                }
                None => false,
            }
        };
        if present {
            self.version += 1;
            if self.journal.len() == JOURNAL_MAX {
                self.journal.pop_front();
            }
            self.journal.push_back((self.version, filter.into(), add));
        }
    }
}

/// What changed in the route table since a reader's version.
pub enum RouteChanges {
    /// Every filter (the reader had none, or fell behind the journal), at this version.
    Full(u64, Vec<Arc<str>>),
    /// Filters that appeared (true) or went (false), in order, up to this version.
    Delta(u64, Vec<(Arc<str>, bool)>),
}

impl Router {
    /// The route table's changes after version `since` (None: all of it).
    pub fn route_changes(&self, since: Option<u64>) -> RouteChanges {
        let t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        match since {
            Some(v) if v == t.version => RouteChanges::Delta(v, Vec::new()),
            Some(v) if v < t.version && t.journal.front().is_some_and(|(first, ..)| *first <= v + 1) => {
                let changes =
                    t.journal.iter().filter(|(ver, ..)| *ver > v).map(|(_, f, add)| (f.clone(), *add)).collect();
                RouteChanges::Delta(t.version, changes)
            }
            _ => RouteChanges::Full(t.version, t.counts.keys().map(|k| Arc::from(&**k)).collect()),
        }
    }

    /// Add or replace a subscription. `filter` is the plain filter (shared prefix stripped).
    /// Returns true when the subscription is new (for retain handling 1).
    pub fn subscribe(&self, filter: &str, group: Option<&str>, sub: Subscriber) -> bool {
        let mut root = self.root.write().unwrap_or_else(|e| e.into_inner());
        let mut node = &mut *root;
        for level in filter.split('/') {
            node = node.children.entry(level);
        }
        let list = match group {
            Some(g) => &mut node.shared.entry(g).members,
            None => &mut node.subs,
        };
        match list.iter_mut().find(|s| Arc::ptr_eq(&s.session, &sub.session)) {
            Some(existing) => {
                let local = existing.local;
                *existing = Subscriber { local, ..sub };
                false
            }
            None => {
                if sub.local {
                    self.table.lock().unwrap_or_else(|e| e.into_inner()).change(filter, true);
                }
                list.push(sub);
                true
            }
        }
    }

    /// Remove `session`'s subscription; true when one existed.
    pub fn unsubscribe(&self, filter: &str, group: Option<&str>, session: &Arc<Session>) -> bool {
        let mut root = self.root.write().unwrap_or_else(|e| e.into_inner());
        let levels: Vec<&str> = filter.split('/').collect();
        match remove(&mut root, &levels, group, session) {
            Some(local) => {
                if local {
                    self.table.lock().unwrap_or_else(|e| e.into_inner()).change(filter, false);
                }
                true
            }
            None => false,
        }
    }

    /// All subscriptions matching `topic`, one member per shared group.
    pub fn matches(&self, topic: &str, out: &mut Vec<Match>) {
        let root = self.root.read().unwrap_or_else(|e| e.into_inner());
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        walk(&root, &levels, 0, dollar, out);
    }
}

/// Remove `session`'s subscription: whether it was counted as local, None when there was none.
fn remove(node: &mut Node, levels: &[&str], group: Option<&str>, session: &Arc<Session>) -> Option<bool> {
    let take = |list: &mut Vec<Subscriber>| {
        let i = list.iter().position(|s| Arc::ptr_eq(&s.session, session))?;
        Some(list.remove(i).local)
    };
    let Some((first, rest)) = levels.split_first() else {
        return match group {
            Some(g) => {
                let grp = node.shared.get_mut(g)?;
                let removed = take(&mut grp.members);
                if grp.members.is_empty() {
                    node.shared.remove(g);
                }
                removed
            }
            None => take(&mut node.subs),
        };
    };
    let child = node.children.get_mut(first)?;
    let removed = remove(child, rest, group, session);
    if child.is_empty() {
        node.children.remove(first);
    }
    removed
}

fn collect(node: &Node, out: &mut Vec<Match>) {
    for s in &node.subs {
        out.push(Match { session: s.session.clone(), opts: s.opts, id: s.id, shared: false });
    }
    for grp in node.shared.values() {
        if let Some(s) = pick(grp) {
            out.push(Match { session: s.session.clone(), opts: s.opts, id: s.id, shared: true });
        }
    }
}

/// Round robin over the group, preferring members that are connected now.
fn pick(grp: &SharedGroup) -> Option<&Subscriber> {
    let n = grp.members.len();
    if n == 0 {
        return None;
    }
    let start = grp.next.fetch_add(1, Ordering::Relaxed);
    (0..n)
        .map(|i| &grp.members[(start + i) % n])
        .find(|s| s.session.is_connected())
        .or_else(|| grp.members.get(start % n))
}

fn walk(node: &Node, levels: &[&str], depth: usize, dollar: bool, out: &mut Vec<Match>) {
    let wild_ok = !(dollar && depth == 0);
    if wild_ok {
        if let Some(hash) = node.children.get("#") {
            collect(hash, out);
        }
    }
    let Some((first, rest)) = levels.split_first() else {
        collect(node, out);
        return;
    };
    if wild_ok {
        if let Some(plus) = node.children.get("+") {
            walk(plus, rest, depth + 1, dollar, out);
        }
    }
    if let Some(child) = node.children.get(first) {
        walk(child, rest, depth + 1, dollar, out);
    }
}

#[cfg(test)]
mod tests {
    /// A trie node is one per distinct filter level: it stays small (regression guard).
    #[test]
    fn a_trie_node_is_small() {
        assert!(std::mem::size_of::<super::Node>() <= 40, "{}", std::mem::size_of::<super::Node>());
    }
}
