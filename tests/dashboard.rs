//! The dashboard, in a real browser: Debian's headless Chromium loads the page from a node of a
//! 3-node cluster, runs its script against the API (with the key from the URL fragment) and the
//! rendered DOM shows the nodes with their roles, the link, and the link's error.

mod common;

use std::time::Duration;

use common::procs::{http, ProcCluster, TEST_API_KEY, TEST_API_SECRET};
use common::{init, wait_for, TempDir};

/// The page as Chromium rendered it after its script ran (virtual time: its polling and
/// fetches complete before the DOM is dumped).
fn rendered(url: &str) -> String {
    let profile = TempDir::new("chromium");
    let dom = profile.path().join("dom.html");
    let mut child = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-crash-reporter",
            "--disable-breakpad",
            "--virtual-time-budget=6000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().join("profile").display()))
        .arg("--dump-dom")
        .arg(url)
        // To a file, not a pipe: a helper process left behind would hold a pipe open.
        .stdout(std::fs::File::create(&dom).expect("dom file"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("chromium did not run (./scripts/test.sh installs it): {e}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            _ if std::time::Instant::now() > deadline => {
                let _ = child.kill();
                panic!("chromium did not finish rendering {url} within 60 s");
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    assert!(status.success(), "chromium failed on {url}: {status}");
    std::fs::read_to_string(&dom).expect("dumped DOM")
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_nodes_and_a_failing_link_in_a_real_browser() {
    init();
    common::require_binary("chromium");
    // A link to a server nobody listens on: its error must reach the page.
    let link = r#"cluster.links = [{ name = "far-away", server = "127.0.0.1:9", topics = ["dash/#"] }]"#;
    let c = ProcCluster::start(3, link);
    c.wait_ready(&[0, 1, 2]).await;
    let api = c.nodes[1].api;
    let error = std::sync::Mutex::new(String::new());
    wait_for(
        || {
            let Some((200, body)) = http(api, "GET", "/api/v5/cluster/links", None) else { return false };
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let e = v[0]["last_error"].as_str().unwrap_or_default().to_string();
            *error.lock().unwrap_or_else(|e| e.into_inner()) = e.clone();
            !e.is_empty()
        },
        Duration::from_secs(20),
        "the link to reach an error",
    )
    .await;
    let error = error.into_inner().unwrap_or_else(|e| e.into_inner());

    // Without a key the page loads and asks for one.
    let page = rendered(&format!("http://127.0.0.1:{api}/dashboard"));
    assert!(page.contains("API key"), "the page asks for a key: {page}");

    let dom = rendered(&format!("http://127.0.0.1:{api}/dashboard#key={TEST_API_KEY}:{TEST_API_SECRET}"));
    for n in &c.nodes {
        assert!(dom.contains(&n.name), "node {} on the page:\n{dom}", n.name);
    }
    assert!(dom.contains("leader") && dom.contains("follower"), "roles on the page:\n{dom}");
    assert!(dom.contains("far-away"), "the link on the page:\n{dom}");
    assert!(dom.contains(&html_escape(&error)), "the link's error ({error}) on the page:\n{dom}");
    assert!(dom.contains("updated "), "the page refreshed itself:\n{dom}");
    assert!(!dom.contains("HTTP 4") && !dom.contains("HTTP 5"), "no API call failed:\n{dom}");
}
