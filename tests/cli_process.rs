//! The `strait` binary as a child process: check-config exit codes and messages, SIGTERM
//! handling (v5 DISCONNECT 0x8B, exit 0), SIGKILL + restart keeps retained messages.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use common::wire::*;
use common::*;
use strait::mqtt::packet::*;

const BIN: &str = env!("CARGO_BIN_EXE_strait");

fn check(text: &str) -> (i32, String) {
    let dir = tempdir("cc");
    let f = dir.join("node.hocon");
    std::fs::write(&f, text).expect("write config");
    let out = Command::new(BIN).arg("check-config").arg(&f).output().expect("run strait");
    let _ = std::fs::remove_dir_all(&dir);
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).replace(&*f.to_string_lossy(), "FILE"))
}

#[test]
fn check_config_exit_codes_and_messages() {
    // The seed's snippet (shared/seed/cluster-linking-quickstart), verbatim.
    let seed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/config/emqx_link.conf"))
        .expect("seed fixture");
    assert_eq!(check(&seed).0, 0, "the seed's snippet is a valid config");
    let (code, err) = check("mqtt { max_inflight = \"abc\" }");
    assert_eq!(code, 2);
    assert!(err.starts_with("FILE: mqtt.max_inflight: "), "{err}");
    let (code, err) = check("mqtt { max_packet_sise = 10 }");
    assert_eq!(code, 2);
    assert!(err.contains("mqtt.max_packet_sise: unknown key"), "{err}");
    let (code, err) = check("a = [1, 2\n");
    assert_eq!(code, 2);
    assert!(err.starts_with("FILE:"), "a syntax error names the file and position: {err}");
    // Secure by default: an API reachable from elsewhere needs keys; a cluster needs a secret.
    let (code, err) = check("api.bind = \"0.0.0.0:18083\"");
    assert_eq!(code, 2);
    assert!(err.starts_with("FILE: api.bind: ") && err.contains("api_key"), "{err}");
    let keyed = "api { bind = \"0.0.0.0:18083\", api_key = ops, api_secret = \"0123456789abcdef\" }";
    assert_eq!(check(keyed).0, 0, "{}", check(keyed).1);
    let (code, err) = check("cluster.static.seeds = [\"a@127.0.0.1\"]\nnode.name = \"a@127.0.0.1\"");
    assert_eq!(code, 2);
    assert!(err.starts_with("FILE: cluster.raft.secret: required"), "{err}");
    let (code, err) = check("cluster.raft.ssl.enable = true");
    assert_eq!(code, 2);
    assert!(err.starts_with("FILE: cluster.raft.ssl.certfile: required"), "{err}");
    // Every shipped example config must pass.
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut found = 0;
    let mut stack = vec![examples];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read config/") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "hocon") {
                found += 1;
                let out = Command::new(BIN).arg("check-config").arg(&path).output().expect("run strait");
                assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
            }
        }
    }
    assert!(found > 0, "no example configs found in config/");

    // The deploy kit's configs, as their containers see them (paths relative to /etc/strait).
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let check_in = |dir: &std::path::Path, file: &std::path::Path, env: &[(&str, &str)]| {
        let out = Command::new(BIN)
            .arg("check-config")
            .arg(file)
            .current_dir(dir)
            .envs(env.iter().copied())
            .output()
            .expect("run");
        assert!(out.status.success(), "{}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    };
    check_in(root, &root.join("deploy/docker/strait.hocon"), &[]);
    for r in ["us-east", "eu-west"] {
        for i in 1..=3 {
            let compose = root.join("deploy/compose");
            check_in(&compose, &compose.join(format!("{r}/node{i}.hocon")), &[]);
        }
    }
    // Kubernetes: the ConfigMap's file beside the Secret's files, the pod name from the env.
    let etc = std::env::temp_dir().join(format!("strait-k8s-{}", std::process::id()));
    let secret = etc.join("secret");
    std::fs::create_dir_all(&secret).expect("mkdir");
    std::fs::copy(root.join("deploy/k8s/strait.hocon"), etc.join("strait.hocon")).expect("copy");
    std::fs::write(secret.join("cluster-secret"), "0123456789abcdef0123456789abcdef\n").expect("write");
    std::fs::write(secret.join("api-keys"), "ops:0123456789abcdef0123\n").expect("write");
    for (from, to) in [("ca.pem", "ca.pem"), ("node1.pem", "node.pem"), ("node1.key", "node.key")] {
        std::fs::copy(root.join("config/certs/us-east").join(from), secret.join(to)).expect("copy");
    }
    check_in(&etc, &etc.join("strait.hocon"), &[("STRAIT_NODE__NAME", "strait-1@strait-1.strait-headless")]);
    let _ = std::fs::remove_dir_all(&etc);
}

/// Start `strait run` with a config binding port 0; returns the child and its MQTT address.
fn spawn_node(dir: &std::path::Path) -> (Child, SocketAddr) {
    let cfg = dir.join("node.hocon");
    std::fs::write(
        &cfg,
        format!(
            "node.data_dir = \"{}\"\nlisteners.tcp.default.bind = \"127.0.0.1:0\"\napi.bind = \"127.0.0.1:0\"\n",
            dir.join("data").display()
        ),
    )
    .expect("write config");
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn strait");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().expect("strait printed its listeners before exiting").expect("read stdout");
        if let Some(a) = line.strip_prefix("strait: listener tcp.default on ") {
            break a.trim().parse().expect("listener address");
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

fn wait_exit(child: &mut Child) -> i32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s.code().unwrap_or(-1);
        }
        assert!(std::time::Instant::now() < deadline, "strait did not exit within 10 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[tokio::test]
async fn sigterm_disconnects_v5_clients_and_exits_0() {
    let dir = tempdir("term");
    let (mut child, addr) = spawn_node(&dir);
    let (mut c, ack) = Raw::connect(addr, Protocol::V5, "term").await;
    assert_eq!(ack.code, 0);
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(c.expect_close().await, Some(reason::SERVER_SHUTTING_DOWN));
    assert_eq!(wait_exit(&mut child), 0, "exit code after SIGTERM");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sigkill_then_restart_keeps_acknowledged_retained_message() {
    let dir = tempdir("kill");
    let (mut child, addr) = spawn_node(&dir);
    let (mut p, _) = Raw::connect(addr, Protocol::V311, "p").await;
    let mut m = publish("k/r", QoS::AtLeastOnce, b"survives", 1);
    m.retain = true;
    assert_eq!(p.publish(m).await, 0);
    // sled flushes every 200 ms: wait past one flush so the acknowledged write is on disk.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let (mut child, addr) = spawn_node(&dir);
    let (mut s, _) = Raw::connect(addr, Protocol::V311, "s").await;
    s.subscribe("k/#", QoS::AtMostOnce).await;
    assert_eq!(&s.publish_in().await.payload[..], b"survives");
    child.kill().expect("kill");
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
