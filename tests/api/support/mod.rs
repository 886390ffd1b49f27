//! Test support: `spawn_app()` runs the real app in-process on port 0 with a fresh data
//! folder; `client.rs`: `SioClient`, a minimal Socket.IO v5 client that records every event it
//! receives, so tests can wait for events instead of sleeping; `proxy.rs`: TCP proxies in
//! front of real dependencies, for outages and forced interleavings.

mod client;
mod proxy;

pub use client::SioClient;
#[allow(unused_imports)] // the fault lab, which includes this folder, uses no proxy
pub use proxy::{HoldProxy, TcpProxy};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chat_service::app::App;
use chat_service::config::Config;
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub const WAIT: Duration = Duration::from_secs(5);

/// A running chat-service reached over HTTP and Socket.IO at `addr`: the in-process `TestApp`
/// derefs to it, and so do the real processes of the fault lab (`tests/lab/`).
pub struct Endpoint {
    pub addr: SocketAddr,
}

pub struct TestApp {
    endpoint: Endpoint,
    pub data_dir: Arc<tempfile::TempDir>,
    args: Vec<String>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Starts the app with extra command-line settings (e.g. `["--history-on-join", "5"]`).
pub async fn spawn_app_with(args: &[&str]) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    start(dir, args.iter().map(|s| s.to_string()).collect()).await
}

async fn start(dir: Arc<tempfile::TempDir>, args: Vec<String>) -> TestApp {
    let mut argv: Vec<String> = vec![
        "chat-service".into(),
        "--port".into(),
        "0".into(),
        "--host".into(),
        "127.0.0.1".into(),
        "--data-dir".into(),
        dir.path().display().to_string(),
    ];
    argv.extend(args.iter().cloned());
    let cfg = Config::from_args(argv).expect("test config");
    let app = App::build(cfg).await.expect("app builds");
    let addr = app.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        app.run_until_stopped(async move {
            let _ = stopped.await;
        })
        .await
        .expect("app runs");
    });
    TestApp {
        endpoint: Endpoint { addr },
        data_dir: dir,
        args,
        stop: Some(stop),
        task: Some(task),
    }
}

/// The Redis every multi-instance test shares: `TEST_REDIS_URL`, default the local one; a
/// `redis+cluster://` URL runs them on a Redis Cluster (scripts/test.sh runs the two-instance
/// tests on its local cluster too). The tests use unique room and user ids (`unique`) and
/// never flush it.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Whether the test Redis is a Redis Cluster.
pub fn on_cluster() -> bool {
    redis_url().starts_with(chat_service::redis_link::CLUSTER_SCHEME)
}

/// The name of one of the service's own keys that goes with the SPEC 7 key `spec_key`
/// (`redis_link::colocated`): hash-tagged on a cluster, `plain` on one Redis.
pub fn own_key(spec_key: &str, suffix: &str, plain: String) -> String {
    let (spec_key, suffix) = (format_args!("{spec_key}"), format_args!("{suffix}"));
    chat_service::redis_link::colocated(on_cluster(), spec_key, suffix, format_args!("{plain}"))
}

/// The test Redis' `ip:port` (for a proxy in front of it); `None` on a cluster, whose nodes
/// one proxy cannot stand for (the tests that need one say they are skipped).
pub fn redis_addr() -> Option<SocketAddr> {
    if on_cluster() {
        eprintln!("SKIPPED on a Redis Cluster: this test puts one proxy in front of Redis");
        return None;
    }
    Some(
        redis_url()
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .parse()
            .expect("TEST_REDIS_URL as redis://ip:port"),
    )
}

/// A connection to the test Redis (one node or a cluster), for checking keys; fails loudly
/// when Redis is not running.
pub async fn redis() -> chat_service::redis_link::Conn {
    let url = redis_url();
    let target = chat_service::redis_link::Target::parse(&url).expect("TEST_REDIS_URL");
    let mut conn = target.connection().expect("redis url");
    let ping = redis::cmd("PING");
    match tokio::time::timeout(WAIT, ping.query_async::<String>(&mut conn)).await {
        Ok(Ok(_)) => conn,
        _ => panic!(
            "Redis is not reachable at {url}: start it (scripts/test.sh does) or set TEST_REDIS_URL"
        ),
    }
}

/// An instance in multi-instance mode on the test Redis (plus extra settings).
pub async fn spawn_redis_app(args: &[&str]) -> TestApp {
    redis().await;
    let url = redis_url();
    let mut all = vec!["--redis-url", url.as_str()];
    all.extend_from_slice(args);
    spawn_app_with(&all).await
}

