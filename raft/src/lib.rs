//! strait-raft: the replicated log every Strait regional cluster stands on.
//!
//! It knows nothing of MQTT. The application implements [`StateMachine`] (pure, deterministic
//! `apply`, `snapshot`, `restore`); entries carry bincode-encoded command batches, so the openraft
//! type configuration ([`TypeConfig`]) is concrete and the application's types stay behind the
//! adapter in `store::state_machine`.
//!
//! - `store`: log, vote, committed index and state-machine snapshots on sled, every write
//!   flushed before it is acknowledged (passes openraft's own storage suite).
//! - `net`: Raft over tonic gRPC (no protoc), with snapshot streaming, proposal forwarding and a
//!   fault-injection layer.
//! - `node`: [`RaftNode`], the handle the application uses (propose, read, leadership, members).

pub mod dedup;
pub mod net;
pub mod node;
pub mod stages;
pub mod store;

pub use dedup::{Applied, Proposal, RequestId};
pub use net::{Faults, TlsFiles};
pub use node::{Leadership, ProposeError, RaftConfig, RaftNode, Secret, StartError};
pub use openraft::ServerState;

use std::fmt;

use serde::{Deserialize, Serialize};

/// Format version byte in front of every encoded entry and snapshot.
pub const FORMAT_VERSION: u8 = 1;

/// An entry's application payload: a bincode-encoded batch of the application's commands.
/// (In JSON, the format of openraft's own types on disk and on the wire, it is one base64
/// string rather than an array of numbers.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request(pub Vec<u8>);

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Request({} bytes)", self.0.len())
    }
}

/// The encoded responses to one entry's batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response(pub Vec<u8>);

mod blob {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn ser<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
        } else {
            s.serialize_bytes(b)
        }
    }

    pub fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if d.is_human_readable() {
            let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            base64::engine::general_purpose::STANDARD.decode(s.as_bytes()).map_err(serde::de::Error::custom)
        } else {
            <Vec<u8>>::deserialize(d)
        }
    }
}

macro_rules! blob_serde {
    ($t:ident) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                blob::ser(&self.0, s)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                blob::de(d).map($t)
            }
        }
    };
}
blob_serde!(Request);
blob_serde!(Response);

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
    type Command: Serialize + for<'de> Deserialize<'de> + Clone + Send + Sync + 'static;
    type Response: Serialize + for<'de> Deserialize<'de> + Clone + Send + Sync + 'static;

    /// What applying changed, for the application beside the replicated state (not replicated,
    /// not in snapshots): handed, in apply order, to the sink given to `RaftNode::start_with`.
    type Event: Send + 'static;

    /// Apply one committed batch; one response per command. What it changed goes to `events`.
    fn apply(&mut self, batch: Vec<Self::Command>, events: &mut Vec<Self::Event>) -> Vec<Self::Response>;
    /// The whole state as bytes; an error stops the snapshot (nothing partial is stored).
    fn snapshot(&self) -> Result<Vec<u8>, String>;
    /// Replace the state with a snapshot's (the application learns it through `events`).
    fn restore(&mut self, bytes: &[u8], events: &mut Vec<Self::Event>) -> Result<(), String>;
    /// Whether the applied state records that node `id` has run as a member: it committed its
    /// registration (the command given to `RaftNode::start_with`). A node whose store is new
    /// and that the cluster records this way lost its data (see `RaftNode::start`).
    fn registered(&self, _id: u64) -> bool {
        false
    }
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
