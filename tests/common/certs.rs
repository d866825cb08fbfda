//! Test certificates made by openssl: a CA and a server certificate for 127.0.0.1/localhost.

use std::path::Path;
use std::process::Command;

pub fn run(dir: &Path, args: &[&str]) {
    let out =
        Command::new(args[0]).args(&args[1..]).current_dir(dir).output().unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    assert!(out.status.success(), "{:?} failed: {}", args, String::from_utf8_lossy(&out.stderr));
}

/// CA + server certificate for 127.0.0.1, written into `dir`.
pub fn make_certs(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let mut ca = vec!["openssl", "req", "-x509"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=strait-test-ca"]);
    run(dir, &ca);
    let mut csr = vec!["openssl", "req"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]);
    run(dir, &csr);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").expect("write ext.cnf");
    run(
        dir,
        &[
            "openssl",
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}
