//! The Engine.IO v4 / Socket.IO v5 wire of a session opened directly on a WebSocket (served by
//! `transport/socketio/codec.rs` on the session engine), frame by frame. The socket.io-client e2e suite (websocket
//! mode) covers the same sessions through the official client.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::{WAIT, spawn_app, spawn_app_with};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn open(addr: std::net::SocketAddr) -> (Ws, Value) {
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    let first = next_text(&mut ws).await.expect("open packet");
    let open = first.strip_prefix('0').expect("an Engine.IO open packet");
    (ws, serde_json::from_str(open).expect("open packet JSON"))
}

/// The next text frame, skipping server pings; `None` when the server closed.
async fn next_text(ws: &mut Ws) -> Option<String> {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame or a close in time");
        match frame {
            Some(Ok(Message::Text(t))) if t.as_str() == "2" => {}
            Some(Ok(Message::Text(t))) => return Some(t.to_string()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text.to_string()))
        .await
        .expect("send");
}

/// `42["name",data]` -> (name, data).
fn event(frame: &str) -> (String, Value) {
    let args: Vec<Value> =
        serde_json::from_str(frame.strip_prefix("42").expect("an EVENT")).expect("EVENT arguments");
    (args[0].as_str().unwrap().to_string(), args[1].clone())
}

