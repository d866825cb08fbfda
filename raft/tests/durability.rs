//! A node process killed with SIGKILL right after acknowledging writes has them all after
//! restart. The child is this test binary re-executed (`child_node`, which does nothing unless
//! the environment tells it to run): a real separate process on a real sled directory, killed
//! with a real SIGKILL.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{wait_for, Kv, KvCmd, TempDir};
use strait_raft::{RaftConfig, RaftNode};

const ENV_DIR: &str = "STRAIT_RAFT_CHILD_DIR";
/// First number the child proposes (distinct per round, so each round's acks are new values).
const ENV_BASE: &str = "STRAIT_RAFT_CHILD_BASE";

fn single(addr: &str) -> RaftConfig {
    RaftConfig {
        id: 1,
        cluster: "durability".into(),
        advertise: addr.to_string(),
        seeds: [(1, addr.to_string())].into_iter().collect(),
        ..Default::default()
    }
}

/// Child: a single-node cluster that proposes forever from 16 concurrent proposers and prints
/// `ack N` for each acknowledged proposal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_node() {
    let Ok(dir) = std::env::var(ENV_DIR) else { return };
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let node = RaftNode::<Kv>::start(single(&addr), std::path::Path::new(&dir), l, None).await.expect("start");
    let mut lw = node.leadership();
    while !lw.borrow_and_update().is_leader_with_lease() {
        lw.changed().await.expect("leadership");
    }
    println!("ready");
    let base: u64 = std::env::var(ENV_BASE).ok().and_then(|b| b.parse().ok()).unwrap_or(0);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(base));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let node = node.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                node.propose(KvCmd::Append("k".into(), i.to_string())).await.expect("propose");
                println!("ack {i}");
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_acknowledged_before_sigkill_survive_restart() {
    if std::env::var(ENV_DIR).is_ok() {
        return;
    }
    common::init_tracing();
    let dir = TempDir::new("sigkill");
    for round in 0..3u64 {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "child_node", "--nocapture", "--test-threads=1"])
            .env(ENV_DIR, &dir.0)
            .env(ENV_BASE, (round * 1_000_000).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let pid = child.id() as i32;
        // Read acks on a thread; kill right after the 300th ack of this round.
        let acks = std::thread::spawn(move || {
            let mut acked = BTreeSet::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("ack ") {
                    acked.insert(n.trim().parse::<u64>().expect("ack number"));
                    if acked.len() == 300 {
                        // SAFETY: plain kill(2) on our own child's pid.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            acked
        });
        let status = child.wait().expect("wait child");
        let acked = acks.join().expect("reader");
        assert!(acked.len() >= 300, "round {round}: child exited ({status}) after only {} acks", acked.len());
        tracing::info!("== round {round}: killed after {} acks ({status})", acked.len());

        // Restart in this process on the same directory: every acknowledged write is there.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let node = RaftNode::<Kv>::start(single(&addr), &dir.0, l, None).await.expect("restart");
        let applied: BTreeSet<u64> = wait_for("restarted node to apply its log", Duration::from_secs(10), || {
            let node = node.clone();
            let acked = acked.clone();
            async move {
                let have: BTreeSet<u64> = node
                    .read(|kv| {
                        kv.map
                            .get("k")
                            .map(|v| v.split(',').filter_map(|s| s.parse().ok()).collect())
                            .unwrap_or_default()
                    })
                    .await;
                acked.is_subset(&have).then_some(have)
            }
        })
        .await;
        let missing: Vec<_> = acked.difference(&applied).collect();
        assert!(missing.is_empty(), "round {round}: acknowledged but lost: {missing:?}");
        node.shutdown().await;
    }
}
