//! What Redis costs: latency of a cross-instance message and deliveries per second, one
//! instance vs two instances on Redis (SPEC 7).
//!
//! ```text
//! cargo run --release --example bench_redis -- [redis-url] [runs]
//! ```
//! (default `redis://127.0.0.1:6379`, 3 runs; the median run of each figure is printed).
//!
//! Everything runs in this process (instances and clients share the CPU), over the raw
//! WebSocket transport on loopback:
//! - latency: one sender, one receiver; 2000 messages, each sent after the previous arrived;
//!   time from send to receipt. Single: both on one instance. Redis: sender on A, receiver on B.
//! - throughput: 40 receivers in one room (split over A and B with Redis), 4 senders sending
//!   500 messages each without waiting; deliveries/s = messages received by all receivers
//!   / time until the last one arrived.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_service::app::App;
use chat_service::config::Config;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Instance {
    addr: std::net::SocketAddr,
    _stop: oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn instance(redis: Option<&str>) -> Instance {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "chat-service".to_string(),
        "--port=0".into(),
        "--host=127.0.0.1".into(),
        format!("--data-dir={}", dir.path().display()),
        "--rate-limit-per-sec=0".into(),
        "--max-connections-per-user=0".into(),
    ];
    if let Some(url) = redis {
        args.push(format!("--redis-url={url}"));
    }
    let app = App::build(Config::from_args(args).unwrap()).await.unwrap();
    let addr = app.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = app
            .run_until_stopped(async move {
                let _ = stopped.await;
            })
            .await;
    });
    Instance {
        addr,
        _stop: stop,
        _dir: dir,
    }
}

async fn next_event(ws: &mut Ws, event: &str) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["event"] == event {
                    return v;
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("waiting for {event}: {other:?}"),
        }
    }
}

async fn member(addr: std::net::SocketAddr, user: &str, room: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    for frame in [
        json!({"event": "authenticate", "data": {"userId": user, "username": user}}),
        json!({"event": "join_room", "data": {"roomId": room}}),
    ] {
        ws.send(Message::text(frame.to_string())).await.unwrap();
    }
    next_event(&mut ws, "room_users").await;
    ws
}

fn room_name(tag: &str) -> String {
    format!("bench-{tag}-{:x}", rand::random::<u32>())
}

/// (p50, p99) in microseconds.
async fn latency(sender_at: std::net::SocketAddr, receiver_at: std::net::SocketAddr) -> (u64, u64) {
    let room = room_name("lat");
    let mut rx = member(receiver_at, &room_name("r"), &room).await;
    let mut tx = member(sender_at, &room_name("s"), &room).await;
    let mut samples = Vec::with_capacity(2000);
    for i in 0..2200 {
        let t0 = Instant::now();
        let text = format!("m{i}");
        tx.send(Message::text(
            json!({"event": "send_message", "data": {"roomId": room, "message": text}}).to_string(),
        ))
        .await
        .unwrap();
        loop {
            let m = next_event(&mut rx, "new_message").await;
            if m["data"]["message"] == text.as_str() {
                break;
            }
        }
        if i >= 200 {
            samples.push(t0.elapsed().as_micros() as u64);
        }
    }
    samples.sort_unstable();
    (
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    )
}

/// Deliveries per second.
async fn throughput(at: &[std::net::SocketAddr]) -> f64 {
    const RECEIVERS: usize = 40;
    const SENDERS: usize = 4;
    const PER_SENDER: usize = 500;
    let room = room_name("tp");
    let mut receivers = Vec::new();
    for i in 0..RECEIVERS {
        receivers.push(member(at[i % at.len()], &room_name("r"), &room).await);
    }
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        senders.push(member(at[i % at.len()], &room_name("s"), &room).await);
    }
    let expected = SENDERS * PER_SENDER;
    let start = Instant::now();
    let done: Vec<_> = receivers
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut n = 0;
                while n < expected {
                    next_event(&mut ws, "new_message").await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let room = Arc::new(room);
    let sending: Vec<_> = senders
        .into_iter()
        .map(|ws| {
            let room = room.clone();
            tokio::spawn(async move {
                // Senders are members too: drain what they receive.
                let (mut sink, mut stream) = ws.split();
                let reader = tokio::spawn(async move { while stream.next().await.is_some() {} });
                for i in 0..PER_SENDER {
                    sink.send(Message::text(
                        json!({"event": "send_message", "data": {"roomId": *room, "message": format!("t{i}")}})
                            .to_string(),
                    ))
                    .await
                    .unwrap();
                }
                // Keep the sender connected until everything arrived.
                (sink, reader)
            })
        })
        .collect();
    let mut total = 0;
    for d in done {
        total += d.await.unwrap();
    }
    let elapsed = start.elapsed();
    for s in sending {
        let (_sink, reader) = s.await.unwrap();
        reader.abort();
    }
    total as f64 / elapsed.as_secs_f64()
}

fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let runs: usize = args.next().map_or(3, |r| r.parse().unwrap());

    let single = instance(None).await;
    let (a, b) = (instance(Some(&url)).await, instance(Some(&url)).await);

    let (mut s_lat, mut r_lat, mut s_tp, mut r_tp) = (vec![], vec![], vec![], vec![]);
    for run in 1..=runs {
        let sl = latency(single.addr, single.addr).await;
        let rl = latency(a.addr, b.addr).await;
        let st = throughput(&[single.addr]).await;
        let rt = throughput(&[a.addr, b.addr]).await;
        println!(
            "run {run}: latency p50/p99 single {}/{} us, redis {}/{} us; deliveries/s single {st:.0}, redis {rt:.0}",
            sl.0, sl.1, rl.0, rl.1
        );
        s_lat.push(sl);
        r_lat.push(rl);
        s_tp.push(st);
        r_tp.push(rt);
    }
    let p = |v: &Vec<(u64, u64)>, f: fn(&(u64, u64)) -> u64| median(v.iter().map(f).collect());
    let (s50, s99) = (p(&s_lat, |x| x.0), p(&s_lat, |x| x.1));
    let (r50, r99) = (p(&r_lat, |x| x.0), p(&r_lat, |x| x.1));
    println!("median of {runs} runs:");
    println!("| | single instance | two instances on Redis | added |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| latency p50 | {s50} us | {r50} us | {} us |",
        r50 as i64 - s50 as i64
    );
    println!(
        "| latency p99 | {s99} us | {r99} us | {} us |",
        r99 as i64 - s99 as i64
    );
    println!(
        "| deliveries/s | {:.0} | {:.0} | |",
        median(s_tp),
        median(r_tp)
    );
}
