//! Engine.IO v4 long-polling and the upgrade to WebSocket (`transport/socketio/polling.rs`),
//! request by request. The socket.io-client e2e suite (polling and upgrade modes) and the
//! browser test cover the same sessions through the official client.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::burst::{BURST, NO_LIMITS, assert_stored, burst_texts, delivered};
use crate::support::{TestApp, WAIT, spawn_app, spawn_app_with, unique};

struct Polling {
    http: reqwest::Client,
    url: String,
    sid: String,
}

impl Polling {
    async fn open(app: &TestApp) -> (Polling, Value) {
        let http = reqwest::Client::new();
        let res = http
            .get(app.url("/socket.io/?EIO=4&transport=polling"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert!(
            res.headers()[reqwest::header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        let body = res.text().await.unwrap();
        let open: Value = serde_json::from_str(body.strip_prefix('0').expect("open packet"))
            .expect("open packet JSON");
        let sid = open["sid"].as_str().unwrap().to_string();
        let url = app.url(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}"));
        (Polling { http, url, sid }, open)
    }

    async fn post(&self, packets: &[&str]) -> (u16, String) {
        let res = self
            .http
            .post(&self.url)
            .body(packets.join("\x1e"))
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    }

    /// One GET: its status and packets (server pings dropped).
    async fn get(&self) -> (u16, Vec<String>) {
        let res = tokio::time::timeout(WAIT, self.http.get(&self.url).send())
            .await
            .expect("a poll answered in time")
            .unwrap();
        let status = res.status().as_u16();
        let body = res.text().await.unwrap();
        let packets = body
            .split('\x1e')
            .filter(|p| *p != "2")
            .map(str::to_string)
            .collect();
        (status, packets)
    }

    /// One GET: its status and body as sent.
    async fn raw_get(&self) -> (u16, String) {
        let res = tokio::time::timeout(WAIT, self.http.get(&self.url).send())
            .await
            .expect("a poll answered in time")
            .unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    }

    /// Polls until a packet starts with `prefix`; returns every packet up to it.
    async fn until(&self, prefix: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let (status, packets) = self.get().await;
            assert_eq!(status, 200, "{packets:?}");
            for p in packets {
                let done = p.starts_with(prefix);
                seen.push(p);
                if done {
                    return seen;
                }
            }
        }
    }

    /// Connects to "/" as `user` and joins `room`.
    async fn member(&self, user: &str, room: &str) {
        let auth = format!(r#"40{{"userId":"{user}","username":"P"}}"#);
        assert_eq!(self.post(&[&auth]).await, (200, "ok".to_string()));
        let seen = self.until("42[\"authenticated\"").await;
        assert!(seen[0].starts_with("40{\"sid\":"), "{seen:?}");
        let join = format!(r#"421["join_room",{{"roomId":"{room}"}}]"#);
        assert_eq!(self.post(&[&join]).await.0, 200);
        let seen = self.until("431").await;
        let ack: Value = serde_json::from_str(&seen.last().unwrap()[3..]).unwrap();
        assert_eq!(ack, json!([{"success": true, "roomId": room}]));
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame, server pings skipped.
async fn ws_text(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(Message::Text(t))) if t.as_str() != "2" => return t.to_string(),
            Some(Ok(Message::Text(_))) => {}
            other => panic!("websocket ended: {other:?}"),
        }
    }
}

fn new_message(packet: &str) -> Option<String> {
    let args: Vec<Value> = serde_json::from_str(packet.strip_prefix("42")?).ok()?;
    (args[0] == "new_message").then(|| args[1]["message"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn a_polling_session_chats_then_upgrades_without_losing_or_reordering_a_message() {
    let app = spawn_app().await;
    let mut watcher = app.member("poll-watcher", "poll-room").await;
    let (polling, open) = Polling::open(&app).await;
    assert_eq!(open["upgrades"], json!(["websocket"]), "{open}");
    assert_eq!(open["sid"].as_str().map(str::len), Some(20), "{open}");
    polling.member("poll-user", "poll-room").await;

    // Polling both ways: the watcher's message arrives in a GET, ours reaches the watcher.
    watcher.say("poll-room", "one").await;
    let seen = polling.until("42[\"new_message\"").await;
    assert_eq!(new_message(seen.last().unwrap()).as_deref(), Some("one"));
    let send = r#"422["send_message",{"roomId":"poll-room","message":"by polling"}]"#;
    assert_eq!(polling.post(&[send]).await.0, 200);
    assert!(
        polling
            .until("432")
            .await
            .last()
            .unwrap()
            .contains(r#""success":true"#)
    );
    watcher
        .event_where("new_message", |m| m["message"] == "by polling")
        .await;

    // The upgrade, as socket.io-client does it: a GET is pending while the probe runs; the
    // probe answer makes the server end that GET with a noop.
    let pending = tokio::spawn({
        let (http, url) = (polling.http.clone(), polling.url.clone());
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    });
    let ws_url = format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket&sid={}",
        app.addr, polling.sid
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    ws.send(Message::text("2probe")).await.unwrap();
    assert_eq!(ws_text(&mut ws).await, "3probe");
    let noop = tokio::time::timeout(WAIT, pending).await.unwrap().unwrap();
    assert!(noop.split('\x1e').any(|p| p == "6"), "{noop:?}");

    // Sent while the client is between transports: it waits for the WebSocket.
    watcher.say("poll-room", "two").await;
    ws.send(Message::text("5")).await.unwrap();
    watcher.say("poll-room", "three").await;
    let mut got = Vec::new();
    while got.len() < 2 {
        if let Some(m) = new_message(&ws_text(&mut ws).await) {
            got.push(m);
        }
    }
    assert_eq!(got, ["two", "three"]);

    // The session goes on over the WebSocket; polling it is refused from now on.
    ws.send(Message::text(
        r#"423["send_message",{"roomId":"poll-room","message":"by websocket"}]"#,
    ))
    .await
    .unwrap();
    loop {
        let frame = ws_text(&mut ws).await;
        if let Some(ack) = frame.strip_prefix("433") {
            assert!(ack.contains(r#""success":true"#), "{ack}");
            break;
        }
    }
    watcher
        .event_where("new_message", |m| m["message"] == "by websocket")
        .await;
    assert_eq!(polling.get().await.0, 400);
    assert_eq!(polling.post(&["3"]).await.0, 400);
    assert_eq!(
        app.stored_texts("poll-room").await,
        ["one", "by polling", "two", "three", "by websocket"]
    );
}

#[tokio::test]
async fn engine_io_errors_are_answered_as_engine_io_does() {
    let app = spawn_app().await;
    let http = reqwest::Client::new();
    let error = async |method: reqwest::Method, query: &str| {
        let res = http
            .request(method, app.url(&format!("/socket.io/?{query}")))
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json::<Value>().await.unwrap())
    };
    use reqwest::Method;
    for (method, query, code, message) in [
        (
            Method::GET,
            "EIO=3&transport=polling",
            5,
            "Unsupported protocol version",
        ),
        (
            Method::GET,
            "transport=polling",
            5,
            "Unsupported protocol version",
        ),
        (
            Method::GET,
            "EIO=4&transport=flashsocket",
            0,
            "Transport unknown",
        ),
        (Method::GET, "EIO=4", 0, "Transport unknown"),
        (
            Method::POST,
            "EIO=4&transport=polling",
            2,
            "Bad handshake method",
        ),
        (
            Method::GET,
            "EIO=4&transport=polling&sid=nope",
            1,
            "Session ID unknown",
        ),
        (
            Method::POST,
            "EIO=4&transport=polling&sid=nope",
            1,
            "Session ID unknown",
        ),
        // A WebSocket request that is not an upgrade.
        (Method::GET, "EIO=4&transport=websocket", 3, "Bad request"),
    ] {
        assert_eq!(
            error(method.clone(), query).await,
            (400, json!({"code": code, "message": message})),
            "{method} {query}"
        );
    }
    // An upgrade for a session that does not exist is refused before the upgrade.
    let refused = tokio_tungstenite::connect_async(format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket&sid=nope",
        app.addr
    ))
    .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            assert_eq!(res.status().as_u16(), 400)
        }
        other => panic!("upgrade with an unknown sid: {other:?}"),
    }
}

#[tokio::test]
async fn overlapping_polls_end_the_session_and_its_rooms_see_it_leave() {
    let app = spawn_app().await;
    let mut watcher = app.member("overlap-watcher", "overlap-room").await;
    let (polling, _) = Polling::open(&app).await;
    polling.member("overlap-user", "overlap-room").await;
    watcher
        .event_where("user_joined", |e| e["userId"] == "overlap-user")
        .await;
    // Nothing is queued: the first GET to arrive waits; the second breaks the session (400),
    // which ends it: the waiting one gets the close packet.
    let (a, b) = tokio::join!(polling.get(), polling.get());
    let mut answers = [a, b];
    answers.sort();
    assert_eq!(answers[0], (200, vec!["1".to_string()]), "{answers:?}");
    assert_eq!(answers[1].0, 400, "{answers:?}");
    watcher
        .event_where("user_left", |e| e["userId"] == "overlap-user")
        .await;
    assert_eq!(polling.get().await.0, 400, "the session is gone");
}

#[tokio::test]
async fn shutdown_runs_a_posted_event_then_sends_its_ack_and_the_close_packet() {
    let mut app = spawn_app().await;
    let (polling, _) = Polling::open(&app).await;
    polling.member("shutdown-poller", "shutdown-room").await;
    // Accepted ("ok"), and the shutdown starts at once: the event still runs and is acked.
    let send = r#"425["send_message",{"roomId":"shutdown-room","message":"last words"}]"#;
    assert_eq!(polling.post(&[send]).await, (200, "ok".to_string()));
    let stopped = tokio::spawn(async move {
        app.stop().await;
        app
    });
    // The session waits (bounded) for a GET to take what is left and the close packet `1`,
    // which tells the client to reconnect.
    let mut packets = Vec::new();
    while packets.last().map(String::as_str) != Some("1") {
        let (status, more) = polling.get().await;
        assert_eq!(status, 200, "{packets:?}");
        packets.extend(more);
    }
    let acks: Vec<&String> = packets.iter().filter(|p| p.starts_with("435")).collect();
    assert_eq!(acks.len(), 1, "{packets:?}");
    assert!(acks[0].contains(r#""success":true"#), "{packets:?}");
    let app = stopped.await.unwrap().restart().await;
    assert_eq!(app.stored_texts("shutdown-room").await, ["last words"]);
}

#[tokio::test]
async fn a_burst_of_1005_emits_over_polling_is_acked_stored_and_delivered_in_order() {
    // Issue 15.1 on long-polling: 1,005 emits back to back, posted in 5 payloads one after the
    // other while GETs take the answers. A POST that finds the session's queues full is held
    // (backpressure), never refused.
    let app = spawn_app_with(&NO_LIMITS).await;
    let room = unique("burst-poll");
    let mut watcher = app.member("burst-poll-watcher", &room).await;
    let (polling, _) = Polling::open(&app).await;
    polling.member("burst-poll", &room).await;
    let texts = burst_texts("poll");
    // Ack ids from 10 (the join used 1).
    let packets: Vec<String> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            format!(
                "42{}{}",
                i + 10,
                json!(["send_message", {"roomId": room, "message": t}])
            )
        })
        .collect();
    let (http, url) = (polling.http.clone(), polling.url.clone());
    let acks = tokio::spawn(async move {
        let mut acks = Vec::new();
        while acks.len() < BURST {
            let res = tokio::time::timeout(Duration::from_secs(60), http.get(&url).send())
                .await
                .expect("a poll answered in time")
                .unwrap();
            assert_eq!(res.status(), 200);
            for packet in res.text().await.unwrap().split('\x1e') {
                assert!(!packet.starts_with("42[\"error\""), "{packet}");
                if let Some(ack) = packet.strip_prefix("43") {
                    acks.push(ack.to_string());
                }
            }
        }
        acks
    });
    for chunk in packets.chunks(201) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let (status, body) = tokio::time::timeout(Duration::from_secs(60), polling.post(&refs))
            .await
            .expect("POST answered");
        assert_eq!((status, body.as_str()), (200, "ok"));
    }
    let acks = acks.await.unwrap();
    for (i, ack) in acks.iter().enumerate() {
        let id = (i + 10).to_string();
        let body = ack
            .strip_prefix(&id)
            .unwrap_or_else(|| panic!("ack {i}: {ack}"));
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(body[0]["success"], true, "{body}");
    }
    assert_eq!(delivered(&mut watcher, BURST).await, texts);
    assert_stored(&app, &room, &texts).await;
}

/// Issue 15.5, heartbeat (the engine.io-protocol suite's settings): a session whose client
/// does not answer the ping is gone `pingInterval + pingTimeout` after the open packet; one
/// that answers lives on.
#[tokio::test]
async fn a_polling_session_that_stops_answering_is_gone_at_ping_interval_plus_timeout() {
    let app = spawn_app_with(&["--ping-interval-ms", "300", "--ping-timeout-ms", "200"]).await;
    let (silent, open) = Polling::open(&app).await;
    let opened = tokio::time::Instant::now();
    assert_eq!(
        (open["pingInterval"].clone(), open["pingTimeout"].clone()),
        (json!(300), json!(200))
    );
    // The wait is the behaviour under test: exactly pingInterval + pingTimeout after the open
    // packet arrived (the official suite's `sleep(PING_INTERVAL + PING_TIMEOUT)`).
    tokio::time::sleep_until(opened + Duration::from_millis(500)).await;
    assert_eq!(silent.get().await.0, 400, "the silent session is gone");
    assert_eq!(silent.post(&["3"]).await.0, 400);

    let (answering, _) = Polling::open(&app).await;
    for _ in 0..3 {
        assert_eq!(answering.raw_get().await, (200, "2".to_string()));
        assert_eq!(answering.post(&["3"]).await, (200, "ok".to_string()));
    }
    // The answering one is alive: it is pinged again and answers.
    assert_eq!(answering.raw_get().await, (200, "2".to_string()));
    assert_eq!(answering.post(&["3"]).await, (200, "ok".to_string()));
}

/// Issue 15.5, close: the client's close packet `1`, POSTed while a GET is pending, ends that
/// GET with a noop `6` (not the close packet); later polls get 400; the user leaves its rooms.
#[tokio::test]
async fn a_close_packet_ends_the_pending_poll_with_a_noop_and_later_polls_get_400() {
    let app = spawn_app().await;
    let mut watcher = app.member("close-watcher", "close-room").await;
    let (polling, _) = Polling::open(&app).await;
    polling.member("close-user", "close-room").await;
    watcher
        .event_where("user_joined", |e| e["userId"] == "close-user")
        .await;
    let pending = tokio::spawn({
        let (http, url) = (polling.http.clone(), polling.url.clone());
        async move {
            let res = http.get(url).send().await.unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }
    });
    // Nothing is queued, so the GET waits on the server; no frame says when it got there, so
    // this is the one place the test gives it time.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(polling.post(&["1"]).await, (200, "ok".to_string()));
    let answered = tokio::time::timeout(WAIT, pending).await.unwrap().unwrap();
    assert_eq!(answered, (200, "6".to_string()));
    assert_eq!(polling.get().await.0, 400);
    assert_eq!(polling.post(&["3"]).await.0, 400);
    watcher
        .event_where("user_left", |e| e["userId"] == "close-user")
        .await;
}

/// Issue 15.5, upgrade: a second WebSocket for an upgraded `sid` is accepted and closed; the
/// first one carries the session, without the noop that ended the polls; polling is refused.
#[tokio::test]
async fn a_second_websocket_for_an_upgraded_sid_is_accepted_then_closed() {
    let app = spawn_app().await;
    let (polling, _) = Polling::open(&app).await;
    let ws_url = format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket&sid={}",
        app.addr, polling.sid
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    ws.send(Message::text("2probe")).await.unwrap();
    assert_eq!(ws_text(&mut ws).await, "3probe");
    ws.send(Message::text("5")).await.unwrap();

    let (mut second, res) = tokio_tungstenite::connect_async(&ws_url)
        .await
        .expect("the second WebSocket is accepted");
    assert_eq!(res.status().as_u16(), 101);
    match tokio::time::timeout(WAIT, second.next())
        .await
        .expect("closed in time")
    {
        Some(Ok(Message::Close(_))) | None => {}
        other => panic!("the second WebSocket got {other:?}"),
    }

    // The first frame after the probe on the upgraded WebSocket is the CONNECT answer.
    ws.send(Message::text("40")).await.unwrap();
    let first = ws_text(&mut ws).await;
    assert!(first.starts_with("40{\"sid\":"), "{first}");
    assert_eq!(polling.get().await.0, 400);
    assert_eq!(polling.post(&["3"]).await.0, 400);
}
