//! Test support: `spawn_app()` runs the real app in-process on port 0 with a fresh data
//! folder; `SioClient` is a minimal Socket.IO v5 client over WebSocket (Engine.IO v4) that
//! records every event it receives, so tests can wait for events instead of sleeping.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chat_service::app::App;
use chat_service::config::Config;
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;

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

/// The Redis every multi-instance test shares: `TEST_REDIS_URL`, default the local one. The
/// tests use unique room and user ids (`unique`) and never flush it.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A connection to the test Redis, for checking keys; fails loudly when Redis is not running.
pub async fn redis() -> redis::aio::MultiplexedConnection {
    let url = redis_url();
    let client = redis::Client::open(url.as_str()).expect("redis url");
    tokio::time::timeout(WAIT, client.get_multiplexed_async_connection())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_else(|| {
            panic!("Redis is not reachable at {url}: start it (scripts/test.sh does) or set TEST_REDIS_URL")
        })
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

#[derive(Default)]
struct Inbox {
    events: VecDeque<(String, Value)>,
    acks: HashMap<u64, oneshot::Sender<Value>>,
    closed: bool,
}

/// A Socket.IO client speaking the raw protocol over WebSocket.
pub struct SioClient {
    out: mpsc::UnboundedSender<WsMessage>,
    inbox: Arc<Mutex<Inbox>>,
    notify: Arc<Notify>,
    next_ack: u64,
    /// Socket.IO's `socket.id`: the `sid` of the server's CONNECT answer.
    pub socket_id: String,
}

impl SioClient {
    pub async fn connect(addr: SocketAddr, auth: Option<Value>) -> SioClient {
        Self::try_connect(addr, auth)
            .await
            .expect("socket.io connect")
    }

    pub async fn try_connect(addr: SocketAddr, auth: Option<Value>) -> Result<SioClient, String> {
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(|e| e.to_string())?;
        let (mut write, mut read) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<WsMessage>();
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if write.send(m).await.is_err() {
                    break;
                }
            }
            let _ = write.close().await;
        });
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let notify = Arc::new(Notify::new());
        let (connected_tx, connected_rx) = oneshot::channel::<Result<String, String>>();
        {
            let inbox = inbox.clone();
            let notify = notify.clone();
            let out = out.clone();
            tokio::spawn(async move {
                let mut connected = Some(connected_tx);
                while let Some(Ok(frame)) = read.next().await {
                    let WsMessage::Text(text) = frame else {
                        if let WsMessage::Close(_) = frame {
                            break;
                        }
                        continue;
                    };
                    let text = text.as_str();
                    match text.as_bytes().first() {
                        Some(b'2') => {
                            let _ = out.send(WsMessage::text("3"));
                        }
                        Some(b'4') => {
                            let packet = &text[1..];
                            match packet.as_bytes().first() {
                                Some(b'0') => {
                                    if let Some(tx) = connected.take() {
                                        let sid = serde_json::from_str::<Value>(&packet[1..])
                                            .ok()
                                            .and_then(|v| v["sid"].as_str().map(String::from))
                                            .unwrap_or_default();
                                        let _ = tx.send(Ok(sid));
                                    }
                                }
                                Some(b'4') => {
                                    if let Some(tx) = connected.take() {
                                        let _ = tx.send(Err(packet[1..].to_string()));
                                    }
                                }
                                Some(b'1') => {
                                    inbox
                                        .lock()
                                        .events
                                        .push_back(("__disconnect".into(), Value::Null));
                                }
                                Some(b'2') => {
                                    if let Ok(Value::Array(mut args)) =
                                        serde_json::from_str(&packet[1..])
                                    {
                                        let name =
                                            args.remove(0).as_str().unwrap_or("").to_string();
                                        let data = if args.is_empty() {
                                            Value::Null
                                        } else {
                                            args.remove(0)
                                        };
                                        inbox.lock().events.push_back((name, data));
                                    }
                                }
                                Some(b'3') => {
                                    let rest = &packet[1..];
                                    let digits =
                                        rest.bytes().take_while(u8::is_ascii_digit).count();
                                    let id: u64 = rest[..digits].parse().unwrap_or(0);
                                    let data = match serde_json::from_str(&rest[digits..]) {
                                        Ok(Value::Array(mut a)) if !a.is_empty() => a.remove(0),
                                        _ => Value::Null,
                                    };
                                    if let Some(tx) = inbox.lock().acks.remove(&id) {
                                        let _ = tx.send(data);
                                    }
                                }
                                _ => {}
                            }
                            notify.notify_waiters();
                        }
                        _ => {}
                    }
                }
                {
                    let mut inbox = inbox.lock();
                    inbox.closed = true;
                    // Pending acks will never come: their receivers see the sender dropped.
                    inbox.acks.clear();
                }
                notify.notify_waiters();
            });
        }
        let open = match &auth {
            Some(a) => format!("40{a}"),
            None => "40".into(),
        };
        out.send(WsMessage::text(open)).map_err(|e| e.to_string())?;
        let socket_id = tokio::time::timeout(WAIT, connected_rx)
            .await
            .map_err(|_| "no connect packet".to_string())?
            .map_err(|_| "closed before connect".to_string())??;
        Ok(SioClient {
            out,
            inbox,
            notify,
            next_ack: 0,
            socket_id,
        })
    }

    /// Emits without an ack.
    pub fn emit(&self, event: &str, data: Value) {
        let _ = self
            .out
            .send(WsMessage::text(format!("42{}", json!([event, data]))));
    }

    /// Emits with an ack request and returns a receiver of the ack (to pipeline emits).
    pub fn emit_with_ack(&mut self, event: &str, data: Value) -> oneshot::Receiver<Value> {
        let id = self.next_ack;
        self.next_ack += 1;
        let (tx, rx) = oneshot::channel();
        let mut inbox = self.inbox.lock();
        // On a closed connection the ack will never come: the receiver sees that at once.
        if !inbox.closed {
            inbox.acks.insert(id, tx);
        }
        drop(inbox);
        let _ = self
            .out
            .send(WsMessage::text(format!("42{id}{}", json!([event, data]))));
        rx
    }

    /// Emits with an ack a payload given as raw JSON text (for payloads `Value` cannot hold).
    pub async fn emit_raw_ack(&mut self, event: &str, raw_data: &str) -> Value {
        let id = self.next_ack;
        self.next_ack += 1;
        let (tx, rx) = oneshot::channel();
        self.inbox.lock().acks.insert(id, tx);
        let _ = self.out.send(WsMessage::text(format!(
            "42{id}[{},{raw_data}]",
            Value::from(event)
        )));
        tokio::time::timeout(WAIT, rx)
            .await
            .unwrap_or_else(|_| panic!("no ack for raw {event} within {WAIT:?}"))
            .expect("ack channel")
    }

    pub async fn emit_ack(&mut self, event: &str, data: Value) -> Value {
        let rx = self.emit_with_ack(event, data);
        tokio::time::timeout(WAIT, rx)
            .await
            .unwrap_or_else(|_| panic!("no ack for {event} within {WAIT:?}"))
            .expect("ack channel")
    }

    /// Waits for the next (oldest unconsumed) event named `name` and consumes it.
    pub async fn event(&mut self, name: &str) -> Value {
        self.event_where(name, |_| true).await
    }

    /// Waits for the oldest unconsumed `name` event that satisfies `pred`, and consumes it.
    pub async fn event_where(&mut self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.event_within(name, pred, WAIT).await
    }

    /// Like `event_where` with a custom deadline.
    pub async fn event_within(
        &mut self,
        name: &str,
        pred: impl Fn(&Value) -> bool,
        wait: Duration,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.notify.notified();
            {
                let mut inbox = self.inbox.lock();
                if let Some(i) = inbox.events.iter().position(|(n, v)| n == name && pred(v)) {
                    return inbox.events.remove(i).expect("index").1;
                }
                if inbox.closed {
                    panic!(
                        "connection closed while waiting for {name}; got {}",
                        summary(&inbox.events)
                    );
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "no {name} event within {wait:?}; got {}",
                    summary(&self.inbox.lock().events)
                );
            }
        }
    }

    /// Consumes the `name` events as they arrive (those already received first), handing each
    /// to `each`, until `each` has returned true or `wait` has passed; returns whether it did.
    /// Never panics on a timeout or a closed connection, so the caller can say what is missing.
    #[allow(dead_code)] // used by the fault lab (tests/lab), which includes this file
    pub async fn consume_until(
        &mut self,
        name: &str,
        wait: Duration,
        mut each: impl FnMut(Value) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        let mut done = false;
        loop {
            let notified = self.notify.notified();
            let (taken, closed) = {
                let mut inbox = self.inbox.lock();
                let (taken, kept) = std::mem::take(&mut inbox.events)
                    .into_iter()
                    .partition::<VecDeque<_>, _>(|(n, _)| n == name);
                inbox.events = kept;
                (taken, inbox.closed)
            };
            for (_, v) in taken {
                done |= each(v);
            }
            if done || closed || tokio::time::timeout_at(deadline, notified).await.is_err() {
                return done;
            }
        }
    }

    /// Unconsumed events named `name` received so far (not waiting).
    pub fn received(&self, name: &str) -> Vec<Value> {
        self.inbox
            .lock()
            .events
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Whether the server has closed the connection (Socket.IO disconnect or socket close).
    #[allow(dead_code)] // used by the fault lab (tests/lab), which includes this file
    pub fn is_closed(&self) -> bool {
        let inbox = self.inbox.lock();
        inbox.closed || inbox.events.iter().any(|(n, _)| n == "__disconnect")
    }

    /// Waits until the server closes the connection (Socket.IO disconnect or socket close).
    pub async fn closed(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.notify.notified();
            {
                let inbox = self.inbox.lock();
                if inbox.closed || inbox.events.iter().any(|(n, _)| n == "__disconnect") {
                    return;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("connection not closed within {WAIT:?}");
            }
        }
    }

    /// Joins a room and returns (message_history, room_users).
    pub async fn join(&mut self, room: &str) -> (Value, Value) {
        let ack = self.emit_ack("join_room", json!({"roomId": room})).await;
        assert_eq!(ack, json!({"success": true, "roomId": room}));
        let history = self.event("message_history").await;
        let users = self.event("room_users").await;
        (history, users)
    }

    /// Sends a message and returns its ack.
    pub async fn say(&mut self, room: &str, text: &str) -> Value {
        let ack = self
            .emit_ack("send_message", json!({"roomId": room, "message": text}))
            .await;
        assert_eq!(ack["success"], true, "send: {ack}");
        ack
    }

    /// Closes the connection from the client side.
    pub fn disconnect(&self) {
        let _ = self.out.send(WsMessage::text("41"));
        let _ = self.out.send(WsMessage::Close(None));
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

/// Unconsumed events for a failure message: names, and payloads shortened.
fn summary(events: &VecDeque<(String, Value)>) -> String {
    let shown: Vec<String> = events
        .iter()
        .take(20)
        .map(|(n, v)| {
            let v = v.to_string();
            format!("{n} {}", v.chars().take(120).collect::<String>())
        })
        .collect();
    format!("{} events: [{}]", events.len(), shown.join(", "))
}

/// A TCP proxy the test controls, to cut a dependency's connections and restore them (an
/// outage without stopping the shared server). While cut, live connections are closed and new
/// ones are accepted and closed at once.
pub struct TcpProxy {
    pub addr: SocketAddr,
    up: Arc<tokio::sync::watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(tokio::sync::watch::Sender::new(true));
        let task = tokio::spawn({
            let up = up.clone();
            async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    if !*up.borrow() {
                        drop(inbound);
                        continue;
                    }
                    let mut cut = up.subscribe();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cut.wait_for(|up| !*up) => {}
                        }
                    });
                }
            }
        });
        TcpProxy { addr, up, task }
    }

    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
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

