//! Topic trie: filter → subscribers. Called by connection tasks (subscribe, unsubscribe,
//! publish). The trie sits behind one `RwLock` held only for the match walk, never across an
//! `.await`.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::mqtt::packet::SubOptions;

use super::session::Session;

/// One subscription in the trie: 16 bytes (it sits in place in most leaves).
#[derive(Clone)]
pub struct Subscriber {
    pub session: Arc<Session>,
    pub opts: SubOptions,
    /// The subscription identifier (at most 28 bits; 0: none) and, in the top bit, `local`.
    id_local: u32,
}

const LOCAL: u32 = 1 << 31;

impl Subscriber {
    /// `local`: counted in the route table (a subscription of this cluster's own clients, not
    /// of a remote cluster's link session), fixed when it is added, so that its removal
    /// undoes exactly it.
    pub fn new(session: Arc<Session>, opts: SubOptions, id: Option<NonZeroU32>, local: bool) -> Subscriber {
        // MQTT caps identifiers at 268,435,455 (the decoder refuses more): bit 31 is free.
        let id = id.map_or(0, |i| i.get() & !LOCAL);
        Subscriber { session, opts, id_local: id | if local { LOCAL } else { 0 } }
    }
    pub fn id(&self) -> Option<u32> {
        Some(self.id_local & !LOCAL).filter(|i| *i != 0)
    }
    pub fn local(&self) -> bool {
        self.id_local & LOCAL != 0
    }
}

#[derive(Default)]
struct SharedGroup {
    members: Vec<Subscriber>,
    next: AtomicUsize,
}

/// The plain subscribers of one filter. Most filters have exactly one (every route a remote
/// cluster mirrors here does): it is held in the node, no list allocated.
#[derive(Default)]
enum Subs {
    #[default]
    None,
    One(Subscriber),
    /// Boxed: 8 bytes beside `One`'s niche, so the whole enum stays 16 bytes, not 32.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<Subscriber>>),
}

impl Subs {
    fn is_empty(&self) -> bool {
        matches!(self, Subs::None)
    }
    fn as_slice(&self) -> &[Subscriber] {
        match self {
            Subs::None => &[],
            Subs::One(s) => std::slice::from_ref(s),
            Subs::Many(v) => v,
        }
    }
    fn find_mut(&mut self, session: &Arc<Session>) -> Option<&mut Subscriber> {
        match self {
            Subs::None => None,
            Subs::One(s) => Arc::ptr_eq(&s.session, session).then_some(s),
            Subs::Many(v) => v.iter_mut().find(|s| Arc::ptr_eq(&s.session, session)),
        }
    }
    fn push(&mut self, sub: Subscriber) {
        *self = match std::mem::take(self) {
            Subs::None => Subs::One(sub),
            Subs::One(first) => Subs::Many(Box::new(vec![first, sub])),
            Subs::Many(mut v) => {
                v.push(sub);
                Subs::Many(v)
            }
        };
    }
    /// Remove `session`'s subscriber: whether it was local, None when there was none.
    fn remove(&mut self, session: &Arc<Session>) -> Option<bool> {
        match self {
            Subs::None => None,
            Subs::One(s) if Arc::ptr_eq(&s.session, session) => {
                let local = s.local();
                *self = Subs::None;
                Some(local)
            }
            Subs::One(_) => None,
            Subs::Many(v) => {
                let i = v.iter().position(|s| Arc::ptr_eq(&s.session, session))?;
                let local = v.remove(i).local();
                match v.len() {
                    0 => *self = Subs::None,
                    1 => *self = Subs::One(v.remove(0)),
                    _ => {}
                }
                Some(local)
            }
        }
    }
}

/// A trie level's name: up to 22 bytes in place (nearly every level of a real topic), longer
/// ones on the heap. A leaf's name in a `Box<str>` cost a 32-byte allocation besides its slot.
enum Key {
    Inline(u8, [u8; 22]),
    Heap(Box<str>),
}

impl Key {
    fn new(k: &str) -> Key {
        let b = k.as_bytes();
        if b.len() <= 22 {
            let mut buf = [0u8; 22];
            buf[..b.len()].copy_from_slice(b);
            Key::Inline(b.len() as u8, buf)
        } else {
            Key::Heap(k.into())
        }
    }
    fn as_str(&self) -> &str {
        match self {
            // The bytes were copied from a `str`, whole: valid UTF-8.
            Key::Inline(n, buf) => std::str::from_utf8(&buf[..*n as usize]).unwrap_or_default(),
            Key::Heap(s) => s,
        }
    }
}

impl std::borrow::Borrow<str> for Key {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

// `Borrow<str>` requires equality and hash to be the `str`'s.
impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_str().hash(h)
    }
}

/// Children and shared groups of a node: allocated only when it has any. Most nodes are
/// leaves (one per distinct filter) and have neither.
#[derive(Default)]
struct More {
    children: HashMap<Key, Node>,
    shared: HashMap<Box<str>, SharedGroup>,
}

