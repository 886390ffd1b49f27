//! Issue 15.1: a burst of events from one connection is processed, not refused. A full event
//! queue stops the server reading that socket (backpressure) until it drains; refusals come
//! from the configured rate limits only.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{TestApp, spawn_app_with, unique};

/// Every rate limit off, as an operator who wants bursts sets it.
pub(crate) const NO_LIMITS: [&str; 4] = [
    "--rate-limit-per-sec",
    "0",
    "--event-rate-limit-per-sec",
    "0",
];

pub(crate) const BURST: usize = 1005;

/// The texts of the next `n` `new_message` events a watcher gets, in arrival order.
pub(crate) async fn delivered(watcher: &mut crate::support::SioClient, n: usize) -> Vec<String> {
    let mut texts = Vec::with_capacity(n);
    for _ in 0..n {
        let m = watcher
            .event_within("new_message", |_| true, Duration::from_secs(60))
            .await;
        texts.push(m["message"].as_str().unwrap().to_string());
    }
    texts
}

pub(crate) fn burst_texts(prefix: &str) -> Vec<String> {
    (0..BURST).map(|i| format!("{prefix}-{i}")).collect()
}

/// Stored, in order, exactly once.
pub(crate) async fn assert_stored(app: &TestApp, room: &str, expected: &[String]) {
    let (status, body) = app
        .get(&format!("/api/chat/{room}/history?limit=1000"))
        .await;
    assert_eq!(status, 200, "{body}");
    let newest: Vec<&str> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message"].as_str().unwrap())
        .collect();
    // The history page holds the newest 1000: the burst's tail.
    assert_eq!(newest, expected[expected.len() - 1000..]);
}

#[tokio::test]
async fn a_burst_of_1005_emits_on_a_websocket_is_acked_stored_and_delivered_in_order() {
    let app = spawn_app_with(&NO_LIMITS).await;
    let room = unique("burst-ws");
    let mut watcher = app.member("burst-watcher", &room).await;
    let mut sender = app.member("burst-sender", &room).await;
    let texts = burst_texts("ws");
    // Back to back, without waiting for any ack.
    let acks: Vec<_> = texts
        .iter()
        .map(|t| sender.emit_with_ack("send_message", json!({"roomId": room, "message": t})))
        .collect();
    for (i, ack) in acks.into_iter().enumerate() {
        let ack = tokio::time::timeout(Duration::from_secs(60), ack)
            .await
            .expect("ack in time")
            .expect("ack");
        assert_eq!(ack["success"], true, "emit {i}: {ack}");
    }
    assert_eq!(delivered(&mut watcher, BURST).await, texts);
    assert_stored(&app, &room, &texts).await;
    // No refusal reached the client.
    assert!(
        sender.received("error").is_empty(),
        "{:?}",
        sender.received("error")
    );
}

#[tokio::test]
async fn a_raw_websocket_burst_is_acked_and_stored_in_order() {
    let app = spawn_app_with(&NO_LIMITS).await;
    let room = unique("burst-raw");
    let mut watcher = app.member("burst-raw-watcher", &room).await;
    let mut ws = crate::raw_ws::connect(app.addr, "/ws").await;
    let texts = burst_texts("raw");
    let mut frames = vec![
        json!({"event": "authenticate", "data": {"userId": "burst-raw", "username": "r"}}),
        json!({"event": "join_room", "data": {"roomId": room}}),
    ];
    frames.extend(texts.iter().enumerate().map(
        |(i, t)| json!({"event": "send_message", "data": {"roomId": room, "message": t}, "id": i}),
    ));
    for f in frames {
        ws.feed(Message::text(f.to_string())).await.unwrap();
    }
    ws.flush().await.unwrap();
    let mut next_ack = 0;
    while next_ack < BURST {
        let frame = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("frame");
        let Message::Text(t) = frame else { continue };
        let v: Value = serde_json::from_str(&t).unwrap();
        assert_ne!(v["event"], "error", "{v}");
        if v["event"] == "ack" {
            assert_eq!(v["id"], next_ack, "acks in order: {v}");
            assert_eq!(v["data"]["success"], true, "{v}");
            next_ack += 1;
        }
    }
    assert_eq!(delivered(&mut watcher, BURST).await, texts);
    assert_stored(&app, &room, &texts).await;
}

/// A listener that accepts connections and never answers: an Auth Service that hangs.
async fn black_hole() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (url, task)
}

#[tokio::test]
async fn a_flooding_client_is_not_read_while_its_queue_is_full() {
    // The first event (authenticate) waits for an Auth Service that never answers, so every
    // later event of the connection waits too. Meanwhile the client floods: the server must
    // stop reading it once its queue is full, instead of reading (and holding) it all.
    let (auth_url, _auth) = black_hole().await;
    let app = spawn_app_with(&[
        "--auth-mode",
        "grpc",
        "--auth-grpc-url",
        &auth_url,
        "--auth-grpc-timeout-ms",
        "8000",
        "--event-rate-limit-per-sec",
        "0",
    ])
    .await;
    // Socket.IO on a WebSocket; the CONNECT's auth token starts the authentication.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket",
        app.addr
    ))
    .await
    .unwrap();
    ws.send(Message::text(r#"40{"token":"t"}"#)).await.unwrap();
    // 10 KB frames, 100 MB in all: far more than the server's queue and the kernel's
    // socket buffers hold.
    let pad = "x".repeat(10_000);
    let frame = Message::text(format!(
        "42{}",
        json!(["typing", {"roomId": "flood", "isTyping": true, "pad": pad}])
    ));
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let (mut write, _read) = ws.split();
    let flood = tokio::spawn(async move {
        let mut written = 0;
        for _ in 0..10_000 {
            if write.send(frame.clone()).await.is_err() {
                break;
            }
            written += frame.len();
            let _ = progress_tx.send(written);
        }
    });
    // The writes stall: no progress for a second, far below the 100 MB offered.
    loop {
        match tokio::time::timeout(Duration::from_secs(1), progress.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) => panic!("the whole flood was written: the server read it all"),
            Err(_) => break,
        }
    }
    let written = *progress.borrow();
    eprintln!("flood stalled after {written} bytes");
    assert!(
        written < 40_000_000,
        "the server read {written} bytes while its first event was pending"
    );
    flood.abort();
}
