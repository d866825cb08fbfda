//! strait-bench: runs Strait, mosquitto and rumqttd side by side on loopback with the same load
//! and writes results.json, results.md and chart.svg.
//!
//!     cargo build --release -p strait && cargo run --release -p strait-bench -- --out bench/results/latest
//!     cargo run --release -p strait-bench -- --list
//!     cargo run --release -p strait-bench -- --scenarios qos1-1to1,latency-2k --brokers strait,mosquitto

mod brokers;
mod load;
mod report;
mod scenarios;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use brokers::{Binaries, Kind};

#[derive(Parser)]
#[command(name = "strait-bench", about = "Benchmarks Strait side by side with mosquitto and rumqttd")]
struct Cli {
    /// Comma-separated brokers (strait, mosquitto, rumqttd); a broker not installed is skipped.
    #[arg(long, default_value = "strait,mosquitto,rumqttd")]
    brokers: String,
    /// Comma-separated scenario names (see --list); default: all.
    #[arg(long)]
    scenarios: Option<String>,
    /// A seconds-long run with tiny counts: proves the harness works, measures nothing.
    #[arg(long)]
    smoke: bool,
    /// Results directory (created).
    #[arg(long, default_value = "bench/results/latest")]
    out: PathBuf,
    /// The strait binary (default: target/release/strait, else `strait` on PATH).
    #[arg(long)]
    strait: Option<PathBuf>,
    #[arg(long, default_value = "mosquitto")]
    mosquitto: PathBuf,
    #[arg(long, default_value = "rumqttd")]
    rumqttd: PathBuf,
    /// Broker settings: `shipped` (Strait's defaults, as the config/ examples ship; the
    /// product's figures) or `tuned` (every broker with 100 in flight and 100,000 queued).
    #[arg(long, default_value = "shipped")]
    profile: String,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
}

fn version(bin: &std::path::Path, args: &[&str]) -> String {
    std::process::Command::new(bin)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let s = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
            s.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}

fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let scale = if cli.smoke { 100 } else { 1 };
    let all = scenarios::all(scale);
    if cli.list {
        for s in &all {
            let b: Vec<&str> = s.brokers.iter().map(|k| k.name()).collect();
            println!("{:<20} {} [{}]", s.name, s.about, b.join(", "));
        }
        return ExitCode::SUCCESS;
    }
    match run(cli, all) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("strait-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli, all: Vec<scenarios::Scenario>) -> anyhow::Result<ExitCode> {
    raise_nofile();
    let strait = cli.strait.clone().unwrap_or_else(|| {
        let p = PathBuf::from("target/release/strait");
        if p.is_file() {
            p
        } else {
            PathBuf::from("strait")
        }
    });
    let bins = Binaries {
        strait: brokers::which(&strait).unwrap_or(strait),
        mosquitto: brokers::which(&cli.mosquitto)
            .or_else(|| brokers::which(std::path::Path::new("/usr/sbin/mosquitto")))
            .unwrap_or(cli.mosquitto.clone()),
        rumqttd: brokers::which(&cli.rumqttd)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/rumqttd")).filter(|p| p.is_file())
            })
            .unwrap_or(cli.rumqttd.clone()),
        profile: brokers::Profile::parse(&cli.profile)?,
    };
    let mut kinds = Vec::new();
    for b in cli.brokers.split(',').filter(|s| !s.is_empty()) {
        let k = Kind::parse(b.trim())?;
        if bins.available(k) {
            kinds.push(k);
        } else {
            eprintln!("strait-bench: {} not found ({}): skipped", k.name(), bins.path(k).display());
        }
    }
    anyhow::ensure!(
        kinds.contains(&Kind::Strait),
        "the strait binary was not found: build it (cargo build --release) or pass --strait PATH"
    );
    let chosen: Vec<scenarios::Scenario> = match &cli.scenarios {
        None => all,
        Some(list) => {
            let names: Vec<&str> = list.split(',').map(str::trim).collect();
            for n in &names {
                anyhow::ensure!(all.iter().any(|s| s.name == *n), "unknown scenario `{n}` (see --list)");
            }
            all.into_iter().filter(|s| names.contains(&s.name)).collect()
        }
    };
    let versions: Vec<(String, String)> = kinds
        .iter()
        .map(|k| {
            let v = match k {
                Kind::Strait => version(&bins.strait, &["--version"]),
                Kind::Mosquitto => version(&bins.mosquitto, &["-h"]),
                Kind::Rumqttd => version(&bins.rumqttd, &["--version"]),
            };
            (k.name().to_string(), v)
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut rows = Vec::new();
    for s in &chosen {
        for k in &kinds {
            if !s.brokers.contains(k) {
                continue;
            }
            eprintln!("== {} on {}: {}", s.name, k.name(), s.about);
            let row = rt.block_on(scenarios::run(s, *k, &bins));
            eprintln!(
                "   {} msgs/s, p50 {:.2} ms, p99 {:.2} ms, CPU {:.0} %, RSS {:.1} MiB, lost {}, dup {}{}{}",
                row.msgs_per_s as u64,
                row.p50_ms,
                row.p99_ms,
                row.cpu_pct,
                row.rss_mib,
                row.lost,
                row.duplicates,
                row.extra.iter().map(|(k, v)| format!(", {k} {v:.1}")).collect::<String>(),
                row.error.as_ref().map(|e| format!(" — ERROR: {e}")).unwrap_or_default()
            );
            rows.push(row);
        }
    }
    let machine = report::machine();
    std::fs::create_dir_all(&cli.out)?;
    let json = serde_json::json!({ "machine": machine, "versions": versions, "smoke": cli.smoke, "profile": bins.profile.name(), "rows": rows });
    std::fs::write(cli.out.join("results.json"), serde_json::to_string_pretty(&json)?)?;
    let md = report::markdown(&chosen, &rows, &machine, &versions);
    std::fs::write(cli.out.join("results.md"), &md)?;
    report::chart(&cli.out.join("chart.svg"), &chosen, &rows)?;
    println!("{md}");
    println!("results in {}", cli.out.display());
    // Strait must stay healthy and lose nothing it acknowledged at QoS >= 1.
    let bad: Vec<&scenarios::Row> = rows
        .iter()
        .filter(|r| r.broker == "strait")
        .filter(|r| {
            let qos0 = r.scenario.starts_with("qos0") || r.scenario.starts_with("fanout");
            !r.healthy || r.error.is_some() || (!qos0 && r.lost > 0)
        })
        .collect();
    for r in &bad {
        eprintln!(
            "strait-bench: strait failed {}: healthy={} lost={} error={:?}",
            r.scenario, r.healthy, r.lost, r.error
        );
    }
    Ok(if bad.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
