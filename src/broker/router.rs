//! Topic trie: filter → subscribers. Called by connection tasks (subscribe, unsubscribe,
//! publish). The trie sits behind one `RwLock` held only for the match walk, never across an
//! `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use crate::mqtt::packet::SubOptions;

use super::session::Session;

#[derive(Clone)]
pub struct Subscriber {
    pub session: Arc<Session>,
    pub opts: SubOptions,
    pub id: Option<u32>,
}

#[derive(Default)]
struct SharedGroup {
    members: Vec<Subscriber>,
    next: AtomicUsize,
}

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    subs: Vec<Subscriber>,
    shared: HashMap<Box<str>, SharedGroup>,
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
}

impl Router {
    /// Add or replace a subscription. `filter` is the plain filter (shared prefix stripped).
    /// Returns true when the subscription is new (for retain handling 1).
    pub fn subscribe(&self, filter: &str, group: Option<&str>, sub: Subscriber) -> bool {
        let mut root = self.root.write().unwrap_or_else(|e| e.into_inner());
        let mut node = &mut *root;
        for level in filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let list = match group {
            Some(g) => &mut node.shared.entry(g.into()).or_default().members,
            None => &mut node.subs,
        };
        match list.iter_mut().find(|s| Arc::ptr_eq(&s.session, &sub.session)) {
            Some(existing) => {
                *existing = sub;
                false
            }
            None => {
                list.push(sub);
                true
            }
        }
    }

    /// Remove `session`'s subscription; true when one existed.
    pub fn unsubscribe(&self, filter: &str, group: Option<&str>, session: &Arc<Session>) -> bool {
        let mut root = self.root.write().unwrap_or_else(|e| e.into_inner());
        let levels: Vec<&str> = filter.split('/').collect();
        remove(&mut root, &levels, group, session)
    }

    /// All subscriptions matching `topic`, one member per shared group.
    pub fn matches(&self, topic: &str, out: &mut Vec<Match>) {
        let root = self.root.read().unwrap_or_else(|e| e.into_inner());
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        walk(&root, &levels, 0, dollar, out);
    }
}

fn remove(node: &mut Node, levels: &[&str], group: Option<&str>, session: &Arc<Session>) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        let removed = match group {
            Some(g) => match node.shared.get_mut(g) {
                Some(grp) => {
                    let before = grp.members.len();
                    grp.members.retain(|s| !Arc::ptr_eq(&s.session, session));
                    let removed = grp.members.len() != before;
                    if grp.members.is_empty() {
                        node.shared.remove(g);
                    }
                    removed
                }
                None => false,
            },
            None => {
                let before = node.subs.len();
                node.subs.retain(|s| !Arc::ptr_eq(&s.session, session));
                node.subs.len() != before
            }
        };
        return removed;
    };
    let Some(child) = node.children.get_mut(*first) else {
        return false;
    };
    let removed = remove(child, rest, group, session);
    if child.is_empty() {
        node.children.remove(*first);
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
    if let Some(child) = node.children.get(*first) {
        walk(child, rest, depth + 1, dollar, out);
    }
}
