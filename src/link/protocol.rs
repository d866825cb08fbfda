//! The link protocol: what a link client and the cluster it links to say to each other beyond
//! plain MQTT 5 (CONNECT, CONNACK and PUBLISH user properties). One version: a link client of
//! another version is refused with 0x84 and told why.

/// CONNECT user property by which another cluster's link client names its cluster.
pub const LINK_PROPERTY: &str = "strait-link";
/// CONNECT user property carrying the link protocol version; a link client of another version
/// is refused (0x84) with the reason in its link status.
pub const LINK_VERSION_PROPERTY: &str = "strait-link-version";
pub const LINK_VERSION: &str = "1";
/// CONNECT user property naming the cluster a link client means to reach (its link's name):
/// a link pointed at the wrong cluster is refused (0x87) instead of pulling its messages.
pub const LINK_TARGET_PROPERTY: &str = "strait-link-target";
/// CONNECT user properties naming the node that holds the link and its Raft term (logged by
/// the accepting side, shown in its API).
pub const LINK_ACTOR_PROPERTY: &str = "strait-link-actor";
pub const LINK_INCARNATION_PROPERTY: &str = "strait-link-incarnation";
/// User property of a message sent over a link: its sequence number in the sending cluster.
pub const LINK_SEQ_PROPERTY: &str = "strait-link-seq";
/// User property of a message sent over a link: the QoS it was published with.
pub const LINK_QOS_PROPERTY: &str = "strait-link-qos";
/// CONNACK user property (repeated) to a link client: one route its session holds.
pub const LINK_ROUTE_PROPERTY: &str = "strait-link-route";
/// Largest CONNACK (with its route list) a link client takes.
pub const LINK_MAX_CONNACK: u32 = 64 * 1024 * 1024;
/// CONNACK user property: the route list was cut short (it did not fit the packet).
pub const LINK_ROUTES_CUT_PROPERTY: &str = "strait-link-routes-cut";
