//! TLS listener: a stock client (mosquitto_pub/sub with --cafile) talks to Strait over TLS with
//! a certificate chain made by openssl; a plain-TCP client on the TLS port is refused without
//! disturbing the listener.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use strait::config::Config;
use strait::node::Node;

mod common;
use common::certs::make_certs;

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("strait-{tag}-{}-{}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

fn need(bin: &str) {
    assert!(
        Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
        "{bin} is not installed: run ./scripts/test.sh as root once (it installs mosquitto-clients)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_client_over_tls() {
    need("openssl");
    need("mosquitto_sub");
    let dir = tempdir("tls");
    make_certs(&dir);
    let cfg = format!(
        r#"
        node.data_dir = "{data}"
        listeners.tcp.default.bind = "127.0.0.1:0"
        listeners.ssl.default {{
          bind = "127.0.0.1:0"
          certfile = "{d}/server.pem"
          keyfile = "{d}/server.key"
        }}
        api.bind = "127.0.0.1:0"
        "#,
        data = dir.join("data").display(),
        d = dir.display()
    );
    let cfg = Config::parse_str(&cfg, "tls-test", std::iter::empty()).expect("config");
    let node = Node::start(cfg).await.expect("node starts");
    let tls = node.listener("ssl.default").expect("ssl listener bound");
    let port = tls.port().to_string();

    tracing::info!("--- a plain TCP client on the TLS port is refused, the listener keeps serving");
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(tls).await.expect("connect");
        // An MQTT CONNECT instead of a TLS ClientHello.
        s.write_all(&[0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0]).await.expect("write");
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("closed within 5 s");
        assert!(matches!(r, Ok(0) | Err(_)) || buf[0] != 0x20, "plain MQTT on the TLS port must not get a CONNACK");
    }

    tracing::info!("--- mosquitto_sub over TLS receives what mosquitto_pub publishes over TLS");
    let ca = dir.join("ca.pem");
    let ca = ca.to_str().expect("utf-8 path");
    let sub = tokio::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "--cafile",
            ca,
            "-t",
            "secure/#",
            "-q",
            "1",
            "-C",
            "1",
            "-W",
            "20",
            "-v",
            "-d",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mosquitto_sub");
    // Wait until the subscription exists (the broker lists it) before publishing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let subscribed = node.broker.sessions().iter().any(|s| s.lock().subscriptions.contains_key("secure/#"));
        if subscribed {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "mosquitto_sub did not subscribe over TLS within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let publish = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port, "--cafile", ca, "-t", "secure/1", "-q", "1", "-m", "over tls"])
        .output()
        .expect("run mosquitto_pub");
    assert!(publish.status.success(), "mosquitto_pub over TLS failed: {}", String::from_utf8_lossy(&publish.stderr));
    let out = tokio::time::timeout(Duration::from_secs(20), sub.wait_with_output())
        .await
        .expect("mosquitto_sub finished")
        .expect("mosquitto_sub output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("secure/1 over tls"),
        "mosquitto_sub printed {stdout:?}, stderr {}",
        String::from_utf8_lossy(&out.stderr)
    );

    node.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
