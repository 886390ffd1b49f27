//! SPEC 1: the plain WebSocket JSON protocol on `/` and `/ws`, sharing rooms with Socket.IO.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{WAIT, spawn_app, spawn_app_with};

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) async fn connect(addr: std::net::SocketAddr, path: &str) -> Ws {
    tokio_tungstenite::connect_async(format!("ws://{addr}{path}"))
        .await
        .expect("raw ws connect")
        .0
}

pub(crate) async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

/// The next text frame whose event is `event` (frames of other events are skipped).
pub(crate) async fn next(ws: &mut Ws, event: &str) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["event"] == event {
                        return v;
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("connection ended waiting for {event}: {other:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {event} frame"))
}

#[tokio::test]
async fn wscat_session_from_the_old_readme_works_verbatim() {
    let app = spawn_app().await;
    let mut ws = connect(app.addr, "").await;
    for line in [
        r#"{"event":"authenticate","data":{"userId":"user-123","username":"john"}}"#,
        r#"{"event":"join_room","data":{"roomId":"room-123"}}"#,
        r#"{"event":"send_message","data":{"roomId":"room-123","message":"Hello!"}}"#,
    ] {
        ws.send(Message::text(line)).await.unwrap();
    }
    let raw = loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) if t.contains("new_message") => break t.to_string(),
            _ => {}
        }
    };
    // Event first, then data, as the README shows.
    assert!(
        raw.starts_with(r#"{"event":"new_message","data":{"#),
        "{raw}"
    );
    let v: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["data"]["message"], "Hello!");
    assert_eq!(v["data"]["userId"], "user-123");
    assert_eq!(app.stored_texts("room-123").await, ["Hello!"]);
}

#[tokio::test]
async fn raw_ws_and_socketio_clients_share_rooms() {
    let app = spawn_app().await;
    let mut ws = connect(app.addr, "/ws").await;
    send(
        &mut ws,
        json!({"event": "authenticate", "data": {"userId": "raw", "username": "Raw"}, "id": 1}),
    )
    .await;
    assert_eq!(
        next(&mut ws, "ack").await,
        json!({"event": "ack", "id": 1, "data": {"success": true, "userId": "raw", "username": "Raw"}})
    );
    send(
        &mut ws,
        json!({"event": "join_room", "data": {"roomId": "mix"}, "id": "j"}),
    )
    .await;
    assert_eq!(next(&mut ws, "message_history").await["data"], json!([]));
    assert_eq!(
        next(&mut ws, "room_users").await["data"],
        json!([{"userId": "raw", "username": "Raw"}])
    );
    assert_eq!(next(&mut ws, "ack").await["id"], "j");

    let mut sio = app.member("sio", "mix").await;
    assert_eq!(
        next(&mut ws, "user_joined").await["data"],
        json!({"roomId": "mix", "userId": "sio", "username": "sio"})
    );
    sio.say("mix", "from socket.io").await;
    assert_eq!(
        next(&mut ws, "new_message").await["data"]["message"],
        "from socket.io"
    );
    send(
        &mut ws,
        json!({"event": "typing", "data": {"roomId": "mix", "isTyping": true}}),
    )
    .await;
    assert_eq!(sio.event("user_typing").await["userId"], "raw");
    send(
        &mut ws,
        json!({"event": "send_message", "data": {"roomId": "mix", "message": "from raw"}, "id": 2}),
    )
    .await;
    let ack = next(&mut ws, "ack").await;
    assert_eq!(ack["data"]["success"], true);
    let seen = sio
        .event_where("new_message", |m| m["message"] == "from raw")
        .await;
    assert_eq!(seen["messageId"], ack["data"]["messageId"]);
    ws.close(None).await.unwrap();
    assert_eq!(sio.event("user_left").await["userId"], "raw");
}

#[tokio::test]
async fn bad_frames_get_errors_and_the_connection_stays_usable() {
    let app = spawn_app().await;
    let mut ws = connect(app.addr, "/").await;
    for bad in ["not json", "[1,2,3]", r#"{"data":{}}"#, r#"{"event":7}"#] {
        ws.send(Message::text(bad)).await.unwrap();
        assert_eq!(
            next(&mut ws, "error").await["data"]["code"],
            "invalid_payload",
            "{bad}"
        );
    }
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        next(&mut ws, "error").await["data"]["code"],
        "invalid_payload"
    );
    send(
        &mut ws,
        json!({"event": "join_room", "data": {"roomId": "r"}, "id": 9}),
    )
    .await;
    // The error event comes first, then the failed ack.
    assert_eq!(
        next(&mut ws, "error").await["data"],
        json!({"message": "Not authenticated", "code": "not_authenticated"})
    );
    let ack = next(&mut ws, "ack").await;
    assert_eq!(ack["data"]["error"]["code"], "not_authenticated");
    send(
        &mut ws,
        json!({"event": "authenticate", "data": {"userId": "u"}}),
    )
    .await;
    next(&mut ws, "authenticated").await;
    send(
        &mut ws,
        json!({"event": "join_room", "data": {"roomId": "r"}}),
    )
    .await;
    next(&mut ws, "room_users").await;
    send(
        &mut ws,
        json!({"event": "send_message", "data": {"roomId": "r", "message": ""}, "id": 3}),
    )
    .await;
    assert_eq!(
        next(&mut ws, "ack").await["data"]["error"]["code"],
        "invalid_payload"
    );
    send(
        &mut ws,
        json!({"event": "send_message", "data": {"roomId": "r", "message": "ok"}, "id": 4}),
    )
    .await;
    assert_eq!(next(&mut ws, "ack").await["data"]["success"], true);
    assert_eq!(app.stored_texts("r").await, ["ok"]);
}

#[tokio::test]
async fn oversized_frames_close_the_connection_only() {
    let app = spawn_app_with(&["--max-payload-bytes", "2000"]).await;
    let mut ws = connect(app.addr, "/ws").await;
    let big =
        json!({"event": "send_message", "data": {"roomId": "r", "message": "x".repeat(5000)}});
    let _ = ws.send(Message::text(big.to_string())).await;
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "connection not closed");
    let mut ok = connect(app.addr, "/ws").await;
    send(
        &mut ok,
        json!({"event": "authenticate", "data": {"userId": "u"}, "id": 1}),
    )
    .await;
    assert_eq!(next(&mut ok, "ack").await["data"]["success"], true);
}

#[tokio::test]
async fn server_pings_keep_the_connection_alive() {
    let app = spawn_app().await;
    let mut ws = connect(app.addr, "/ws").await;
    // The first server ping comes after the ping interval; tungstenite answers it.
    let got_ping = tokio::time::timeout(Duration::from_secs(40), async {
        loop {
            if let Some(Ok(Message::Ping(_))) = ws.next().await {
                return;
            }
        }
    })
    .await;
    assert!(got_ping.is_ok(), "no ping within 40 s");
}

#[tokio::test]
async fn a_disallowed_origin_is_refused() {
    let app = spawn_app_with(&["--cors-origin", "http://good.example"]).await;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/ws", app.addr),
    )
    .unwrap();
    req.headers_mut()
        .insert("origin", "http://evil.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/ws", app.addr),
    )
    .unwrap();
    req.headers_mut()
        .insert("origin", "http://good.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_ok());
}
