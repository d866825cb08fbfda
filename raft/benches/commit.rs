//! Commit throughput and latency of a 3-node strait-raft cluster on this machine (real gRPC on
//! 127.0.0.1, real sled stores in a temp dir), printed beside the physical floor measured in the
//! same run: a loop of 64-byte write + fdatasync on the same filesystem.
//!
//! `cargo bench -p strait-raft --bench commit` (env BENCH_N scales the counts).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use strait_raft::{RaftConfig, RaftNode, StateMachine};

#[derive(Default)]
struct Counter {
    n: u64,
    bytes: u64,
}

#[derive(Clone, Serialize, Deserialize)]
struct Cmd(Vec<u8>);

impl StateMachine for Counter {
    type Command = Cmd;
    type Response = u64;
    type Event = ();
    fn apply(&mut self, batch: Vec<Cmd>, _events: &mut Vec<()>) -> Vec<u64> {
        batch
            .into_iter()
            .map(|c| {
                self.n += 1;
                self.bytes += c.0.len() as u64;
                self.n
            })
            .collect()
    }
    fn snapshot(&self) -> Result<Vec<u8>, String> {
        strait_raft::encode(&(self.n, self.bytes)).map_err(|e| e.to_string())
    }
    fn restore(&mut self, b: &[u8], _events: &mut Vec<()>) -> Result<(), String> {
        let (n, bytes) = strait_raft::decode(b).map_err(|e| e.to_string())?;
        *self = Counter { n, bytes };
        Ok(())
    }
}

struct Stats {
    ops: usize,
    secs: f64,
    lat: Vec<Duration>,
}

impl Stats {
    fn pct(&self, p: f64) -> f64 {
        let mut l = self.lat.clone();
        l.sort();
        let i = ((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1));
        l.get(i).map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0)
    }
    fn line(&self, what: &str) {
        println!(
            "{what:<44} {:>9.0} ops/s   p50 {:>7.3} ms   p99 {:>7.3} ms   ({} ops)",
            self.ops as f64 / self.secs,
            self.pct(0.50),
            self.pct(0.99),
            self.ops
        );
    }
}

fn fdatasync_loop(dir: &std::path::Path, n: usize) -> Stats {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(&path).expect("probe file");
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&[7u8; 64]).expect("write");
        f.sync_data().expect("fdatasync");
        lat.push(t.elapsed());
    }
    Stats { ops: n, secs: start.elapsed().as_secs_f64(), lat }
}

/// What our log store pays per append: a sled insert + flush (sled's own log write + fsync).
async fn sled_flush_loop(dir: &std::path::Path, n: usize) -> Stats {
    let db = sled::Config::new().path(dir.join("sled-probe")).open().expect("sled");
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n as u64 {
        let t = Instant::now();
        db.insert(i.to_be_bytes(), &[7u8; 64][..]).expect("insert");
        db.flush_async().await.expect("flush");
        lat.push(t.elapsed());
    }
    Stats { ops: n, secs: start.elapsed().as_secs_f64(), lat }
}

async fn proposers(node: &RaftNode<Counter>, concurrency: usize, per: usize) -> Stats {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for _ in 0..per {
                let t = Instant::now();
                node.propose(Cmd(vec![1u8; 64])).await.expect("propose");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("join"));
    }
    Stats { ops: concurrency * per, secs: start.elapsed().as_secs_f64(), lat }
}

/// One caller keeping `window` proposals outstanding (`propose_ordered`, as an MQTT connection
/// with a receive window does), checking that they are answered in order.
async fn windowed(node: &RaftNode<Counter>, window: usize, n: usize) -> Stats {
    let start = Instant::now();
    let mut lat = Vec::with_capacity(n);
    let mut outstanding: std::collections::VecDeque<(
        Instant,
        tokio::task::JoinHandle<Result<u64, strait_raft::ProposeError>>,
    )> = std::collections::VecDeque::new();
    let mut last = 0u64;
    for i in 0..n + window {
        if outstanding.len() == window || i >= n {
            let Some((t, fut)) = outstanding.pop_front() else { break };
            let seen: u64 = fut.await.expect("join").expect("propose");
            assert!(seen > last, "answers out of order: {seen} after {last}");
            last = seen;
            lat.push(t.elapsed());
        }
        if i < n {
            let fut = node.propose_ordered(Cmd(vec![1u8; 64]));
            outstanding.push_back((Instant::now(), tokio::spawn(fut)));
        }
    }
    Stats { ops: n, secs: start.elapsed().as_secs_f64(), lat }
}

/// Run `phase`, then print where its commits' time went: per stage, the mean time of one
/// occurrence and how many occurred per commit (`strait_raft::stages`, every node of this
/// process counted).
async fn breakdown<F: std::future::Future<Output = Stats>>(what: &str, phase: F) {
    let before = strait_raft::stages::read();
    let stats = phase.await;
    stats.line(what);
    let after = strait_raft::stages::read();
    for ((name, about, s0, n0), (_, _, s1, n1)) in before.into_iter().zip(after) {
        let n = n1 - n0;
        if n == 0 {
            continue;
        }
        println!(
            "    {name:<10} {:>7.3} ms each, {:>4.2} per commit   {about}",
            (s1 - s0) * 1e3 / n as f64,
            n as f64 / stats.ops as f64
        );
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let scale: usize = std::env::var("BENCH_N").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let root = std::env::temp_dir().join(format!("strait-raft-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root).expect("bench dir");

    let mut listeners = Vec::new();
    let mut seeds = BTreeMap::new();
    for id in 1..=3u64 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        seeds.insert(id, l.local_addr().expect("addr").to_string());
        listeners.push((id, l));
    }
    let mut nodes = BTreeMap::new();
    for (id, l) in listeners {
        let cfg = RaftConfig {
            id,
            cluster: "bench".into(),
            advertise: seeds[&id].clone(),
            seeds: seeds.clone(),
            max_in_flight: std::env::var("BENCH_INFLIGHT").ok().and_then(|s| s.parse().ok()).unwrap_or(4),
            ..Default::default()
        };
        let dir = root.join(format!("n{id}"));
        let node = RaftNode::<Counter>::start(cfg, &dir, l, None).await.expect("start");
        nodes.insert(id, node);
    }
    let nodes = Arc::new(nodes);
    let leader = loop {
        if let Some((id, _)) = nodes.iter().find(|(_, n)| n.leadership().borrow().is_leader_with_lease()) {
            break *id;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let follower = *nodes.keys().find(|id| **id != leader).expect("follower");
    // Warm up connections.
    proposers(&nodes[&leader], 4, 50).await;

    println!("strait-raft commit benchmark: 3 nodes on 127.0.0.1, sled in {}", root.display());
    fdatasync_loop(&root, 500 * scale).line("floor: 64 B write + fdatasync loop");
    sled_flush_loop(&root, 500 * scale).await.line("sled insert + flush loop (one log append)");
    breakdown("1 sequential proposer on the leader", proposers(&nodes[&leader], 1, 1000 * scale)).await;
    breakdown("1 sequential proposer on a follower", proposers(&nodes[&follower], 1, 500 * scale)).await;
    windowed(&nodes[&leader], 32, 10_000 * scale).await.line("1 proposer, 32 outstanding, on the leader");
    windowed(&nodes[&follower], 32, 10_000 * scale).await.line("1 proposer, 32 outstanding, on a follower");
    proposers(&nodes[&leader], 64, 300 * scale).await.line("64 concurrent proposers on the leader");
    proposers(&nodes[&follower], 64, 300 * scale).await.line("64 concurrent proposers on a follower");

    for n in nodes.values() {
        n.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&root);
}
