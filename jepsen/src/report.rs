//! The report of a run: the history, the verdicts, a text summary and three SVG charts
//! (publish latency, throughput, per-node availability), nemesis windows shaded.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::check::Verdict;
use crate::history::{pair_ops, sorted_ops, write_jsonl, Kind, Op, Pair, Phase, F};

/// Offending ops printed per failed verdict in the summary.
const OFFENDING_IN_SUMMARY: usize = 5;
/// Above this many latency points the chart keeps each time bucket's minimum and maximum.
const MAX_LATENCY_POINTS: usize = 20_000;
const LATENCY_BUCKETS: usize = 4_000;
const SIZE: (u32, u32) = (1200, 500);

/// Writes `history.jsonl`, `verdicts.json`, `summary.txt`, `latency.svg`, `throughput.svg` and
/// `availability.svg` into `dir` (created if needed). Returns the summary text.
pub fn write_report(dir: &Path, scenario: &str, ops: &[Op], verdicts: &[Verdict]) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_jsonl(&dir.join("history.jsonl"), ops)?;
    let json = serde_json::to_string_pretty(verdicts).context("serializing verdicts")?;
    let path = dir.join("verdicts.json");
    std::fs::write(&path, json + "\n").with_context(|| format!("writing {}", path.display()))?;

    let sorted = sorted_ops(ops);
    let pairs = pair_ops(&sorted);
    let summary = summary_text(scenario, &sorted, &pairs, verdicts)?;
    let path = dir.join("summary.txt");
    std::fs::write(&path, &summary).with_context(|| format!("writing {}", path.display()))?;

    let end_s = sorted.iter().map(|o| o.mono_us).max().map_or(0.0, secs).max(1.0);
    let windows = nemesis_windows(&sorted, end_s);
    let path = dir.join("latency.svg");
    latency_svg(&path, &pairs, &windows, end_s).with_context(|| format!("writing {}", path.display()))?;
    let path = dir.join("throughput.svg");
    throughput_svg(&path, &sorted, &pairs, &windows, end_s).with_context(|| format!("writing {}", path.display()))?;
    let path = dir.join("availability.svg");
    availability_svg(&path, &pairs, &windows, end_s).with_context(|| format!("writing {}", path.display()))?;
    Ok(summary)
}

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

fn summary_text(scenario: &str, sorted: &[&Op], pairs: &[Pair], verdicts: &[Verdict]) -> anyhow::Result<String> {
    let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
    let mut fns: BTreeMap<&str, u64> = BTreeMap::new();
    let mut delivered = 0u64;
    let mut delivered_payloads: HashSet<&str> = HashSet::new();
    for op in sorted {
        let kind = match op.kind {
            Kind::Invoke => "invoke",
            Kind::Ok => "ok",
            Kind::Fail => "fail",
            Kind::Info => "info",
        };
        *kinds.entry(kind).or_default() += 1;
        *fns.entry(op.f.name()).or_default() += 1;
        if let F::Deliver { payload, .. } = &op.f {
            delivered += 1;
            delivered_payloads.insert(payload);
        }
    }
    let (mut published, mut acked, mut failed, mut unknown) = (0u64, 0u64, 0u64, 0u64);
    for p in pairs.iter().filter(|p| matches!(p.invoke.f, F::Publish { .. })) {
        published += 1;
        match p.outcome() {
            Some(Kind::Ok) => acked += 1,
            Some(Kind::Fail) => failed += 1,
            _ => unknown += 1,
        }
    }
    let join = |m: &BTreeMap<&str, u64>| m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ");
    let duration = sorted.iter().map(|o| o.mono_us).max().unwrap_or(0);
    let passed = verdicts.iter().filter(|v| v.ok).count();

    let mut s = String::new();
    writeln!(s, "scenario: {scenario}")?;
    writeln!(s, "duration: {:.1} s", secs(duration))?;
    writeln!(s, "ops: {} ({})", sorted.len(), join(&kinds))?;
    writeln!(s, "ops by function: {}", join(&fns))?;
    writeln!(
        s,
        "messages: published {published}, acked {acked}, failed {failed}, indeterminate {unknown}; \
         delivered {delivered} ({} distinct payloads)",
        delivered_payloads.len()
    )?;
    writeln!(s, "verdicts: {passed}/{} passed", verdicts.len())?;
    for v in verdicts {
        writeln!(s, "{} {}: {}", if v.ok { "PASS" } else { "FAIL" }, v.name, v.summary)?;
        if !v.ok {
            for op in v.offending.iter().take(OFFENDING_IN_SUMMARY) {
                writeln!(s, "    {}", serde_json::to_string(op)?)?;
            }
        }
    }
    Ok(s)
}

