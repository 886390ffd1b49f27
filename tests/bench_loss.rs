//! `chat-bench` measures honestly: against a healthy server it reports every message delivered
//! and exits 0; when the server is killed mid-run it reports delivery < 100% and exits non-zero.
//! Both binaries run as real processes (the server on port 0 with a fresh data folder).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Starts `chat-service` on a free port; returns the process and its base URL.
fn start_server(data_dir: &Path) -> (Child, String) {
    let mut server = Command::new(env!("CARGO_BIN_EXE_chat-service"))
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .env("DATA_DIR", data_dir)
        .env("RUST_LOG", "warn")
        .env("RATE_LIMIT_PER_SEC", "0")
        .env("EVENT_RATE_LIMIT_PER_SEC", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chat-service");
    let stdout = server.stdout.take().expect("server stdout");
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("server prints its address")
            .expect("read server stdout");
        if let Some(url) = line.strip_prefix("listening on ") {
            break url.trim().to_string();
        }
    };
    (server, url)
}

fn start_bench(url: &str, json: &Path, duration: &str, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_chat-bench"))
        .args(["--url", url, "--connections", "20", "--room-size", "2"])
        .args(extra)
        .args(["--rate", "200", "--duration", duration, "--warmup", "0.5"])
        .args(["--drain", "2", "--quiet", "--json"])
        .arg(json)
        .stdout(Stdio::null())
        .spawn()
        .expect("start chat-bench")
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait chat-bench") {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("chat-bench did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn summary(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("chat-bench wrote its JSON summary");
    serde_json::from_str(&text).expect("summary is JSON")
}

#[test]
fn a_healthy_run_delivers_everything_and_exits_zero() {
    // Sessions opened on a WebSocket, and sessions that start on long-polling and upgrade.
    for extra in [&[][..], &["--upgrade"][..]] {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut server, url) = start_server(dir.path());
        let json = dir.path().join("summary.json");
        let mut bench = start_bench(&url, &json, "2", extra);
        let status = wait_with_timeout(&mut bench, Duration::from_secs(30));
        let _ = server.kill();
        let _ = server.wait();
        let s = summary(&json);
        assert!(status.success(), "{extra:?}: exit {status:?}, summary {s}");
        assert_eq!(s["upgrade"], !extra.is_empty(), "{s}");
        assert_eq!(s["connected"], 20, "{s}");
        assert_eq!(s["delivery_ratio"], 1.0, "{s}");
        assert!(s["delivered"].as_u64().unwrap() >= 700, "{s}");
        assert_eq!(s["delivered"], s["expected_deliveries"], "{s}");
    }
}

#[test]
fn killing_the_server_mid_run_is_reported_as_loss() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut server, url) = start_server(dir.path());
    let json = dir.path().join("summary.json");
    let mut bench = start_bench(&url, &json, "4", &[]);
    std::thread::sleep(Duration::from_millis(2500));
    server.kill().expect("kill server");
    let _ = server.wait();
    let status = wait_with_timeout(&mut bench, Duration::from_secs(30));
    let s = summary(&json);
    assert!(!status.success(), "chat-bench must fail, summary {s}");
    let ratio = s["delivery_ratio"].as_f64().expect("delivery_ratio");
    assert!(ratio < 1.0, "delivery must be < 100%: {s}");
    assert!(s["delivered"].as_u64().unwrap() > 0, "it was running: {s}");
    assert!(s["errors"]["total"].as_u64().unwrap() > 0, "{s}");
}
