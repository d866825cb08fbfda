//! The Raft log, vote and committed index on sled. Called by openraft's core only.
//!
//! Trees: `log` (index as big-endian u64 → encoded entry), `raft_meta` (`vote`, `committed`,
//! `last_purged`). Every mutation is flushed before it is acknowledged.
//!
//! A damaged store must not be served as a shorter one: sled recovers to the last intact record
//! and opens a missing store as a new one, so a truncated or overwritten file would start
//! silently with part of its log. The [`Watermark`], a file beside sled's, records an index up
//! to which the log was committed and flushed here (at most a second behind); a store whose log
//! ends below it is refused at open.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};

use crate::{decode_raft as decode, encode_raft as encode, TypeConfig};

type C = TypeConfig;

#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    mark: Arc<Watermark>,
}

/// How often the watermark file is rewritten while the log moves.
const MARK_EVERY: Duration = Duration::from_secs(1);

/// The file that remembers how far this node's log was committed and flushed.
pub struct Watermark {
    path: PathBuf,
    state: Mutex<MarkState>,
}

struct MarkState {
    /// Last index flushed by an append (lowered by a truncation).
    flushed: u64,
    /// Last committed index this node was told.
    committed: u64,
    /// What the file says, and when it was written.
    written: u64,
    at: Instant,
}

impl Watermark {
    /// The file in the store's directory; its value (0 when there is none).
    pub fn open(dir: &Path) -> Result<(Watermark, u64), io::Error> {
        let path = dir.join("strait-watermark");
        let written = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse::<u64>().map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("{}: not an index ({e})", path.display()))
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        };
        let state = MarkState { flushed: 0, committed: 0, written, at: Instant::now() };
        Ok((Watermark { path, state: Mutex::new(state) }, written))
    }

    fn update(&self, f: impl FnOnce(&mut MarkState)) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut st);
        let safe = st.flushed.min(st.committed);
        if safe > st.written && st.at.elapsed() >= MARK_EVERY {
            // Written to a temporary file, synced and renamed: never half a number.
            let tmp = self.path.with_extension("tmp");
            let res = std::fs::File::create(&tmp).and_then(|mut f| {
                use std::io::Write;
                writeln!(f, "{safe}")?;
                f.sync_all()
            });
            match res.and_then(|_| std::fs::rename(&tmp, &self.path)) {
                Ok(()) => {
                    st.written = safe;
                    st.at = Instant::now();
                }
                Err(e) => tracing::warn!(path = %self.path.display(), "cannot write the store's watermark: {e}"),
            }
        }
    }
}

fn io(e: sled::Error) -> io::Error {
    io::Error::other(e)
}

impl LogStore {
    /// The log in `db`, checked against the watermark in `dir`: a log that ends below it lost
    /// data (a damaged or replaced store) and is refused.
    pub fn new(db: &sled::Db, dir: &Path) -> Result<LogStore, io::Error> {
        let (mark, expected) = Watermark::open(dir)?;
        let store = LogStore {
            db: db.clone(),
            log: db.open_tree("log").map_err(io)?,
            meta: db.open_tree("raft_meta").map_err(io)?,
            mark: Arc::new(mark),
        };
        let last = store.last_index()?;
        if last < expected {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the store is damaged: its Raft log ends at index {last}, but this node had committed and \
                     flushed up to {expected} ({}). It is not served as a shorter log. Restore the data \
                     directory from a backup, or remove it and rejoin this node as a new member \
                     (DELETE /api/v5/cluster/nodes/NAME, then POST it back)",
                    store.mark.path.display()
                ),
            ));
        }
        store.mark.update(|st| {
            st.flushed = last;
            st.committed = last.min(expected.max(st.committed));
        });
        Ok(store)
    }

    /// The index the log reaches: its last entry, or what a snapshot covers (`last_purged`).
    fn last_index(&self) -> Result<u64, io::Error> {
        let purged: Option<LogIdOf<C>> = self.get_meta("last_purged")?;
        let entry = match self.log.last().map_err(io)? {
            Some((_, v)) => Some(decode::<EntryOf<C>>(&v)?.log_id.index),
            None => None,
        };
        Ok(entry.max(purged.map(|p| p.index)).unwrap_or(0))
    }

    async fn flush(&self) -> Result<(), io::Error> {
        self.db.flush_async().await.map_err(io)?;
        Ok(())
    }

    fn get_meta<T: for<'de> serde::Deserialize<'de>>(&self, key: &str) -> Result<Option<T>, io::Error> {
        match self.meta.get(key).map_err(io)? {
            Some(v) => Ok(decode(&v)?),
            None => Ok(None),
        }
    }

    async fn put_meta<T: serde::Serialize>(&self, key: &str, v: &T) -> Result<(), io::Error> {
        self.meta.insert(key, encode(v)?).map_err(io)?;
        self.flush().await
    }
}