/// A nemesis fault, in seconds since the start of the run.
struct Window {
    name: String,
    start: f64,
    end: f64,
}

/// Start..Stop pairs by name; a fault never stopped lasts until `end_s`.
fn nemesis_windows(sorted: &[&Op], end_s: f64) -> Vec<Window> {
    let mut open: Vec<Window> = Vec::new();
    let mut done = Vec::new();
    for op in sorted {
        let F::Nemesis { name, phase, .. } = &op.f else { continue };
        match phase {
            Phase::Start => open.push(Window { name: name.clone(), start: secs(op.mono_us), end: end_s }),
            Phase::Stop => {
                if let Some(i) = open.iter().rposition(|w| &w.name == name) {
                    let mut w = open.remove(i);
                    w.end = secs(op.mono_us);
                    done.push(w);
                }
            }
        }
    }
    done.extend(open);
    done
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

fn chart<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    caption: &str,
    end_s: f64,
    y_max: f64,
    y_desc: &str,
) -> anyhow::Result<Chart<'a, 'b>> {
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..end_s, 0f64..y_max)?;
    chart.configure_mesh().x_desc("time since start (s)").y_desc(y_desc).draw()?;
    Ok(chart)
}

/// Shades the nemesis windows over the whole y range, the fault's name at the top.
fn shade(chart: &mut Chart, windows: &[Window], y_max: f64) -> anyhow::Result<()> {
    let color = RGBColor(255, 140, 0).mix(0.18).filled();
    chart.draw_series(windows.iter().map(|w| Rectangle::new([(w.start, 0.0), (w.end, y_max)], color)))?;
    chart.draw_series(
        windows.iter().map(|w| Text::new(w.name.clone(), (w.start, y_max), ("sans-serif", 11).into_font())),
    )?;
    Ok(())
}

fn latency_svg(path: &Path, pairs: &[Pair], windows: &[Window], end_s: f64) -> anyhow::Result<()> {
    let mut points: Vec<(f64, f64)> = pairs
        .iter()
        .filter(|p| matches!(p.invoke.f, F::Publish { .. }))
        .filter_map(|p| {
            let c = p.completion.filter(|c| c.kind == Kind::Ok)?;
            Some((secs(p.invoke.mono_us), c.mono_us.saturating_sub(p.invoke.mono_us) as f64 / 1000.0))
        })
        .collect();
    let mut caption = format!("Publish latency (invoke to ack), {} acked", points.len());
    if points.len() > MAX_LATENCY_POINTS {
        // Keep each time bucket's fastest and slowest publish: the envelope stays visible.
        type Point = (f64, f64);
        // per bucket: (fastest, slowest)
        let mut buckets: Vec<Option<(Point, Point)>> = vec![None; LATENCY_BUCKETS];
        for &(x, y) in &points {
            let b = ((x / end_s * LATENCY_BUCKETS as f64) as usize).min(LATENCY_BUCKETS - 1);
            let e = buckets[b].get_or_insert(((x, y), (x, y)));
            if y < e.0 .1 {
                e.0 = (x, y);
            }
            if y > e.1 .1 {
                e.1 = (x, y);
            }
        }
        points = buckets.into_iter().flatten().flat_map(|(lo, hi)| [lo, hi]).collect();
        caption.push_str(" (min/max per time bucket)");
    }
    if points.is_empty() {
        caption.push_str(" (no data)");
    }
    let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.1;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    let mut chart = chart(&root, &caption, end_s, y_max, "latency (ms)")?;
    shade(&mut chart, windows, y_max)?;
    chart.draw_series(points.iter().map(|&p| Circle::new(p, 2, BLUE.mix(0.6).filled())))?;
    root.present()?;
    Ok(())
}

