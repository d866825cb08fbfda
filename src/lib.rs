//! Strait: a Raft-replicated clustered MQTT broker with cluster linking.
//!
//! `node.rs` assembles one node from its parts; `main.rs` is the CLI around it.

pub mod auth;
pub mod config;
pub mod broker;
pub mod metrics;
pub mod mqtt;
pub mod storage;
pub mod api;
pub mod listener;
pub mod node;
