//! Scenarios: a topology, a workload and a nemesis schedule; `run` executes one from network
//! setup to report.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::check::{self, CheckConfig, Verdict};
use crate::dark;
use crate::db::{self, Db, Region};
use crate::disk;
use crate::history::{Kind, Phase, Recorder, F, NEMESIS};
use crate::net::{self, Net};
use crate::report;
use crate::workload::{self, Ctx};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    PartitionHalves,
    IsolateNode,
    IsolateLeader,
    Ring,
    Bridge,
    Loss,
    Bandwidth,
    PauseNode,
    PauseLeader,
    KillNode,
    KillLeader,
    ClockSkew,
    /// Cut every path between the two regions.
    LinkCut,
    /// SIGKILL the leader of the receiving region (it holds the link that pulls the messages).
    KillLinkHolder,
    /// SIGKILL the sending region's node that serves the receiving region's link client.
    KillLinkServer,
    /// Cut the sending region's node that serves the link client from its region's other
    /// nodes (a minority of one; the link client still reaches it).
    IsolateLinkServer,
    /// A node's data directory wiped while it is down; it must refuse to start, then rejoins.
    WipeNode,
    /// A node's Raft store cut to half, or 4 KiB of it overwritten, while it is down.
    TruncateStore,
    /// Every node of the region SIGKILLed at once, restarted together.
    PowerLoss,
    /// A node's disk (a tmpfs of its own) filled.
    DiskFull,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    /// Faults drawn at random, one per cycle.
    pub faults: &'static [Fault],
    pub nodes: usize,
    /// Two linked regions (publishers in the first, subscribers in the second).
    pub linked: bool,
    pub qos: u8,
    /// Part of the short CI selection.
    pub ci: bool,
    /// The persistent subscribers go away on purpose (a clean disconnect, session kept) for
    /// longer than their queue bound holds at the publishers' rate, as devices do.
    pub offline_subs: bool,
}

use Fault::*;

pub fn scenarios() -> Vec<Scenario> {
    let s = |name, about, faults, nodes, qos, ci| Scenario {
        name,
        about,
        faults,
        nodes,
        linked: false,
        qos,
        ci,
        offline_subs: false,
    };
    vec![
        s("partition-halves", "random halves cut from each other", &[PartitionHalves], 3, 1, true),
        s("isolate-leader", "the Raft leader cut from every peer", &[IsolateLeader], 3, 1, false),
        s("isolate-node", "a random node cut from every peer", &[IsolateNode], 3, 1, false),
        s("majorities-ring", "5 nodes, each sees only its ring neighbours (a majority each)", &[Ring], 5, 1, false),
        s("bridge", "5 nodes, two halves joined by one node", &[Bridge], 5, 1, false),
        s("packet-loss", "20% of node-to-node packets dropped (iptables statistic)", &[Loss], 3, 1, false),
        s("bandwidth", "node egress limited to 1 Mbit/s (tc tbf)", &[Bandwidth], 3, 1, false),
        s("pause-leader", "SIGSTOP the leader, SIGCONT later", &[PauseLeader], 3, 1, true),
        s("pause-node", "SIGSTOP a random node", &[PauseNode], 3, 1, false),
        s("kill-leader", "SIGKILL the leader, restart it later", &[KillLeader], 3, 1, true),
        s("kill-node", "SIGKILL a random node, restart it later", &[KillNode], 3, 1, false),
        s(
            "kill-leader-qos2",
            "SIGKILL the leader under QoS 2 traffic; publishers resend (DUP) on the next node",
            &[KillLeader],
            3,
            2,
            true,
        ),
        s("clock-skew", "node clocks moved by up to ±60 s (libfaketime)", &[ClockSkew], 3, 1, false),
        s(
            "mixed",
            "partitions, pauses, kills and loss in turn",
            &[PartitionHalves, IsolateLeader, PauseNode, KillLeader, KillNode, Loss],
            3,
            1,
            false,
        ),
        Scenario {
            name: "offline-subscribers",
            about: "the persistent subscribers go away for 15 s at a time (their queues overflow the \
                    shipped bound; the broker's reported drops must account for every gap); leader kills",
            faults: &[KillLeader],
            nodes: 3,
            linked: false,
            qos: 1,
            ci: false,
            offline_subs: true,
        },
        Scenario {
            name: "link-cut",
            about: "two linked 3-node regions; every path between them cut",
            faults: &[LinkCut],
            nodes: 3,
            linked: true,
            qos: 1,
            ci: false,
            offline_subs: false,
        },
        Scenario {
            name: "link-kill-holder",
            about: "two linked regions; SIGKILL the receiving region's leader (the link holder)",
            faults: &[KillLinkHolder],
            nodes: 3,
            linked: true,
            qos: 1,
            ci: true,
            offline_subs: false,
        },
        Scenario {
            name: "link-sending-faults",
            about: "two linked regions; the sending region's node that serves the link killed, or cut \
                    from its region (a minority of one); the dark window is checked",
            faults: &[KillLinkServer, IsolateLinkServer],
            nodes: 3,
            linked: true,
            qos: 1,
            ci: true,
            offline_subs: false,
        },
        Scenario {
            name: "link-kill-holder-qos2",
            about: "two linked regions, QoS 2 end to end; SIGKILL the link holder (no duplicates)",
            faults: &[KillLinkHolder],
            nodes: 3,
            linked: true,
            qos: 2,
            ci: false,
            offline_subs: false,
        },
        s(
            "wipe-node",
            "a node's data directory wiped; it refuses, then rejoins as a new member",
            &[WipeNode],
            3,
            1,
            false,
        ),
        s(
            "truncate-store",
            "a node's Raft store cut to half, or 4 KiB overwritten, while it is down",
            &[TruncateStore],
            3,
            1,
            false,
        ),
        s("power-loss", "every node SIGKILLed at once, restarted together", &[PowerLoss], 3, 1, false),
        s("disk-full", "a node's disk (a tmpfs of its own) filled, then given space", &[DiskFull], 3, 1, false),
        s(
            "disks",
            "wiped data directories, cut stores, power loss and full disks in turn",
            &[WipeNode, TruncateStore, PowerLoss, DiskFull],
            3,
            1,
            true,
        ),
        Scenario {
            name: "link-partition",
            about: "two linked regions; halves of the receiving region cut",
            faults: &[PartitionHalves],
            nodes: 3,
            linked: true,
            qos: 1,
            ci: false,
            offline_subs: false,
        },
    ]
}

