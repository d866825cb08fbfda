//! `strait ctl` against a real node: cluster status, links list/show/disable/enable, clients
//! list/kick, log level; exit codes a script can rely on (0 ok, 1 refused or unhealthy, 3
//! unreachable).

mod common;

use common::{addr, init};

use std::process::Command;

use common::procs::{free_ports, ProcCluster};
use common::raw::Raw;
use strait::mqtt::packet::Protocol;

/// Run `strait ctl --config CONFIG ARGS...`: exit code and stdout.
fn ctl(config: &std::path::Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_strait"))
        .arg("ctl")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run strait ctl");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    tracing::info!("strait ctl {args:?} -> {:?}\n{stdout}{stderr}", out.status.code());
    (out.status.code().unwrap_or(-1), stdout + &stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_runs_the_common_operations_with_script_friendly_exit_codes() {
    init();
    let mut a = ProcCluster::configure("cluster-a", 1, 1, "");
    // A link to a cluster that is not running: never connected.
    let b = ProcCluster::configure("cluster-b", 1, 1, "");
    a.link_to(&b, "[\"#\"]");
    a.spawn(0);
    a.wait_ready(&[0]).await;
    let cfg = a.nodes[0].config.clone();

    let (code, out) = ctl(&cfg, &["cluster", "status"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("leader n1@127.0.0.1"), "{out}");

    let (code, out) = ctl(&cfg, &["links", "list"]);
    assert_eq!(code, 1, "a link that is not connected: exit 1: {out}");
    assert!(out.contains("cluster-b"), "{out}");
    let (code, out) = ctl(&cfg, &["links", "show", "cluster-b"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"name\": \"cluster-b\""), "{out}");
    let (code, out) = ctl(&cfg, &["links", "disable", "cluster-b"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = ctl(&cfg, &["links", "list"]);
    assert_eq!(code, 0, "a disabled link is not a failure: {out}");
    assert!(out.contains("disabled"), "{out}");
    let (code, out) = ctl(&cfg, &["links", "show", "nope"]);
    assert_eq!(code, 1, "an unknown link: {out}");
    assert!(out.contains("404"), "{out}");

    let (_c, _) = Raw::connect(addr(a.nodes[0].mqtt), Protocol::V5, "to/kick me").await;
    let (code, out) = ctl(&cfg, &["clients", "list"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("to/kick me"), "{out}");
    let (code, out) = ctl(&cfg, &["clients", "kick", "to/kick me"]);
    assert_eq!(code, 0, "{out}");

    let (code, out) = ctl(&cfg, &["log", "debug"]);
    assert_eq!((code, out.trim()), (0, "debug"), "{out}");

    // A wrong key: refused (1); nobody listening: unreachable (3).
    let out = Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(["ctl", "--addr", &format!("127.0.0.1:{}", a.nodes[0].api), "--api-key", "x", "--api-secret", "y"])
        .args(["cluster", "status"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let dead = free_ports(1)[0];
    let out = Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(["ctl", "--addr", &format!("127.0.0.1:{dead}"), "cluster", "status"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    a.kill(0);
}

/// `/api/v5/ready` (open, for load balancers and Kubernetes readiness probes): 200 while the
/// node sees a leader with a lease, 503 once it is cut off (here: the other two killed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_means_a_leader_with_a_lease() {
    init();
    let mut c = ProcCluster::start(3, "");
    c.wait_ready(&[0, 1, 2]).await;
    let ready = |port: u16| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        std::io::Write::write_all(&mut s, b"GET /api/v5/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut s, &mut out);
        out.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()).unwrap_or(0)
    };
    for n in &c.nodes {
        assert_eq!(ready(n.api), 200, "ready without a key, on {}", n.name);
    }
    c.kill(1);
    c.kill(2);
    let api = c.nodes[0].api;
    common::wait_for(|| ready(api) == 503, std::time::Duration::from_secs(15), "503 from a node without a majority")
        .await;
}

/// A single node (no cluster) is healthy for `ctl cluster status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_cluster_status_on_a_single_node() {
    init();
    let mut a = ProcCluster::configure("solo", 1, 0, "");
    a.spawn(0);
    a.wait_up(0).await;
    let (code, out) = ctl(&a.nodes[0].config, &["cluster", "status"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("single node n1@127.0.0.1 (no cluster): running"), "{out}");
    a.kill(0);
}
