//! Adapter from the application's [`StateMachine`] to openraft's `RaftStateMachine`.
//!
//! The state lives in memory; snapshots (the application's bytes plus Raft's last applied log
//! id and membership) are written to the `snapshot` tree of sled and flushed, and restored from
//! there when the node starts. Called by openraft's state-machine task only.

use std::io;
use std::io::Cursor;
use std::sync::Arc;

use futures_util::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::EntryPayload;
use tokio::sync::{mpsc, RwLock};

use crate::dedup::Dedup;
use crate::{decode, decode_raft, encode, encode_raft, Proposal, Response, StateMachine, TypeConfig};

type C = TypeConfig;

struct StoredSnapshot {
    meta: SnapshotMetaOf<C>,
    data: Vec<u8>,
}

struct Inner<S: StateMachine> {
    sm: S,
    /// Where the state machine's events go (the application's applier), in apply order.
    events: Option<mpsc::UnboundedSender<S::Event>>,
    dedup: Dedup<S::Response>,
    last_applied: Option<LogIdOf<C>>,
    membership: StoredMembershipOf<C>,
    snapshot_seq: u64,
}

/// Owned by the node; cloned into openraft (shares state).
pub struct StateMachineStore<S: StateMachine> {
    inner: Arc<RwLock<Inner<S>>>,
    tree: sled::Tree,
    db: sled::Db,
}

impl<S: StateMachine> Clone for StateMachineStore<S> {
    fn clone(&self) -> Self {
        StateMachineStore { inner: self.inner.clone(), tree: self.tree.clone(), db: self.db.clone() }
    }
}

fn io(e: sled::Error) -> io::Error {
    io::Error::other(e)
}

/// The stored snapshot, if any (meta and data are written in one batch).
fn load(tree: &sled::Tree) -> Result<Option<StoredSnapshot>, io::Error> {
    match (tree.get("meta").map_err(io)?, tree.get("data").map_err(io)?) {
        (Some(m), Some(d)) => Ok(Some(StoredSnapshot { meta: decode_raft(&m)?, data: d.to_vec() })),
        _ => Ok(None),
    }
}

impl<S: StateMachine> Inner<S> {
    /// Snapshot bytes: the request-id table (so a retried proposal stays deduplicated on a node
    /// that caught up by snapshot) and the application's own bytes.
    fn snapshot(&self) -> Result<Vec<u8>, io::Error> {
        let app = self.sm.snapshot().map_err(io::Error::other)?;
        encode(&(&self.dedup, app))
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), io::Error> {
        let (dedup, app): (Dedup<S::Response>, Vec<u8>) = decode(bytes)?;
        let mut events = Vec::new();
        self.sm.restore(&app, &mut events).map_err(io::Error::other)?;
        self.dedup = dedup;
        self.emit(events);
        Ok(())
    }

    fn emit(&self, events: Vec<S::Event>) {
        if let Some(tx) = &self.events {
            for e in events {
                let _ = tx.send(e);
            }
        }
    }
}

impl<S: StateMachine> StateMachineStore<S> {
    /// `events`: where the state machine's events go (None: nowhere).
    pub fn new(db: &sled::Db, events: Option<mpsc::UnboundedSender<S::Event>>) -> Result<Self, io::Error> {
        let tree = db.open_tree("snapshot").map_err(io)?;
        let mut inner = Inner {
            sm: S::default(),
            events,
            dedup: Dedup::default(),
            last_applied: None,
            membership: StoredMembershipOf::<C>::default(),
            snapshot_seq: 0,
        };
        if let Some(snap) = load(&tree)? {
            inner.restore(&snap.data)?;
            inner.last_applied = snap.meta.last_log_id;
            inner.membership = snap.meta.last_membership.clone();
        }
        Ok(StateMachineStore { inner: Arc::new(RwLock::new(inner)), tree, db: db.clone() })
    }

    /// Read the applied state.
    pub async fn read<T>(&self, f: impl FnOnce(&S) -> T) -> T {
        f(&self.inner.read().await.sm)
    }

    async fn save(&self, snap: &StoredSnapshot) -> Result<(), io::Error> {
        let mut batch = sled::Batch::default();
        batch.insert("meta", encode_raft(&snap.meta)?);
        batch.insert("data", snap.data.as_slice());
        self.tree.apply_batch(batch).map_err(io)?;
        self.db.flush_async().await.map_err(io)?;
        Ok(())
    }
}

impl<S: StateMachine> RaftSnapshotBuilder<C> for StateMachineStore<S> {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, Self::SnapshotData>, io::Error> {
        let started = std::time::Instant::now();
        let (meta, data) = {
            let mut inner = self.inner.write().await;
            inner.snapshot_seq += 1;
            let meta =
                SnapshotMetaOf::<C> { last_log_id: inner.last_applied, last_membership: inner.membership.clone() };
            (meta, inner.snapshot()?)
        };
        let built = started.elapsed();
        let stored = StoredSnapshot { meta: meta.clone(), data };
        self.save(&stored).await?;
        tracing::debug!(
            bytes = stored.data.len(),
            build_ms = built.as_secs_f64() * 1e3,
            save_ms = (started.elapsed() - built).as_secs_f64() * 1e3,
            last = ?meta.last_log_id.map(|l| l.index),
            "raft.snapshot"
        );
        Ok(SnapshotOf::<C, _> { meta, snapshot: Cursor::new(stored.data) })
    }
}

impl<S: StateMachine> RaftStateMachine<C> for StateMachineStore<S> {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogIdOf<C>>, StoredMembershipOf<C>), io::Error> {
        let inner = self.inner.read().await;
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + Send,
    {
        let mut inner = self.inner.write().await;
        while let Some((entry, responder)) = entries.try_next().await? {
            inner.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Response::default(),
                EntryPayload::Normal(req) => {
                    let index = entry.log_id.index;
                    let t = std::time::Instant::now();
                    let r = match decode::<Vec<Proposal<S::Command>>>(&req.0) {
                        Ok(batch) => {
                            let inner = &mut *inner;
                            let mut events = Vec::new();
                            let applied = inner.dedup.apply(&mut inner.sm, index, batch, &mut events);
                            inner.emit(events);
                            Response(encode(&applied)?)
                        }
                        // Proposals are checked before they are proposed, so this is an entry
                        // from an older or foreign writer: every replica skips it alike (the
                        // state stays identical), and it can never stop the state machine.
                        Err(e) => {
                            tracing::error!(index, "skipped a committed entry that does not decode: {e}");
                            Response::default()
                        }
                    };
                    crate::stages::APPLY.add(t);
                    r
                }
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembershipOf::<C>::new(Some(entry.log_id), m);
                    Response::default()
                }
            };
            if let Some(r) = responder {
                r.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<C>,
        snapshot: Self::SnapshotData,
    ) -> Result<(), io::Error> {
        let data = snapshot.into_inner();
        {
            let mut inner = self.inner.write().await;
            inner.restore(&data)?;
            inner.last_applied = meta.last_log_id;
            inner.membership = meta.last_membership.clone();
        }
        self.save(&StoredSnapshot { meta: meta.clone(), data }).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<C, Self::SnapshotData>>, io::Error> {
        Ok(load(&self.tree)?.map(|s| SnapshotOf::<C, _> { meta: s.meta, snapshot: Cursor::new(s.data) }))
    }
}
