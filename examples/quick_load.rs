//! Quick load probe (not the benchmark harness): 1 publisher → 1 subscriber at QoS 1 with 64 B
//! payloads, pipelined with a window of 100 unacknowledged PUBLISHes, against any broker; then
//! N idle connections. Prints msgs/s, end-to-end latency percentiles and, given the broker's
//! pid, its RSS per idle connection.
//!
//!     cargo run --release --example quick_load -- 127.0.0.1:1883 200000 [PID] [IDLE]
//!
//! Cluster runs: `QL_PUB=127.0.0.1:1884` publishes on another node than the subscriber's;
//! `QL_PERSISTENT=1` makes the subscriber's session persistent (QoS 1 then goes through Raft).

use std::time::{Duration, Instant};

use bytes::BytesMut;
use strait::mqtt::codec;
use strait::mqtt::packet::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn connect(addr: &str, id: &str) -> anyhow::Result<(TcpStream, BytesMut)> {
    connect_with(addr, id, true).await
}

async fn connect_with(addr: &str, id: &str, clean: bool) -> anyhow::Result<(TcpStream, BytesMut)> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let c = Connect {
        protocol: Protocol::V311,
        clean_start: clean,
        keep_alive: 60,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    };
    let mut out = BytesMut::new();
    codec::encode(&Packet::Connect(Box::new(c)), Protocol::V311, &mut out);
    s.write_all(&out).await?;
    let mut buf = BytesMut::new();
    loop {
        if let Some(p) = codec::decode(&mut buf, Some(Protocol::V311), 1 << 20)? {
            anyhow::ensure!(matches!(p, Packet::ConnAck(ref a) if a.code == 0), "refused: {p:?}");
            return Ok((s, buf));
        }
        anyhow::ensure!(s.read_buf(&mut buf).await? > 0, "closed before CONNACK");
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let addr = args.get(1).cloned().unwrap_or_else(|| "127.0.0.1:1883".into());
    let count: u32 = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let pid: Option<u32> = args.get(3).and_then(|v| v.parse().ok());
    let idle: usize = args.get(4).and_then(|v| v.parse().ok()).unwrap_or(5000);
    let origin = Instant::now();

    let persistent = std::env::var("QL_PERSISTENT").is_ok_and(|v| v == "1");
    let pub_addr = std::env::var("QL_PUB").unwrap_or_else(|_| addr.clone());
    let (mut sub, mut sbuf) = connect_with(&addr, "ql-sub", !persistent).await?;
    let mut out = BytesMut::new();
    let s = Subscribe {
        packet_id: 1,
        filters: vec![SubscribeFilter {
            filter: "ql/t".into(),
            options: SubOptions { qos: QoS::AtLeastOnce, ..SubOptions::default() },
        }],
        properties: Properties::default(),
    };
    codec::encode(&Packet::Subscribe(s), Protocol::V311, &mut out);
    sub.write_all(&out).await?;
    loop {
        if let Some(Packet::SubAck(_)) = codec::decode(&mut sbuf, Some(Protocol::V311), 1 << 20)? {
            break;
        }
        sub.read_buf(&mut sbuf).await?;
    }
    let receiver = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(count as usize);
        let mut out = BytesMut::new();
        while lat.len() < count as usize {
            while let Ok(Some(p)) = codec::decode(&mut sbuf, Some(Protocol::V311), 1 << 20) {
                if let Packet::Publish(p) = p {
                    let sent = u64::from_be_bytes(p.payload[..8].try_into().unwrap_or([0; 8]));
                    lat.push(origin.elapsed().as_nanos() as u64 - sent);
                    codec::encode(&Packet::PubAck(PubResp::new(p.packet_id, 0)), Protocol::V311, &mut out);
                }
            }
            if !out.is_empty() {
                sub.write_all(&out).await?;
                out.clear();
            }
            if lat.len() >= count as usize {
                break;
            }
            // Stop after 2 s without traffic: whatever is missing by then was lost.
            match tokio::time::timeout(Duration::from_secs(2), sub.read_buf(&mut sbuf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => break,
            }
        }
        Ok::<_, anyhow::Error>(lat)
    });

    let (mut publ, mut pbuf) = connect(&pub_addr, "ql-pub").await?;
    let started = Instant::now();
    let (mut sent, mut acked) = (0u32, 0u32);
    let window = 100;
    let mut out = BytesMut::new();
    while acked < count {
        while sent < count && sent - acked < window {
            let mut payload = vec![0u8; 64];
            payload[..8].copy_from_slice(&(origin.elapsed().as_nanos() as u64).to_be_bytes());
            let p = Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: "ql/t".into(),
                packet_id: (sent % 65535 + 1) as u16,
                payload: payload.into(),
                properties: Properties::default(),
            };
            codec::encode(&Packet::Publish(p), Protocol::V311, &mut out);
            sent += 1;
        }
        publ.write_all(&out).await?;
        out.clear();
        anyhow::ensure!(publ.read_buf(&mut pbuf).await? > 0, "publisher closed");
        while let Some(p) = codec::decode(&mut pbuf, Some(Protocol::V311), 1 << 20)? {
            if let Packet::PubAck(_) = p {
                acked += 1;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let mut lat = receiver.await??;
    let lost = count as usize - lat.len();
    lat.sort_unstable();
    let pct = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    println!(
        "qos1 1->1 64B: {count} msgs in {secs:.2}s = {:.0} msg/s; latency p50 {:.0} us, p99 {:.0} us; lost {lost}",
        f64::from(count) / secs,
        pct(0.5),
        pct(0.99)
    );

    if let Some(pid) = pid {
        let before = rss_kib(pid).unwrap_or(0);
        let mut conns = Vec::with_capacity(idle);
        for i in 0..idle {
            conns.push(connect(&addr, &format!("idle-{i}")).await?);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_kib(pid).unwrap_or(0);
        println!(
            "{idle} idle connections: RSS {before} KiB -> {after} KiB = {:.1} KiB per connection",
            (after.saturating_sub(before)) as f64 / idle as f64
        );
    }
    Ok(())
}
