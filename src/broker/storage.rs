//! Node-local storage on sled: persistent sessions and retained messages.
//!
//! Values are bincode 2 (serde) behind a format version byte. Retained messages and session
//! subscriptions are written when they change; queued messages of offline persistent sessions
//! are checkpointed (see `Broker::checkpoint`), and everything is flushed at shutdown.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::message::{Delivery, Message};
use super::session::SessionRecord;

/// 3: a session's queued deliveries are entries of their own beside its record (which holds
/// none), so a change writes what changed. 2: deliveries carry the cluster queue sequence
/// number. Versions 2 and 3 decode alike (a version-2 session record holds its queue, and is
/// written anew); retained messages of version 1 still decode; version-1 session records are
/// skipped with a warning.
const FORMAT_VERSION: u8 = 3;

/// Queue entries share the sessions tree (one atomic batch per write): their keys start with
/// this byte, which UTF-8 (every session record's key, a client id) never contains.
const QUEUE_KEY: u8 = 0xFF;

/// The key prefix of a session's queue entries: the marker, the client id's length and bytes.
fn queue_prefix(client_id: &str) -> Vec<u8> {
    let id = client_id.as_bytes();
    let mut k = Vec::with_capacity(3 + id.len() + 8);
    k.push(QUEUE_KEY);
    k.extend_from_slice(&(id.len() as u16).to_be_bytes());
    k.extend_from_slice(id);
    k
}

fn queue_key(prefix: &[u8], key: u64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&key.to_be_bytes());
    k
}

#[path = "storage_guard.rs"]
mod guard;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage at {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("storage encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("storage decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("storage: unknown format version {0}")]
    Version(u8),
    #[error("storage at {path}: {why}")]
    Io { path: String, why: String },
    #[error("storage at {path}: the store is damaged: {why}")]
    Damaged { path: String, why: String },
}

#[derive(Clone)]
pub struct Storage {
    db: sled::Db,
    sessions: sled::Tree,
    retained: sled::Tree,
    /// Held by whoever writes a session (see `writer`).
    writer: std::sync::Arc<std::sync::Mutex<()>>,
    /// Written since the last seal (`seal`).
    written: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Set by the first write that failed (a full disk, a failing device): sled does not
    /// recover from it in this process, so the node stops taking what it would have to store.
    failed: std::sync::Arc<std::sync::OnceLock<String>>,
    dir: std::path::PathBuf,
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StorageError> {
    let mut out = vec![FORMAT_VERSION];
    out.extend(bincode::serde::encode_to_vec(v, bincode::config::standard())?);
    Ok(out)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError> {
    match bytes.split_first() {
        Some((&(2 | FORMAT_VERSION), rest)) => {
            Ok(bincode::serde::decode_from_slice(rest, bincode::config::standard())?.0)
        }
        Some((v, _)) => Err(StorageError::Version(*v)),
        None => Err(StorageError::Version(0)),
    }
}

fn decode_retained(bytes: &[u8]) -> Result<Message, StorageError> {
    match bytes.split_first() {
        Some((&(1..=FORMAT_VERSION), rest)) => {
            Ok(bincode::serde::decode_from_slice(rest, bincode::config::standard())?.0)
        }
        Some((v, _)) => Err(StorageError::Version(*v)),
        None => Err(StorageError::Version(0)),
    }
}

impl Storage {
    pub fn open(dir: &Path) -> Result<Storage, StorageError> {
        let cfg = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(200))
            // (1 GiB by default; sessions and retained messages are also held in memory.)
            .cache_capacity(32 * 1024 * 1024);
        // A store closed a moment ago can still be locked by sled's flusher thread (it wakes
        // every 200 ms): a quick restart waits for it, briefly. Another live process holding
        // it is still refused after that.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let db = loop {
            match guard::open(dir, &cfg)? {
                Err(sled::Error::Io(e))
                    if (e.kind() == std::io::ErrorKind::WouldBlock
                        || e.to_string().contains("could not acquire lock"))
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                r => break r.map_err(|source| StorageError::Open { path: dir.display().to_string(), source })?,
            }
        };
        guard::check_identity(dir, &db)?;
        guard::check_watermark(dir, &db)?;
        let sessions = db.open_tree("sessions")?;
        let retained = db.open_tree("retained")?;
        Ok(Storage {
            db,
            sessions,
            retained,
            writer: Default::default(),
            written: Default::default(),
            failed: Default::default(),
            dir: dir.to_path_buf(),
        })
    }

    /// Session writes go one at a time (`write_session`, `remove_session`): taken by the
    /// caller around computing a session's changes and writing them.
    pub fn writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One atomic batch: the session's record, queue entries `put` (key, delivery) and `del`
    /// removed; with `replace`, every other queue entry of the session removed as well.
    pub fn write_session(
        &self,
        rec: &SessionRecord,
        put: &[(u64, Delivery)],
        del: &[u64],
        replace: bool,
    ) -> Result<(), StorageError> {
        self.usable()?;
        let prefix = queue_prefix(&rec.client_id);
        let mut batch = sled::Batch::default();
        if replace {
            for k in self.sessions.scan_prefix(&prefix).keys() {
                batch.remove(k?);
            }
        }
        for k in del {
            batch.remove(queue_key(&prefix, *k));
        }
        for (k, d) in put {
            batch.insert(queue_key(&prefix, *k), encode(d)?);
        }
        batch.insert(rec.client_id.as_bytes(), encode(rec)?);
        self.noting(self.sessions.apply_batch(batch).map_err(StorageError::from))?;
        self.wrote();
        Ok(())
    }

