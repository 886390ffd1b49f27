//! A real Prometheus (Debian's `prometheus`, installed by `scripts/setup.sh`) scrapes a running
//! instance every second with the `METRICS_TOKEN` bearer token: the target is up, and after a
//! scripted chat its queries return what happened. `promtool check metrics` finds no problem in
//! the exposition. Without the binaries the test prints `SKIPPED:` and passes.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

use crate::support::{WAIT, spawn_app_with};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";
const TOKEN: &str = "scrape-t0ken";

/// A port nobody listens on now (Prometheus binds it itself).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Prometheus as a child process; killed when dropped.
struct Prometheus {
    _child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: chat\n    scrape_interval: 1s\n    scrape_timeout: 1s\n\
                 \x20   authorization:\n      type: Bearer\n      credentials: {TOKEN}\n\
                 \x20   static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start prometheus");
        let prometheus = Prometheus {
            _child: child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let ready = format!("{}/-/ready", prometheus.url);
        prometheus
            .until("Prometheus ready", || async {
                reqwest::get(&ready)
                    .await
                    .is_ok_and(|r| r.status().is_success())
            })
            .await;
        prometheus
    }

    /// The value of an instant query that has exactly one series, if any.
    async fn query(&self, query: &str) -> Option<f64> {
        let res = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", query)])
            .send()
            .await
            .ok()?;
        let body: Value = res.json().await.ok()?;
        assert_eq!(body["status"], "success", "{query}: {body}");
        let result = body["data"]["result"].as_array()?;
        match result.as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }

    /// Polls the query until it returns `want` (bounded: a few scrape intervals).
    async fn wait_value(&self, query: &str, want: f64) {
        let mut last = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < deadline {
            last = self.query(query).await;
            if last == Some(want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let log = std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap();
        panic!("{query}: {last:?}, never {want}\nprometheus log:\n{log}");
    }

    async fn until<F, Fut>(&self, what: &str, check: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !check().await {
            assert!(tokio::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn installed() -> bool {
    if Path::new(PROMETHEUS).exists() && Path::new(PROMTOOL).exists() {
        return true;
    }
    println!("SKIPPED: {PROMETHEUS} or {PROMTOOL} missing (scripts/setup.sh installs them)");
    false
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_instance_and_sees_the_chat() {
    if !installed() {
        return;
    }
    let app = spawn_app_with(&["--metrics-token", TOKEN]).await;
    let prometheus = Prometheus::start(&app.addr.to_string()).await;
    prometheus.wait_value("up{job=\"chat\"}", 1.0).await;
    prometheus
        .wait_value("chat_messages_stored_total{job=\"chat\"}", 0.0)
        .await;

    let mut alice = app.member("alice", "scraped").await;
    let mut bob = app.member("bob", "scraped").await;
    alice.event("user_joined").await;
    for text in ["one", "two", "three"] {
        alice.say("scraped", text).await;
    }
    bob.event_where("new_message", |m| m["message"] == "three")
        .await;
    let transient = app.client().await;
    transient.disconnect();

    prometheus
        .wait_value("chat_messages_stored_total{job=\"chat\"}", 3.0)
        .await;
    prometheus
        .wait_value(
            "chat_connections_open{job=\"chat\",transport=\"socketio\"}",
            2.0,
        )
        .await;
    prometheus
        .wait_value(
            "chat_connections_closed_total{job=\"chat\",transport=\"socketio\",reason=\"client\"}",
            1.0,
        )
        .await;
    prometheus
        .wait_value(
            "sum(chat_events_total{job=\"chat\",event=\"send_message\",outcome=\"ok\"})",
            3.0,
        )
        .await;
    prometheus
        .wait_value("chat_durable_write_seconds_count{job=\"chat\"}", 3.0)
        .await;
    // Every message went to both members, and bob's arrival to alice.
    prometheus
        .wait_value("chat_deliveries_total{job=\"chat\"}", 7.0)
        .await;
    // The instance label survives the scrape (it does not collide with Prometheus' own).
    let series = reqwest::Client::new()
        .get(format!("{}/api/v1/series", prometheus.url))
        .query(&[("match[]", "chat_rooms_local")])
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let labels = &series["data"][0];
    assert_eq!(labels["instance"], app.addr.to_string(), "{series}");
    assert!(
        labels["instance_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{series}"
    );
    drop(alice);
    drop(bob);
}

#[tokio::test]
async fn promtool_finds_no_problem_in_the_exposition() {
    if !installed() {
        return;
    }
    let app = spawn_app_with(&["--metrics-token", TOKEN]).await;
    // Some traffic, so histograms and counters are not all zero.
    let mut a = app.member("a", "linted").await;
    a.say("linted", "hello").await;
    let text = reqwest::Client::new()
        .get(app.url("/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut promtool = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start promtool");
    let mut stdin = promtool.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(WAIT, promtool.wait_with_output())
        .await
        .expect("promtool finishes")
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool: {report}\n{text}");
    assert!(report.trim().is_empty(), "promtool: {report}");
}
