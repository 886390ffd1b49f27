//! `--churn`: clients that come and go, in the shape of the published AnyCable / Socket.IO
//! reliability benchmarks (issue 19.4). `--connections` Socket.IO clients in rooms of
//! `--room-size`, spread round robin over the `--url` instances; each room gets a message every
//! `1 / --churn-room-rate` seconds from one of its connected members; every `--churn-every`
//! seconds a wave disconnects `--churn-fraction` of the connected clients for 1-5 s, half of
//! them abruptly (TCP reset, no close frame), half with a WebSocket close. A client that comes
//! back authenticates again and resumes its room with `join_room {since: <the last message it
//! has>}`, and dedupes by `messageId` as an application does.
//!
//! What counts: every acked message must reach every member of its room, live or by a resume
//! (delivery = distinct acked messages each member has / acked messages x members). A message
//! arriving twice under the same `messageId` is a suppressed duplicate (the resume overlaps the
//! live stream, by design); one whose text arrives again under another `messageId` would be
//! shown twice by the application: those must be 0. Rejoin latency: from the reconnect's start
//! to the `join_room` ack; replay latency: to the end of processing its `message_history`.
//! With `--server-pid`, the servers' RSS and CPU are sampled every `--churn-sample` seconds
//! and the RSS slope is reported (the soak's flatness check).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

use crate::Args;
use crate::procfs::{clock_ticks, sample_proc};
use crate::protocol::{Ws, tcp_connect, ws_config};
use crate::stats::new_hist;

/// What a room's scheduler or the wave tells a client.
enum Cmd {
    /// Send the room's message number `seq`.
    Send(u64),
    /// Drop the connection (abruptly or with a close frame) and come back after the pause.
    Leave { abrupt: bool, pause: Duration },
}

/// The counters of the run, shared by every task.
#[derive(Default)]
struct Totals {
    acked: AtomicU64,
    send_failed: AtomicU64,
    disconnects: AtomicU64,
    reconnect_failures: AtomicU64,
    suppressed_duplicates: AtomicU64,
    shown_duplicates: AtomicU64,
    rejoin_us: Mutex<Option<Histogram<u64>>>,
    replay_us: Mutex<Option<Histogram<u64>>>,
}

impl Totals {
    fn record(h: &Mutex<Option<Histogram<u64>>>, d: Duration) {
        h.lock()
            .get_or_insert_with(new_hist)
            .saturating_record(d.as_micros().max(1) as u64);
    }
}

/// A room: its members' command channels and whether each is connected, and the numbers of
/// its acked messages.
struct Room {
    id: String,
    members: Vec<(mpsc::UnboundedSender<Cmd>, Arc<AtomicBool>)>,
    acked: Mutex<Vec<bool>>,
}

/// One client: its identity, room and what it has.
struct Client {
    user: String,
    room: Arc<Room>,
    server: SocketAddr,
    host: String,
    online: Arc<AtomicBool>,
    /// Room message numbers it has (by the number carried in the text).
    has: Vec<bool>,
    /// The latest `messageId`s it took (dedupe of the resume overlap).
    recent: VecDeque<String>,
    /// The last message it has: the `since` of its next resume.
    last: Option<String>,
}

const RECENT: usize = 256;

