//! The Raft log, vote and committed index on sled. Called by openraft's core only.
//!
//! Trees: `log` (index as big-endian u64 → encoded entry), `raft_meta` (`vote`, `committed`,
//! `last_purged`). Every mutation is flushed before it is acknowledged.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};

use crate::{decode_raft as decode, encode_raft as encode, TypeConfig};

type C = TypeConfig;

#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
}

fn io(e: sled::Error) -> io::Error {
    io::Error::other(e)
}

impl LogStore {
    pub fn new(db: &sled::Db) -> Result<LogStore, io::Error> {
        Ok(LogStore {
            db: db.clone(),
            log: db.open_tree("log").map_err(io)?,
            meta: db.open_tree("raft_meta").map_err(io)?,
        })
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
        let mut batch = sled::Batch::default();
        for e in entries {
            batch.insert(&e.log_id.index.to_be_bytes(), encode(&e)?);
        }
        self.log.apply_batch(batch).map_err(io)?;
        let res = self.flush().await;
        callback.io_completed(res.as_ref().map(|_| ()).map_err(|e| io::Error::new(e.kind(), e.to_string())));
        res
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
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