#[tokio::test]
async fn the_open_packet_namespaces_and_events_before_connect() {
    let app = spawn_app().await;
    let (mut ws, open) = open(app.addr).await;
    assert_eq!(open["sid"].as_str().map(str::len), Some(20), "{open}");
    assert_eq!(open["upgrades"], json!([]));
    assert_eq!(open["pingInterval"], 25000);
    assert_eq!(open["pingTimeout"], 20000);
    assert_eq!(open["maxPayload"], 1_000_000);

    // Before the namespace CONNECT an event is ignored (no error, no ack) ...
    send(
        &mut ws,
        r#"421["authenticate",{"userId":"early","username":"e"}]"#,
    )
    .await;
    // ... and only "/" exists: the next frame is the refusal of /admin.
    send(&mut ws, "40/admin,").await;
    assert_eq!(
        next_text(&mut ws).await.unwrap(),
        r#"44/admin,{"message":"Invalid namespace"}"#
    );

    // CONNECT with handshake auth: the ack, then `authenticated`.
    send(&mut ws, r#"40{"userId":"wire-user","username":"Wire"}"#).await;
    let ack = next_text(&mut ws).await.unwrap();
    let sid: Value = serde_json::from_str(ack.strip_prefix("40").unwrap()).unwrap();
    assert_eq!(sid["sid"].as_str().map(str::len), Some(20), "{ack}");
    assert_eq!(
        event(&next_text(&mut ws).await.unwrap()),
        (
            "authenticated".into(),
            json!({"userId": "wire-user", "username": "Wire"})
        )
    );

    // An event with an ack id gets `43<id>[body]`; a second CONNECT changes nothing.
    send(&mut ws, "40").await;
    send(&mut ws, r#"427["join_room",{"roomId":"wire-room"}]"#).await;
    let mut frames = Vec::new();
    while let Some(f) = next_text(&mut ws).await {
        let done = f.starts_with("437");
        frames.push(f);
        if done {
            break;
        }
    }
    let names: Vec<String> = frames
        .iter()
        .filter(|f| f.starts_with("42"))
        .map(|f| event(f).0)
        .collect();
    assert_eq!(names, ["message_history", "room_users"], "{frames:?}");
    let ack: Value = serde_json::from_str(frames.last().unwrap().strip_prefix("437").unwrap())
        .expect("ack arguments");
    assert_eq!(ack, json!([{"success": true, "roomId": "wire-room"}]));
}

#[tokio::test]
async fn a_binary_event_is_refused_and_the_session_goes_on() {
    let app = spawn_app().await;
    let mut watcher = app.member("bin-watcher", "bin-room").await;
    let (mut ws, _) = open(app.addr).await;
    send(&mut ws, r#"40{"userId":"bin-user","username":"B"}"#).await;
    assert!(next_text(&mut ws).await.unwrap().starts_with("40"));
    assert_eq!(event(&next_text(&mut ws).await.unwrap()).0, "authenticated");
    send(&mut ws, r#"427["join_room",{"roomId":"bin-room"}]"#).await;
    while !next_text(&mut ws).await.unwrap().starts_with("437") {}

    send(
        &mut ws,
        r#"451-3["send_message",{"roomId":"bin-room","message":{"_placeholder":true,"num":0}}]"#,
    )
    .await;
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let (name, data) = event(&next_text(&mut ws).await.unwrap());
    assert_eq!(
        (name.as_str(), &data["code"]),
        ("error", &json!("invalid_payload"))
    );
    let ack = next_text(&mut ws).await.unwrap();
    let body: Value = serde_json::from_str(ack.strip_prefix("433").unwrap()).unwrap();
    assert_eq!(body[0]["success"], false);
    assert_eq!(body[0]["error"]["code"], "invalid_payload");

    // Nothing was stored or delivered; the next message is.
    send(
        &mut ws,
        r#"424["send_message",{"roomId":"bin-room","message":"after binary"}]"#,
    )
    .await;
    assert_eq!(
        watcher.event("new_message").await["message"],
        "after binary"
    );
    assert_eq!(app.stored_texts("bin-room").await, ["after binary"]);
}

#[tokio::test]
async fn a_broken_packet_closes_the_session_and_disconnect_leaves_the_rooms() {
    let app = spawn_app().await;
    let mut watcher = app.member("wire-watcher", "wire-room").await;
    for (i, last) in [r#"42{"roomId":"not an array"}"#, "41"].iter().enumerate() {
        let user = format!("wire-leaver-{i}");
        let (mut ws, _) = open(app.addr).await;
        send(
            &mut ws,
            &format!(r#"40{{"userId":"{user}","username":"L"}}"#),
        )
        .await;
        assert!(next_text(&mut ws).await.unwrap().starts_with("40"));
        send(&mut ws, r#"421["join_room",{"roomId":"wire-room"}]"#).await;
        while !next_text(&mut ws).await.unwrap().starts_with("431") {}
        watcher
            .event_where("user_joined", |e| e["userId"] == user.as_str())
            .await;

        send(&mut ws, last).await;
        // The chat forgets the connection: user_left for the others. A broken packet closes
        // the socket; `41` leaves the namespace only, the client's `1` then closes it.
        watcher
            .event_where("user_left", |e| e["userId"] == user.as_str())
            .await;
        if *last == "41" {
            send(&mut ws, "1").await;
        }
        while next_text(&mut ws).await.is_some() {}
    }
}

#[tokio::test]
async fn a_client_that_stops_answering_pings_is_closed_and_one_that_answers_stays() {
    let app = spawn_app_with(&["--ping-interval-ms", "150", "--ping-timeout-ms", "150"]).await;
    // The support client answers every ping.
    let mut watcher = app.member("hb-watcher", "hb-room").await;
    let (mut ws, open) = open(app.addr).await;
    assert_eq!(
        (open["pingInterval"].clone(), open["pingTimeout"].clone()),
        (json!(150), json!(150))
    );
    send(&mut ws, r#"40{"userId":"hb-silent","username":"S"}"#).await;
    assert!(next_text(&mut ws).await.unwrap().starts_with("40"));
    send(&mut ws, r#"421["join_room",{"roomId":"hb-room"}]"#).await;
    while !next_text(&mut ws).await.unwrap().starts_with("431") {}
    watcher
        .event_where("user_joined", |e| e["userId"] == "hb-silent")
        .await;

    // This one never answers: pings arrive, then the server closes it.
    let mut pings = 0;
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a ping or the close in time");
        match frame {
            Some(Ok(Message::Text(t))) if t.as_str() == "2" => pings += 1,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
    assert!(pings >= 1, "closed without a ping");
    watcher
        .event_where("user_left", |e| e["userId"] == "hb-silent")
        .await;
    // The watcher has lived through several intervals by now and still works.
    let ack = watcher.say("hb-room", "still here").await;
    assert_eq!(ack["success"], true, "{ack}");
}

/// Issue 15.5: `41` leaves the main namespace (the chat forgets the connection: its rooms see
/// it leave) but the Engine.IO session stays, pinged, and can connect again.
#[tokio::test]
async fn leaving_the_main_namespace_keeps_the_engine_io_session_alive() {
    let app = spawn_app_with(&["--ping-interval-ms", "300", "--ping-timeout-ms", "200"]).await;
    let mut watcher = app.member("nsp-watcher", "nsp-room").await;
    let (mut ws, _) = open(app.addr).await;
    send(&mut ws, r#"40{"userId":"nsp-leaver","username":"N"}"#).await;
    assert!(next_text(&mut ws).await.unwrap().starts_with("40"));
    send(&mut ws, r#"421["join_room",{"roomId":"nsp-room"}]"#).await;
    while !next_text(&mut ws).await.unwrap().starts_with("431") {}

    send(&mut ws, "41").await;
    watcher
        .event_where("user_left", |e| e["userId"] == "nsp-leaver")
        .await;
    // Pings go on, answered, past several intervals.
    let mut pings = 0;
    while pings < 3 {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("a ping") {
            Some(Ok(Message::Text(t))) if t.as_str() == "2" => {
                pings += 1;
                send(&mut ws, "3").await;
            }
            other => panic!("expected pings, got {other:?}"),
        }
    }
    // A new CONNECT is a new connection for the chat.
    send(&mut ws, r#"40{"userId":"nsp-leaver","username":"N"}"#).await;
    assert!(next_text(&mut ws).await.unwrap().starts_with("40{\"sid\""));
    send(&mut ws, r#"422["join_room",{"roomId":"nsp-room"}]"#).await;
    while !next_text(&mut ws).await.unwrap().starts_with("432") {}
    watcher
        .event_where("user_joined", |e| e["userId"] == "nsp-leaver")
        .await;
}

/// Issue 15.5: binary attachment packets are refused cleanly: a BINARY_EVENT (`45x-`) gets
/// `invalid_payload` once its attachments are in (they are dropped), a BINARY_ACK (`46x-`) is
/// ignored with its attachments, the session goes on; a text packet where an attachment was
/// announced breaks the protocol and closes the session.
#[tokio::test]
async fn binary_attachment_packets_are_refused_cleanly() {
    let app = spawn_app().await;
    let mut watcher = app.member("att-watcher", "att-room").await;
    let (mut ws, _) = open(app.addr).await;
    send(&mut ws, r#"40{"userId":"att-user","username":"A"}"#).await;
    assert!(next_text(&mut ws).await.unwrap().starts_with("40"));
    send(&mut ws, r#"421["join_room",{"roomId":"att-room"}]"#).await;
    while !next_text(&mut ws).await.unwrap().starts_with("431") {}

    let ph = |n: u8| format!(r#"{{"_placeholder":true,"num":{n}}}"#);
    send(
        &mut ws,
        &format!(
            r#"452-3["send_message",{{"roomId":"att-room","message":{}}},{}]"#,
            ph(0),
            ph(1)
        ),
    )
    .await;
    ws.send(Message::binary(vec![1u8])).await.unwrap();
    ws.send(Message::binary(vec![2u8])).await.unwrap();
    send(&mut ws, &format!("461-9[{}]", ph(0))).await;
    ws.send(Message::binary(vec![3u8])).await.unwrap();
    send(
        &mut ws,
        r#"424["send_message",{"roomId":"att-room","message":"after binary"}]"#,
    )
    .await;
    let mut frames = Vec::new();
    while !frames.last().is_some_and(|f: &String| f.starts_with("434")) {
        frames.push(next_text(&mut ws).await.expect("the session goes on"));
    }
    let errors: Vec<Value> = frames
        .iter()
        .filter(|f| f.starts_with("42[\"error\""))
        .map(|f| event(f).1)
        .collect();
    assert_eq!(errors.len(), 1, "{frames:?}");
    assert_eq!(errors[0]["code"], "invalid_payload");
    let refused = frames.iter().find(|f| f.starts_with("433")).expect("ack 3");
    assert!(refused.contains(r#""success":false"#), "{refused}");
    assert_eq!(
        watcher.event("new_message").await["message"],
        "after binary"
    );
    assert_eq!(app.stored_texts("att-room").await, ["after binary"]);

    // An attachment announced, a text packet instead: the session ends, cleanly.
    send(
        &mut ws,
        &format!(
            r#"451-["send_message",{{"roomId":"att-room","message":{}}}]"#,
            ph(0)
        ),
    )
    .await;
    send(
        &mut ws,
        r#"42["send_message",{"roomId":"att-room","message":"not an attachment"}]"#,
    )
    .await;
    watcher
        .event_where("user_left", |e| e["userId"] == "att-user")
        .await;
    while next_text(&mut ws).await.is_some() {}
    assert_eq!(app.stored_texts("att-room").await, ["after binary"]);
}
