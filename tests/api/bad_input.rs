//! Malformed input never crashes or corrupts: the catalogue of bad payloads
//! (`fixtures/bad_payloads.tsv`) over both socket transports, deep nesting, huge frames,
//! invalid UTF-8, 10k-room joins; and property tests of the decoders that face the network.

use std::time::Duration;

use futures_util::SinkExt;
use proptest::prelude::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::raw_ws::next;
use crate::support::{spawn_app, spawn_app_with};

struct Case {
    event: String,
    code: String,
    raw: String,
}

fn catalogue() -> Vec<Case> {
    let text = std::fs::read_to_string(crate::support::fixture("bad_payloads.tsv")).unwrap();
    let mut cases: Vec<Case> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut parts = l.splitn(3, '\t');
            Case {
                event: parts.next().unwrap().to_string(),
                code: parts.next().unwrap().to_string(),
                raw: parts.next().unwrap().to_string(),
            }
        })
        .collect();
    // Nesting far deeper than any decoder's recursion limit.
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    cases.push(Case {
        event: "send_message".into(),
        code: "invalid_payload".into(),
        raw: format!(r#"{{"roomId":"cat","message":{deep}}}"#),
    });
    cases.push(Case {
        event: "join_room".into(),
        code: "invalid_payload".into(),
        raw: deep,
    });
    cases
}

#[test]
fn the_catalogue_is_well_formed() {
    let cases = catalogue();
    assert!(cases.len() > 30);
    for c in &cases {
        assert!(
            [
                "send_message",
                "join_room",
                "leave_room",
                "typing",
                "authenticate"
            ]
            .contains(&c.event.as_str()),
            "{}",
            c.event
        );
    }
}

#[tokio::test]
async fn every_bad_payload_is_refused_over_socketio() {
    let app = spawn_app_with(&[
        "--rate-limit-per-sec",
        "0",
        "--event-rate-limit-per-sec",
        "0",
    ])
    .await;
    let mut a = app.member("cat-member", "cat").await;
    let mut watcher = app.member("watcher", "cat").await;
    a.event("user_joined").await;
    for case in catalogue() {
        let ack = a.emit_raw_ack(&case.event, &case.raw).await;
        assert_eq!(
            ack["success"], false,
            "{} {} accepted",
            case.event, case.raw
        );
        assert_eq!(
            ack["error"]["code"],
            case.code.as_str(),
            "{} {}",
            case.event,
            case.raw
        );
        assert_eq!(a.event("error").await["code"], case.code.as_str());
    }
    // Nothing stored or broadcast; the connection still works.
    a.say("cat", "valid").await;
    assert_eq!(watcher.event("new_message").await["message"], "valid");
    assert!(watcher.received("new_message").is_empty());
    assert!(watcher.received("user_typing").is_empty());
    assert_eq!(app.stored_texts("cat").await, ["valid"]);
}

