//! strait-raft: placeholder until the crate lands.
