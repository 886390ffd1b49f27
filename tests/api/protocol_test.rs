//! The protocol-test server (`App::build_protocol_test`, what `examples/protocol_test.rs` runs
//! for the official socket.io-protocol and engine.io-protocol suites), frame by frame: each
//! behaviour those suites need, on both carriers where it differs.

use std::net::SocketAddr;

use chat_service::app::App;
use chat_service::config::Config;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::support::WAIT;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A protocol-test server on port 0 with the suites' settings; stopped when dropped.
struct Server {
    addr: SocketAddr,
    _data: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn server() -> Server {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().display().to_string();
    let cfg = Config::from_args([
        "protocol-test",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--ping-interval-ms",
        "300",
        "--ping-timeout-ms",
        "200",
        "--max-payload-bytes",
        "1000000",
        "--data-dir",
        &dir,
    ])
    .unwrap();
    let app = App::build_protocol_test(cfg).await.unwrap();
    let addr = app.local_addr();
    let task = tokio::spawn(async move {
        app.run_until_stopped(std::future::pending()).await.unwrap();
    });
    Server {
        addr,
        _data: data,
        task,
    }
}

/// A WebSocket on `path` (`socket.io` or `engine.io`) and its open packet.
async fn ws(addr: SocketAddr, path: &str) -> (Ws, Value) {
    let url = format!("ws://{addr}/{path}/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let open = next(&mut ws).await.expect("open packet");
    let open = serde_json::from_str(open.into_text().unwrap().strip_prefix('0').unwrap()).unwrap();
    (ws, open)
}

/// The next text or binary message, pings included; `None` once closed.
async fn next(ws: &mut Ws) -> Option<Message> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => return Some(m),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// The next message that is not a ping, as text (binary as `bin:<bytes>`).
async fn packet(ws: &mut Ws) -> String {
    loop {
        match next(ws).await.expect("a packet, not a close") {
            Message::Text(t) if t.as_str() == "2" => {}
            Message::Text(t) => return t.to_string(),
            Message::Binary(b) => return format!("bin:{:?}", b.as_ref()),
            _ => unreachable!(),
        }
    }
}

async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text.to_string())).await.unwrap();
}

