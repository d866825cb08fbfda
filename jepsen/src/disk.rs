//! Disk faults, and what a node must do about them: a data directory wiped (the node refuses to
//! start under its old identity, then rejoins as a new member the way an operator would do it),
//! its Raft store cut part-way (refused as damaged, or started if nothing committed was lost),
//! a disk filled (the node stops with the reason; given space, it starts and catches up), and
//! every node of a region killed at once (power loss). After the heal, the replicas' state
//! digests must agree (`converged`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::check::Verdict;
use crate::db::{self, api_addr, Db, RAFT_PORT};
use crate::net::{ip_of, Net};

/// What a node did about the disk fault it was given.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub node: u32,
    pub fault: &'static str,
    pub ok: bool,
    pub what: String,
}

/// The size of each node's tmpfs data directory in scenarios that fill disks.
pub const TMPFS_SIZE: &str = "256m";

pub fn data_dir(db: &Db, id: u32) -> PathBuf {
    db.dir.join(format!("data-n{id}"))
}

fn name_of(id: u32) -> String {
    format!("n{id}@{}", ip_of(id))
}

pub fn mount_tmpfs(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={TMPFS_SIZE}"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!("mounting a tmpfs at {} (needs root)", dir.display());
    }
    Ok(())
}

pub fn umount(dir: &Path) {
    let _ = std::process::Command::new("umount").arg("-l").arg(dir).status();
}

/// Fill the file system of `dir` with a file of zeros until it is full.
pub fn fill(dir: &Path) -> anyhow::Result<()> {
    let mut f = std::fs::File::create(dir.join("filler")).context("creating the filler")?;
    let chunk = vec![0u8; 1 << 20];
    loop {
        match f.write(&chunk) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return Ok(()),
            Err(e) => return Err(e).context("filling the disk"),
        }
    }
}

fn node_log(db: &Db, id: u32) -> String {
    db.nodes.iter().find(|n| n.id == id).and_then(|n| std::fs::read_to_string(&n.log).ok()).unwrap_or_default()
}

