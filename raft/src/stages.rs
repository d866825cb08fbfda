//! Where a commit's time goes: a running sum and count per stage, kept in this process (every
//! node in it, for a benchmark that runs three), read by `strait_raft::stages::read` and
//! exported as Prometheus counters by the application. Each stage costs two `Instant` reads
//! and two relaxed atomic adds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

pub struct Stage {
    pub name: &'static str,
    pub about: &'static str,
    nanos: AtomicU64,
    count: AtomicU64,
}

impl Stage {
    const fn new(name: &'static str, about: &'static str) -> Stage {
        Stage { name, about, nanos: AtomicU64::new(0), count: AtomicU64::new(0) }
    }

    pub fn add(&self, since: Instant) {
        self.nanos.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// A proposal waiting in this node's pipeline, from `propose` to being handed to the Raft core
/// (leader) or sent to the leader (follower); includes encoding its batch.
pub static QUEUE: Stage = Stage::new("queue", "proposal waiting and encoded, until handed to Raft");
/// A batch handed to this node's Raft core until its answer (the leader's whole commit:
/// append, replication, apply and the core's own scheduling).
pub static CORE: Stage = Stage::new("core", "batch in the leader's Raft core until answered");
/// A batch sent to the leader (on the forwarding stream, or one at a time through `call`) until
/// its answer comes back (a follower's whole commit).
pub static FORWARD: Stage = Stage::new("forward", "batch sent to the leader until answered");
/// One log append: encode the entries, write them to sled, flush (every node).
pub static APPEND: Stage = Stage::new("append", "log append: encode, sled write, flush");
/// The flush inside `APPEND` alone.
pub static FLUSH: Stage = Stage::new("flush", "log flush (fsync) inside an append");
/// An AppendEntries RPC, as the leader sees it: encode, gRPC round trip, decode.
pub static REPLICATE: Stage = Stage::new("replicate", "AppendEntries RPC round trip, leader side");
/// An AppendEntries RPC on the follower: decode, openraft (its own append), encode.
pub static SERVE: Stage = Stage::new("serve", "AppendEntries handled by a follower");
/// Applying one committed entry's batch to the state machine (every node).
pub static APPLY: Stage = Stage::new("apply", "state machine apply of one entry");

pub static ALL: [&Stage; 8] = [&QUEUE, &CORE, &FORWARD, &APPEND, &FLUSH, &REPLICATE, &SERVE, &APPLY];

/// (name, about, total seconds, count) of every stage.
pub fn read() -> Vec<(&'static str, &'static str, f64, u64)> {
    ALL.iter()
        .map(|s| (s.name, s.about, s.nanos.load(Ordering::Relaxed) as f64 / 1e9, s.count.load(Ordering::Relaxed)))
        .collect()
}
