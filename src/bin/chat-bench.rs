//! `chat-bench`: the load generator of issue 8. It opens `--connections` WebSocket connections
//! (Socket.IO over Engine.IO v4, opened on a WebSocket or, with `--upgrade`, on long-polling and
//! then upgraded as browsers do; or the raw JSON-frame protocol), authenticates each as its own
//! user, puts them in rooms of `--room-size`, then sends `send_message` at an aggregate
//! `--rate` for `--warmup` + `--duration` seconds, round-robin over the connections.
//!
//! Every message text is `<phase>:<measured>:<sender>:<seq>:<send_unix_ns>:` padded with `x`
//! to `--message-size`; receivers parse it back and record the end-to-end latency in an HDR
//! histogram. Loss is counted honestly: every message the scheduler *offered* during the
//! measured window (including those that could not be written because the connection was
//! gone or backed up) is expected `room size` times (the sender gets its own `new_message`,
//! SPEC 2), so a dead server shows up as delivery < 100% and a non-zero exit code.
//!
//! `--workers N` re-executes this binary N times (one share of the rooms each, so a message's
//! sender and receivers live in one process); the children talk to the parent over
//! stdin/stdout lines (`READY`, `RUN`, `PROGRESS`, `RESULT`, `QUIT`) and the parent merges
//! their counters and histograms. `--server-pid` samples the server's CPU time and RSS from
//! `/proc`. `--ramp` raises the rate step by step until delivery < 100% or p99 exceeds
//! `--p99-max-ms` and reports the last passing rate.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Environment variable through which the parent tells a child `index/count/run_id`.
const WORKER_ENV: &str = "CHAT_BENCH_WORKER";
/// Latency histogram bounds, in microseconds (1 µs .. 1 h).
const HIST_HIGH_US: u64 = 3_600_000_000;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Protocol {
    /// Socket.IO v5 over Engine.IO v4, websocket transport (`/socket.io/`).
    Socketio,
    /// Plain WebSocket JSON frames (`/ws`).
    Raw,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Auth {
    /// `authenticate {userId, username}` (the server runs with AUTH_MODE=none).
    None,
}

/// Load generator for chat-service (and any server speaking its events).
#[derive(Parser, Clone, Debug)]
#[command(name = "chat-bench", version)]
struct Args {
    /// Server base URL (http:// or ws://; only host and port are used). A comma list spreads
    /// the connections round robin over several instances (so a room has members on each).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:5004")]
    url: Vec<String>,
    #[arg(long, value_enum, default_value_t = Protocol::Socketio)]
    protocol: Protocol,
    /// Socket.IO only: open each session on HTTP long-polling and upgrade it to WebSocket, as
    /// socket.io-client does by default in browsers (the handshake GET, then the WebSocket
    /// with the session's `sid`: `2probe`, `3probe`, `5`).
    #[arg(long)]
    upgrade: bool,
    /// Connections in total (over all workers).
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Members per room (the last room may be smaller).
    #[arg(long, default_value_t = 2)]
    room_size: usize,
    /// Aggregate send rate, messages per second (0 = idle: connect, join and hold).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Measured seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of sending before the measurement starts (not counted).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds to wait for outstanding acks and deliveries after sending stops.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// Length of each message text, in bytes (at least the header `phase:m:sender:seq:ns:`).
    #[arg(long, default_value_t = 64)]
    message_size: usize,
    /// Local source addresses, round robin: `127.0.0.1-127.0.0.8` or a comma list.
    #[arg(long)]
    source_ips: Option<String>,
    /// Worker processes (each holds a share of the rooms; use when the open-file limit binds).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Server process(es) to sample (/proc/<pid>/stat utime+stime, /proc/<pid>/status VmRSS);
    /// a comma list sums CPU and RSS over the processes.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Write the JSON summary to this file (it is always printed on stdout too).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Raise the rate step by step (x --ramp-factor) until delivery < 100% or p99 > --p99-max-ms.
    #[arg(long)]
    ramp: bool,
    #[arg(long, default_value_t = 1.5)]
    ramp_factor: f64,
    #[arg(long, default_value_t = 12)]
    ramp_steps: usize,
    /// p99 bound of a passing ramp step, in milliseconds.
    #[arg(long, default_value_t = 20.0)]
    p99_max_ms: f64,
    #[arg(long, value_enum, default_value_t = Auth::None)]
    auth: Auth,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Seconds one connection (TCP + WebSocket + authenticate + join) may take.
    #[arg(long, default_value_t = 30.0)]
    connect_timeout: f64,
    /// A free-form label copied into the summary (e.g. the server's name).
    #[arg(long)]
    label: Option<String>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

// ---------------------------------------------------------------------------------------------
// Counters shared by the connection tasks of one process.

#[derive(Default)]
struct Stats {
    phase: AtomicU32,
    sent: AtomicU64,
    expected: AtomicU64,
    acked: AtomicU64,
    ack_failed: AtomicU64,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    send_errors: AtomicU64,
    disconnects: AtomicU64,
    server_errors: AtomicU64,
    open: AtomicU64,
    hist: Mutex<Option<Histogram<u64>>>,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_HIGH_US, 3).expect("histogram bounds")
}

/// One process's counters, as sent from a child to the parent.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Counters {
    sent: u64,
    expected: u64,
    acked: u64,
    ack_failed: u64,
    delivered: u64,
    duplicates: u64,
    send_errors: u64,
    disconnects: u64,
    server_errors: u64,
    open: u64,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        self.sent += o.sent;
        self.expected += o.expected;
        self.acked += o.acked;
        self.ack_failed += o.ack_failed;
        self.delivered += o.delivered;
        self.duplicates += o.duplicates;
        self.send_errors += o.send_errors;
        self.disconnects += o.disconnects;
        self.server_errors += o.server_errors;
        self.open += o.open;
    }
}