pub struct Options {
    pub time: Duration,
    pub nodes: Option<usize>,
    pub seed: u64,
    pub strait: PathBuf,
    pub out: PathBuf,
    pub interrupted: Arc<AtomicBool>,
}

pub struct Outcome {
    pub verdicts: Vec<Verdict>,
    pub summary: String,
    pub dir: PathBuf,
}

/// An active fault, to be undone at the end of its window.
struct Active {
    fault: Fault,
    name: String,
    nodes: Vec<u32>,
    minority: Vec<u32>,
}

fn fault_name(f: Fault) -> &'static str {
    match f {
        PartitionHalves => "partition-halves",
        IsolateNode => "isolate-node",
        IsolateLeader => "isolate-leader",
        Ring => "majorities-ring",
        Bridge => "bridge",
        Loss => "packet-loss",
        Bandwidth => "bandwidth",
        PauseNode => "pause-node",
        PauseLeader => "pause-leader",
        KillNode => "kill-node",
        KillLeader => "kill-leader",
        ClockSkew => "clock-skew",
        LinkCut => "link-cut",
        KillLinkHolder => "kill-link-holder",
        KillLinkServer => "kill-link-server",
        IsolateLinkServer => "isolate-link-server",
        WipeNode => "wipe-node",
        TruncateStore => "truncate-store",
        PowerLoss => "power-loss",
        DiskFull => "disk-full",
    }
}

/// The region of the subscribers, and whose nodes most faults target: the receiving one when
/// linked.
fn target_region(linked: bool) -> usize {
    usize::from(linked)
}

/// The longest a linked run may go without a message crossing after a fault starts or heals:
/// a link that lost every server waits the shipped `retry_interval` (5 s, +20 % jitter) before
/// its next round, then connects (one failover, ~1 s).
const DARK_BOUND_MS: u64 = 10_000;

/// Faults aimed at the sending region (the publishers' one).
const SENDING_SIDE: &[Fault] = &[KillLinkServer, IsolateLinkServer];

