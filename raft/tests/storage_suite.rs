//! openraft's own storage test suite (written by openraft's authors) run against our sled store,
//! plus a durability check: entries, vote and snapshot survive reopening the database.

use std::collections::BTreeMap;
use std::path::PathBuf;

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;
use serde::{Deserialize, Serialize};
use strait_raft::store::{self, LogStore, StateMachineStore};
use strait_raft::{StateMachine, TypeConfig};

/// A small key-value state machine for the tests.
#[derive(Default)]
struct Kv(BTreeMap<String, String>);

#[derive(Clone, Serialize, Deserialize)]
enum Cmd {
    Set(String, String),
}

impl StateMachine for Kv {
    type Command = Cmd;
    type Response = Option<String>;
    type Event = ();
    fn apply(&mut self, batch: Vec<Cmd>, _events: &mut Vec<()>) -> Vec<Option<String>> {
        batch.into_iter().map(|Cmd::Set(k, v)| self.0.insert(k, v)).collect()
    }
    fn snapshot(&self) -> Result<Vec<u8>, String> {
        strait_raft::encode(&self.0).map_err(|e| e.to_string())
    }
    fn restore(&mut self, bytes: &[u8], _events: &mut Vec<()>) -> Result<(), String> {
        self.0 = strait_raft::decode(bytes).map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// Removes the test's sled directory when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> TempDir {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d =
        std::env::temp_dir().join(format!("strait-raft-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    let _ = std::fs::remove_dir_all(&d);
    TempDir(d)
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore<Kv>, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore<Kv>), StorageError<TypeConfig>> {
        let dir = tempdir();
        let (log, sm) = store::open::<Kv>(&dir.0)
            .map_err(|e| StorageError::from_io_error(openraft::ErrorSubject::Store, openraft::ErrorVerb::Read, e))?;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    Suite::test_all(Builder).await.expect("openraft storage suite passes against the sled store");
}

#[tokio::test]
async fn log_vote_and_snapshot_survive_reopen() {
    use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
    use openraft::{EntryPayload, RaftTypeConfig};
    type Entry = <TypeConfig as RaftTypeConfig>::Entry;
    type Vote = <TypeConfig as RaftTypeConfig>::Vote;
    let dir = tempdir();
    let log_id = |term: u64, index: u64| {
        openraft::LogId::new(openraft::impls::leader_id_adv::LeaderId { term, node_id: 1 }, index)
    };
    let req = strait_raft::Request(
        strait_raft::encode(&vec![strait_raft::Proposal {
            id: strait_raft::RequestId { origin: 1, seq: 0 },
            cmd: Cmd::Set("k".into(), "v".into()),
        }])
        .expect("encode"),
    );
    {
        let (mut log, mut sm) = store::open::<Kv>(&dir.0).expect("open");
        let entries: Vec<Entry> =
            (1..=3).map(|i| Entry { log_id: log_id(1, i), payload: EntryPayload::Normal(req.clone()) }).collect();
        log.append(entries.clone(), IOFlushed::noop()).await.expect("append");
        log.save_vote(&Vote::new(1, 1)).await.expect("vote");
        let stream = futures_util::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
        sm.apply(stream).await.expect("apply");
        sm.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
    }
    tracing::info!("--- reopen");
    let (mut log, mut sm) = store::open::<Kv>(&dir.0).expect("reopen");
    assert_eq!(log.try_get_log_entries(1..4).await.expect("read").len(), 3, "entries survive");
    assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(1, 1)), "vote survives");
    assert_eq!(sm.applied_state().await.expect("applied").0, Some(log_id(1, 3)), "snapshot restores last applied");
    assert_eq!(sm.read(|kv| kv.0.get("k").cloned()).await.as_deref(), Some("v"), "snapshot restores the state");
}