/// A TCP proxy that can hold back the commands a test names: while holding, every
/// client-to-server chunk that contains `pattern` (a Redis command name, say; compared without
/// case) waits in the proxy until `release`. The test decides when such a command reaches the
/// server, which makes an interleaving that timing would rarely produce happen every time.
pub struct HoldProxy {
    pub addr: SocketAddr,
    holding: Arc<tokio::sync::watch::Sender<bool>>,
    held: Arc<tokio::sync::watch::Sender<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl HoldProxy {
    pub async fn start(target: SocketAddr, pattern: &'static str) -> HoldProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let holding = Arc::new(tokio::sync::watch::Sender::new(false));
        let held = Arc::new(tokio::sync::watch::Sender::new(0usize));
        let pattern = pattern.to_ascii_lowercase().into_bytes();
        let task = tokio::spawn({
            let (holding, held) = (holding.clone(), held.clone());
            async move {
                loop {
                    let Ok((inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    let (holding, held, pattern) = (holding.clone(), held.clone(), pattern.clone());
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                            return;
                        };
                        let (mut in_read, mut in_write) = inbound.into_split();
                        let (mut out_read, mut out_write) = outbound.into_split();
                        let up = async move {
                            let mut buf = vec![0u8; 64 * 1024];
                            loop {
                                let n = match in_read.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => n,
                                };
                                let chunk = buf[..n].to_ascii_lowercase();
                                if *holding.borrow()
                                    && chunk.windows(pattern.len()).any(|w| w == pattern)
                                {
                                    held.send_modify(|n| *n += 1);
                                    let _ = holding.subscribe().wait_for(|h| !*h).await;
                                }
                                if out_write.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        };
                        let down = tokio::io::copy(&mut out_read, &mut in_write);
                        tokio::select! {
                            _ = up => {}
                            _ = down => {}
                        }
                    });
                }
            }
        });
        HoldProxy {
            addr,
            holding,
            held,
            task,
        }
    }

    /// From now on, chunks with the pattern wait.
    pub fn hold(&self) {
        self.holding.send_replace(true);
    }

    /// Waits until `n` chunks with the pattern have been held back.
    pub async fn wait_held(&self, n: usize) {
        let mut rx = self.held.subscribe();
        tokio::time::timeout(WAIT, rx.wait_for(|held| *held >= n))
            .await
            .expect("the held command never came")
            .unwrap();
    }

    /// Lets every held chunk through, and the later ones.
    pub fn release(&self) {
        self.holding.send_replace(false);
    }
}

impl Drop for HoldProxy {
    fn drop(&mut self) {
        self.release();
        self.task.abort();
    }
}
