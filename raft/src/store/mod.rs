//! Storage on sled: the Raft log, vote and committed index (`log.rs`) and the state machine
//! with its snapshots (`state_machine.rs`). One sled database per node; writes that openraft
//! needs durable are flushed before they are acknowledged.

pub mod log;
pub mod state_machine;

use std::path::Path;

pub use log::LogStore;
pub use state_machine::StateMachineStore;

use crate::StateMachine;

/// sled page cache of the Raft storage.
const CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// Open (or create) the node's storage at `dir`.
pub fn open<S: StateMachine>(dir: &Path) -> Result<(LogStore, StateMachineStore<S>), std::io::Error> {
    open_with(dir, None)
}

/// Open, with a sink for the state machine's events.
/// Open sled, turning a panic inside it into an error: sled 0.34 panics on some damaged files
/// ("tried to serialize Uninitialized" on a log cut part-way) instead of returning one.
pub fn open_guarded(cfg: &sled::Config) -> sled::Result<sled::Db> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cfg.open())) {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(sled::Error::Unsupported(format!(
                "the store is damaged: sled could not read it ({what}). It is not served: restore the \
                 directory from a backup, or rejoin as a new member"
            )))
        }
    }
}

pub fn open_with<S: StateMachine>(
    dir: &Path,
    events: Option<tokio::sync::mpsc::UnboundedSender<S::Event>>,
) -> Result<(LogStore, StateMachineStore<S>), std::io::Error> {
    // sled's page cache defaults to 1 GiB and grows toward it with the log; the log is
    // written once and read rarely (catch-up), so a small cache costs nothing.
    // No background flusher: every write that must last is flushed before it is acknowledged
    // (log appends, truncations, purges, votes, snapshots), and the rest (the committed id)
    // rides on the next of those. sled's flusher woke twice a second on an idle node.
    let cfg = sled::Config::new().path(dir).cache_capacity(CACHE_BYTES).flush_every_ms(None);
    // A store closed a moment ago can still be locked by sled's flusher thread: a quick
    // reopen waits for it, briefly (another live process holding it is refused after that).
    // (10 s: a loaded machine delayed the flusher past 2 s once in CI, in the storage suite's
    // close-and-reopen test.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let db = loop {
        match open_guarded(&cfg) {
            Err(sled::Error::Io(e))
                if (e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock"))
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            r => break r.map_err(std::io::Error::other)?,
        }
    };
    let log = LogStore::new(&db, dir)?;
    let sm = StateMachineStore::new(&db, events)?;
    Ok((log, sm))
}
