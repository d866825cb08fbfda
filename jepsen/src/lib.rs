//! strait-jepsen: runs real `strait` nodes in network namespaces, injects faults, records every
//! client operation and checks the history. It drives the binary and real MQTT clients only,
//! never the broker's library internals.

pub mod check;
pub mod dark;
pub mod db;
pub mod disk;
pub mod history;
pub mod net;
pub mod report;
pub mod resend;
pub mod run;
pub mod workload;
