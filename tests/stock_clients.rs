//! Interoperability with the stock mosquitto clients (Debian's mosquitto-clients), run as child
//! processes against an in-process node.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::process::Command;

fn need(bin: &str) {
    let ok = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{bin} is not installed: run ./scripts/test.sh as root once (it apt-installs mosquitto-clients)");
}

async fn run(bin: &str, args: &[&str]) -> std::process::Output {
    let out = tokio::time::timeout(Duration::from_secs(15), Command::new(bin).args(args).output())
        .await
        .unwrap_or_else(|_| panic!("{bin} {args:?} did not finish in 15 s"))
        .expect("spawn");
    assert!(out.status.success(), "{bin} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn sub_cmd(port: &str, args: &[&str]) -> tokio::process::Child {
    Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", port])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mosquitto_sub")
}

async fn subscribed(n: &TestNode, filter: &str) {
    let b = n.node.broker.clone();
    wait_for(
        || b.sessions().iter().any(|s| s.is_connected() && s.lock().subscriptions.contains_key(filter)),
        WAIT,
        &format!("a subscription to {filter}"),
    )
    .await;
}

async fn output(child: tokio::process::Child) -> String {
    let out = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .expect("mosquitto_sub finished")
        .expect("output");
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test]
async fn qos2_retained_and_will_with_mosquitto_clients() {
    need("mosquitto_sub");
    let n = start("").await;
    let port = n.mqtt.port().to_string();
    let p = port.as_str();

    tracing::info!("--- QoS 2, MQTT 5");
    let sub = sub_cmd(p, &["-V", "mqttv5", "-t", "it/#", "-q", "2", "-C", "2", "-v"]);
    subscribed(&n, "it/#").await;
    run("mosquitto_pub", &["-h", "127.0.0.1", "-p", p, "-V", "mqttv5", "-t", "it/1", "-q", "2", "-m", "one"]).await;
    run("mosquitto_pub", &["-h", "127.0.0.1", "-p", p, "-t", "it/2", "-q", "2", "-m", "two"]).await;
    assert_eq!(output(sub).await, "it/1 one\nit/2 two\n");

    tracing::info!("--- retained");
    run("mosquitto_pub", &["-h", "127.0.0.1", "-p", p, "-t", "ret/1", "-r", "-q", "1", "-m", "kept"]).await;
    let out = run("mosquitto_sub", &["-h", "127.0.0.1", "-p", p, "-t", "ret/#", "-C", "1", "-v", "-W", "10"]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ret/1 kept\n");

    tracing::info!("--- will: a client killed with SIGKILL");
    let watcher = sub_cmd(p, &["-t", "lw/#", "-C", "1", "-v", "-q", "1"]);
    subscribed(&n, "lw/#").await;
    let mut victim = sub_cmd(p, &["-t", "x", "-i", "victim", "--will-topic", "lw/victim", "--will-payload", "offline"]);
    subscribed(&n, "x").await;
    victim.kill().await.expect("SIGKILL the client");
    assert_eq!(output(watcher).await, "lw/victim offline\n");
    n.stop().await;
}

#[tokio::test]
async fn v5_session_expiry_with_mosquitto_clients() {
    need("mosquitto_sub");
    let n = start("").await;
    let port = n.mqtt.port().to_string();
    let p = port.as_str();
    let args = ["-V", "mqttv5", "-c", "-i", "keeper", "-x", "60", "-q", "1", "-t", "se/#", "-v"];
    let mut first = sub_cmd(p, &args);
    subscribed(&n, "se/#").await;
    first.kill().await.expect("kill");
    let b = n.node.broker.clone();
    wait_for(|| b.session("keeper").is_some_and(|s| !s.is_connected()), WAIT, "keeper offline").await;
    run("mosquitto_pub", &["-h", "127.0.0.1", "-p", p, "-t", "se/1", "-q", "1", "-m", "while away"]).await;
    let mut again: Vec<&str> = args.to_vec();
    again.extend(["-C", "1", "-W", "10"]);
    let second = sub_cmd(p, &again);
    assert_eq!(output(second).await, "se/1 while away\n");
    n.stop().await;
}

#[tokio::test]
async fn password_file_made_by_mosquitto_passwd() {
    need("mosquitto_passwd");
    let dir = TempDir::new("pw");
    let file = dir.path().join("passwd");
    let f = file.to_str().expect("utf-8");
    run("mosquitto_passwd", &["-c", "-b", f, "alice", "s3cret"]).await;
    let n = start_in(dir, &format!("authentication {{ allow_anonymous = false, password_file = \"{f}\" }}")).await;
    let port = n.mqtt.port().to_string();
    let p = port.as_str();
    run("mosquitto_pub", &["-h", "127.0.0.1", "-p", p, "-u", "alice", "-P", "s3cret", "-t", "a", "-m", "ok"]).await;
    for creds in [&["-u", "alice", "-P", "wrong"][..], &[][..]] {
        let out = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", p, "-t", "a", "-m", "no"])
            .args(creds)
            .output()
            .await
            .expect("spawn");
        assert!(!out.status.success(), "refused with {creds:?}");
    }
    n.stop().await;
}
