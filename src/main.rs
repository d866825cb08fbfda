//! The `strait` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use strait::config::Config;
use strait::node::Node;

mod ctl;

/// Strait: a Raft-replicated clustered MQTT broker with cluster linking.
///
/// With no arguments, runs a single-node broker: MQTT on 0.0.0.0:1883, the HTTP API on
/// 0.0.0.0:18083, data in ./data. Try it with
///   mosquitto_sub -t 'test/#' -v   and   mosquitto_pub -t test/1 -m hello
#[derive(Parser)]
#[command(name = "strait", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node from a HOCON config file (see config/ for examples).
    Run {
        /// The node's config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Overrides node.data_dir.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Validate a config file: exit 0, or print `FILE: key.path: problem` and exit 2.
    CheckConfig {
        /// The config file to check.
        file: PathBuf,
    },
    /// Operate a running node over its HTTP API: cluster status, links, clients, log level
    /// (exit 0 ok, 1 refused or unhealthy, 2 usage, 3 unreachable).
    Ctl(ctl::Ctl),
    /// Add or update a user in a password file (mosquitto_passwd compatible format).
    Passwd {
        /// The password file (created if missing).
        file: PathBuf,
        /// The user name.
        username: String,
        /// The password; read from standard input when omitted.
        #[arg(long)]
        password: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = std::env::vars().filter(|(k, _)| k.starts_with("STRAIT_"));
    let (cfg, origin) = match cli.cmd {
        None => (Config::from_env(env), "defaults".to_string()),
        Some(Cmd::Run { config, data_dir }) => {
            let mut c = Config::load(&config, env);
            if let (Ok(c), Some(d)) = (&mut c, data_dir) {
                c.node.data_dir = d;
            }
            (c, config.display().to_string())
        }
        Some(Cmd::CheckConfig { file }) => {
            return match Config::load(&file, env) {
                Ok(c) => {
                    for w in &c.warnings {
                        eprintln!("{}: warning: {w}", file.display());
                    }
                    println!("{}: ok", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
            };
        }
        Some(Cmd::Passwd { file, username, password }) => return passwd(file, username, password),
        Some(Cmd::Ctl(c)) => return ctl::run(c),
    };
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&cfg.log.level, cfg.log.json);
    for w in &cfg.warnings {
        tracing::warn!("{origin}: {w}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(cfg))
}

async fn run(cfg: Config) -> ExitCode {
    // Install the handlers before anything starts: a SIGTERM that arrives while the node is
    // starting must still mean an orderly shutdown, not the default "terminate now".
    use tokio::signal::unix::{signal, SignalKind};
    let (term, int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("strait: cannot install the SIGTERM/SIGINT handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let node = match Node::start(cfg).await {
        Ok(n) => n,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("strait: {e}");
            return ExitCode::from(2);
        }
    };
    for (name, addr) in &node.listeners {
        println!("strait: listener {name} on {addr}");
    }
    if let Some(a) = node.api_addr {
        println!("strait: http api on {a}");
    }
    wait_for_signal(term, int).await;
    node.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal(mut term: tokio::signal::unix::Signal, mut int: tokio::signal::unix::Signal) {
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

fn init_tracing(level: &str, json: bool) {
    use tracing_subscriber::EnvFilter;
    // openraft reports every failed heartbeat to an unreachable peer (20 lines a second):
    // errors only, unless asked for; our own leadership and node-down lines say what matters.
    let quiet = |l: &str| if l.contains("openraft") { l.to_string() } else { format!("{l},openraft=error") };
    let from_env = std::env::var("RUST_LOG").ok().filter(|v| EnvFilter::try_new(v).is_ok());
    let initial = from_env.clone().unwrap_or_else(|| level.to_string());
    let filter = || match &from_env {
        Some(v) => EnvFilter::new(v),
        None => EnvFilter::new(quiet(level)),
    };
    let parse = move |spec: &str| EnvFilter::try_new(quiet(spec)).map_err(|e| format!("{spec:?}: {e}"));
    // Colours only for a terminal: a file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    if json {
        let b = tracing_subscriber::fmt()
            .json()
            .with_ansi(false)
            .with_target(false)
            .with_env_filter(filter())
            .with_filter_reloading();
        let handle = b.reload_handle();
        if b.try_init().is_ok() {
            strait::logging::install(&initial, Box::new(move |s| handle.reload(parse(s)?).map_err(|e| e.to_string())));
        }
    } else {
        let b = tracing_subscriber::fmt()
            .with_ansi(ansi)
            .with_target(false)
            .with_env_filter(filter())
            .with_filter_reloading();
        let handle = b.reload_handle();
        if b.try_init().is_ok() {
            strait::logging::install(&initial, Box::new(move |s| handle.reload(parse(s)?).map_err(|e| e.to_string())));
        }
    }
}

fn passwd(file: PathBuf, username: String, password: Option<String>) -> ExitCode {
    let password = match password {
        Some(p) => p,
        None => {
            let mut line = String::new();
            if std::io::stdin().read_line(&mut line).is_err() {
                eprintln!("cannot read the password from standard input");
                return ExitCode::from(2);
            }
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    if username.is_empty() || username.contains(':') {
        eprintln!("{username:?}: a user name must be non-empty and contain no ':'");
        return ExitCode::from(2);
    }
    let existing = std::fs::read_to_string(&file).unwrap_or_default();
    let mut lines: Vec<String> =
        existing.lines().filter(|l| l.split(':').next() != Some(username.as_str())).map(str::to_string).collect();
    lines.push(format!("{username}:{}", strait::auth::hash_password(&password)));
    match std::fs::write(&file, lines.join("\n") + "\n") {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            ExitCode::from(2)
        }
    }
}