fn throughput_svg(path: &Path, sorted: &[&Op], pairs: &[Pair], windows: &[Window], end_s: f64) -> anyhow::Result<()> {
    let buckets = end_s.ceil() as usize + 1;
    let mut acked = vec![0u64; buckets];
    let mut delivered = vec![0u64; buckets];
    let bucket = |us: u64| ((us / 1_000_000) as usize).min(buckets - 1);
    for p in pairs.iter().filter(|p| matches!(p.invoke.f, F::Publish { .. })) {
        if let Some(c) = p.completion.filter(|c| c.kind == Kind::Ok) {
            acked[bucket(c.mono_us)] += 1;
        }
    }
    for op in sorted.iter().filter(|o| matches!(o.f, F::Deliver { .. })) {
        delivered[bucket(op.mono_us)] += 1;
    }
    let y_max = acked.iter().chain(&delivered).copied().max().unwrap_or(0).max(1) as f64 * 1.1;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    let mut chart = chart(&root, "Throughput", end_s, y_max, "ops per second")?;
    shade(&mut chart, windows, y_max)?;
    // Each bucket's rate is plotted at the bucket's middle.
    let series = |v: &[u64]| v.iter().enumerate().map(|(i, &n)| (i as f64 + 0.5, n as f64)).collect::<Vec<_>>();
    chart
        .draw_series(LineSeries::new(series(&acked), BLUE.stroke_width(2)))?
        .label("publishes acked / s")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(series(&delivered), GREEN.stroke_width(2)))?
        .label("deliveries / s")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN.stroke_width(2)));
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

