//! MQTT protocol: packet types, the strict server codec, topic rules.

pub mod codec;
pub mod packet;
pub mod topic;
