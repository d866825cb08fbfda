//! strait-raft: the replicated log every Strait regional cluster stands on.
//!
//! It knows nothing of MQTT. The application implements [`StateMachine`] (pure, deterministic
//! `apply`, `snapshot`, `restore`); entries carry bincode-encoded command batches, so the openraft
//! type configuration ([`TypeConfig`]) is concrete and the application's types stay behind the
//! adapter in `store::state_machine`.
//!
//! Status: storage (log, vote, committed index and state-machine snapshots on sled, every write
//! flushed before it is acknowledged) passes openraft's own storage suite. The gRPC network and
//! the `RaftNode` handle (propose with batching and forwarding, leadership/lease watch,
//! membership) are the next step.

pub mod store;

use std::fmt;

use serde::{Deserialize, Serialize};

/// Format version byte in front of every encoded entry and snapshot.
pub const FORMAT_VERSION: u8 = 1;

/// An entry's application payload: a bincode-encoded batch of the application's commands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request(pub Vec<u8>);

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Request({} bytes)", self.0.len())
    }
}

/// The encoded responses to one entry's batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response(pub Vec<u8>);

openraft::declare_raft_types!(
    /// Strait's openraft type configuration.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
);

/// The application state machine. `apply` must be pure and deterministic: no clocks, no
/// randomness, no I/O (time and ids come inside the commands).
pub trait StateMachine: Default + Send + Sync + 'static {
    type Command: Serialize + for<'de> Deserialize<'de> + Send + 'static;
    type Response: Serialize + for<'de> Deserialize<'de> + Send + 'static;

    /// Apply one committed batch; one response per command.
    fn apply(&mut self, batch: Vec<Self::Command>) -> Vec<Self::Response>;
    /// The whole state as bytes.
    fn snapshot(&self) -> Vec<u8>;
    /// Replace the state with a snapshot's.
    fn restore(&mut self, bytes: &[u8]) -> Result<(), String>;
}

/// bincode 2 (serde) with the format version byte.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, std::io::Error> {
    let mut out = vec![FORMAT_VERSION];
    let body = bincode::serde::encode_to_vec(v, bincode::config::standard()).map_err(std::io::Error::other)?;
    out.extend(body);
    Ok(out)
}

pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, std::io::Error> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, rest)) => Ok(bincode::serde::decode_from_slice(rest, bincode::config::standard())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?
            .0),
        Some((v, _)) => {
            Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("unknown format version {v}")))
        }
        None => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "empty record")),
    }
}

/// openraft's own types (entries, vote, log ids, snapshot meta) are stored as JSON behind the
/// version byte: they use serde attributes (skipped fields) that a non-self-describing format
/// such as bincode cannot round-trip, which openraft's storage suite caught on `Vote`.
pub(crate) fn encode_raft<T: Serialize>(v: &T) -> Result<Vec<u8>, std::io::Error> {
    let mut out = vec![FORMAT_VERSION];
    serde_json::to_writer(&mut out, v).map_err(std::io::Error::other)?;
    Ok(out)
}

pub(crate) fn decode_raft<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, std::io::Error> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, rest)) => {
            serde_json::from_slice(rest).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        }
        Some((v, _)) => {
            Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("unknown format version {v}")))
        }
        None => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "empty record")),
    }
}
