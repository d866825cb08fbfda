//! Strait: a Raft-replicated clustered MQTT broker with cluster linking.
//!
//! `node.rs` assembles one node from its parts; `main.rs` is the CLI around it.

pub mod api;
pub mod auth;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod link;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod mqtt;
pub mod node;