impl Client {
    /// Takes one message (live or from a history); returns whether it was new.
    fn take(&mut self, m: &Value, totals: &Totals) {
        let Some(id) = m["messageId"].as_str() else {
            return;
        };
        if self.recent.iter().any(|r| r == id) {
            totals.suppressed_duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(id.to_string());
        self.last = Some(id.to_string());
        let seq = m["message"]
            .as_str()
            .and_then(|t| t.strip_prefix("churn:"))
            .and_then(|t| t.split(':').next())
            .and_then(|s| s.parse::<usize>().ok());
        let Some(seq) = seq else { return };
        if self.has.len() <= seq {
            self.has.resize(seq + 1, false);
        }
        if std::mem::replace(&mut self.has[seq], true) {
            totals.shown_duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn event(name: &str, data: &Value, ack: u64) -> WsMessage {
    WsMessage::text(format!("42{ack}[\"{name}\",{data}]"))
}

/// The `[name, data]` of an event frame, or the `(id, body)` of an ack frame.
enum Frame {
    Event(String, Value),
    Ack(u64, Value),
    Ping,
    Other,
}

fn parse(text: &str) -> Frame {
    if text == "2" {
        return Frame::Ping;
    }
    if let Some(rest) = text.strip_prefix("43") {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let id = rest[..digits].parse().unwrap_or(u64::MAX);
        let body = serde_json::from_str::<Value>(&rest[digits..])
            .ok()
            .and_then(|v| v.get(0).cloned())
            .unwrap_or(Value::Null);
        return Frame::Ack(id, body);
    }
    if let Some(rest) = text.strip_prefix("42")
        && let Ok(Value::Array(mut a)) = serde_json::from_str::<Value>(rest)
        && a.len() >= 2
    {
        let data = a.remove(1);
        if let Value::String(name) = a.remove(0) {
            return Frame::Event(name, data);
        }
    }
    Frame::Other
}

async fn send(ws: &mut Ws, m: WsMessage) -> Result<(), String> {
    ws.send(m).await.map_err(|e| format!("send: {e}"))
}

/// Connects, authenticates and joins (resuming after `last`); records the history. Returns
/// the socket and when the join was acked.
async fn join(c: &mut Client, totals: &Totals) -> Result<(Ws, Instant), String> {
    let stream = tcp_connect(c.server, None).await?;
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", c.host);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config()))
        .await
        .map_err(|e| format!("websocket: {e}"))?;
    send(&mut ws, WsMessage::text("40")).await?;
    send(
        &mut ws,
        event(
            "authenticate",
            &json!({"userId": c.user, "username": c.user}),
            0,
        ),
    )
    .await?;
    let mut join = json!({"roomId": c.room.id});
    if let Some(since) = &c.last {
        join["since"] = json!(since);
    }
    send(&mut ws, event("join_room", &join, 1)).await?;
    let mut joined = None;
    loop {
        let text = match ws.next().await {
            Some(Ok(WsMessage::Text(t))) => t,
            Some(Ok(WsMessage::Close(_))) | None => return Err("closed while joining".into()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("read: {e}")),
        };
        match parse(text.as_str()) {
            Frame::Ping => send(&mut ws, WsMessage::text("3")).await?,
            Frame::Ack(id, body) if id <= 1 => {
                if body["success"] != true {
                    return Err(format!("set-up refused: {body}"));
                }
                if id == 1 {
                    joined = Some(Instant::now());
                }
            }
            Frame::Event(name, data) if name == "message_history" => {
                for m in data.as_array().into_iter().flatten() {
                    c.take(m, totals);
                }
                return Ok((ws, joined.unwrap_or_else(Instant::now)));
            }
            Frame::Event(name, data) if name == "new_message" => c.take(&data, totals),
            _ => {}
        }
    }
}

/// One client for the whole run: connected, it sends what its room's scheduler asks and
/// takes every message; told to leave, it drops the connection, waits, and resumes.
async fn run_client(
    mut c: Client,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    totals: Arc<Totals>,
    ready: mpsc::UnboundedSender<()>,
    stop: CancellationToken,
) -> Client {
    let mut first = true;
    let mut pending: Vec<(u64, u64)> = Vec::new();
    let mut next_ack = 2u64;
    'session: loop {
        let started = Instant::now();
        let (mut ws, joined) = match join(&mut c, &totals).await {
            Ok(v) => v,
            Err(e) => {
                totals.reconnect_failures.fetch_add(1, Ordering::Relaxed);
                if first {
                    eprintln!("chat-bench --churn: {}: {e}", c.user);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if first {
            first = false;
            let _ = ready.send(());
        } else {
            Totals::record(&totals.rejoin_us, joined - started);
            Totals::record(&totals.replay_us, started.elapsed());
        }
        c.online.store(true, Ordering::Release);
        loop {
            tokio::select! {
                frame = ws.next() => {
                    let text = match frame {
                        Some(Ok(WsMessage::Text(t))) => t,
                        Some(Ok(_)) => continue,
                        // Closed by the server: resume at once.
                        _ => {
                            c.online.store(false, Ordering::Release);
                            totals.send_failed.fetch_add(pending.len() as u64, Ordering::Relaxed);
                            pending.clear();
                            continue 'session;
                        }
                    };
                    match parse(text.as_str()) {
                        Frame::Ping => { let _ = ws.send(WsMessage::text("3")).await; }
                        Frame::Event(name, data) if name == "new_message" => c.take(&data, &totals),
                        Frame::Ack(id, body) => {
                            if let Some(i) = pending.iter().position(|(a, _)| *a == id) {
                                let (_, seq) = pending.swap_remove(i);
                                if body["success"] == true {
                                    totals.acked.fetch_add(1, Ordering::Relaxed);
                                    let mut acked = c.room.acked.lock();
                                    if acked.len() <= seq as usize {
                                        acked.resize(seq as usize + 1, false);
                                    }
                                    acked[seq as usize] = true;
                                } else {
                                    totals.send_failed.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        _ => {}
                    }
                }
                cmd = cmds.recv() => match cmd {
                    Some(Cmd::Send(seq)) => {
                        let text = format!("churn:{seq}:{}:", c.user);
                        let data = json!({"roomId": c.room.id, "message": text});
                        pending.push((next_ack, seq));
                        let _ = ws.send(event("send_message", &data, next_ack)).await;
                        next_ack += 1;
                    }
                    Some(Cmd::Leave { abrupt, pause }) => {
                        c.online.store(false, Ordering::Release);
                        totals.disconnects.fetch_add(1, Ordering::Relaxed);
                        totals.send_failed.fetch_add(pending.len() as u64, Ordering::Relaxed);
                        pending.clear();
                        if abrupt {
                            // A reset, no close frame: as a phone that loses its network.
                            // A zero linger resets at once; it never blocks the thread.
                            #[allow(deprecated)]
                            let _ = ws.get_ref().set_linger(Some(Duration::ZERO));
                            drop(ws);
                        } else {
                            let _ = ws.close(None).await;
                        }
                        tokio::time::sleep(pause).await;
                        continue 'session;
                    }
                    None => {
                        let _ = ws.close(None).await;
                        return c;
                    }
                },
                _ = stop.cancelled() => {
                    let _ = ws.close(None).await;
                    return c;
                }
            }
        }
    }
}

/// `chat-bench --churn`: the run and its JSON summary; passes when every acked message reached
/// every member and no duplicate was shown.
pub async fn run(args: &Args) -> (Value, bool) {
    let mut servers = Vec::new();
    for url in &args.url {
        let host = crate::worker::host_port(url);
        let Some(addr) = tokio::net::lookup_host(&host)
            .await
            .ok()
            .and_then(|mut a| a.find(SocketAddr::is_ipv4))
        else {
            return (json!({"error": format!("cannot resolve {host}")}), false);
        };
        servers.push((addr, host));
    }
    let run_id = format!("{:x}", std::process::id());
    let room_size = args.room_size.max(1);
    let rooms_n = args.connections.div_ceil(room_size);
    let totals = Arc::new(Totals::default());
    let stop = CancellationToken::new();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let mut rooms = Vec::new();
    let mut tasks = Vec::new();
    let mut online = Vec::new();
    let mut senders = Vec::new();
    let mut n = 0;
    for r in 0..rooms_n {
        let mut members = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..room_size.min(args.connections - r * room_size) {
            let (tx, rx) = mpsc::unbounded_channel();
            let flag = Arc::new(AtomicBool::new(false));
            members.push((tx.clone(), flag.clone()));
            online.push(flag.clone());
            senders.push(tx);
            clients.push((rx, flag, n));
            n += 1;
        }
        let room = Arc::new(Room {
            id: format!("churn-{run_id}-{r}"),
            members,
            acked: Mutex::new(Vec::new()),
        });
        for (rx, flag, i) in clients {
            let (server, host) = servers[i % servers.len()].clone();
            let client = Client {
                user: format!("churn-{run_id}-u{i}"),
                room: room.clone(),
                server,
                host,
                online: flag,
                has: Vec::new(),
                recent: VecDeque::new(),
                last: None,
            };
            tasks.push(tokio::spawn(run_client(
                client,
                rx,
                totals.clone(),
                ready_tx.clone(),
                stop.clone(),
            )));
        }
        rooms.push(room);
    }
    drop(ready_tx);
    let t0 = Instant::now();
    for i in 0..args.connections {
        if tokio::time::timeout(
            Duration::from_secs_f64(args.connect_timeout),
            ready_rx.recv(),
        )
        .await
        .ok()
        .flatten()
        .is_none()
        {
            return (
                json!({"error": format!("only {i} clients connected")}),
                false,
            );
        }
    }
    if !args.quiet {
        eprintln!(
            "churn: {} clients in {} rooms connected in {:.1}s",
            args.connections,
            rooms_n,
            t0.elapsed().as_secs_f64()
        );
    }

    let ticks = clock_ticks();
    // (seconds since the start, RSS KiB, CPU seconds, open files)
    let mut samples: Vec<(f64, u64, f64, usize)> = Vec::new();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.duration);
    let room_period = Duration::from_secs_f64(1.0 / args.churn_room_rate.max(0.001));
    // Each room's scheduler: a message every period, from the next connected member.
    let schedulers: Vec<_> = rooms
        .iter()
        .map(|room| {
            let room = room.clone();
            let phase = room_period.mul_f64(rand::random::<f64>());
            tokio::spawn(async move {
                tokio::time::sleep(phase).await;
                let mut tick = tokio::time::interval(room_period);
                let (mut seq, mut turn) = (0u64, 0usize);
                while Instant::now() < end {
                    tick.tick().await;
                    for k in 0..room.members.len() {
                        let (tx, online) = &room.members[(turn + k) % room.members.len()];
                        if online.load(Ordering::Acquire) {
                            let _ = tx.send(Cmd::Send(seq));
                            seq += 1;
                            turn += k + 1;
                            break;
                        }
                    }
                }
                seq
            })
        })
        .collect();
    let mut wave = tokio::time::interval(Duration::from_secs_f64(args.churn_every));
    wave.tick().await;
    let mut sample = tokio::time::interval(Duration::from_secs_f64(args.churn_sample));
    let mut waves = 0;
    while Instant::now() < end {
        tokio::select! {
            _ = wave.tick() => {
                waves += 1;
                for (i, flag) in online.iter().enumerate() {
                    if flag.load(Ordering::Acquire) && rand::random::<f64>() < args.churn_fraction {
                        let pause = Duration::from_millis(1000 + rand::random::<u64>() % 4000);
                        let _ = senders[i].send(Cmd::Leave { abrupt: rand::random(), pause });
                    }
                }
            }
            _ = sample.tick() => {
                if let Some(s) = sample_proc(&args.server_pid, ticks) {
                    let fds = args
                        .server_pid
                        .iter()
                        .filter_map(|p| std::fs::read_dir(format!("/proc/{p}/fd")).ok())
                        .map(|d| d.count())
                        .sum();
                    samples.push((start.elapsed().as_secs_f64(), s.rss_kb, s.cpu_seconds(), fds));
                }
                if !args.quiet {
                    eprintln!(
                        "churn: {:.0}s, {} acked, {} disconnects",
                        start.elapsed().as_secs_f64(),
                        totals.acked.load(Ordering::Relaxed),
                        totals.disconnects.load(Ordering::Relaxed)
                    );
                }
            }
            _ = tokio::time::sleep_until(end.into()) => {}
        }
    }
    for s in schedulers {
        let _ = s.await;
    }
    // Everyone back, then the last messages arrive.
    let settle = Instant::now() + Duration::from_secs_f64(args.drain + 5.0);
    while online.iter().any(|f| !f.load(Ordering::Acquire)) && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs_f64(args.drain)).await;
    stop.cancel();
    let mut expected = 0u64;
    let mut delivered = 0u64;
    for t in tasks {
        let Ok(c) = t.await else { continue };
        let acked = c.room.acked.lock();
        for (seq, ok) in acked.iter().enumerate() {
            if *ok {
                expected += 1;
                if c.has.get(seq).copied().unwrap_or(false) {
                    delivered += 1;
                }
            }
        }
    }
    let q = |h: &Mutex<Option<Histogram<u64>>>, p: f64| {
        h.lock()
            .as_ref()
            .map_or(0.0, |h| h.value_at_quantile(p) as f64 / 1000.0)
    };
    // The slope of the second half: the first holds the warm-up (caches, buffers).
    let slope = rss_slope_per_hour(&samples[samples.len() / 2..]);
    let shown = totals.shown_duplicates.load(Ordering::Relaxed);
    let passed = expected > 0 && delivered == expected && shown == 0;
    let summary = json!({
        "mode": "churn",
        "label": args.label,
        "clients": args.connections,
        "rooms": rooms_n,
        "room_size": room_size,
        "instances": servers.len(),
        "duration_s": args.duration,
        "waves": waves,
        "disconnects": totals.disconnects.load(Ordering::Relaxed),
        "reconnect_failures": totals.reconnect_failures.load(Ordering::Relaxed),
        "acked": totals.acked.load(Ordering::Relaxed),
        "send_failed": totals.send_failed.load(Ordering::Relaxed),
        "expected": expected,
        "delivered": delivered,
        "delivery_pct": if expected > 0 { 100.0 * delivered as f64 / expected as f64 } else { 0.0 },
        "duplicates_shown": shown,
        "duplicates_suppressed": totals.suppressed_duplicates.load(Ordering::Relaxed),
        "rejoin_ms": {"p50": q(&totals.rejoin_us, 0.5), "p99": q(&totals.rejoin_us, 0.99)},
        "replay_ms": {"p50": q(&totals.replay_us, 0.5), "p99": q(&totals.replay_us, 0.99)},
        "server": {
            "rss_kb_first": samples.first().map(|s| s.1),
            "rss_kb_last": samples.last().map(|s| s.1),
            "rss_slope_pct_per_hour": slope,
            "cpu_s": samples.last().zip(samples.first()).map(|(l, f)| l.2 - f.2),
            "open_files_first": samples.first().map(|s| s.3),
            "open_files_last": samples.last().map(|s| s.3),
            "open_files_max": samples.iter().map(|s| s.3).max(),
        },
        "passed": passed,
    });
    (summary, passed)
}

/// The least-squares slope of RSS over time, in percent of the mean RSS per hour.
fn rss_slope_per_hour(samples: &[(f64, u64, f64, usize)]) -> Option<f64> {
    if samples.len() < 3 {
        return None;
    }
    let n = samples.len() as f64;
    let mx = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let my = samples.iter().map(|s| s.1 as f64).sum::<f64>() / n;
    let sxy: f64 = samples.iter().map(|s| (s.0 - mx) * (s.1 as f64 - my)).sum();
    let sxx: f64 = samples.iter().map(|s| (s.0 - mx).powi(2)).sum();
    if sxx == 0.0 || my == 0.0 {
        return None;
    }
    Some(sxy / sxx * 3600.0 / my * 100.0)
}
