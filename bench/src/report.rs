//! Results: `results.json` (every row + machine), `results.md` (per-scenario tables and the
//! Strait/peer ratios) and `chart.svg` (each scenario's main figure relative to mosquitto).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::scenarios::{Row, Scenario, What};

/// Whether a scenario's main figure is better high (throughput) or low (latency, memory), and
/// which figure it is.
pub fn main_figure(s: &Scenario) -> (&'static str, bool) {
    match s.what {
        What::Flow { rate: None, .. }
        | What::Cluster { rate: None, .. }
        | What::Link { rate: None, .. }
        | What::Persistent { rate: None, .. } => ("msgs/s", true),
        What::Flow { .. } | What::Cluster { .. } | What::Link { .. } | What::Persistent { .. } => ("p99 ms", false),
        What::ClusterIdle { .. } => ("max node CPU %", false),
        What::Idle { .. } => ("KiB/conn", false),
        What::ConnRate { .. } => ("conns/s", true),
        What::Propagation { .. } | What::Failover { .. } => ("p50 ms", false),
    }
}

pub fn figure(row: &Row, which: &str) -> f64 {
    match which {
        "msgs/s" => row.msgs_per_s,
        "p99 ms" => row.p99_ms,
        "p50 ms" => row.p50_ms,
        "KiB/conn" => row.extra.get("kib_per_conn").copied().unwrap_or(0.0),
        "conns/s" => row.extra.get("conns_per_s").copied().unwrap_or(0.0),
        "max node CPU %" => row.extra.get("max_node_cpu_pct").copied().unwrap_or(0.0),
        _ => 0.0,
    }
}

pub fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string()))
        .and_then(|k| k.parse::<u64>().ok())
        .map(|k| k / 1024 / 1024)
        .unwrap_or(0);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    serde_json::json!({ "cpu": cpu, "cores": cores, "mem_gib": mem, "os": std::env::consts::OS })
}

fn fmt(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub fn markdown(
    scenarios: &[Scenario],
    rows: &[Row],
    machine: &serde_json::Value,
    versions: &[(String, String)],
) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Machine: {} ({} cores, {} GiB). Brokers: {}.\n",
        machine["cpu"].as_str().unwrap_or("?"),
        machine["cores"],
        machine["mem_gib"],
        versions.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
    );
    let _ =
        writeln!(md, "| scenario | main figure | strait | mosquitto | rumqttd | strait/mosquitto | strait/rumqttd |");
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|");
    for s in scenarios {
        let (fig, _) = main_figure(s);
        let get = |b: &str| rows.iter().find(|r| r.scenario == s.name && r.broker == b);
        let cell = |b: &str| match get(b) {
            Some(r) if r.error.is_none() || figure(r, fig) > 0.0 => fmt(figure(r, fig)),
            Some(_) => "error".into(),
            None => "–".into(),
        };
        let ratio = |b: &str| match (get("strait"), get(b)) {
            (Some(a), Some(p)) if figure(p, fig) > 0.0 && figure(a, fig) > 0.0 => {
                format!("{:.2}", figure(a, fig) / figure(p, fig))
            }
            _ => "–".into(),
        };
        if rows.iter().any(|r| r.scenario == s.name) {
            let _ = writeln!(
                md,
                "| {} | {fig} | {} | {} | {} | {} | {} |",
                s.name,
                cell("strait"),
                cell("mosquitto"),
                cell("rumqttd"),
                ratio("mosquitto"),
                ratio("rumqttd")
            );
        }
    }
    let _ = writeln!(
        md,
        "\nRatios: for msgs/s and conns/s higher is better for Strait; for ms and KiB/conn lower is better.\n"
    );
    let _ = writeln!(md, "| scenario | broker | healthy | msgs/s | p50 ms | p99 ms | p99.9 ms | CPU % | RSS MiB | expected | received | lost | dup | extra |");
    let _ = writeln!(md, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let extra: Vec<String> = r.extra.iter().map(|(k, v)| format!("{k}={}", fmt(*v))).collect();
        let mut extra = extra.join(" ");
        if let Some(e) = &r.error {
            let _ = write!(extra, " error: {}", e.lines().next().unwrap_or("").replace('|', "/"));
        }
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.1} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.broker,
            if r.healthy { "yes" } else { "NO" },
            fmt(r.msgs_per_s),
            fmt(r.p50_ms),
            fmt(r.p99_ms),
            fmt(r.p999_ms),
            r.cpu_pct,
            r.rss_mib,
            r.expected,
            r.received,
            r.lost,
            r.duplicates,
            extra.trim()
        );
    }
    md
}

/// Grouped bars: each scenario's main figure relative to mosquitto's (mosquitto = 1).
pub fn chart(path: &Path, scenarios: &[Scenario], rows: &[Row]) -> anyhow::Result<()> {
    let brokers = ["strait", "mosquitto", "rumqttd"];
    let colors = [RGBColor(0x1f, 0x77, 0xb4), RGBColor(0x7f, 0x7f, 0x7f), RGBColor(0xff, 0x7f, 0x0e)];
    let mut bars: Vec<(String, Vec<f64>)> = Vec::new();
    for s in scenarios {
        let (fig, _) = main_figure(s);
        let Some(m) = rows.iter().find(|r| r.scenario == s.name && r.broker == "mosquitto") else { continue };
        let base = figure(m, fig);
        if base <= 0.0 {
            continue;
        }
        let vals = brokers
            .iter()
            .map(|b| {
                rows.iter()
                    .find(|r| r.scenario == s.name && r.broker == *b)
                    .map(|r| figure(r, fig) / base)
                    .unwrap_or(0.0)
            })
            .collect();
        bars.push((format!("{} ({fig})", s.name), vals));
    }
    let ymax = bars.iter().flat_map(|(_, v)| v.iter().copied()).fold(1.0f64, f64::max) * 1.15;
    let width = 160 + 110 * bars.len().max(1) as u32;
    let root = SVGBackend::new(path, (width, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "main figure relative to mosquitto (= 1.0); msgs/s, conns/s: higher is better; ms, KiB: lower",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(120)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..bars.len().max(1) as f64, 0f64..ymax)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let labels: Vec<String> = bars.iter().map(|(n, _)| n.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len().max(1) * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.01 {
                labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_label_style(("sans-serif", 11).into_font().transform(FontTransform::Rotate90))
        .y_desc("ratio to mosquitto")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (bi, b) in brokers.iter().enumerate() {
        let color = colors[bi];
        chart
            .draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
                let x0 = i as f64 + 0.1 + bi as f64 * 0.27;
                Rectangle::new([(x0, 0.0), (x0 + 0.25, v[bi])], color.filled())
            }))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(*b)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}")).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