#[tokio::test]
async fn every_bad_payload_is_refused_over_raw_websocket() {
    let app = spawn_app_with(&[
        "--rate-limit-per-sec",
        "0",
        "--event-rate-limit-per-sec",
        "0",
    ])
    .await;
    let mut watcher = app.member("watcher", "cat").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", app.addr))
        .await
        .unwrap();
    ws.send(Message::text(
        r#"{"event":"authenticate","data":{"userId":"cat-member"}}"#,
    ))
    .await
    .unwrap();
    ws.send(Message::text(
        r#"{"event":"join_room","data":{"roomId":"cat"},"id":0}"#,
    ))
    .await
    .unwrap();
    assert_eq!(next(&mut ws, "ack").await["data"]["success"], true);
    watcher.event("user_joined").await;
    for (i, case) in catalogue().into_iter().enumerate() {
        let frame = format!(
            r#"{{"event":"{}","data":{},"id":{}}}"#,
            case.event,
            case.raw,
            i + 1
        );
        ws.send(Message::text(frame)).await.unwrap();
        // Payloads too deep for the frame decoder are refused as frames (error, no ack).
        let err = next(&mut ws, "error").await;
        assert_eq!(
            err["data"]["code"],
            case.code.as_str(),
            "{} {}",
            case.event,
            case.raw
        );
        if !case.raw.starts_with("[[[") && !case.raw.contains(":[[[") {
            let ack = next(&mut ws, "ack").await;
            assert_eq!(ack["id"], i + 1);
            assert_eq!(ack["data"]["error"]["code"], case.code.as_str());
        }
    }
    // Invalid UTF-8 in a text frame is a protocol error: that connection closes, nothing else.
    let mut bad = tokio_tungstenite::connect_async(format!("ws://{}/ws", app.addr))
        .await
        .unwrap()
        .0;
    let _ = bad.send(Message::binary(vec![0xff, 0xfe, 0xfd])).await;
    assert_eq!(
        next(&mut bad, "error").await["data"]["code"],
        "invalid_payload"
    );

    ws.send(Message::text(
        r#"{"event":"send_message","data":{"roomId":"cat","message":"valid"},"id":"v"}"#,
    ))
    .await
    .unwrap();
    assert_eq!(next(&mut ws, "ack").await["data"]["success"], true);
    assert_eq!(watcher.event("new_message").await["message"], "valid");
    assert!(watcher.received("new_message").is_empty());
    assert_eq!(app.stored_texts("cat").await, ["valid"]);
}

#[tokio::test]
async fn ten_thousand_room_joins_stop_at_the_limit() {
    let app = spawn_app_with(&[
        "--rate-limit-per-sec",
        "0",
        "--event-rate-limit-per-sec",
        "0",
    ])
    .await;
    let mut a = app.user("joiner").await;
    // In windows of 250 in flight: one unbounded burst of 10 000 can outrun this client's
    // reading, and then the server rightly drops it as a slow consumer (limits.rs), which is
    // not what this test is about.
    let mut joined = 0;
    for window in (0..10_000).collect::<Vec<_>>().chunks(250) {
        let acks: Vec<_> = window
            .iter()
            .map(|i| a.emit_with_ack("join_room", json!({"roomId": format!("many-{i}")})))
            .collect();
        for ack in acks {
            let ack = tokio::time::timeout(Duration::from_secs(20), ack)
                .await
                .expect("an ack for every join")
                .unwrap();
            if ack["success"] == true {
                joined += 1;
            } else {
                // Past the rooms limit, or past the connection's queue of waiting events.
                let code = ack["error"]["code"].as_str().unwrap().to_string();
                assert!(code == "forbidden" || code == "rate_limited", "{ack}");
            }
        }
    }
    assert_eq!(joined, 100, "MAX_ROOMS_PER_CONNECTION default");
    // The service is unaffected.
    let mut b = app.member("b", "after-flood").await;
    b.say("after-flood", "fine").await;
}

#[tokio::test]
async fn the_default_per_connection_event_limit_stops_a_flood() {
    let app = spawn_app().await;
    let mut a = app.user("flooder").await;
    let acks: Vec<_> = (0..1000)
        .map(|_| a.emit_with_ack("typing", json!({"roomId": "nowhere", "isTyping": true})))
        .collect();
    let mut limited = 0;
    for ack in acks {
        if ack.await.unwrap()["error"]["code"] == "rate_limited" {
            limited += 1;
        }
    }
    assert!(
        limited >= 600,
        "only {limited} of 1000 flood events limited"
    );
}