/// An id no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{:x}-{}",
        std::process::id(),
        rand::random::<u32>(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl Endpoint {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn client(&self) -> SioClient {
        SioClient::connect(self.addr, None).await
    }

    /// A client already authenticated as `user` (name = user).
    pub async fn user(&self, user: &str) -> SioClient {
        let mut c = self.client().await;
        let ack = c
            .emit_ack("authenticate", json!({"userId": user, "username": user}))
            .await;
        assert_eq!(ack["success"], true, "authenticate {user}: {ack}");
        c.event("authenticated").await;
        c
    }

    /// A client authenticated as `user` that has joined `room` (history and users consumed).
    pub async fn member(&self, user: &str, room: &str) -> SioClient {
        let mut c = self.user(user).await;
        c.join(room).await;
        c
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.get_with(path, &[]).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut req = reqwest::Client::new().get(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.expect("http get");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut req = reqwest::Client::new().post(self.url(path)).json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.expect("http post");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Message texts of a room's stored history (REST), oldest first.
    pub async fn stored_texts(&self, room: &str) -> Vec<String> {
        let (status, body) = self
            .get(&format!("/api/chat/{room}/history?limit=1000"))
            .await;
        assert_eq!(status, 200, "{body}");
        body["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["message"].as_str().unwrap().to_string())
            .collect()
    }
}

impl std::ops::Deref for TestApp {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl TestApp {
    /// Graceful shutdown (as on SIGTERM); waits until the app has stopped.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("app stops in time")
                .expect("app task");
        }
    }

    /// Stops the app and starts a new one on the same data folder and settings.
    pub async fn restart(mut self) -> TestApp {
        self.stop().await;
        start(self.data_dir.clone(), self.args.clone()).await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The sorted keys of a JSON object.
pub fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/api/fixtures")
        .join(name)
}

/// Connects over Socket.IO (or, with `raw_ws`, the plain WebSocket protocol on `/ws`),
/// authenticates as `user`, joins `room`, and then stops reading the socket: a slow consumer.
/// Dropping the returned stream closes it.
pub async fn stalled_member(
    addr: SocketAddr,
    user: &str,
    room: &str,
    raw_ws: bool,
) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("tcp connect");
    let path = if raw_ws {
        "/ws"
    } else {
        "/socket.io/?EIO=4&transport=websocket"
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    // Read the upgrade response (and whatever follows it in the same read).
    let mut buf = vec![0u8; 4096];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
    let auth = json!({"userId": user, "username": user});
    let frames = if raw_ws {
        vec![
            json!({"event": "authenticate", "data": auth}).to_string(),
            json!({"event": "join_room", "data": {"roomId": room}}).to_string(),
        ]
    } else {
        vec![
            "40".to_string(),
            format!("42{}", json!(["authenticate", auth])),
            format!("42{}", json!(["join_room", {"roomId": room}])),
        ]
    };
    for (i, text) in frames.into_iter().enumerate() {
        tcp.write_all(&masked_text_frame(text.as_bytes()))
            .await
            .unwrap();
        if i == 0 && !raw_ws {
            // Like socket.io-client, wait for the namespace connect ack (`40{"sid":..}`)
            // before emitting: events sent earlier are dropped by the server.
            let mut seen = Vec::new();
            tokio::time::timeout(WAIT, async {
                while !seen.windows(3).any(|w| w == b"40{") {
                    let n = tcp.read(&mut buf).await.unwrap();
                    assert!(n > 0, "closed before the connect ack");
                    seen.extend_from_slice(&buf[..n]);
                }
            })
            .await
            .expect("connect ack");
        }
    }
    tcp
}

/// A client-to-server WebSocket text frame (masked, as clients must send).
pub fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81u8];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Polls `check` until it holds, up to `wait` (for state that sends no event, such as keys in
/// Redis or `/ready`).
pub async fn eventually<F, Fut>(what: &str, wait: Duration, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + wait;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What `tracing` wrote at info and above, on this thread, while the guard of `capture_logs`
/// lives: a current-thread test runtime runs the in-process app's tasks here too.
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    /// The lines that contain `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }
}

/// Captures this thread's logs (info and above, plain text) until the guard is dropped.
pub fn capture_logs() -> (CapturedLogs, tracing::subscriber::DefaultGuard) {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}