fn start_fault(f: Fault, net: &Net, db: &mut Db, linked: bool, rng: &mut StdRng) -> anyhow::Result<Active> {
    let region = if SENDING_SIDE.contains(&f) { 0 } else { target_region(linked) };
    let ids = db.regions[region].ids.clone();
    let pick = |rng: &mut StdRng| ids[rng.random_range(0..ids.len())];
    let leader = |db: &Db, rng: &mut StdRng| db.leader(region).unwrap_or_else(|| ids[rng.random_range(0..ids.len())]);
    let mut a = Active { fault: f, name: fault_name(f).into(), nodes: Vec::new(), minority: Vec::new() };
    match f {
        PartitionHalves => {
            let mut shuffled = ids.clone();
            for i in (1..shuffled.len()).rev() {
                shuffled.swap(i, rng.random_range(0..=i));
            }
            let (small, big) = shuffled.split_at(shuffled.len() / 2);
            net.cut(&net::split(&[small.to_vec(), big.to_vec()]))?;
            a.nodes = ids.clone();
            a.minority = small.to_vec();
        }
        IsolateNode | IsolateLeader => {
            let n = if f == IsolateLeader { leader(db, rng) } else { pick(rng) };
            let rest: Vec<u32> = ids.iter().copied().filter(|i| *i != n).collect();
            net.cut(&net::split(&[vec![n], rest]))?;
            a.nodes = vec![n];
            a.minority = vec![n];
        }
        Ring => {
            net.cut(&net::ring_cuts(&ids))?;
            a.nodes = ids.clone();
        }
        Bridge => {
            net.cut(&net::bridge_cuts(&ids))?;
            a.nodes = ids.clone();
        }
        Loss => {
            net.loss(&ids, 20)?;
            a.nodes = ids.clone();
        }
        Bandwidth => {
            net.bandwidth(&ids, "1mbit")?;
            a.nodes = ids.clone();
        }
        PauseNode | PauseLeader => {
            let n = if f == PauseLeader { leader(db, rng) } else { pick(rng) };
            db.pause(n)?;
            a.nodes = vec![n];
        }
        KillNode | KillLeader | KillLinkHolder => {
            let n = if f == KillNode { pick(rng) } else { leader(db, rng) };
            db.kill(n)?;
            a.nodes = vec![n];
        }
        KillLinkServer | IsolateLinkServer => {
            let n = db.link_server(region, 1).unwrap_or_else(|| pick(rng));
            if f == KillLinkServer {
                db.kill(n)?;
            } else {
                let rest: Vec<u32> = ids.iter().copied().filter(|i| *i != n).collect();
                net.cut(&net::split(&[vec![n], rest]))?;
                a.minority = vec![n];
            }
            a.nodes = vec![n];
        }
        ClockSkew => {
            for &n in &ids {
                let s: i64 = rng.random_range(-60..=60);
                db.skew(n, &format!("{s:+}s"))?;
            }
            a.nodes = ids.clone();
        }
        LinkCut => {
            let groups: Vec<Vec<u32>> = db.regions.iter().map(|r| r.ids.clone()).collect();
            net.cut(&net::split(&groups))?;
            a.nodes = db.ids();
        }
        WipeNode | TruncateStore | DiskFull => {
            let n = pick(rng);
            match f {
                WipeNode => disk::wipe(db, net, n)?,
                TruncateStore => disk::truncate(db, net, n, rng.random_bool(0.5), rng.random())?,
                _ => disk::fill(&disk::data_dir(db, n))?,
            }
            a.nodes = vec![n];
        }
        PowerLoss => {
            for &n in &ids {
                db.kill(n)?;
            }
            a.nodes = ids.clone();
        }
    }
    Ok(a)
}

/// Undo a fault; for a disk fault, what the node did about it.
fn stop_fault(a: &Active, net: &Net, db: &mut Db) -> anyhow::Result<Option<disk::Outcome>> {
    let n = a.nodes.first().copied().unwrap_or_default();
    match a.fault {
        WipeNode => return disk::after_wipe(db, net, n).map(Some),
        TruncateStore => return disk::after_truncate(db, net, n).map(Some),
        DiskFull => return disk::after_fill(db, net, n).map(Some),
        _ => {}
    }
    match a.fault {
        PauseNode | PauseLeader => {
            for &n in &a.nodes {
                db.resume(n)?;
            }
        }
        KillNode | KillLeader | KillLinkHolder | KillLinkServer | PowerLoss => {
            for &n in &a.nodes {
                db.start(net, n)?;
            }
        }
        ClockSkew => {
            for &n in &a.nodes {
                db.skew(n, "+0s")?;
            }
        }
        _ => net.heal()?,
    }
    Ok(None)
}

