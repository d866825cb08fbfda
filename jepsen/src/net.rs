//! Hosts: one network namespace per node, all attached to a bridge that lives in a hub
//! namespace of its own; the harness (in the root namespace) reaches them through one veth into
//! the hub at 10.77.0.254. Node addresses (10.77.0.x/24) exist only inside these namespaces and
//! that veth. Faults are iptables rules and tc qdiscs inside a node's namespace, so a node can
//! be cut from its peers while the harness's clients still reach it (that is how a minority's
//! behaviour is observed).
//!
//! Only one run at a time: a lock file guards the names. Whatever a crashed previous run left
//! (namespaces `sj-*`, the host veth) is removed before a run and again after it (also on
//! Ctrl-C).

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context};

pub const PREFIX: &str = "sj-";
const HUB: &str = "sj-hub";
const HOST_IF: &str = "sj-host";
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 254);

/// Runs a command; an error names the command and carries its stderr.
pub fn sh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!("`{}` failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command inside namespace `ns`.
pub fn in_ns(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    sh(&v)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Checks the tools a run needs.
pub fn preflight() -> anyhow::Result<()> {
    if !is_root() {
        bail!("strait-jepsen needs root (network namespaces, iptables, tc): run it as root");
    }
    for tool in ["ip", "iptables", "tc"] {
        if Command::new(tool).arg("-V").output().is_err() && Command::new(tool).arg("--version").output().is_err() {
            bail!("`{tool}` not found: apt-get install iproute2 iptables");
        }
    }
    Ok(())
}

/// Removes every namespace and interface a run creates (idempotent).
pub fn cleanup() {
    if let Ok(list) = sh(&["ip", "netns", "list"]) {
        for line in list.lines() {
            if let Some(name) = line.split_whitespace().next() {
                if name.starts_with(PREFIX) {
                    // Processes still inside keep a namespace alive only until they die; the
                    // harness kills its nodes before this.
                    let _ = sh(&["ip", "netns", "del", name]);
                }
            }
        }
    }
    let _ = sh(&["ip", "link", "del", HOST_IF]);
}

#[derive(Debug, Clone)]
pub struct Host {
    /// 1-based node number.
    pub id: u32,
    pub ns: String,
    pub ip: Ipv4Addr,
}

/// The test network: hosts by id.
#[derive(Debug, Clone)]
pub struct Net {
    pub hosts: Vec<Host>,
}

pub fn ip_of(id: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, id as u8)
}

impl Net {
    /// Creates the hub, the host veth and one namespace per id.
    pub fn create(ids: &[u32]) -> anyhow::Result<Net> {
        cleanup();
        sh(&["ip", "netns", "add", HUB])?;
        in_ns(HUB, &["ip", "link", "add", "br0", "type", "bridge"])?;
        in_ns(HUB, &["ip", "link", "set", "br0", "up"])?;
        sh(&["ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", "host", "netns", HUB])?;
        in_ns(HUB, &["ip", "link", "set", "host", "master", "br0", "up"])?;
        sh(&["ip", "addr", "add", &format!("{HOST_IP}/24"), "dev", HOST_IF])?;
        sh(&["ip", "link", "set", HOST_IF, "up"])?;
        let mut hosts = Vec::new();
        for &id in ids {
            let ns = format!("{PREFIX}n{id}");
            let port = format!("n{id}");
            sh(&["ip", "netns", "add", &ns])?;
            sh(&["ip", "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", HUB])?;
            in_ns(HUB, &["ip", "link", "set", &port, "master", "br0", "up"])?;
            let ip = ip_of(id);
            sh(&["ip", "-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            hosts.push(Host { id, ns, ip });
        }
        Ok(Net { hosts })
    }

    pub fn host(&self, id: u32) -> anyhow::Result<&Host> {
        self.hosts.iter().find(|h| h.id == id).with_context(|| format!("no host {id}"))
    }

    /// Cuts every pair (a, b) with a in `side` and b not in it (both directions), among `among`
    /// (the nodes of the partitioned cluster). Traffic to and from the harness is untouched.
    pub fn cut(&self, pairs: &[(u32, u32)]) -> anyhow::Result<()> {
        for &(a, b) in pairs {
            let (ha, hb) = (self.host(a)?, self.host(b)?);
            for (h, other) in [(ha, hb), (hb, ha)] {
                let ip = other.ip.to_string();
                in_ns(&h.ns, &["iptables", "-A", "INPUT", "-s", &ip, "-j", "DROP"])?;
                in_ns(&h.ns, &["iptables", "-A", "OUTPUT", "-d", &ip, "-j", "DROP"])?;
            }
        }
        Ok(())
    }

    /// Drops `pct` % of the packets between nodes (not those to and from the harness).
    pub fn loss(&self, ids: &[u32], pct: u32) -> anyhow::Result<()> {
        let p = format!("{:.2}", pct as f64 / 100.0);
        for &id in ids {
            let h = self.host(id)?;
            for other in self.hosts.iter().filter(|o| o.id != id) {
                let ip = other.ip.to_string();
                in_ns(
                    &h.ns,
                    &[
                        "iptables",
                        "-A",
                        "INPUT",
                        "-s",
                        &ip,
                        "-m",
                        "statistic",
                        "--mode",
                        "random",
                        "--probability",
                        &p,
                        "-j",
                        "DROP",
                    ],
                )?;
            }
        }
        Ok(())
    }

    /// Limits the egress bandwidth of the nodes (tc tbf).
    pub fn bandwidth(&self, ids: &[u32], rate: &str) -> anyhow::Result<()> {
        for &id in ids {
            let h = self.host(id)?;
            in_ns(
                &h.ns,
                &[
                    "tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", rate, "burst", "32kbit", "latency",
                    "400ms",
                ],
            )?;
        }
        Ok(())
    }

    /// Removes every fault: iptables rules and qdiscs on every host.
    pub fn heal(&self) -> anyhow::Result<()> {
        for h in &self.hosts {
            in_ns(&h.ns, &["iptables", "-F"])?;
            let _ = in_ns(&h.ns, &["tc", "qdisc", "del", "dev", "eth0", "root"]);
        }
        Ok(())
    }
}

/// Pairs to cut so that `groups` cannot talk to each other (each group stays connected inside).
pub fn split(groups: &[Vec<u32>]) -> Vec<(u32, u32)> {
    let mut pairs = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        for h in &groups[i + 1..] {
            for &a in g {
                for &b in h {
                    pairs.push((a, b));
                }
            }
        }
    }
    pairs
}

/// Ring of majorities on `ids` (5 nodes): each node keeps only its two neighbours on each side
/// of the ring... on 5 nodes, i talks to i±1 (3 of 5 with itself, a majority), nobody else.
pub fn ring_cuts(ids: &[u32]) -> Vec<(u32, u32)> {
    let n = ids.len();
    let mut pairs = Vec::new();
    for i in 0..n {
        for j in i + 1..n {
            let d = j - i;
            if d != 1 && d != n - 1 {
                pairs.push((ids[i], ids[j]));
            }
        }
    }
    pairs
}

/// Bridge on `ids`: two halves that only the middle node connects.
pub fn bridge_cuts(ids: &[u32]) -> Vec<(u32, u32)> {
    let mid = ids.len() / 2;
    let (left, right) = (&ids[..mid], &ids[mid + 1..]);
    let mut pairs = Vec::new();
    for &a in left {
        for &b in right {
            pairs.push((a, b));
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_cuts_every_cross_pair_only() {
        let p = split(&[vec![1], vec![2, 3]]);
        assert_eq!(p, vec![(1, 2), (1, 3)]);
    }

    #[test]
    fn ring_of_five_keeps_neighbours() {
        let p = ring_cuts(&[1, 2, 3, 4, 5]);
        assert_eq!(p, vec![(1, 3), (1, 4), (2, 4), (2, 5), (3, 5)]);
    }

    #[test]
    fn bridge_of_five_keeps_the_middle() {
        assert_eq!(bridge_cuts(&[1, 2, 3, 4, 5]), vec![(1, 4), (1, 5), (2, 4), (2, 5)]);
    }
}
