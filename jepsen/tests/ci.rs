//! The short partition-tolerance selection CI runs on every change: a partition, a paused
//! leader, a killed leader (under QoS 1 and under QoS 2), a killed link holder between two
//! linked regions, the sending region's link-serving node killed or cut off, and disk faults
//! (wiped, cut and full disks, power loss), about 30 s of faults each, against the debug
//! `strait` binary.
//! A checker failing here is a safety regression. Needs root (network namespaces, iptables).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn ci_selection_passes_every_checker() {
    assert!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "the jepsen selection needs root (network namespaces, iptables): run the tests as root"
    );
    let jepsen = PathBuf::from(env!("CARGO_BIN_EXE_strait-jepsen"));
    let strait = jepsen.with_file_name("strait");
    assert!(
        strait.is_file(),
        "{} is missing: build the broker first (`cargo test --workspace` does, or `cargo build -p strait`)",
        strait.display()
    );
    let out = std::env::temp_dir().join(format!("strait-jepsen-ci-{}", std::process::id()));
    let run = Command::new(&jepsen)
        .args(["run", "--ci", "--time", "30", "--strait"])
        .arg(&strait)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("running strait-jepsen");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let last = stdout.lines().last().unwrap_or("");
    let selected = strait_jepsen::run::scenarios().iter().filter(|s| s.ci).count();
    assert!(
        run.status.success() && last == format!("jepsen: {selected} passed, 0 failed"),
        "jepsen CI selection failed ({}); results kept in {}\n{stdout}\n{stderr}",
        run.status,
        out.display()
    );
    let _ = std::fs::remove_dir_all(&out);
}