fn faketime_available() -> bool {
    std::path::Path::new(db::FAKETIME_LIB).is_file()
}

/// Runs one scenario; the network is created and removed here.
pub fn run(s: &Scenario, o: &Options) -> anyhow::Result<Outcome> {
    net::preflight()?;
    if s.faults.contains(&ClockSkew) && !faketime_available() {
        anyhow::bail!("scenario {} needs libfaketime ({}): apt-get install faketime", s.name, db::FAKETIME_LIB);
    }
    let n = o.nodes.unwrap_or(s.nodes).clamp(3, 9);
    let regions = if s.linked {
        vec![
            Region { name: "jepsen-a".into(), ids: (1..=n as u32).collect() },
            Region { name: "jepsen-b".into(), ids: (11..11 + n as u32).collect() },
        ]
    } else {
        vec![Region { name: "jepsen".into(), ids: (1..=n as u32).collect() }]
    };
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let dir = o.out.join(format!("{}-{stamp}", s.name));
    let all_ids: Vec<u32> = regions.iter().flat_map(|r| r.ids.clone()).collect();
    let net = Net::create(&all_ids)?;
    let result = (|| {
        let mut db = Db::new(
            o.strait.clone(),
            dir.join("nodes"),
            regions,
            s.faults.contains(&ClockSkew),
            s.faults.contains(&DiskFull),
        )?;
        db.start_all(&net)?;
        let r = execute(s, o, &net, &mut db, &dir);
        db.stop_all();
        r
    })();
    net::cleanup();
    result
}