    /// Remove a session's record and queue (the caller holds `writer`, or runs alone).
    pub fn remove_session(&self, client_id: &str) -> Result<(), StorageError> {
        self.usable()?;
        let mut batch = sled::Batch::default();
        for k in self.sessions.scan_prefix(queue_prefix(client_id)).keys() {
            batch.remove(k?);
        }
        batch.remove(client_id.as_bytes());
        self.noting(self.sessions.apply_batch(batch).map_err(StorageError::from))?;
        self.wrote();
        Ok(())
    }

    /// Every session record, with its queue entries (key, delivery) in order; None for a
    /// record of format 2 (its queue is inside it).
    #[allow(clippy::type_complexity)]
    pub fn load_sessions(&self) -> Result<Vec<(SessionRecord, Option<Vec<(u64, Delivery)>>)>, StorageError> {
        let mut out = Vec::new();
        for kv in self.sessions.range(..[QUEUE_KEY].as_slice()) {
            let (k, v) = kv?;
            let rec: SessionRecord = match v.first() {
                Some(1) => {
                    tracing::warn!(client_id = %String::from_utf8_lossy(&k), "stored session from an older format (1): dropped");
                    continue;
                }
                Some(2) => {
                    out.push((decode(&v)?, None));
                    continue;
                }
                _ => decode(&v)?,
            };
            let prefix = queue_prefix(&rec.client_id);
            let mut entries = Vec::new();
            for kv in self.sessions.scan_prefix(&prefix) {
                let (k, v) = kv?;
                let key = k.get(prefix.len()..).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes);
                let Some(key) = key else {
                    return Err(StorageError::Damaged {
                        path: rec.client_id.clone(),
                        why: format!("a queue entry of session {} has a malformed key", rec.client_id),
                    });
                };
                entries.push((key, decode(&v)?));
            }
            out.push((rec, Some(entries)));
        }
        Ok(out)
    }

    pub fn put_retained(&self, msg: &Message) -> Result<(), StorageError> {
        self.usable()?;
        self.noting(self.retained.insert(msg.topic.as_bytes(), encode(msg)?).map_err(StorageError::from))?;
        self.wrote();
        Ok(())
    }

    pub fn remove_retained(&self, topic: &str) -> Result<(), StorageError> {
        self.usable()?;
        self.noting(self.retained.remove(topic.as_bytes()).map_err(StorageError::from))?;
        self.wrote();
        Ok(())
    }

    pub fn load_retained(&self) -> Result<Vec<Message>, StorageError> {
        let mut out = Vec::new();
        for kv in self.retained.iter() {
            let (_, v) = kv?;
            out.push(decode_retained(&v)?);
        }
        Ok(out)
    }

    /// A link change made over the API (`None`: the link was deleted), kept across restarts.
    pub fn put_link(&self, name: &str, spec: Option<&str>) -> Result<(), StorageError> {
        self.usable()?;
        let links = self.db.open_tree("links")?;
        links.insert(name.as_bytes(), encode(&spec.map(str::to_string))?)?;
        links.flush()?;
        self.wrote();
        Ok(())
    }

    pub fn load_links(&self) -> Result<std::collections::BTreeMap<String, Option<String>>, StorageError> {
        let links = self.db.open_tree("links")?;
        let mut out = std::collections::BTreeMap::new();
        for kv in links.iter() {
            let (k, v) = kv?;
            out.insert(String::from_utf8_lossy(&k).to_string(), decode(&v)?);
        }
        Ok(out)
    }

    /// The end of the last reserved block of link sequence numbers (0: none yet).
    pub fn link_seq_limit(&self) -> Result<u64, StorageError> {
        let meta = self.db.open_tree("meta")?;
        Ok(match meta.get("link_seq_limit")? {
            Some(v) => v.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0),
            None => 0,
        })
    }

    /// Reserve link sequence numbers below `limit`: on disk before any is used.
    pub fn set_link_seq_limit(&self, limit: u64) -> Result<(), StorageError> {
        self.usable()?;
        let meta = self.db.open_tree("meta")?;
        meta.insert("link_seq_limit", &limit.to_be_bytes())?;
        meta.flush()?;
        self.wrote();
        Ok(())
    }

    /// Flush everything to disk (fsync) and seal it.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.written.store(true, std::sync::atomic::Ordering::Relaxed);
        self.seal()
    }

    /// Why the store stopped taking writes, if it did.
    pub fn failed(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }

    /// Writes stop at the first failure: sled does not recover from it in this process, and a
    /// batch after it can wait forever on sled's global concurrency control.
    fn usable(&self) -> Result<(), StorageError> {
        match self.failed.get() {
            Some(e) => {
                Err(StorageError::Io { path: self.dir.display().to_string(), why: format!("failed earlier: {e}") })
            }
            None => Ok(()),
        }
    }

    /// A write's result; the first failure marks the store failed (said once, with the fix).
    fn noting<T>(&self, r: Result<T, StorageError>) -> Result<T, StorageError> {
        if let Err(e) = &r {
            if self.failed.set(e.to_string()).is_ok() {
                tracing::error!(
                    error = %e,
                    dir = %self.dir.display(),
                    "storage failed: QoS 1 and 2 publishes and persistent sessions are refused from now on \
                     (what was written before is kept); free space or replace the device, then restart the node"
                );
            }
        }
        r
    }

    fn wrote(&self) {
        self.written.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// If anything was written since the last seal: count a new generation in the store, flush
    /// it (fsync), then record the generation in the watermark file beside it. A store found
    /// at open below its watermark lost writes it had flushed (truncated, or files replaced)
    /// and is refused. Called once a second: one small fsync a second under load, nothing idle.
    pub fn seal(&self) -> Result<(), StorageError> {
        if self.failed.get().is_some() || !self.written.swap(false, std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let r = self.noting(guard::seal(&self.dir, &self.db));
        if r.is_err() {
            self.wrote();
        }
        r
    }
}