impl RaftLogReader<C> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<C>>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        // Purged entries may still be on disk while the background purge runs: never served.
        let purged: Option<LogIdOf<C>> = self.get_meta("last_purged")?;
        let start = match purged {
            Some(p) => start.max(p.index + 1),
            None => start,
        };
        let mut out = Vec::new();
        for kv in self.log.range(start.to_be_bytes()..) {
            let (k, v) = kv.map_err(io)?;
            let idx = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| io::Error::other("bad log key"))?);
            if !range.contains(&idx) {
                break;
            }
            out.push(decode(&v)?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        self.get_meta("vote")
    }
}

impl RaftLogStorage<C> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let last_purged: Option<LogIdOf<C>> = self.get_meta("last_purged")?;
        let last = match self.log.last().map_err(io)? {
            // (An entry left below `last_purged` by an unfinished background purge does not
            // count.)
            Some((_, v)) => {
                let e: EntryOf<C> = decode(&v)?;
                match last_purged {
                    Some(p) if p.index >= e.log_id.index => Some(p),
                    _ => Some(e.log_id),
                }
            }
            None => last_purged,
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
        self.put_meta("vote", vote).await
    }

    /// Not flushed: the committed id only saves re-applying after a restart (openraft treats
    /// it as optional). It can never run ahead of the log, whose entries are flushed before
    /// they count, and a stale one is corrected by the leader. It goes to disk with the next
    /// append's flush. This was one fsync per commit on every node, in the commit path.
    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        self.meta.insert("committed", encode(&committed)?).map_err(io)?;
        if let Some(c) = committed {
            self.mark.update(|st| st.committed = st.committed.max(c.index));
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        Ok(self.get_meta::<Option<LogIdOf<C>>>("committed")?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<C>> + Send,
        I::IntoIter: Send,
    {
        let t = std::time::Instant::now();
        let mut batch = sled::Batch::default();
        let mut last = None;
        for e in entries {
            batch.insert(&e.log_id.index.to_be_bytes(), encode(&e)?);
            last = Some(e.log_id.index);
        }
        self.log.apply_batch(batch).map_err(io)?;
        let f = std::time::Instant::now();
        let res = self.flush().await;
        crate::stages::FLUSH.add(f);
        crate::stages::APPEND.add(t);
        if let (Ok(()), Some(last)) = (&res, last) {
            self.mark.update(|st| st.flushed = last);
        }
        callback.io_completed(res.as_ref().map(|_| ()).map_err(|e| io::Error::new(e.kind(), e.to_string())));
        res
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        self.mark.update(|st| st.flushed = st.flushed.min(from.saturating_sub(1)));
        let mut batch = sled::Batch::default();
        for kv in self.log.range(from.to_be_bytes()..) {
            let (k, _) = kv.map_err(io)?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(io)?;
        self.flush().await
    }

    /// `last_purged` is recorded (and flushed) now; the entries themselves are removed by a
    /// background task, oldest first, a thousand at a time (never a hole). Removing ten
    /// thousand entries in one batch held up every append for tens of milliseconds after
    /// each snapshot. Entries below `last_purged` left by a crash are never read and go with
    /// the next purge.
    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), io::Error> {
        self.meta.insert("last_purged", encode(&log_id)?).map_err(io)?;
        self.flush().await?;
        let log = self.log.clone();
        let upto = log_id.index;
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            loop {
                let keys: Vec<sled::IVec> =
                    log.range(..=upto.to_be_bytes()).take(1000).filter_map(|kv| kv.ok().map(|(k, _)| k)).collect();
                if keys.is_empty() {
                    break;
                }
                let mut batch = sled::Batch::default();
                for k in keys {
                    batch.remove(k);
                }
                if let Err(e) = log.apply_batch(batch) {
                    tracing::warn!("raft log purge: {e}");
                    break;
                }
            }
            tracing::debug!(upto, ms = started.elapsed().as_secs_f64() * 1e3, "raft.purge");
        });
        Ok(())
    }
}