#[derive(Default)]
struct Node {
    subs: Subs,
    more: Option<Box<More>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.subs.is_empty() && self.more.is_none()
    }
    fn child(&self, k: &str) -> Option<&Node> {
        self.more.as_ref()?.children.get(k)
    }
    fn child_mut(&mut self, k: &str) -> Option<&mut Node> {
        self.more.as_mut()?.children.get_mut(k)
    }
    fn child_entry(&mut self, k: &str) -> &mut Node {
        let more = self.more.get_or_insert_with(Default::default);
        if !more.children.contains_key(k) {
            more.children.insert(Key::new(k), Node::default());
        }
        more.children.get_mut(k).expect("inserted above")
    }
    fn group_entry(&mut self, g: &str) -> &mut SharedGroup {
        self.more.get_or_insert_with(Default::default).shared.entry(g.into()).or_default()
    }
    fn group_mut(&mut self, g: &str) -> Option<&mut SharedGroup> {
        self.more.as_mut()?.shared.get_mut(g)
    }
    fn groups(&self) -> impl Iterator<Item = &SharedGroup> {
        self.more.iter().flat_map(|m| m.shared.values())
    }
    /// Drop the child `k` or group `g` (when empty), and `more` when nothing is left in it.
    fn prune(&mut self, child: Option<&str>, group: Option<&str>) {
        let Some(more) = self.more.as_mut() else { return };
        if let Some(k) = child {
            if more.children.get(k).is_some_and(Node::is_empty) {
                more.children.remove(k);
            }
        }
        if let Some(g) = group {
            if more.shared.get(g).is_some_and(|grp| grp.members.is_empty()) {
                more.shared.remove(g);
            }
        }
        if more.children.is_empty() && more.shared.is_empty() {
            self.more = None;
        }
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
            node = node.child_entry(level);
        }
        let existing = match group {
            Some(g) => node.group_entry(g).members.iter_mut().find(|s| Arc::ptr_eq(&s.session, &sub.session)),
            None => node.subs.find_mut(&sub.session),
        };
        if let Some(existing) = existing {
            *existing = Subscriber { id_local: (sub.id_local & !LOCAL) | (existing.id_local & LOCAL), ..sub };
            return false;
        }
        if sub.local() {
            self.table.lock().unwrap_or_else(|e| e.into_inner()).change(filter, true);
        }
        match group {
            Some(g) => node.group_entry(g).members.push(sub),
            None => node.subs.push(sub),
        }
        true
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
    let Some((first, rest)) = levels.split_first() else {
        return match group {
            Some(g) => {
                let grp = node.group_mut(g)?;
                let i = grp.members.iter().position(|s| Arc::ptr_eq(&s.session, session))?;
                let local = grp.members.remove(i).local();
                node.prune(None, Some(g));
                Some(local)
            }
            None => node.subs.remove(session),
        };
    };
    let removed = remove(node.child_mut(first)?, rest, group, session);
    node.prune(Some(first), None);
    removed
}

fn collect(node: &Node, out: &mut Vec<Match>) {
    for s in node.subs.as_slice() {
        out.push(Match { session: s.session.clone(), opts: s.opts, id: s.id(), shared: false });
    }
    for grp in node.groups() {
        if let Some(s) = pick(grp) {
            out.push(Match { session: s.session.clone(), opts: s.opts, id: s.id(), shared: true });
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
        if let Some(hash) = node.child("#") {
            collect(hash, out);
        }
    }
    let Some((first, rest)) = levels.split_first() else {
        collect(node, out);
        return;
    };
    if wild_ok {
        if let Some(plus) = node.child("+") {
            walk(plus, rest, depth + 1, dollar, out);
        }
    }
    if let Some(child) = node.child(first) {
        walk(child, rest, depth + 1, dollar, out);
    }
}

#[cfg(test)]
mod tests {
    /// A trie node is one per distinct filter level: it stays small (regression guard). A
    /// leaf's slot in its parent's map is its name (in place) and the node: 48 bytes.
    #[test]
    fn a_trie_node_is_small() {
        assert!(
            std::mem::size_of::<super::Subscriber>() <= 16,
            "subscriber {}",
            std::mem::size_of::<super::Subscriber>()
        );
        assert!(std::mem::size_of::<super::Node>() <= 24, "node {}", std::mem::size_of::<super::Node>());
        assert!(std::mem::size_of::<super::Key>() <= 24, "key {}", std::mem::size_of::<super::Key>());
    }

    #[test]
    fn level_names_keep_their_text_in_place_or_on_the_heap() {
        for k in ["", "a", "+", "#", "twenty-two-bytes-long!", "twenty-three-bytes-long", "ünïcödé/ß"] {
            let key = super::Key::new(k);
            assert_eq!(key.as_str(), k);
            assert_eq!(matches!(key, super::Key::Inline(..)), k.len() <= 22, "{k}");
        }
    }
}