fn execute(s: &Scenario, o: &Options, net: &Net, db: &mut Db, dir: &std::path::Path) -> anyhow::Result<Outcome> {
    db.wait_ready(Duration::from_secs(60))?;
    if s.linked {
        db.wait_links(Duration::from_secs(60))?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let t0 = Instant::now();
    let rec = Recorder::new(t0);
    let ctx = Ctx::new(rec.clone(), t0);
    let pub_nodes = db.regions[0].ids.clone();
    let sub_nodes = db.regions[target_region(s.linked)].ids.clone();
    let all_nodes = db.ids();
    let mut rng = StdRng::seed_from_u64(o.seed);
    let mut tasks = Vec::new();
    let mut process = 0u32;
    let mut next = || {
        process += 1;
        process
    };
    // Probes of every node, persistent subscribers, then (once they are subscribed) the rest.
    for &node in &all_nodes {
        tasks.push(rt.spawn(workload::prober(ctx.clone(), next(), node, Duration::from_millis(500))));
    }
    let mut readies = Vec::new();
    for k in 0..2 {
        let ready = Arc::new(AtomicBool::new(false));
        readies.push(ready.clone());
        let mut nodes = sub_nodes.clone();
        let len = nodes.len();
        nodes.rotate_left(k % len);
        // Away: connected for 4–5 s, then gone for 15 s (at the publishers' ~80–100 msg/s in
        // all, more than the shipped 1,000-message queue holds).
        let away = s.offline_subs.then(|| (Duration::from_millis(4000 + 1000 * k as u64), Duration::from_secs(15)));
        tasks.push(rt.spawn(workload::subscriber(
            ctx.clone(),
            next(),
            format!("sub{k}"),
            "q/#".into(),
            s.qos,
            nodes,
            ready,
            away,
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !readies.iter().all(|r| r.load(Ordering::Relaxed)) {
        anyhow::ensure!(Instant::now() < deadline, "subscribers not subscribed within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    if s.linked {
        // Routes cross the link asynchronously: publish warm-up messages in the first region
        // until both subscribers (in the second) have one.
        let c = ctx.clone();
        let p = next();
        let node = pub_nodes[0];
        rt.block_on(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut seq = 0;
            while c.deliveries.load(Ordering::Relaxed) < 2 {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "no message crossed the link within 30 s of the subscriptions"
                );
                seq += 1;
                let payload = format!("warmup-{seq}");
                let f = F::Publish {
                    publisher: "warmup".into(),
                    seq,
                    topic: "q/warmup".into(),
                    payload: payload.clone(),
                    qos: 0,
                    retain: false,
                };
                if let Ok((cl, mut el, _)) =
                    workload::connect(&format!("warmup-{seq}"), db::mqtt_addr(node), true).await
                {
                    let id = c.rec.invoke(p, Some(node), f.clone());
                    let _ = cl.try_publish("q/warmup", rumqttc::QoS::AtMostOnce, false, payload.into_bytes());
                    let _ =
                        tokio::time::timeout(Duration::from_millis(300), async { while el.poll().await.is_ok() {} })
                            .await;
                    c.rec.complete(p, id, Kind::Info, Some(node), f, None);
                }
            }
            anyhow::Ok(())
        })?;
    }
    for k in 0..3u32 {
        let mut nodes = pub_nodes.clone();
        let len = nodes.len();
        nodes.rotate_left(k as usize % len);
        let (p, name, topic, pace) = (next(), format!("p{k}"), format!("q/{k}"), Duration::from_millis(10));
        // QoS 2 publishers keep their session and resend (DUP) on the next node.
        tasks.push(match s.qos {
            2 => rt.spawn(crate::resend::publisher(ctx.clone(), p, name, topic, nodes, pace)),
            q => rt.spawn(workload::publisher(ctx.clone(), p, name, topic, q, nodes, pace)),
        });
    }
    if !s.linked {
        tasks.push(rt.spawn(workload::retain_writer(
            ctx.clone(),
            next(),
            all_nodes.clone(),
            Duration::from_millis(300),
        )));
        tasks.push(rt.spawn(workload::retain_reader(
            ctx.clone(),
            next(),
            all_nodes.clone(),
            Duration::from_millis(300),
        )));
    }
    // The nemesis: quiet 3 s, fault 5 s, in turn, until the time is up.
    let end = Instant::now() + o.time;
    let mut crash: Vec<(u32, String)> = Vec::new();
    let mut disk_outcomes: Vec<disk::Outcome> = Vec::new();
    while Instant::now() + Duration::from_secs(8) < end && !o.interrupted.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_secs(3));
        let f = s.faults[rng.random_range(0..s.faults.len())];
        let a = start_fault(f, net, db, s.linked, &mut rng).with_context(|| format!("starting {f:?}"))?;
        tracing::info!(fault = %a.name, nodes = ?a.nodes, minority = ?a.minority, "nemesis start");
        rec.event(
            NEMESIS,
            Kind::Info,
            None,
            F::Nemesis {
                name: a.name.clone(),
                phase: Phase::Start,
                nodes: a.nodes.clone(),
                minority: a.minority.clone(),
                detail: format!("{f:?}"),
            },
        );
        std::thread::sleep(Duration::from_secs(5));
        if let Some(o) = stop_fault(&a, net, db).with_context(|| format!("ending {f:?}"))? {
            tracing::info!(node = o.node, fault = o.fault, ok = o.ok, "disk fault: {}", o.what);
            disk_outcomes.push(o);
        }
        rec.event(
            NEMESIS,
            Kind::Info,
            None,
            F::Nemesis {
                name: a.name.clone(),
                phase: Phase::Stop,
                nodes: a.nodes.clone(),
                minority: a.minority.clone(),
                detail: String::new(),
            },
        );
        tracing::info!(fault = %a.name, "nemesis stop");
        crash.extend(db.crashed());
    }
    // Final heal: every fault removed, every node running.
    net.heal()?;
    crash.extend(db.crashed());
    db.heal(net)?;
    rec.event(
        NEMESIS,
        Kind::Info,
        None,
        F::Nemesis {
            name: "final-heal".into(),
            phase: Phase::Stop,
            nodes: all_nodes.clone(),
            minority: Vec::new(),
            detail: "all faults removed, every node running".into(),
        },
    );
    let healed = Instant::now();
    tracing::info!("final heal");
    // Recovery: every node answers a probe (bounded), then publishers stop.
    let recovered = wait_probes_ok(&rec, &all_nodes, Duration::from_secs(60));
    tracing::info!(after_ms = healed.elapsed().as_millis() as u64, ok = recovered.is_ok(), "recovery");
    ctx.stop.store(true, Ordering::Relaxed);
    // Drain: subscribers receive until 5 s without a delivery (at most 60 s), counted from the
    // later of the last delivery and the publishers' stop. Counting from the last delivery
    // alone ended the drain at once after a fault that had held every publisher (all on the
    // faulted node, nothing delivered for 5 s): the messages published after the heal, still
    // crossing the link, were then reported lost (CI, link-sending-faults, 2026-12-05).
    let stopped = t0.elapsed();
    let drain_end = Instant::now() + Duration::from_secs(60);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let last = Duration::from_micros(ctx.last_delivery.load(Ordering::Relaxed)).max(stopped);
        if t0.elapsed().saturating_sub(last) > Duration::from_secs(5) || Instant::now() > drain_end {
            break;
        }
    }
    // Final reads of the retained register on every node.
    if !s.linked {
        let c = ctx.clone();
        let nodes = all_nodes.clone();
        let p = next();
        rt.block_on(async move {
            for (k, node) in nodes.iter().enumerate() {
                for attempt in 0..5u64 {
                    if workload::retain_read(&c, p, *node, 1000 + k as u64 * 10 + attempt, Duration::from_secs(3)).await
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        });
    }
    // The replicas agree: one view, one state digest per region.
    let converged = disk::converged(db, Duration::from_secs(30));
    // What the broker says it dropped for each persistent subscriber (its queue bound): the lost
    // checker excuses that many missing messages for that client, no more.
    for k in 0..2 {
        let client = format!("sub{k}");
        let answer = sub_nodes.iter().find_map(|n| {
            db::http_get(db::api_addr(*n), &format!("/api/v5/clients/{client}"))
                .ok()
                .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
        });
        match answer.as_ref().and_then(|v| v["mqueue_dropped"].as_u64()) {
            Some(count) => {
                if count > 0 {
                    tracing::info!(client, count, "the broker reports drops by the queue bound");
                }
                rec.event(NEMESIS, Kind::Ok, None, F::Dropped { client_id: client, count });
            }
            None => tracing::warn!(client, "no node reported the subscriber's drop count"),
        }
    }
    ctx.stop_subs.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    crash.extend(db.crashed());
    let ops = rec.ops();
    let mut verdicts = check::check_all(&ops, &CheckConfig::default());
    verdicts.push(Verdict {
        name: "no-crash",
        ok: crash.is_empty(),
        summary: if crash.is_empty() {
            "no node exited by itself".into()
        } else {
            format!("nodes exited by themselves: {crash:?} (logs in {})", db.dir.display())
        },
        offending: Vec::new(),
        checked: all_nodes.len() as u64,
    });
    verdicts.push(converged);
    if s.linked {
        verdicts.push(dark::dark_window(&ops, DARK_BOUND_MS));
    }
    if s.faults.iter().any(|f| matches!(f, WipeNode | TruncateStore | DiskFull)) {
        verdicts.push(disk::verdict(&disk_outcomes));
    }
    if let Err(e) = recovered {
        tracing::warn!("{e}");
    }
    let summary = report::write_report(dir, s.name, &ops, &verdicts)?;
    Ok(Outcome { verdicts, summary, dir: dir.to_path_buf() })
}

/// Waits until every node has an `Ok` probe invoked after the last nemesis stop (the heal).
fn wait_probes_ok(rec: &Recorder, nodes: &[u32], within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let ops = rec.ops();
        let heal_us = ops
            .iter()
            .rev()
            .find(|o| matches!(&o.f, F::Nemesis { phase: Phase::Stop, .. }))
            .map(|o| o.mono_us)
            .unwrap_or(0);
        let mut invoked_after = std::collections::HashSet::new();
        let mut ok = std::collections::HashSet::new();
        for op in &ops {
            if let F::Probe {} = op.f {
                if op.kind == Kind::Invoke && op.mono_us >= heal_us {
                    invoked_after.insert((op.process, op.id));
                }
                if op.kind == Kind::Ok && invoked_after.contains(&(op.process, op.id)) {
                    if let Some(n) = op.node {
                        ok.insert(n);
                    }
                }
            }
        }
        if nodes.iter().all(|n| ok.contains(n)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "nodes without a successful probe {within:?} after the heal: {:?}",
                nodes.iter().filter(|n| !ok.contains(n)).collect::<Vec<_>>()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