/// A phase's result of one process: counters and the recorded latencies (µs, count).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct PhaseResult {
    counters: Counters,
    hist: Vec<(u64, u64)>,
}

impl Stats {
    fn snapshot(&self) -> Counters {
        Counters {
            sent: self.sent.load(Ordering::Relaxed),
            expected: self.expected.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            ack_failed: self.ack_failed.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            send_errors: self.send_errors.load(Ordering::Relaxed),
            disconnects: self.disconnects.load(Ordering::Relaxed),
            server_errors: self.server_errors.load(Ordering::Relaxed),
            open: self.open.load(Ordering::Relaxed),
        }
    }

    /// Starts phase `phase`: zeroes the per-phase counters (not `open`, not `disconnects`).
    fn reset(&self, phase: u32) {
        for c in [
            &self.sent,
            &self.expected,
            &self.acked,
            &self.ack_failed,
            &self.delivered,
            &self.duplicates,
            &self.send_errors,
            &self.server_errors,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        *self.hist.lock() = Some(new_hist());
        self.phase.store(phase, Ordering::SeqCst);
    }

    fn record_latency(&self, us: u64) {
        if let Some(h) = self.hist.lock().as_mut() {
            h.saturating_record(us.max(1));
        }
    }

    fn hist_pairs(&self) -> Vec<(u64, u64)> {
        match self.hist.lock().as_ref() {
            Some(h) => h
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
            None => Vec::new(),
        }
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// One connection.

enum Cmd {
    Send { phase: u32, measured: bool },
    Close,
}

struct ConnSpec {
    index: u32,
    /// Which of the `--url` servers.
    server: usize,
    source: Option<IpAddr>,
    user: String,
    room: String,
    room_len: u32,
    upgrade: bool,
}

struct Conn {
    tx: mpsc::Sender<Cmd>,
    room_len: u32,
}

type Ws = WebSocketStream<TcpStream>;

fn ws_config() -> WebSocketConfig {
    // Small buffers: thousands of connections live in this process.
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0)
}

/// Frames an event for the wire (`42<id>[name,data]` or `{"event","data","id"}`).
fn frame(proto: Protocol, name: &str, data: &Value, id: u64) -> String {
    match proto {
        Protocol::Socketio => format!("42{id}[\"{name}\",{data}]"),
        Protocol::Raw => json!({"event": name, "data": data, "id": id}).to_string(),
    }
}

/// An ack frame: `(id, success)`.
fn parse_ack(proto: Protocol, text: &str) -> Option<(u64, bool)> {
    match proto {
        Protocol::Socketio => {
            let rest = text.strip_prefix("43")?;
            let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
            let id = rest[..digits].parse().ok()?;
            Some((id, rest[digits..].contains("\"success\":true")))
        }
        Protocol::Raw => {
            if !text.starts_with("{\"event\":\"ack\"") {
                return None;
            }
            let v: Value = serde_json::from_str(text).ok()?;
            Some((v["id"].as_u64()?, v["data"]["success"] == true))
        }
    }
}

async fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, String> {
    let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if let Some(ip) = source {
        sock.bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let stream = sock
        .connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The Engine.IO polling handshake (one HTTP/1.1 GET on its own connection): the session id.
async fn polling_handshake(
    addr: SocketAddr,
    host: &str,
    source: Option<IpAddr>,
) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tcp_connect(addr, source).await?;
    let request = format!(
        "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("handshake write: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(|e| format!("handshake read: {e}"))?;
    let response = String::from_utf8_lossy(&response);
    if !response.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "handshake refused: {}",
            response.lines().next().unwrap_or("")
        ));
    }
    // The body is the open packet `0{...}` (maybe chunked: the first JSON value is taken).
    let open = response
        .find("\r\n\r\n")
        .and_then(|at| response[at..].find("0{").map(|o| at + o + 1))
        .ok_or("handshake: no open packet")?;
    let open: Value = serde_json::Deserializer::from_str(&response[open..])
        .into_iter::<Value>()
        .next()
        .and_then(Result::ok)
        .ok_or("handshake: bad open packet")?;
    open["sid"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "handshake: no sid".to_string())
}

async fn connect_one(
    addr: SocketAddr,
    host: &str,
    proto: Protocol,
    spec: &ConnSpec,
) -> Result<Ws, String> {
    let sid = match spec.upgrade {
        true => Some(polling_handshake(addr, host, spec.source).await?),
        false => None,
    };
    let stream = tcp_connect(addr, spec.source).await?;
    let url = match (proto, &sid) {
        (Protocol::Socketio, None) => format!("ws://{host}/socket.io/?EIO=4&transport=websocket"),
        (Protocol::Socketio, Some(sid)) => {
            format!("ws://{host}/socket.io/?EIO=4&transport=websocket&sid={sid}")
        }
        (Protocol::Raw, _) => format!("ws://{host}/ws"),
    };
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config()))
        .await
        .map_err(|e| format!("websocket: {e}"))?;
    if proto == Protocol::Socketio {
        if sid.is_some() {
            // The upgrade: probe, then switch the session to this WebSocket.
            send_text(&mut ws, "2probe".into()).await?;
            wait_text(&mut ws, proto, |t| t == "3probe").await?;
            send_text(&mut ws, "5".into()).await?;
        } else {
            // The Engine.IO open packet.
            wait_text(&mut ws, proto, |t| t.starts_with('0')).await?;
        }
        // The Socket.IO connect of the main namespace.
        send_text(&mut ws, "40".into()).await?;
        wait_text(&mut ws, proto, |t| t.starts_with("40")).await?;
    }
    let auth = json!({"userId": spec.user, "username": spec.user});
    send_text(&mut ws, frame(proto, "authenticate", &auth, 0)).await?;
    let join = json!({"roomId": spec.room});
    send_text(&mut ws, frame(proto, "join_room", &join, 1)).await?;
    let mut ok = [false, false];
    while !(ok[0] && ok[1]) {
        let text = next_text(&mut ws, proto).await?;
        if let Some((id, success)) = parse_ack(proto, &text) {
            if !success {
                return Err(format!("set-up refused: {text}"));
            }
            if id < 2 {
                ok[id as usize] = true;
            }
        }
    }
    Ok(ws)
}