/// Any JSON value, up to a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::from),
        prop_oneof![
            Just("cat"),
            Just(""),
            Just("a b"),
            Just("x".repeat(200).leak() as &str)
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::hash_map(
                prop_oneof![
                    Just("roomId".to_string()),
                    Just("message".to_string()),
                    Just("messageType".to_string()),
                    Just("clientMessageId".to_string()),
                    Just("isTyping".to_string()),
                    Just("since".to_string()),
                    Just("userId".to_string()),
                    Just("username".to_string()),
                    Just("token".to_string()),
                    "[a-z]{1,8}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Every DTO conversion: any JSON payload for any event either parses into a command whose
    /// fields hold the domain rules, or is refused with `invalid_payload`; never a panic.
    #[test]
    fn dto_conversion_never_panics(event in prop_oneof![
        Just("authenticate".to_string()), Just("join_room".to_string()),
        Just("leave_room".to_string()), Just("send_message".to_string()),
        Just("typing".to_string()), "[a-z_]{0,12}"
    ], data in any_json()) {
        let cfg = chat_service::chat::ChatConfig::default();
        match chat_service::transport::dto::parse(&event, data, &cfg) {
            Ok(chat_service::transport::dto::Inbound::Send(s)) => {
                prop_assert!(!s.body.as_str().trim().is_empty());
                prop_assert!(s.body.as_str().chars().count() <= cfg.max_message_chars);
                prop_assert!(chat_service::domain::RoomId::parse(s.room_id.as_str()).is_ok());
            }
            Ok(_) => {}
            Err(e) => prop_assert_eq!(e.code(), "invalid_payload"),
        }
    }

    /// The raw-WebSocket frame decoder: any text is a frame or a clear refusal.
    #[test]
    fn ws_frame_decoding_never_panics(text in ".{0,200}") {
        if let Err(e) = chat_service::transport::ws::parse_frame(&text) {
            prop_assert_eq!(e.code(), "invalid_payload");
        }
    }

    #[test]
    fn ws_frames_of_any_json_never_panic(frame in any_json()) {
        let _ = chat_service::transport::ws::parse_frame(&frame.to_string());
    }
}

/// Opens a WebSocket on `path` over plain TCP (for Socket.IO, through the namespace connect),
/// sends one text frame whose payload is not UTF-8, and returns whether the server closed the
/// connection.
async fn invalid_utf8_closes(addr: std::net::SocketAddr, path: &str, socketio: bool) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut seen = Vec::new();
    let n = tcp.read(&mut buf).await.unwrap();
    seen.extend_from_slice(&buf[..n]);
    if socketio {
        tcp.write_all(&crate::support::masked_text_frame(b"40"))
            .await
            .unwrap();
        while !seen.windows(3).any(|w| w == b"40{") {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0);
            seen.extend_from_slice(&buf[..n]);
        }
    }
    let mut payload = b"42[\"send_message\",{\"roomId\":\"u\",\"message\":\"".to_vec();
    payload.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28]);
    payload.extend_from_slice(b"\"}]");
    tcp.write_all(&crate::support::masked_text_frame(&payload))
        .await
        .unwrap();
    tokio::time::timeout(crate::support::WAIT, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or(false)
}

#[tokio::test]
async fn invalid_utf8_text_frames_close_only_that_connection() {
    let app = spawn_app().await;
    assert!(
        invalid_utf8_closes(app.addr, "/ws", false).await,
        "raw WebSocket"
    );
    assert!(
        invalid_utf8_closes(app.addr, "/socket.io/?EIO=4&transport=websocket", true).await,
        "Socket.IO over WebSocket"
    );
    // Polling: a session's POST whose body is not UTF-8 is refused.
    let http = reqwest::Client::new();
    let open = http
        .get(app.url("/socket.io/?EIO=4&transport=polling"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let handshake: Value = serde_json::from_str(open.trim_start_matches('0')).unwrap();
    let sid = handshake["sid"].as_str().unwrap();
    let res = http
        .post(app.url(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}")))
        .body(vec![0xffu8, 0xfe, 0xfd])
        .send()
        .await
        .unwrap();
    assert!(res.status().is_client_error(), "{}", res.status());
    let mut ok = app.member("still-fine", "utf8").await;
    ok.say("utf8", "the service is unaffected").await;
    assert_eq!(
        app.stored_texts("utf8").await,
        ["the service is unaffected"]
    );
}