/// A Socket.IO WebSocket connected to `/` (its CONNECT answer and `auth` event consumed).
async fn connected(addr: SocketAddr) -> Ws {
    let (mut ws, _) = ws(addr, "socket.io").await;
    send(&mut ws, "40").await;
    assert!(packet(&mut ws).await.starts_with("40{\"sid\":"));
    assert_eq!(packet(&mut ws).await, r#"42["auth",{}]"#);
    ws
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort();
    k
}

#[tokio::test]
async fn the_handshake_has_exactly_the_five_keys_and_the_suites_settings() {
    let server = server().await;
    let http = reqwest::Client::new();
    for path in ["socket.io", "engine.io"] {
        let body = http
            .get(format!(
                "http://{}/{path}/?EIO=4&transport=polling",
                server.addr
            ))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let open: Value = serde_json::from_str(body.strip_prefix('0').unwrap()).unwrap();
        let (_ws, ws_open) = ws(server.addr, path).await;
        for (open, upgrades) in [
            (open, serde_json::json!(["websocket"])),
            (ws_open, serde_json::json!([])),
        ] {
            assert_eq!(
                keys(&open),
                [
                    "maxPayload",
                    "pingInterval",
                    "pingTimeout",
                    "sid",
                    "upgrades"
                ]
            );
            assert_eq!(open["upgrades"], upgrades);
            assert_eq!(
                (
                    &open["pingInterval"],
                    &open["pingTimeout"],
                    &open["maxPayload"]
                ),
                (
                    &Value::from(300),
                    &Value::from(200),
                    &Value::from(1_000_000)
                )
            );
        }
    }
}

#[tokio::test]
async fn namespaces_slash_and_custom_take_any_auth_and_emit_it_others_are_refused() {
    let server = server().await;
    for (connect, answer, auth) in [
        ("40", "40{", r#"42["auth",{}]"#),
        (
            r#"40{"token":"123"}"#,
            "40{",
            r#"42["auth",{"token":"123"}]"#,
        ),
        ("40/custom,", "40/custom,{", r#"42/custom,["auth",{}]"#),
        (
            r#"40/custom,{"token":"abc"}"#,
            "40/custom,{",
            r#"42/custom,["auth",{"token":"abc"}]"#,
        ),
    ] {
        let (mut ws, _) = ws(server.addr, "socket.io").await;
        send(&mut ws, connect).await;
        let ack = packet(&mut ws).await;
        assert!(ack.starts_with(answer), "{connect}: {ack}");
        let sid: Value = serde_json::from_str(&ack[answer.len() - 1..]).unwrap();
        assert_eq!(keys(&sid), ["sid"]);
        assert_eq!(packet(&mut ws).await, auth, "{connect}");
    }
    let (mut ws, _) = ws(server.addr, "socket.io").await;
    send(&mut ws, "40/random").await;
    assert_eq!(
        packet(&mut ws).await,
        r#"44/random,{"message":"Invalid namespace"}"#
    );
}

#[tokio::test]
async fn leaving_a_namespace_keeps_the_session_pinged_and_the_other_namespace_connected() {
    let server = server().await;
    let mut ws = connected(server.addr).await;
    send(&mut ws, "40/custom").await;
    assert!(packet(&mut ws).await.starts_with("40/custom,{"));
    assert_eq!(packet(&mut ws).await, r#"42/custom,["auth",{}]"#);
    send(&mut ws, "41/custom").await;
    send(&mut ws, r#"42["message","to main",1,2]"#).await;
    assert_eq!(packet(&mut ws).await, r#"42["message-back","to main",1,2]"#);
    // Events to the namespace left are ignored.
    send(&mut ws, r#"42/custom,["message","gone"]"#).await;
    send(&mut ws, "41").await;
    // The Engine.IO session stays: the next message is the server's ping.
    match next(&mut ws).await {
        Some(Message::Text(t)) => assert_eq!(t.as_str(), "2"),
        other => panic!("expected a ping, got {other:?}"),
    }
    send(&mut ws, "3").await;
}

#[tokio::test]
async fn message_is_echoed_as_message_back_with_its_binary_attachments() {
    let server = server().await;
    let mut ws = connected(server.addr).await;
    send(&mut ws, r#"42["message",1,"2",{"3":[true]}]"#).await;
    assert_eq!(
        packet(&mut ws).await,
        r#"42["message-back",1,"2",{"3":[true]}]"#
    );

    let placeholders = r#"{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}"#;
    send(&mut ws, &format!(r#"452-["message",1,{placeholders}]"#)).await;
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    ws.send(Message::binary(vec![4u8, 5, 6])).await.unwrap();
    assert_eq!(
        packet(&mut ws).await,
        format!(r#"452-["message-back",1,{placeholders}]"#)
    );
    assert_eq!(packet(&mut ws).await, "bin:[1, 2, 3]");
    assert_eq!(packet(&mut ws).await, "bin:[4, 5, 6]");

    // Over long-polling the attachments are base64 `b` packets.
    let http = reqwest::Client::new();
    let base = format!("http://{}/socket.io/?EIO=4&transport=polling", server.addr);
    let open = http.get(&base).send().await.unwrap().text().await.unwrap();
    let open: Value = serde_json::from_str(&open[1..]).unwrap();
    let url = format!("{base}&sid={}", open["sid"].as_str().unwrap());
    let post = |body: String| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            http.post(url)
                .body(body)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let get = || async { http.get(&url).send().await.unwrap().text().await.unwrap() };
    assert_eq!(post("40".into()).await, "ok");
    assert!(get().await.starts_with("40{"));
    let event = r#"451-/custom,["message",{"_placeholder":true,"num":0}]"#;
    assert_eq!(post(format!("40/custom,\x1e{event}\x1ebAQID")).await, "ok");
    let mut packets = Vec::new();
    while packets.len() < 4 {
        packets.extend(
            get()
                .await
                .split('\x1e')
                .filter(|p| *p != "2")
                .map(str::to_string),
        );
    }
    assert!(packets[0].starts_with("40/custom,{"), "{packets:?}");
    assert_eq!(
        packets[1..],
        [
            r#"42/custom,["auth",{}]"#.to_string(),
            r#"451-/custom,["message-back",{"_placeholder":true,"num":0}]"#.to_string(),
            "bAQID".to_string(),
        ]
    );
}

#[tokio::test]
async fn message_with_ack_is_acked_with_its_arguments_binary_included() {
    let server = server().await;
    let mut ws = connected(server.addr).await;
    send(&mut ws, r#"42456["message-with-ack",1,"2",{"3":[false]}]"#).await;
    assert_eq!(packet(&mut ws).await, r#"43456[1,"2",{"3":[false]}]"#);

    let placeholders = r#"{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}"#;
    send(
        &mut ws,
        &format!(r#"452-789["message-with-ack",1,{placeholders}]"#),
    )
    .await;
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    ws.send(Message::binary(vec![4u8, 5, 6])).await.unwrap();
    assert_eq!(packet(&mut ws).await, format!("462-789[1,{placeholders}]"));
    assert_eq!(packet(&mut ws).await, "bin:[1, 2, 3]");
    assert_eq!(packet(&mut ws).await, "bin:[4, 5, 6]");

    // Broken packets close the connection, as socket.io-parser does.
    for broken in ["4abc", "42{}", r#"42abc["message-with-ack",1]"#] {
        let mut ws = connected(server.addr).await;
        send(&mut ws, broken).await;
        while next(&mut ws).await.is_some() {}
    }
}

#[tokio::test]
async fn engine_io_echoes_text_and_binary_messages_on_both_carriers() {
    let server = server().await;
    let (mut ws, _) = ws(server.addr, "engine.io").await;
    send(&mut ws, "4hello").await;
    assert_eq!(packet(&mut ws).await, "4hello");
    ws.send(Message::binary(vec![1u8, 2, 3, 4])).await.unwrap();
    assert_eq!(packet(&mut ws).await, "bin:[1, 2, 3, 4]");
    send(&mut ws, "1").await;
    while next(&mut ws).await.is_some() {}

    let http = reqwest::Client::new();
    let base = format!("http://{}/engine.io/?EIO=4&transport=polling", server.addr);
    let open = http.get(&base).send().await.unwrap().text().await.unwrap();
    let open: Value = serde_json::from_str(&open[1..]).unwrap();
    let url = format!("{base}&sid={}", open["sid"].as_str().unwrap());
    let res = http
        .post(&url)
        .body("4hello\x1e4test2\x1ebAQIDBA==")
        .send()
        .await
        .unwrap();
    assert_eq!(res.text().await.unwrap(), "ok");
    let polled = http.get(&url).send().await.unwrap().text().await.unwrap();
    assert_eq!(polled, "4hello\x1e4test2\x1ebAQIDBA==");
    // A packet of no Engine.IO type ends the session.
    let res = http.post(&url).body("abc").send().await.unwrap();
    assert_eq!(res.status().as_u16(), 400);
    assert_eq!(http.get(&url).send().await.unwrap().status().as_u16(), 400);
}