/// Waits (bounded) for node `id` to exit by itself and reaps it: its exit code, or None if it
/// still runs.
pub fn wait_exit(db: &mut Db, id: u32, within: Duration) -> anyhow::Result<Option<i32>> {
    let deadline = Instant::now() + within;
    loop {
        let n = db.node_mut(id)?;
        match n.child.as_mut().map(|c| c.try_wait()) {
            None => return Ok(None),
            Some(Ok(Some(st))) => {
                n.child = None;
                return Ok(Some(st.code().unwrap_or(-1)));
            }
            _ => {}
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A node must stop by itself (exit 2) within `within` and its log must say `why`.
fn refused(db: &mut Db, id: u32, fault: &'static str, why: &str, within: Duration) -> anyhow::Result<Outcome> {
    let code = wait_exit(db, id, within)?;
    let log = node_log(db, id);
    let said = log.contains(why);
    let (ok, what) = match code {
        Some(2) if said => (true, format!("refused (exit 2): {why}")),
        Some(c) => (false, format!("exited {c} without saying \"{why}\"")),
        None => (false, format!("still running {within:?} after the fault")),
    };
    Ok(Outcome { node: id, fault, ok, what })
}

/// A minimal HTTP/1.1 call with the API key; (status, body).
pub fn http_call(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        db::api_auth(),
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// Ask the other members of `id`'s region, in turn, until one answers `want`.
fn ask_others(db: &Db, id: u32, method: &str, path: &str, body: Option<&str>, want: u16) -> anyhow::Result<()> {
    let region = db.nodes.iter().find(|n| n.id == id).map(|n| n.region).context("no such node")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        for other in db.regions[region].ids.iter().filter(|o| **o != id) {
            match http_call(api_addr(*other), method, path, body) {
                Ok((s, _)) if s == want => return Ok(()),
                Ok((s, b)) => last = format!("{s} {b}"),
                Err(e) => last = e.to_string(),
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    bail!("{method} {path}: no member answered {want} within 30 s (last: {last})")
}

/// What an operator does for a node whose store is lost: remove it from the cluster (asking a
/// running member), start it with an empty data directory (it waits to be added), add it.
pub fn rejoin(db: &mut Db, net: &Net, id: u32) -> anyhow::Result<()> {
    db.kill(id)?;
    ask_others(db, id, "DELETE", &format!("/api/v5/cluster/nodes/{}", name_of(id)), None, 204)?;
    empty(&data_dir(db, id))?;
    db.start(net, id)?;
    let body = format!("{{\"name\": \"{}:{RAFT_PORT}\"}}", name_of(id));
    ask_others(db, id, "POST", "/api/v5/cluster/nodes", Some(&body), 201)
}

/// Wipe node `id`'s data directory while it is down, and start it.
pub fn wipe(db: &mut Db, net: &Net, id: u32) -> anyhow::Result<()> {
    db.kill(id)?;
    empty(&data_dir(db, id))?;
    db.start(net, id)
}

/// Remove everything inside `dir` (which may be a mount point, so it stays).
fn empty(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

/// Damage node `id`'s Raft store while it is down, and start it: cut to half its size, or (with
/// `flip`) 4 KiB of its second half overwritten with other bytes at a place drawn from `seed`.
pub fn truncate(db: &mut Db, net: &Net, id: u32, flip: bool, seed: u64) -> anyhow::Result<()> {
    db.kill(id)?;
    let file = data_dir(db, id).join("raft/db");
    let len = std::fs::metadata(&file).with_context(|| format!("{}", file.display()))?.len();
    let mut f = std::fs::OpenOptions::new().write(true).open(&file)?;
    if flip && len > 8192 {
        use std::io::{Seek, SeekFrom};
        let at = len / 2 + seed % (len / 2 - 4096);
        f.seek(SeekFrom::Start(at))?;
        let junk: Vec<u8> =
            (0..4096u64).map(|i| (seed.wrapping_mul(6364136223846793005).wrapping_add(i) >> 24) as u8).collect();
        f.write_all(&junk)?;
        f.sync_all()?;
        tracing::info!(node = id, at, "4 KiB of the Raft store overwritten");
    } else {
        f.set_len(len / 2)?;
        tracing::info!(node = id, from = len, to = len / 2, "the Raft store cut");
    }
    db.start(net, id)
}

/// The end of a wipe: refused with the reason, then rejoined.
pub fn after_wipe(db: &mut Db, net: &Net, id: u32) -> anyhow::Result<Outcome> {
    let o = refused(db, id, "wipe-node", "this node's store is empty", Duration::from_secs(20))?;
    rejoin(db, net, id)?;
    Ok(o)
}

/// The end of a cut store: refused as damaged (then rejoined), or running because nothing it
/// had committed was lost (the digests decide).
pub fn after_truncate(db: &mut Db, net: &Net, id: u32) -> anyhow::Result<Outcome> {
    if wait_exit(db, id, Duration::from_secs(5))?.is_none() {
        let what = "started: the damage lost nothing it had committed (the digests check it)".to_string();
        return Ok(Outcome { node: id, fault: "truncate-store", ok: true, what });
    }
    let log = node_log(db, id);
    let ok = log.contains("the store is damaged");
    let what =
        if ok { "refused (exit 2): the store is damaged".to_string() } else { "exited without the reason".into() };
    rejoin(db, net, id)?;
    Ok(Outcome { node: id, fault: "truncate-store", ok, what })
}

/// The end of a full disk: stopped with the reason; space given back, it starts and catches up.
pub fn after_fill(db: &mut Db, net: &Net, id: u32) -> anyhow::Result<Outcome> {
    let o = refused(db, id, "disk-full", "No space left on device", Duration::from_secs(20))?;
    db.kill(id)?;
    let _ = std::fs::remove_file(data_dir(db, id).join("filler"));
    db.start(net, id)?;
    Ok(o)
}

/// The verdict over every disk fault's outcome.
pub fn verdict(outcomes: &[Outcome]) -> Verdict {
    let bad: Vec<String> =
        outcomes.iter().filter(|o| !o.ok).map(|o| format!("node {} after {}: {}", o.node, o.fault, o.what)).collect();
    let summary = if bad.is_empty() {
        let seen: Vec<String> = outcomes.iter().map(|o| format!("n{} {}: {}", o.node, o.fault, o.what)).collect();
        format!("{} disk faults, each refused with its reason or harmless: {}", outcomes.len(), seen.join("; "))
    } else {
        bad.join("; ")
    };
    Verdict { name: "disk-faults", ok: bad.is_empty(), summary, offending: Vec::new(), checked: outcomes.len() as u64 }
}

/// After the heal: every region's replicas reach the same applied view with the same state
/// digest (`GET /api/v5/cluster/digest`), within `within`.
pub fn converged(db: &Db, within: Duration) -> Verdict {
    let deadline = Instant::now() + within;
    loop {
        let mut ok = true;
        let mut diverged = Vec::new();
        let mut views = Vec::new();
        for r in &db.regions {
            let got: Vec<(u32, Option<(u64, String)>)> = r
                .ids
                .iter()
                .map(|id| {
                    let v = db::http_get(api_addr(*id), "/api/v5/cluster/digest")
                        .ok()
                        .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
                        .and_then(|v| Some((v["view"].as_u64()?, v["digest"].as_str()?.to_string())));
                    (*id, v)
                })
                .collect();
            views.push(format!("{}: {got:?}", r.name));
            let answers: Vec<&(u64, String)> = got.iter().filter_map(|(_, v)| v.as_ref()).collect();
            if answers.len() != got.len() || answers.windows(2).any(|w| w[0].0 != w[1].0) {
                ok = false;
                continue;
            }
            if answers.windows(2).any(|w| w[0].1 != w[1].1) {
                diverged.push(format!("{}: {got:?}", r.name));
            }
        }
        let last = views.join("; ");
        if !diverged.is_empty() {
            return Verdict {
                name: "converged",
                ok: false,
                summary: format!("replicas at the same view disagree: {}", diverged.join("; ")),
                offending: Vec::new(),
                checked: db.nodes.len() as u64,
            };
        }
        if ok {
            return Verdict {
                name: "converged",
                ok: true,
                summary: format!("every region's replicas at one view with one digest ({last})"),
                offending: Vec::new(),
                checked: db.nodes.len() as u64,
            };
        }
        if Instant::now() > deadline {
            return Verdict {
                name: "converged",
                ok: false,
                summary: format!("the replicas did not reach one view within {within:?}: {last}"),
                offending: Vec::new(),
                checked: db.nodes.len() as u64,
            };
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
