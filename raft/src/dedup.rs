//! Exactly-once application of proposals.
//!
//! Every proposal carries a request id: the proposing node's incarnation (`origin`, random per
//! process start) and a sequence number. A proposal retried after a lost answer (leader change,
//! timeout while forwarding) comes back with the same id; the state machine then returns the
//! response it gave the first time instead of applying it again. The table is part of the
//! replicated state (in snapshots too), and it is pruned deterministically: the newest
//! [`WINDOW`] responses per origin, the [`ORIGINS`] most recently active origins.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::StateMachine;

/// Responses remembered per origin.
pub const WINDOW: usize = 4096;
/// Origins remembered.
pub const ORIGINS: usize = 1024;

/// A proposal's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId {
    pub origin: u64,
    pub seq: u64,
}

/// One command with its id, as an entry carries it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proposal<Cmd> {
    pub id: RequestId,
    pub cmd: Cmd,
}

/// What applying one proposal gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied<R> {
    /// Applied now, or earlier (a retried proposal gets its first response).
    Done(R),
    /// So old a retry that its response was pruned: it was applied once, its answer is gone.
    Expired,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Origin<R> {
    last_index: u64,
    /// Sequence numbers below this were pruned.
    floor: u64,
    responses: BTreeMap<u64, R>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dedup<R> {
    origins: BTreeMap<u64, Origin<R>>,
}

impl<R> Default for Dedup<R> {
    fn default() -> Self {
        Dedup { origins: BTreeMap::new() }
    }
}

impl<R: Clone> Dedup<R> {
    fn seen(&self, id: RequestId) -> Option<Applied<R>> {
        let o = self.origins.get(&id.origin)?;
        if let Some(r) = o.responses.get(&id.seq) {
            return Some(Applied::Done(r.clone()));
        }
        if id.seq < o.floor {
            return Some(Applied::Expired);
        }
        None
    }

    fn record(&mut self, id: RequestId, index: u64, r: R) {
        let o = self.origins.entry(id.origin).or_insert_with(|| Origin {
            last_index: index,
            floor: 0,
            responses: BTreeMap::new(),
        });
        o.last_index = index;
        o.responses.insert(id.seq, r);
        while o.responses.len() > WINDOW {
            if let Some((s, _)) = o.responses.pop_first() {
                o.floor = o.floor.max(s + 1);
            }
        }
        if self.origins.len() > ORIGINS {
            // Deterministic: the least recently active origin (ties: the smallest id) goes.
            let oldest = self.origins.iter().min_by_key(|(k, o)| (o.last_index, **k)).map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.origins.remove(&k);
            }
        }
    }

    /// Apply one entry's proposals at log `index`: new ones go to the state machine as one
    /// batch, duplicates get their recorded response. One result per proposal, in order.
    pub fn apply<S>(
        &mut self,
        sm: &mut S,
        index: u64,
        batch: Vec<Proposal<S::Command>>,
        events: &mut Vec<S::Event>,
    ) -> Vec<Applied<R>>
    where
        S: StateMachine<Response = R>,
    {
        let mut out: Vec<Option<Applied<R>>> = Vec::with_capacity(batch.len());
        let mut fresh = Vec::with_capacity(batch.len());
        let mut fresh_ids = Vec::with_capacity(batch.len());
        for p in batch {
            // (Ids within one batch are distinct: the proposer numbers them.)
            match self.seen(p.id) {
                Some(r) => out.push(Some(r)),
                None => {
                    out.push(None);
                    fresh_ids.push(p.id);
                    fresh.push(p.cmd);
                }
            }
        }
        let n = fresh.len();
        let mut responses = if n > 0 { sm.apply(fresh, events) } else { Vec::new() }.into_iter();
        let mut ids = fresh_ids.into_iter();
        out.into_iter()
            .map(|slot| match slot {
                Some(r) => r,
                None => match (ids.next(), responses.next()) {
                    (Some(id), Some(r)) => {
                        self.record(id, index, r.clone());
                        Applied::Done(r)
                    }
                    // A state machine that returned fewer responses than commands: nothing to
                    // cache; the proposer is told its answer is unknown.
                    _ => Applied::Expired,
                },
            })
            .collect()
    }
}
