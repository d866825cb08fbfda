//! The CI smoke run of the benchmark harness: a few scenarios with tiny counts against Strait
//! and mosquitto (and rumqttd when installed). It proves the harness starts the brokers, drives
//! them, measures and writes its three result files; it measures nothing worth keeping.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn smoke_run_writes_results_and_strait_loses_nothing() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_strait-bench"));
    let strait = bench.with_file_name("strait");
    assert!(
        strait.is_file(),
        "{} is missing: build the broker first (`cargo test --workspace` does, or `cargo build -p strait`)",
        strait.display()
    );
    let out = std::env::temp_dir().join(format!("strait-bench-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new(&bench)
        .args(["--smoke", "--brokers", "strait,mosquitto,rumqttd"])
        .args(["--scenarios", "qos1-1to1,qos2-1to1,latency-2k,idle-10k,cluster-qos1,cluster-persistent,link-qos1"])
        .arg("--strait")
        .arg(&strait)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("running strait-bench");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "strait-bench --smoke failed ({}):\n{stderr}", run.status);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).expect("results.json"))
            .expect("valid JSON");
    let rows = json["rows"].as_array().expect("rows");
    for (scenario, broker) in [
        ("qos1-1to1", "strait"),
        ("qos1-1to1", "mosquitto"),
        ("link-qos1", "strait"),
        ("cluster-qos1", "strait"),
        ("cluster-persistent", "strait"),
    ] {
        let row = rows
            .iter()
            .find(|r| r["scenario"] == scenario && r["broker"] == broker)
            .unwrap_or_else(|| panic!("no row for {scenario} on {broker}:\n{stderr}"));
        assert_eq!(row["healthy"], true, "{scenario} on {broker}: {row}");
        assert_eq!(row["lost"], 0, "{scenario} on {broker}: {row}");
        assert!(row["msgs_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{scenario} on {broker}: {row}");
        assert_eq!(row["received"], row["expected"], "{scenario} on {broker}: {row}");
    }
    let md = std::fs::read_to_string(out.join("results.md")).expect("results.md");
    assert!(md.contains("| qos1-1to1 |"), "{md}");
    let svg = std::fs::read_to_string(out.join("chart.svg")).expect("chart.svg");
    assert!(svg.contains("<svg"), "chart.svg is not an SVG");
    let _ = std::fs::remove_dir_all(&out);
}