fn availability_svg(path: &Path, pairs: &[Pair], windows: &[Window], end_s: f64) -> anyhow::Result<()> {
    // node -> second -> (probes, ok probes)
    let mut nodes: BTreeMap<u32, BTreeMap<u64, (u64, u64)>> = BTreeMap::new();
    for p in pairs.iter().filter(|p| matches!(p.invoke.f, F::Probe {})) {
        let Some(node) = p.node() else { continue };
        let e = nodes.entry(node).or_default().entry(p.invoke.mono_us / 1_000_000).or_default();
        e.0 += 1;
        if p.is_ok() {
            e.1 += 1;
        }
    }
    let caption = if nodes.is_empty() { "Availability (no probes)" } else { "Availability (probes ok per second)" };
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    let y_max = 1.05;
    let mut chart = chart(&root, caption, end_s, y_max, "fraction of probes ok")?;
    shade(&mut chart, windows, y_max)?;
    for (i, (node, seconds)) in nodes.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> =
            seconds.iter().map(|(&s, &(n, ok))| (s as f64 + 0.5, ok as f64 / n as f64)).collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(format!("node {node}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    if !nodes.is_empty() {
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{check_all, CheckConfig};
    use crate::history::{read_jsonl, Recorder, NEMESIS};

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        std::env::temp_dir().join(format!("strait-jepsen-{name}-{}-{nanos}", std::process::id()))
    }

    fn synthetic() -> Vec<Op> {
        let rec = Recorder::new(std::time::Instant::now());
        let connect = |present| F::Connect { client_id: "sub".into(), clean: false, session_present: present };
        let id = rec.invoke(1, Some(1), connect(None));
        rec.complete(1, id, Kind::Ok, Some(1), connect(Some(false)), None);
        let sub = F::Subscribe { client_id: "sub".into(), filter: "t/#".into(), qos: 1 };
        let id = rec.invoke(1, Some(1), sub.clone());
        rec.complete(1, id, Kind::Ok, Some(1), sub, None);
        let nemesis = |phase| F::Nemesis {
            name: "partition".into(),
            phase,
            nodes: vec![1, 2, 3],
            minority: vec![3],
            detail: "3 | 1 2".into(),
        };
        for seq in 1..=20u64 {
            if seq == 5 {
                rec.event(NEMESIS, Kind::Info, None, nemesis(Phase::Start));
            }
            if seq == 15 {
                rec.event(NEMESIS, Kind::Info, None, nemesis(Phase::Stop));
            }
            let publish = F::Publish {
                publisher: "p".into(),
                seq,
                topic: "t/a".into(),
                payload: format!("p-{seq}"),
                qos: 1,
                retain: false,
            };
            let id = rec.invoke(2, Some(1 + (seq % 2) as u32), publish.clone());
            let kind = if seq == 7 { Kind::Info } else { Kind::Ok };
            let error = (kind == Kind::Info).then(|| "timeout".to_string());
            rec.complete(2, id, kind, Some(1 + (seq % 2) as u32), publish, error);
            if seq != 7 {
                let deliver = F::Deliver {
                    client_id: "sub".into(),
                    topic: "t/a".into(),
                    payload: format!("p-{seq}"),
                    qos: 1,
                    dup: false,
                    publisher: "p".into(),
                    seq,
                };
                rec.event(1, Kind::Ok, Some(1), deliver);
            }
            for node in 1..=3 {
                let id = rec.invoke(3, Some(node), F::Probe {});
                let kind = if (5..15).contains(&seq) && node == 3 { Kind::Fail } else { Kind::Ok };
                rec.complete(3, id, kind, Some(node), F::Probe {}, None);
            }
        }
        // one phantom delivery so that a verdict fails
        let deliver = F::Deliver {
            client_id: "sub".into(),
            topic: "t/a".into(),
            payload: "ghost-1".into(),
            qos: 1,
            dup: false,
            publisher: "ghost".into(),
            seq: 1,
        };
        rec.event(1, Kind::Ok, Some(1), deliver);
        rec.ops()
    }

    #[test]
    fn writes_a_report() -> anyhow::Result<()> {
        let ops = synthetic();
        let verdicts = check_all(&ops, &CheckConfig::default());
        let dir = temp_dir("report");
        let summary = write_report(&dir, "synthetic", &ops, &verdicts)?;
        for f in ["history.jsonl", "verdicts.json", "summary.txt", "latency.svg", "throughput.svg", "availability.svg"]
        {
            assert!(dir.join(f).is_file(), "{f} missing");
        }
        for f in ["latency.svg", "throughput.svg", "availability.svg"] {
            let svg = std::fs::read_to_string(dir.join(f))?;
            assert!(svg.contains("<svg"), "{f} is not an SVG");
        }
        assert!(std::fs::read_to_string(dir.join("throughput.svg"))?.contains("deliveries / s"));
        assert_eq!(read_jsonl(&dir.join("history.jsonl"))?, ops);
        assert_eq!(std::fs::read_to_string(dir.join("summary.txt"))?, summary);
        assert!(summary.contains("scenario: synthetic"), "{summary}");
        assert!(summary.contains("published 20, acked 19"), "{summary}");
        assert!(summary.contains("FAIL phantom"), "{summary}");
        assert!(summary.contains("PASS lost"), "{summary}");
        assert!(summary.contains("\"ghost-1\""), "{summary}");
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("verdicts.json"))?)?;
        assert_eq!(v.as_array().map(Vec::len), Some(verdicts.len()));
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn empty_history_report() -> anyhow::Result<()> {
        let dir = temp_dir("empty");
        let verdicts = check_all(&[], &CheckConfig::default());
        let summary = write_report(&dir, "empty", &[], &verdicts)?;
        assert!(summary.contains("ops: 0"), "{summary}");
        for f in ["latency.svg", "throughput.svg", "availability.svg"] {
            assert!(std::fs::read_to_string(dir.join(f))?.contains("<svg"));
        }
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
