//! strait-jepsen: the partition-tolerance suite.
//!
//!     cargo run -p strait-jepsen -- list
//!     cargo run -p strait-jepsen -- run --scenario partition-halves [--time 60] [--nodes 5] [--seed 7]
//!     cargo run -p strait-jepsen -- run --all
//!     cargo run -p strait-jepsen -- run --ci          (the short selection CI runs)
//!
//! Needs root (network namespaces, iptables, tc). Results: jepsen/results/<scenario>-<time>/.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use strait_jepsen::run::{self, Options};

#[derive(Parser)]
#[command(name = "strait-jepsen", about = "Partition-tolerance suite for Strait clusters and links")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List the scenarios.
    List,
    /// Check a recorded history again (a results directory of an earlier run) and rewrite its
    /// report.
    Check {
        /// The results directory (holds history.jsonl).
        dir: PathBuf,
    },
    /// Run scenarios.
    Run {
        /// The scenario to run (see `list`).
        #[arg(long)]
        scenario: Option<String>,
        /// Run every scenario.
        #[arg(long)]
        all: bool,
        /// Run the short CI selection.
        #[arg(long)]
        ci: bool,
        /// Seconds of faults per scenario (then heal, recovery and drain).
        #[arg(long, default_value_t = 60)]
        time: u64,
        /// Nodes per region (3 or 5; default: the scenario's).
        #[arg(long)]
        nodes: Option<usize>,
        /// Seed of the nemesis choices.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The strait binary (default: target/release/strait, else target/debug/strait).
        #[arg(long)]
        strait: Option<PathBuf>,
        /// Results directory.
        #[arg(long, default_value = "jepsen/results")]
        out: PathBuf,
    },
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let all = run::scenarios();
    let (scenario, all_flag, ci, time, nodes, seed, strait, out) = match cli.cmd {
        Cmd::List => {
            for s in &all {
                println!("{:<18} {}{}", s.name, s.about, if s.ci { " [ci]" } else { "" });
            }
            return ExitCode::SUCCESS;
        }
        Cmd::Run { scenario, all, ci, time, nodes, seed, strait, out } => {
            (scenario, all, ci, time, nodes, seed, strait, out)
        }
        Cmd::Check { dir } => return recheck(&dir),
    };
    let chosen: Vec<_> = if all_flag {
        all.clone()
    } else if ci {
        all.iter().filter(|s| s.ci).cloned().collect()
    } else if let Some(name) = &scenario {
        match all.iter().find(|s| s.name == name) {
            Some(s) => vec![s.clone()],
            None => {
                eprintln!("strait-jepsen: unknown scenario `{name}` (see `strait-jepsen list`)");
                return ExitCode::from(2);
            }
        }
    } else {
        eprintln!("strait-jepsen: run needs --scenario NAME, --all or --ci");
        return ExitCode::from(2);
    };
    if let Err(e) = strait_jepsen::net::preflight() {
        eprintln!("strait-jepsen: {e}");
        return ExitCode::from(2);
    }
    let strait = strait.unwrap_or_else(|| {
        ["target/release/strait", "target/debug/strait"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("target/release/strait"))
    });
    let Ok(strait) = std::fs::canonicalize(&strait) else {
        eprintln!(
            "strait-jepsen: {} not found: cargo build --release -p strait, or pass --strait PATH",
            strait.display()
        );
        return ExitCode::from(2);
    };
    // One run at a time on a machine (the namespaces have fixed names).
    let lock =
        match std::fs::OpenOptions::new().create(true).truncate(false).write(true).open("/tmp/strait-jepsen.lock") {
            Ok(f) => f,
            Err(e) => {
                eprintln!("strait-jepsen: /tmp/strait-jepsen.lock: {e}");
                return ExitCode::from(2);
            }
        };
    // SAFETY: flock on an open descriptor we own; handlers only store to an atomic.
    unsafe {
        use std::os::fd::AsRawFd;
        libc::flock(lock.as_raw_fd(), libc::LOCK_EX);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let i = interrupted.clone();
        std::thread::spawn(move || loop {
            if INTERRUPTED.load(Ordering::Relaxed) {
                i.store(true, Ordering::Relaxed);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        });
    }
    let opts = Options { time: Duration::from_secs(time), nodes, seed, strait, out, interrupted: interrupted.clone() };
    let (mut passed, mut failed) = (0, 0);
    for s in &chosen {
        if interrupted.load(Ordering::Relaxed) {
            break;
        }
        eprintln!("== jepsen {}: {}", s.name, s.about);
        match run::run(s, &opts) {
            Ok(o) => {
                println!("{}", o.summary);
                println!("results: {}", o.dir.display());
                if o.verdicts.iter().all(|v| v.ok) {
                    passed += 1;
                } else {
                    failed += 1;
                }
            }
            Err(e) => {
                println!("{}: could not run: {e:#}", s.name);
                failed += 1;
            }
        }
    }
    strait_jepsen::net::cleanup();
    println!("jepsen: {passed} passed, {failed} failed");
    if failed > 0 || interrupted.load(Ordering::Relaxed) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn recheck(dir: &std::path::Path) -> ExitCode {
    let ops = match strait_jepsen::history::read_jsonl(&dir.join("history.jsonl")) {
        Ok(ops) => ops,
        Err(e) => {
            eprintln!("strait-jepsen: {e:#}");
            return ExitCode::from(2);
        }
    };
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let verdicts = strait_jepsen::check::check_all(&ops, &strait_jepsen::check::CheckConfig::default());
    match strait_jepsen::report::write_report(dir, &name, &ops, &verdicts) {
        Ok(summary) => println!("{summary}"),
        Err(e) => {
            eprintln!("strait-jepsen: {e:#}");
            return ExitCode::from(2);
        }
    }
    let failed = verdicts.iter().any(|v| !v.ok);
    println!("jepsen: {} passed, {} failed", u8::from(!failed), u8::from(failed));
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
