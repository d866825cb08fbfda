//! The dark-window checker of linked runs: after a fault starts, and after it heals, messages
//! published in the sending region reach the receiving one again within a bound. A link that
//! stays "connected" to a node that can deliver nothing (cut off from its majority), or that
//! waits out a retry timer, shows up here even when nothing is lost.

use std::collections::HashMap;

use crate::check::Verdict;
use crate::history::{sorted_ops, Kind, Op, Phase, F};

/// Faults that cut every path between the regions: nothing can cross until they heal, so
/// only their heal is measured.
const CUTS_THE_LINK: &[&str] = &["link-cut"];

/// For each nemesis step (a start, except of a fault that cuts the link; a stop), the dark
/// window is the time from the step to the first delivery of a message whose publish was
/// invoked after the step. It must be at most `bound_ms`. A step followed by another within
/// the bound, before anything crossed, is not judged (the next step restarts the clock).
pub fn dark_window(ops: &[Op], bound_ms: u64) -> Verdict {
    let sorted = sorted_ops(ops);
    let mut invoked: HashMap<(&str, u64), u64> = HashMap::new();
    let mut deliveries: Vec<(u64, &str, u64, &Op)> = Vec::new();
    let mut steps: Vec<(&Op, String)> = Vec::new();
    for op in &sorted {
        match &op.f {
            F::Publish { publisher, seq, .. } if op.kind == Kind::Invoke => {
                invoked.insert((publisher.as_str(), *seq), op.mono_us);
            }
            F::Deliver { publisher, seq, .. } => deliveries.push((op.mono_us, publisher.as_str(), *seq, op)),
            F::Nemesis { name, phase, .. } if *phase == Phase::Stop || !CUTS_THE_LINK.contains(&name.as_str()) => {
                let what = format!("{name} {}", if *phase == Phase::Stop { "healed" } else { "started" });
                steps.push((op, what));
            }
            _ => {}
        }
    }
    deliveries.sort_by_key(|d| d.0);
    let end = sorted.last().map(|o| o.mono_us).unwrap_or_default();
    let bound_us = bound_ms.saturating_mul(1000);
    let mut windows: Vec<u64> = Vec::new();
    let mut bad: Vec<String> = Vec::new();
    let mut offending: Vec<Op> = Vec::new();
    for (i, (step, what)) in steps.iter().enumerate() {
        let t = step.mono_us;
        let next = steps.get(i + 1).map(|(o, _)| o.mono_us).unwrap_or(end);
        let from = deliveries.partition_point(|d| d.0 <= t);
        let first = deliveries[from..]
            .iter()
            .take_while(|d| d.0 <= next)
            .find(|d| invoked.get(&(d.1, d.2)).is_some_and(|at| *at > t));
        match first {
            Some(d) => {
                let dark = d.0 - t;
                windows.push(dark);
                if dark > bound_us {
                    bad.push(format!("{what}: first crossing after {} ms", dark / 1000));
                    offending.extend([(*step).clone(), d.3.clone()]);
                }
            }
            None if next - t > bound_us => {
                bad.push(format!("{what}: nothing published after it crossed in {} ms", (next - t) / 1000));
                offending.push((*step).clone());
            }
            None => {}
        }
    }
    windows.sort_unstable();
    let at = |q: f64| windows.get(((windows.len() as f64 - 1.0) * q).round() as usize).map(|us| us / 1000);
    let figures = match (at(0.5), windows.last()) {
        (Some(p50), Some(max)) => {
            format!("{} windows: p50 {p50} ms, max {} ms (bound {bound_ms} ms)", windows.len(), max / 1000)
        }
        _ => "no fault steps with traffic after them".to_string(),
    };
    offending.truncate(20);
    Verdict {
        name: "dark-window",
        ok: bad.is_empty(),
        summary: if bad.is_empty() { figures } else { format!("{figures}; {}", bad.join("; ")) },
        offending,
        checked: steps.len() as u64,
    }
}
