//! The recorded history of a run: every client operation and every nemesis action, one JSON
//! object per line (JSONL). Operations follow Jepsen's model: an `Invoke` is followed by exactly
//! one completion with the same `process` and `id`: `Ok` (the broker acknowledged), `Fail` (the
//! broker refused: the operation certainly did not happen) or `Info` (indeterminate: timed out or
//! the connection died; it may or may not have happened). Events that have no invoke (a
//! subscriber receiving a message, a nemesis step) are recorded once, as `Ok` or `Info`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// What an operation does. `payload`s are unique per publish across a run (`"{publisher}-{seq}"`),
/// so a delivery names exactly one publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum F {
    /// A client connected. `clean` = clean start / clean session requested; on `Ok`,
    /// `session_present` is what the CONNACK said.
    Connect { client_id: String, clean: bool, session_present: Option<bool> },
    /// A subscription; `Ok` when SUBACK granted it (granted QoS in `qos`).
    Subscribe { client_id: String, filter: String, qos: u8 },
    /// A publish. `publisher` is a stable name of the logical publisher (stays the same across
    /// reconnections), `seq` its per-publisher sequence number (1, 2, 3, ... in send order).
    /// `Ok` = PUBACK (QoS 1) / PUBCOMP (QoS 2) received with a success code; for QoS 0 the
    /// invoke is recorded and the completion is `Info`.
    Publish { publisher: String, seq: u64, topic: String, payload: String, qos: u8, retain: bool },
    /// A message received by the subscriber `client_id` (recorded once, kind `Ok`). `qos` is
    /// the QoS of the delivery, `dup` the DUP flag, `publisher`/`seq` parsed from the payload.
    Deliver { client_id: String, topic: String, payload: String, qos: u8, dup: bool, publisher: String, seq: u64 },
    /// A read of the retained message of `topic` on node `node` (subscribe, take what arrives
    /// with the retain flag). `value` = `None` when nothing is retained. Invoke, then Ok/Fail/Info.
    RetainRead { topic: String, value: Option<String> },
    /// A probe of whether `node` serves: connect + subscribe + publish QoS 1 to itself + receive.
    /// Invoke, then `Ok` (served) or `Fail`/`Info`.
    Probe {},
    /// A nemesis step (kind `Info`, process = `NEMESIS`). `name` e.g. "partition-halves",
    /// `phase` "start" or "stop"; `minority` = the nodes cut off from the majority by this step
    /// (empty for faults that do not partition); `nodes` = the nodes affected.
    Nemesis { name: String, phase: Phase, nodes: Vec<u32>, minority: Vec<u32>, detail: String },
    /// At the end of a run: how many messages the broker reports it dropped for `client_id`'s
    /// session (its queue bound, `mqueue_dropped`), read from the API (kind `Ok`).
    Dropped { client_id: String, count: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Start,
    Stop,
}

/// The process number nemesis events are recorded under.
pub const NEMESIS: u32 = u32::MAX;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history (0, 1, 2, ...), assigned by the recorder.
    pub index: u64,
    /// The logical client (worker) that performed the op; `NEMESIS` for nemesis steps.
    pub process: u32,
    /// Pairs an invoke with its completion (unique per process).
    pub id: u64,
    pub kind: Kind,
    /// The node (1-based) the client was connected to; `None` when not relevant.
    pub node: Option<u32>,
    /// Unix time in milliseconds.
    pub wall_ms: u64,
    /// Microseconds since the start of the run (monotonic clock).
    pub mono_us: u64,
    #[serde(flatten)]
    pub f: F,
    /// Why an op failed or is indeterminate (an error text), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Helpers: JSONL files, pairing, and the recorder.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;

/// Writes `ops` to `path`, one JSON object per line (replacing the file).
pub fn write_jsonl(path: &Path, ops: &[Op]) -> anyhow::Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    for op in ops {
        serde_json::to_writer(&mut out, op).with_context(|| format!("writing {}", path.display()))?;
        out.write_all(b"\n").with_context(|| format!("writing {}", path.display()))?;
    }
    out.flush().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Reads a history written by [`write_jsonl`]; blank lines are skipped.
pub fn read_jsonl(path: &Path) -> anyhow::Result<Vec<Op>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut ops = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}: read error", path.display(), n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let op: Op =
            serde_json::from_str(&line).with_context(|| format!("{}:{}: invalid op", path.display(), n + 1))?;
        ops.push(op);
    }
    Ok(ops)
}

impl F {
    /// A short name of the function (the `f` tag in JSON).
    pub fn name(&self) -> &'static str {
        match self {
            F::Connect { .. } => "connect",
            F::Subscribe { .. } => "subscribe",
            F::Publish { .. } => "publish",
            F::Deliver { .. } => "deliver",
            F::RetainRead { .. } => "retain_read",
            F::Probe {} => "probe",
            F::Nemesis { .. } => "nemesis",
            F::Dropped { .. } => "dropped",
        }
    }
}

/// The ops of a history in `index` order (borrowed; sorts only if needed).
pub fn sorted_ops(ops: &[Op]) -> Vec<&Op> {
    let mut v: Vec<&Op> = ops.iter().collect();
    if !v.windows(2).all(|w| w[0].index <= w[1].index) {
        v.sort_by_key(|o| o.index);
    }
    v
}

/// An invoke and its completion (if one was recorded).
#[derive(Debug, Clone, Copy)]
pub struct Pair<'a> {
    pub invoke: &'a Op,
    pub completion: Option<&'a Op>,
}

