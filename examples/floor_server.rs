//! The floor of the chat path (issue 16): the least a server on this stack (tokio,
//! tokio-tungstenite) can do for `chat-bench`'s Socket.IO load, to measure what any chat
//! server must pay before its own logic.
//!
//! It speaks just enough of the protocol `chat-bench` uses: the Engine.IO open packet, the
//! namespace connect, `authenticate` and `join_room` (acked, no checks), and `send_message`:
//! acked to the sender and sent as `new_message` to every member of the room (the sender
//! too), frames built by string concatenation. No auth, no validation, no limits, no
//! presence, no pings, no store.
//!
//! With `FLOOR_DURABLE=1` each message is also appended to a log file in `DATA_DIR` (64 MiB,
//! written with zeros first, so an append changes no metadata) and `fdatasync`ed before its
//! ack and broadcast, by one writer thread that takes every queued message into one write
//! and one flush (group commit): the least a durable-before-ack server pays on this disk.
//!
//! `GET /metrics` gives `chat_durable_write_seconds` (the chat service's buckets; from the
//! message's arrival to the end of its flush) in the form `chat-bench` scrapes.
//!
//! `RUST_BIN=target/release/examples/floor_server bench/run.sh s1 3` measures it as `rust`
//! beside the Node.js reference (`RUST_ENV=FLOOR_DURABLE=1` for the durable floor);
//! BENCHMARKS.md, "The durable write: the floor".

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use chat_service::metrics::DURABLE_WRITE_BUCKETS_US;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type Rooms = Arc<Mutex<HashMap<String, Vec<mpsc::UnboundedSender<Ws>>>>>;

const LOG_SIZE: u64 = 64 << 20;

/// Durable writes per bucket of `DURABLE_WRITE_BUCKETS_US` (not cumulative), `+Inf` last.
static DURABLE: LazyLock<Vec<AtomicU64>> = LazyLock::new(|| {
    (0..=DURABLE_WRITE_BUCKETS_US.len())
        .map(|_| AtomicU64::new(0))
        .collect()
});

fn observe(since: Instant) {
    let us = since.elapsed().as_micros() as u64;
    let i = DURABLE_WRITE_BUCKETS_US.partition_point(|&b| b < us);
    DURABLE[i].fetch_add(1, Ordering::Relaxed);
}

/// Answers `GET /metrics` with the durable-write histogram, cumulative.
async fn metrics(mut stream: TcpStream) {
    // The request is read first: closing a socket with unread data resets the connection.
    let mut request = [0u8; 1024];
    let _ = stream.read(&mut request).await;
    let mut body = String::new();
    let mut total = 0;
    for (i, count) in DURABLE.iter().enumerate() {
        total += count.load(Ordering::Relaxed);
        let le = DURABLE_WRITE_BUCKETS_US
            .get(i)
            .map_or("+Inf".to_string(), |us| (*us as f64 / 1e6).to_string());
        body.push_str(&format!(
            "chat_durable_write_seconds_bucket{{le=\"{le}\"}} {total}\n"
        ));
    }
    let response = format!(
        "HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The durable log's writer thread: appends each group of queued records with one `pwrite`
/// and one `fdatasync`, then answers them.
#[derive(Clone)]
struct Log(std::sync::mpsc::Sender<(String, oneshot::Sender<()>)>);

impl Log {
    fn start(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let mut file: File = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.join("floor.log"))?;
        file.write_all(&vec![0u8; LOG_SIZE as usize])?;
        file.sync_all()?;
        let (tx, rx) = std::sync::mpsc::channel::<(String, oneshot::Sender<()>)>();
        std::thread::spawn(move || {
            let mut at = 0u64;
            let mut buf = Vec::with_capacity(1 << 16);
            while let Ok(first) = rx.recv() {
                let mut group = vec![first];
                group.extend(rx.try_iter());
                buf.clear();
                for (record, _) in &group {
                    buf.extend_from_slice(record.as_bytes());
                    buf.push(b'\n');
                }
                if at + buf.len() as u64 > LOG_SIZE {
                    at = 0;
                }
                file.write_all_at(&buf, at).expect("log write");
                at += buf.len() as u64;
                file.sync_data().expect("log flush");
                for (_, done) in group {
                    let _ = done.send(());
                }
            }
        });
        Ok(Self(tx))
    }

    async fn append(&self, record: String) {
        let (tx, rx) = oneshot::channel();
        if self.0.send((record, tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    let log = match std::env::var("FLOOR_DURABLE").as_deref() {
        Ok("1") => Some(Log::start(
            std::env::var("DATA_DIR")
                .unwrap_or_else(|_| "./data".into())
                .into(),
        )?),
        _ => None,
    };
    let port = std::env::var("PORT").unwrap_or_else(|_| "0".into());
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let rooms = Rooms::default();
    let ids = Arc::new(AtomicU64::new(1));
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, rooms.clone(), ids.clone(), log.clone()));
    }
}

async fn connection(stream: TcpStream, rooms: Rooms, ids: Arc<AtomicU64>, log: Option<Log>) {
    let mut head = [0u8; 12];
    if let Ok(n) = stream.peek(&mut head).await
        && head[..n].starts_with(b"GET /metrics")
    {
        return metrics(stream).await;
    }
    // Small buffers, as a server of 10,000 connections needs.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Ws>();
    tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if sink.feed(frame).await.is_err() {
                return;
            }
            while let Ok(frame) = rx.try_recv() {
                if sink.feed(frame).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let send = |text: String| {
        let _ = tx.send(Ws::text(text));
    };
    send(r#"0{"sid":"floor","upgrades":[],"pingInterval":25000,"pingTimeout":60000,"maxPayload":1000000}"#.into());
    let mut user = String::new();
    while let Some(Ok(frame)) = source.next().await {
        let Ws::Text(text) = frame else { continue };
        let text = text.as_str();
        if text.starts_with("40") {
            send(r#"40{"sid":"floor"}"#.into());
            continue;
        }
        let Some(rest) = text.strip_prefix("42") else {
            continue;
        };
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (ack, body) = rest.split_at(digits);
        let Ok(Value::Array(event)) = serde_json::from_str::<Value>(body) else {
            continue;
        };
        let (Some(name), Some(data)) = (event.first().and_then(Value::as_str), event.get(1)) else {
            continue;
        };
        let room = data["roomId"].as_str().unwrap_or_default().to_string();
        match name {
            "authenticate" => {
                user = data["userId"].as_str().unwrap_or_default().to_string();
                send(format!(r#"43{ack}[{{"success":true}}]"#));
            }
            "join_room" => {
                rooms
                    .lock()
                    .unwrap()
                    .entry(room)
                    .or_default()
                    .push(tx.clone());
                send(format!(r#"43{ack}[{{"success":true}}]"#));
            }
            "send_message" => {
                let arrived = Instant::now();
                let id = ids.fetch_add(1, Ordering::Relaxed);
                let message = format!(
                    r#"{{"id":"{id}","roomId":{},"userId":{},"message":{},"timestamp":{}}}"#,
                    Value::from(room.as_str()),
                    Value::from(user.as_str()),
                    data["message"],
                    chat_service::domain::now_ms(),
                );
                if let Some(log) = &log {
                    log.append(message.clone()).await;
                    observe(arrived);
                }
                send(format!(
                    r#"43{ack}[{{"success":true,"message":{message}}}]"#
                ));
                let frame = Ws::text(format!(r#"42["new_message",{message}]"#));
                if let Some(members) = rooms.lock().unwrap().get(&room) {
                    for member in members {
                        let _ = member.send(frame.clone());
                    }
                }
            }
            _ => {}
        }
    }
}