async fn send_text(ws: &mut Ws, text: String) -> Result<(), String> {
    ws.send(WsMessage::text(text))
        .await
        .map_err(|e| format!("send: {e}"))
}

/// The next text frame; answers Engine.IO pings on the way.
async fn next_text(ws: &mut Ws, proto: Protocol) -> Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(WsMessage::Text(t))) => {
                if proto == Protocol::Socketio && t.as_str() == "2" {
                    send_text(ws, "3".into()).await?;
                    continue;
                }
                return Ok(t.as_str().to_string());
            }
            Some(Ok(WsMessage::Close(_))) | None => return Err("closed by server".into()),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("read: {e}")),
        }
    }
}

async fn wait_text(
    ws: &mut Ws,
    proto: Protocol,
    pred: impl Fn(&str) -> bool,
) -> Result<String, String> {
    loop {
        let t = next_text(ws, proto).await?;
        if pred(&t) {
            return Ok(t);
        }
    }
}

/// The text of a `new_message` frame, if this is one.
fn new_message_text(proto: Protocol, text: &str) -> Option<&str> {
    let is_new = match proto {
        Protocol::Socketio => text.starts_with("42[\"new_message\","),
        Protocol::Raw => text.starts_with("{\"event\":\"new_message\""),
    };
    if !is_new {
        return None;
    }
    const KEY: &str = "\"message\":\"";
    let start = text.find(KEY)? + KEY.len();
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

fn is_error_event(proto: Protocol, text: &str) -> bool {
    match proto {
        Protocol::Socketio => text.starts_with("42[\"error\""),
        Protocol::Raw => text.starts_with("{\"event\":\"error\""),
    }
}

struct ConnTask {
    ws: Ws,
    proto: Protocol,
    index: u32,
    room: String,
    message_size: usize,
    stats: Arc<Stats>,
}

impl ConnTask {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let stats = self.stats.clone();
        stats.open.fetch_add(1, Ordering::Relaxed);
        let mut next_id: u64 = 2;
        let mut seq: u64 = 0;
        let mut pending: HashMap<u64, (u32, bool)> = HashMap::new();
        let mut last_seen: HashMap<u32, u64> = HashMap::new();
        let mut closing = false;
        loop {
            tokio::select! {
                cmd = rx.recv(), if !closing => match cmd {
                    Some(Cmd::Send { phase, measured }) => {
                        seq += 1;
                        let id = next_id;
                        next_id += 1;
                        let text = self.message_text(phase, measured, seq);
                        let data = json!({"roomId": self.room, "message": text});
                        pending.insert(id, (phase, measured));
                        if self.ws.send(WsMessage::text(frame(self.proto, "send_message", &data, id))).await.is_err() {
                            if measured {
                                stats.send_errors.fetch_add(1, Ordering::Relaxed);
                            }
                            stats.disconnects.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                    Some(Cmd::Close) | None => {
                        closing = true;
                        let _ = self.ws.close(None).await;
                    }
                },
                frame = self.ws.next() => match frame {
                    Some(Ok(WsMessage::Text(t))) => {
                        let t = t.as_str();
                        if self.proto == Protocol::Socketio && t == "2" {
                            if self.ws.send(WsMessage::text("3")).await.is_err() {
                                if !closing {
                                    stats.disconnects.fetch_add(1, Ordering::Relaxed);
                                }
                                break;
                            }
                        } else if let Some(body) = new_message_text(self.proto, t) {
                            self.on_message(body, &mut last_seen);
                        } else if let Some((id, ok)) = parse_ack(self.proto, t) {
                            if let Some((phase, measured)) = pending.remove(&id)
                                && measured
                                && phase == stats.phase.load(Ordering::Relaxed)
                            {
                                if ok {
                                    stats.acked.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    stats.ack_failed.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        } else if is_error_event(self.proto, t) {
                            stats.server_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => {
                        if !closing {
                            stats.disconnects.fetch_add(1, Ordering::Relaxed);
                        }
                        break;
                    }
                    Some(Ok(_)) => {}
                },
            }
        }
        stats.open.fetch_sub(1, Ordering::Relaxed);
    }

    fn message_text(&self, phase: u32, measured: bool, seq: u64) -> String {
        let mut text = format!(
            "{phase}:{}:{}:{seq}:{}:",
            u8::from(measured),
            self.index,
            now_ns()
        );
        while text.len() < self.message_size {
            text.push('x');
        }
        text
    }

    fn on_message(&self, body: &str, last_seen: &mut HashMap<u32, u64>) {
        let now = now_ns();
        let mut parts = body.split(':');
        let (Some(phase), Some(measured), Some(sender), Some(seq), Some(sent_ns)) = (
            parts.next().and_then(|p| p.parse::<u32>().ok()),
            parts.next(),
            parts.next().and_then(|p| p.parse::<u32>().ok()),
            parts.next().and_then(|p| p.parse::<u64>().ok()),
            parts.next().and_then(|p| p.parse::<u64>().ok()),
        ) else {
            return;
        };
        // Per sender, sequence numbers must rise: anything else is a duplicate (or reordering).
        let last = last_seen.entry(sender).or_insert(0);
        let in_order = seq > *last;
        if in_order {
            *last = seq;
        }
        if measured != "1" || phase != self.stats.phase.load(Ordering::Relaxed) {
            return;
        }
        if !in_order {
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
        self.stats
            .record_latency(now.saturating_sub(sent_ns) / 1_000);
    }
}

// ---------------------------------------------------------------------------------------------
// One process's share of the load.

struct LocalWorker {
    conns: Vec<Conn>,
    stats: Arc<Stats>,
    connect_errors: u64,
    first_connect_error: Option<String>,
}

/// Parses `127.0.0.1-127.0.0.8` (last octet range) or `a,b,c`.
fn parse_source_ips(s: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: Ipv4Addr = a.parse().map_err(|_| format!("bad address {a}"))?;
            let b: Ipv4Addr = b.parse().map_err(|_| format!("bad address {b}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a || b - a > 65_535 {
                return Err(format!("bad range {part}"));
            }
            out.extend((a..=b).map(|x| IpAddr::V4(Ipv4Addr::from(x))));
        } else {
            out.push(part.parse().map_err(|_| format!("bad address {part}"))?);
        }
    }
    if out.is_empty() {
        return Err("no source address".into());
    }
    Ok(out)
}

/// `host:port` of the URL.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or(rest);
    if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:80")
    }
}

impl LocalWorker {
    async fn connect(
        args: &Args,
        index: usize,
        count: usize,
        run_id: &str,
    ) -> Result<Self, String> {
        let mut servers = Vec::new();
        for url in &args.url {
            let host = host_port(url);
            let addr = tokio::net::lookup_host(&host)
                .await
                .map_err(|e| format!("resolve {host}: {e}"))?
                .find(SocketAddr::is_ipv4)
                .ok_or_else(|| format!("no IPv4 address for {host}"))?;
            servers.push((addr, host));
        }
        let servers = Arc::new(servers);
        let sources = match &args.source_ips {
            Some(s) => Some(parse_source_ips(s)?),
            None => None,
        };
        let room_size = args.room_size.max(1);
        let rooms = args.connections.div_ceil(room_size);
        let mut specs = Vec::new();
        for room in (0..rooms).filter(|r| r % count == index) {
            let first = room * room_size;
            let last = ((room + 1) * room_size).min(args.connections);
            for i in first..last {
                specs.push(ConnSpec {
                    index: i as u32,
                    server: i % servers.len(),
                    source: sources.as_ref().map(|s| s[i % s.len()]),
                    user: format!("b{run_id}-{i}"),
                    room: format!("bench-{run_id}-{room}"),
                    room_len: (last - first) as u32,
                    upgrade: args.upgrade && args.protocol == Protocol::Socketio,
                });
            }
        }
        let stats = Arc::new(Stats::default());
        stats.reset(0);
        let timeout = Duration::from_secs_f64(args.connect_timeout);
        let proto = args.protocol;
        let message_size = args.message_size;
        let results: Vec<Result<Conn, String>> = futures::stream::iter(specs)
            .map(|spec| {
                let servers = servers.clone();
                let stats = stats.clone();
                async move {
                    let (addr, host) = &servers[spec.server];
                    let ws = tokio::time::timeout(timeout, connect_one(*addr, host, proto, &spec))
                        .await
                        .map_err(|_| "connect timed out".to_string())??;
                    let (tx, rx) = mpsc::channel(64);
                    let task = ConnTask {
                        ws,
                        proto,
                        index: spec.index,
                        room: spec.room,
                        message_size,
                        stats,
                    };
                    tokio::spawn(task.run(rx));
                    Ok(Conn {
                        tx,
                        room_len: spec.room_len,
                    })
                }
            })
            .buffer_unordered(args.connect_concurrency.max(1))
            .collect()
            .await;
        let mut conns = Vec::new();
        let mut connect_errors = 0;
        let mut first_connect_error = None;
        for r in results {
            match r {
                Ok(c) => conns.push(c),
                Err(e) => {
                    connect_errors += 1;
                    first_connect_error.get_or_insert(e);
                }
            }
        }
        Ok(Self {
            conns,
            stats,
            connect_errors,
            first_connect_error,
        })
    }

    /// Sends at `rate` for warmup + duration, then waits up to `drain` for acks and deliveries.
    async fn run_phase(
        &self,
        phase: u32,
        rate: f64,
        warmup: f64,
        duration: f64,
        drain: f64,
    ) -> PhaseResult {
        let stats = &self.stats;
        stats.reset(phase);
        let total = warmup + duration;
        let start = Instant::now();
        if rate > 0.0 && !self.conns.is_empty() {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut issued: u64 = 0;
            let mut next = 0usize;
            let last = (total * rate).floor() as u64;
            while issued < last {
                tick.tick().await;
                let due = ((start.elapsed().as_secs_f64() * rate) as u64).min(last);
                while issued < due {
                    let measured = issued as f64 / rate >= warmup;
                    let conn = &self.conns[next];
                    next = (next + 1) % self.conns.len();
                    issued += 1;
                    if measured {
                        // Counted when offered: a message that cannot be written (connection
                        // gone or backed up) is still expected, and so counts as lost.
                        stats.sent.fetch_add(1, Ordering::Relaxed);
                        stats
                            .expected
                            .fetch_add(u64::from(conn.room_len), Ordering::Relaxed);
                    }
                    if conn.tx.try_send(Cmd::Send { phase, measured }).is_err() && measured {
                        stats.send_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let deadline = Instant::now() + Duration::from_secs_f64(drain);
            while Instant::now() < deadline {
                let c = stats.snapshot();
                let settled = c.acked + c.ack_failed + c.send_errors >= c.sent
                    && c.delivered + c.duplicates >= c.expected;
                if settled || c.open == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        } else {
            tokio::time::sleep(Duration::from_secs_f64(total)).await;
        }
        PhaseResult {
            counters: stats.snapshot(),
            hist: stats.hist_pairs(),
        }
    }

    async fn close(&self) {
        for c in &self.conns {
            let _ = c.tx.try_send(Cmd::Close);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.stats.open.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Child process: connect, report READY, then obey RUN/QUIT lines on stdin.
async fn child_main(args: Args, spec: String) -> i32 {
    let mut it = spec.splitn(3, '/');
    let (Some(Ok(index)), Some(Ok(count)), Some(run_id)) = (
        it.next().map(str::parse::<usize>),
        it.next().map(str::parse::<usize>),
        it.next(),
    ) else {
        eprintln!("chat-bench worker: bad {WORKER_ENV}={spec}");
        return 2;
    };
    let worker = match LocalWorker::connect(&args, index, count, run_id).await {
        Ok(w) => Arc::new(w),
        Err(e) => {
            eprintln!("chat-bench worker {index}: {e}");
            return 2;
        }
    };
    let ready = json!({
        "connected": worker.conns.len(),
        "connect_errors": worker.connect_errors,
        "first_connect_error": worker.first_connect_error,
    });
    println!("READY {ready}");
    let _ = std::io::stdout().flush();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["RUN", phase, rate, warmup, duration, drain] => {
                let num = |s: &str| s.parse::<f64>().unwrap_or(0.0);
                let w = worker.clone();
                let (phase, rate, warmup, duration, drain) = (
                    phase.parse().unwrap_or(1),
                    num(rate),
                    num(warmup),
                    num(duration),
                    num(drain),
                );
                let run =
                    tokio::spawn(
                        async move { w.run_phase(phase, rate, warmup, duration, drain).await },
                    );
                tokio::pin!(run);
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                let result = loop {
                    tokio::select! {
                        r = &mut run => break r.unwrap_or_default(),
                        _ = tick.tick() => {
                            let c = serde_json::to_string(&worker.stats.snapshot()).unwrap_or_default();
                            println!("PROGRESS {c}");
                            let _ = std::io::stdout().flush();
                        }
                    }
                };
                println!(
                    "RESULT {}",
                    serde_json::to_string(&result).unwrap_or_default()
                );
                let _ = std::io::stdout().flush();
            }
            ["QUIT"] => break,
            _ => {}
        }
    }
    worker.close().await;
    0
}

// ---------------------------------------------------------------------------------------------
// The parent: local worker or children, phases, server sampling, summary.

enum Msg {
    Ready(Value),
    Result(PhaseResult),
    Gone,
}

struct ChildWorker {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    rx: mpsc::UnboundedReceiver<Msg>,
    progress: Arc<Mutex<Counters>>,
}

enum Worker {
    Local(Arc<LocalWorker>),
    Child(Box<ChildWorker>),
}

impl ChildWorker {
    fn spawn(index: usize, count: usize, run_id: &str) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
        let mut child = tokio::process::Command::new(exe)
            .args(std::env::args().skip(1))
            .env(WORKER_ENV, format!("{index}/{count}/{run_id}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn worker: {e}"))?;
        let stdin = child.stdin.take().ok_or("worker stdin")?;
        let stdout = child.stdout.take().ok_or("worker stdout")?;
        let (tx, rx) = mpsc::unbounded_channel();
        let progress = Arc::new(Mutex::new(Counters::default()));
        let prog = progress.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let (tag, body) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                match tag {
                    "READY" => {
                        let _ = tx.send(Msg::Ready(
                            serde_json::from_str(body).unwrap_or(Value::Null),
                        ));
                    }
                    "PROGRESS" => {
                        if let Ok(c) = serde_json::from_str(body) {
                            *prog.lock() = c;
                        }
                    }
                    "RESULT" => {
                        let _ =
                            tx.send(Msg::Result(serde_json::from_str(body).unwrap_or_default()));
                    }
                    _ => {}
                }
            }
            let _ = tx.send(Msg::Gone);
        });
        Ok(Self {
            child,
            stdin,
            rx,
            progress,
        })
    }
}

/// Server process figures from /proc.
#[derive(Clone, Copy, Debug, Default)]
struct ProcSample {
    cpu_seconds: f64,
    rss_kb: u64,
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0)
}

/// CPU and RSS summed over the processes; `None` when there are none or one is gone.
fn sample_proc(pids: &[u32], ticks: f64) -> Option<ProcSample> {
    if pids.is_empty() {
        return None;
    }
    let mut total = ProcSample {
        cpu_seconds: 0.0,
        rss_kb: 0,
    };
    for &pid in pids {
        let s = sample_one(pid, ticks)?;
        total.cpu_seconds += s.cpu_seconds;
        total.rss_kb += s.rss_kb;
    }
    Some(total)
}

fn sample_one(pid: u32, ticks: f64) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(ProcSample {
        cpu_seconds: (utime + stime) / ticks,
        rss_kb,
    })
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

struct Bench {
    args: Args,
    workers: Vec<Worker>,
    ticks: f64,
}

impl Bench {
    fn progress(&self) -> Counters {
        let mut total = Counters::default();
        for w in &self.workers {
            match w {
                Worker::Local(l) => total.add(&l.stats.snapshot()),
                Worker::Child(c) => total.add(&c.progress.lock()),
            }
        }
        total
    }

    /// Runs one phase on every worker; returns (merged result, server at measure start, at end).
    async fn phase(
        &mut self,
        phase: u32,
        rate: f64,
    ) -> (PhaseResult, Option<ProcSample>, Option<ProcSample>) {
        let a = self.args.clone();
        let n = self.workers.len() as f64;
        let mut locals = Vec::new();
        for w in &mut self.workers {
            match w {
                Worker::Local(l) => {
                    let l = l.clone();
                    let share = rate;
                    locals.push(tokio::spawn(async move {
                        l.run_phase(phase, share, a.warmup, a.duration, a.drain)
                            .await
                    }));
                }
                Worker::Child(c) => {
                    *c.progress.lock() = Counters::default();
                    let line = format!(
                        "RUN {phase} {} {} {} {}\n",
                        rate / n,
                        a.warmup,
                        a.duration,
                        a.drain
                    );
                    let _ = c.stdin.write_all(line.as_bytes()).await;
                    let _ = c.stdin.flush().await;
                }
            }
        }
        let started = Instant::now();
        let warmup = Duration::from_secs_f64(a.warmup);
        let mut at_start = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        // Progress until every local worker is done and every child has sent its RESULT.
        let mut merged = PhaseResult::default();
        let mut hist = new_hist();
        let mut waiting_children: Vec<usize> = (0..self.workers.len())
            .filter(|&i| matches!(self.workers[i], Worker::Child(_)))
            .collect();
        let sample_at = tokio::time::sleep(warmup);
        tokio::pin!(sample_at);
        let mut sampled = false;
        loop {
            let locals_done = locals.iter().all(|h| h.is_finished());
            if locals_done && waiting_children.is_empty() {
                break;
            }
            tokio::select! {
                _ = &mut sample_at, if !sampled => {
                    sampled = true;
                    at_start = sample_proc(&self.args.server_pid, self.ticks);
                }
                _ = tick.tick() => {
                    if !self.args.quiet {
                        let c = self.progress();
                        eprintln!(
                            "[{:>5.1}s] rate {:.0}/s  sent {}  acked {}  delivered {}/{}  open {}  errors {}",
                            started.elapsed().as_secs_f64(), rate, c.sent, c.acked,
                            c.delivered, c.expected, c.open,
                            c.send_errors + c.ack_failed + c.disconnects + c.server_errors,
                        );
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(20)) => {
                    let mut still = Vec::new();
                    for i in waiting_children {
                        let Worker::Child(c) = &mut self.workers[i] else { continue };
                        match c.rx.try_recv() {
                            Ok(Msg::Result(r)) => merge(&mut merged, &mut hist, &r),
                            Ok(Msg::Gone) | Err(mpsc::error::TryRecvError::Disconnected) => {
                                merged.counters.send_errors += 1;
                            }
                            _ => still.push(i),
                        }
                    }
                    waiting_children = still;
                }
            }
        }
        if !sampled {
            at_start = sample_proc(&self.args.server_pid, self.ticks);
        }
        let at_end = sample_proc(&self.args.server_pid, self.ticks);
        for h in locals {
            if let Ok(r) = h.await {
                merge(&mut merged, &mut hist, &r);
            }
        }
        merged.hist = hist
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect();
        (merged, at_start, at_end)
    }
}

fn merge(into: &mut PhaseResult, hist: &mut Histogram<u64>, r: &PhaseResult) {
    into.counters.add(&r.counters);
    for &(v, n) in &r.hist {
        hist.saturating_record_n(v, n);
    }
}

fn hist_from(pairs: &[(u64, u64)]) -> Histogram<u64> {
    let mut h = new_hist();
    for &(v, n) in pairs {
        h.saturating_record_n(v, n);
    }
    h
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The JSON summary of one phase and whether it passed (all delivered, no errors).
fn summarize(
    args: &Args,
    rate: f64,
    r: &PhaseResult,
    connect: (usize, u64),
    baseline: Option<ProcSample>,
    start: Option<ProcSample>,
    end: Option<ProcSample>,
) -> (Value, bool) {
    let c = &r.counters;
    let h = hist_from(&r.hist);
    let ratio = if c.expected == 0 {
        1.0
    } else {
        c.delivered as f64 / c.expected as f64
    };
    let errors = connect.1 + c.send_errors + c.ack_failed + c.disconnects + c.server_errors;
    let passed = c.delivered >= c.expected && errors == 0 && connect.0 == args.connections;
    let cpu = match (start, end) {
        (Some(s), Some(e)) => Some(e.cpu_seconds - s.cpu_seconds),
        _ => None,
    };
    let per_conn = match (baseline, start) {
        (Some(b), Some(s)) if connect.0 > 0 => {
            Some((s.rss_kb as f64 - b.rss_kb as f64) / connect.0 as f64)
        }
        _ => None,
    };
    let summary = json!({
        "label": args.label,
        "protocol": args.protocol,
        "upgrade": args.upgrade,
        "connections": args.connections,
        "connected": connect.0,
        "room_size": args.room_size,
        "message_size": args.message_size,
        "workers": args.workers,
        "offered_rate": rate,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "sent": c.sent,
        "acked": c.acked,
        "expected_deliveries": c.expected,
        "delivered": c.delivered,
        "delivery_ratio": ratio,
        "delivered_per_s": c.delivered as f64 / args.duration.max(1e-9),
        "latency_ms": {
            "p50": ms(h.value_at_quantile(0.5)),
            "p90": ms(h.value_at_quantile(0.9)),
            "p99": ms(h.value_at_quantile(0.99)),
            "p99_9": ms(h.value_at_quantile(0.999)),
            "max": ms(h.max()),
        },
        "errors": {
            "total": errors,
            "connect": connect.1,
            "send": c.send_errors,
            "ack_failed": c.ack_failed,
            "disconnects": c.disconnects,
            "server_error_events": c.server_errors,
            "duplicates_or_reordered": c.duplicates,
        },
        "server": {
            "pid": args.server_pid,
            "cpu_seconds": cpu,
            "cpu_us_per_delivery": cpu.filter(|_| c.delivered > 0).map(|s| s * 1e6 / c.delivered as f64),
            "rss_kb_before_connect": baseline.map(|s| s.rss_kb),
            "rss_kb_start": start.map(|s| s.rss_kb),
            "rss_kb_end": end.map(|s| s.rss_kb),
            "rss_per_connection_kb": per_conn,
            "rss_total_per_connection_kb": start.filter(|_| connect.0 > 0).map(|s| s.rss_kb as f64 / connect.0 as f64),
        },
        "load_average": load_average(),
        "passed": passed,
    });
    (summary, passed)
}

async fn parent_main(args: Args) -> i32 {
    let run_id = format!("{:x}", now_ns() / 1_000_000 % 0xffff_ffff);
    let ticks = clock_ticks();
    let baseline = sample_proc(&args.server_pid, ticks);
    let load_before = load_average();
    let t0 = Instant::now();
    let n = args.workers.max(1);
    let mut workers = Vec::new();
    let mut connected = 0usize;
    let mut connect_errors = 0u64;
    let mut first_error: Option<String> = None;
    if n == 1 {
        match LocalWorker::connect(&args, 0, 1, &run_id).await {
            Ok(w) => {
                connected += w.conns.len();
                connect_errors += w.connect_errors;
                first_error = w.first_connect_error.clone();
                workers.push(Worker::Local(Arc::new(w)));
            }
            Err(e) => {
                eprintln!("chat-bench: {e}");
                return 2;
            }
        }
    } else {
        for i in 0..n {
            match ChildWorker::spawn(i, n, &run_id) {
                Ok(c) => workers.push(Worker::Child(Box::new(c))),
                Err(e) => {
                    eprintln!("chat-bench: {e}");
                    return 2;
                }
            }
        }
        for w in &mut workers {
            let Worker::Child(c) = w else { continue };
            match c.rx.recv().await {
                Some(Msg::Ready(v)) => {
                    connected += v["connected"].as_u64().unwrap_or(0) as usize;
                    connect_errors += v["connect_errors"].as_u64().unwrap_or(0);
                    if first_error.is_none() {
                        first_error = v["first_connect_error"].as_str().map(String::from);
                    }
                }
                _ => {
                    eprintln!("chat-bench: a worker failed to start");
                    return 2;
                }
            }
        }
    }
    let connect_s = t0.elapsed().as_secs_f64();
    if !args.quiet {
        eprintln!(
            "connected {connected}/{} in {connect_s:.1}s ({connect_errors} failed{})",
            args.connections,
            first_error
                .as_deref()
                .map(|e| format!(", first: {e}"))
                .unwrap_or_default()
        );
    }
    let mut bench = Bench {
        args: args.clone(),
        workers,
        ticks,
    };
    let mut rate = args.rate;
    let steps = if args.ramp { args.ramp_steps.max(1) } else { 1 };
    let mut reports = Vec::new();
    let mut last_pass: Option<(f64, Value)> = None;
    let mut final_summary = Value::Null;
    let mut final_passed = false;
    for step in 0..steps {
        let (r, s, e) = bench.phase(step as u32 + 1, rate).await;
        let (mut summary, mut passed) =
            summarize(&args, rate, &r, (connected, connect_errors), baseline, s, e);
        summary["connect_seconds"] = json!(connect_s);
        summary["load_average_before"] = json!(load_before);
        if args.ramp {
            let p99 = summary["latency_ms"]["p99"].as_f64().unwrap_or(f64::MAX);
            passed = passed && p99 <= args.p99_max_ms;
            summary["passed"] = json!(passed);
            if !args.quiet {
                eprintln!(
                    "ramp step {}: {rate:.0}/s -> delivery {:.4}, p99 {p99} ms: {}",
                    step + 1,
                    summary["delivery_ratio"].as_f64().unwrap_or(0.0),
                    if passed { "pass" } else { "fail" }
                );
            }
            reports.push(summary.clone());
            if passed {
                last_pass = Some((rate, summary));
            } else {
                break;
            }
            rate *= args.ramp_factor;
        } else {
            final_summary = summary;
            final_passed = passed;
        }
    }
    if args.ramp {
        final_passed = last_pass.is_some();
        final_summary = json!({
            "ramp": true,
            "p99_max_ms": args.p99_max_ms,
            "max_sustainable_rate": last_pass.as_ref().map(|(r, _)| *r),
            "best": last_pass.map(|(_, s)| s),
            "steps": reports,
        });
    }
    for w in &mut bench.workers {
        match w {
            Worker::Local(l) => l.close().await,
            Worker::Child(c) => {
                let _ = c.stdin.write_all(b"QUIT\n").await;
                let _ = tokio::time::timeout(Duration::from_secs(5), c.child.wait()).await;
            }
        }
    }
    let text = serde_json::to_string_pretty(&final_summary).unwrap_or_default();
    println!("{text}");
    if let Some(path) = &args.json
        && let Err(e) = std::fs::write(path, format!("{text}\n"))
    {
        eprintln!("chat-bench: write {}: {e}", path.display());
        return 2;
    }
    if final_passed { 0 } else { 1 }
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(async move {
        match std::env::var(WORKER_ENV) {
            Ok(spec) => child_main(args, spec).await,
            Err(_) => parent_main(args).await,
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    std::process::exit(code);
}
