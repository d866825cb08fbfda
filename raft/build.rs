//! Generates the gRPC client and server for the Raft service with tonic-build's manual builder:
//! no .proto file and no system `protoc`. Every message is opaque bytes (see `net::codec`).

use tonic_build::manual::{Builder, Method, Service};

fn method(name: &str, route: &str, client_streaming: bool) -> Method {
    streaming(name, route, client_streaming, false)
}

fn streaming(name: &str, route: &str, client_streaming: bool, server_streaming: bool) -> Method {
    let b = Method::builder()
        .name(name)
        .route_name(route)
        .input_type("::bytes::Bytes")
        .output_type("::bytes::Bytes")
        .codec_path("crate::net::codec::BytesCodec");
    let b = if client_streaming { b.client_streaming() } else { b };
    let b = if server_streaming { b.server_streaming() } else { b };
    b.build()
}

fn main() {
    let raft = Service::builder()
        .name("Raft")
        .package("strait.raft")
        .method(method("append", "Append", false))
        .method(method("vote", "Vote", false))
        .method(method("pre_vote", "PreVote", false))
        .method(method("snapshot", "Snapshot", true))
        .method(method("forward", "Forward", false))
        // A follower's proposal batches, in order, answered in order (`net::forward`).
        .method(streaming("forward_stream", "ForwardStream", true, true))
        .method(method("admin", "Admin", false))
        .method(method("probe", "Probe", false))
        .build();
    // The application's node-to-node data plane: one long-lived client stream per peer.
    let peer = Service::builder().name("Peer").package("strait.peer").method(method("stream", "Stream", true)).build();
    Builder::new().build_transport(false).compile(&[raft, peer]);
    println!("cargo:rerun-if-changed=build.rs");
}