impl Pair<'_> {
    /// The completion's kind, `None` when the op never completed.
    pub fn outcome(&self) -> Option<Kind> {
        self.completion.map(|c| c.kind)
    }

    /// True when the op completed `Ok`.
    pub fn is_ok(&self) -> bool {
        self.outcome() == Some(Kind::Ok)
    }

    /// The node of the op: the invoke's, else the completion's.
    pub fn node(&self) -> Option<u32> {
        self.invoke.node.or(self.completion.and_then(|c| c.node))
    }
}

/// Pairs every `Invoke` in `sorted` (ops in index order) with the next op of the same
/// `(process, id)`. Ops that complete no invoke (deliveries, nemesis steps) are not returned.
/// Pairs are in invoke order.
pub fn pair_ops<'a>(sorted: &[&'a Op]) -> Vec<Pair<'a>> {
    let mut pairs: Vec<Pair<'a>> = Vec::new();
    let mut open: HashMap<(u32, u64), usize> = HashMap::new();
    for &op in sorted {
        if op.kind == Kind::Invoke {
            open.insert((op.process, op.id), pairs.len());
            pairs.push(Pair { invoke: op, completion: None });
        } else if let Some(i) = open.remove(&(op.process, op.id)) {
            pairs[i].completion = Some(op);
        }
    }
    pairs
}

/// Records a history. Cheap to clone (shared); safe to use from many tasks and threads.
#[derive(Clone, Debug)]
pub struct Recorder {
    inner: Arc<RecorderInner>,
}

#[derive(Debug)]
struct RecorderInner {
    start: Instant,
    next_id: AtomicU64,
    ops: Mutex<Vec<Op>>,
}

impl Recorder {
    /// A recorder whose `mono_us` counts from `start`.
    pub fn new(start: Instant) -> Self {
        Recorder { inner: Arc::new(RecorderInner { start, next_id: AtomicU64::new(0), ops: Mutex::new(Vec::new()) }) }
    }

    fn push(&self, process: u32, id: u64, kind: Kind, node: Option<u32>, f: F, error: Option<String>) {
        let mut ops = self.inner.ops.lock().expect("recorder mutex poisoned");
        // Timestamps are taken under the lock so that they are monotonic in `index`.
        let mono_us = u64::try_from(self.inner.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let index = ops.len() as u64;
        ops.push(Op { index, process, id, kind, node, wall_ms, mono_us, f, error });
    }

    /// Records the invocation of an op; returns the id to [`complete`](Self::complete) it with.
    pub fn invoke(&self, process: u32, node: Option<u32>, f: F) -> u64 {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.push(process, id, Kind::Invoke, node, f, None);
        id
    }

    /// Records the completion (`Ok`, `Fail` or `Info`) of the op invoked as `id`.
    pub fn complete(&self, process: u32, id: u64, kind: Kind, node: Option<u32>, f: F, error: Option<String>) {
        self.push(process, id, kind, node, f, error);
    }

    /// Records a single event that has no invoke (a delivery, a nemesis step).
    pub fn event(&self, process: u32, kind: Kind, node: Option<u32>, f: F) {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.push(process, id, kind, node, f, None);
    }

    /// A snapshot of the history so far, in index order.
    pub fn ops(&self) -> Vec<Op> {
        self.inner.ops.lock().expect("recorder mutex poisoned").clone()
    }

    /// How many ops were recorded so far.
    pub fn len(&self) -> usize {
        self.inner.ops.lock().expect("recorder mutex poisoned").len()
    }

    /// True when nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str) -> std::path::PathBuf {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        std::env::temp_dir().join(format!("strait-jepsen-{name}-{}-{nanos}.jsonl", std::process::id()))
    }

    #[test]
    fn recorder_is_ordered_and_pairs() {
        let rec = Recorder::new(Instant::now());
        let threads: Vec<_> = (0..4u32)
            .map(|p| {
                let rec = rec.clone();
                std::thread::spawn(move || {
                    for _ in 0..250 {
                        let id = rec.invoke(p, Some(1), F::Probe {});
                        rec.complete(p, id, Kind::Ok, Some(1), F::Probe {}, None);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread panicked");
        }
        rec.event(NEMESIS, Kind::Info, None, F::Probe {});
        let ops = rec.ops();
        assert_eq!(ops.len(), 2001);
        assert_eq!(rec.len(), 2001);
        for (i, w) in ops.windows(2).enumerate() {
            assert_eq!(w[0].index, i as u64);
            assert!(w[0].mono_us <= w[1].mono_us);
        }
        let sorted = sorted_ops(&ops);
        let pairs = pair_ops(&sorted);
        assert_eq!(pairs.len(), 1000);
        assert!(pairs.iter().all(|p| p.is_ok() && p.completion.is_some_and(|c| c.process == p.invoke.process)));
    }

    #[test]
    fn jsonl_round_trip_and_errors() -> anyhow::Result<()> {
        let rec = Recorder::new(Instant::now());
        let f = F::Publish {
            publisher: "p".into(),
            seq: 1,
            topic: "t".into(),
            payload: "p-1".into(),
            qos: 1,
            retain: false,
        };
        let id = rec.invoke(1, Some(2), f.clone());
        rec.complete(1, id, Kind::Info, Some(2), f, Some("timeout".into()));
        let ops = rec.ops();
        let path = temp_file("roundtrip");
        write_jsonl(&path, &ops)?;
        assert_eq!(read_jsonl(&path)?, ops);
        let text = std::fs::read_to_string(&path)?;
        assert!(text.lines().next().is_some_and(|l| l.contains("\"f\":\"publish\"")), "{text}");

        std::fs::write(&path, format!("{text}\nnot json\n"))?;
        let err = read_jsonl(&path).err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(err.contains(&format!("{}:4", path.display())), "{err}");
        std::fs::remove_file(&path)?;
        Ok(())
    }
}
