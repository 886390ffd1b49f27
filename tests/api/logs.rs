//! Logs of the real binary (`LOG_FORMAT`, `RUST_LOG`): a short chat over both socket
//! transports and REST with a JWT, a SIGTERM, then everything the process wrote on stderr.
//! Both formats carry ids, never tokens, secrets or message text; `json` is one JSON object
//! per line with fixed keys.

use std::process::Stdio;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::auth::{SECRET, hs256, now};
use crate::support::{SioClient, unique};

const REDIS_PASSWORD: &str = "redis-pass-123";
const BAD_TOKEN: &str = "bad.token.value-xyz";

/// What one run left behind: the ids it used, the secrets and texts it sent, and the logs.
struct LoggedChat {
    user: String,
    room: String,
    secrets: Vec<String>,
    logs: String,
}

/// Starts the binary (AUTH_MODE=jwt, embedded store) with `env` on top, chats, stops it with
/// SIGTERM and returns its stderr.
async fn logged_chat(env: &[(&str, &str)]) -> LoggedChat {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-service"));
    cmd.env_remove("RUST_LOG")
        .env_remove("LOG_FORMAT")
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .env("DATA_DIR", dir.path())
        .env("AUTH_MODE", "jwt")
        .env("JWT_SECRET", SECRET)
        .env("REDIS_PASSWORD", REDIS_PASSWORD);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Read stderr from the start, so a chatty RUST_LOG never fills the pipe.
    let mut stderr = child.stderr.take().unwrap();
    let logs = tokio::spawn(async move {
        let mut logs = String::new();
        stderr.read_to_string(&mut logs).await.unwrap();
        logs
    });
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().unwrap();
    let addr = line.trim_start_matches("listening on http://").to_string();

    let user = unique("logger");
    let room = unique("logs");
    let token = hs256(json!({"sub": user, "exp": now() + 600}), SECRET);
    let ws_text = "a-very-private-message-body-42";
    let sio_text = "another-private-text-over-socketio-77";

    // Raw WebSocket: a good token, a bad one, a join and a send with an ack.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    for frame in [
        json!({"event": "authenticate", "data": {"token": token}}),
        json!({"event": "authenticate", "data": {"token": BAD_TOKEN}}),
        json!({"event": "join_room", "data": {"roomId": room}}),
        json!({"event": "send_message", "data": {"roomId": room, "message": ws_text}, "id": 1}),
    ] {
        ws.send(WsMessage::text(frame.to_string())).await.unwrap();
    }
    loop {
        let frame = ws.next().await.unwrap().unwrap();
        if frame.to_text().unwrap_or("").contains(r#""event":"ack""#) {
            break;
        }
    }
    drop(ws);

    // Socket.IO with the token in the handshake, and REST with it as a Bearer.
    let mut sio = SioClient::connect(addr.parse().unwrap(), Some(json!({"token": token}))).await;
    assert_eq!(sio.event("authenticated").await["userId"], user.as_str());
    sio.join(&room).await;
    sio.say(&room, sio_text).await;
    let history: Value = reqwest::Client::new()
        .get(format!("http://{addr}/api/chat/{room}/history"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["messages"][1]["message"], sio_text, "{history}");
    sio.disconnect();

    // Stop it (SIGTERM as in production) and read everything it logged.
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(child.wait().await.unwrap().success());
    LoggedChat {
        user,
        room,
        secrets: [&token, BAD_TOKEN, ws_text, sio_text, SECRET, REDIS_PASSWORD]
            .map(str::to_string)
            .to_vec(),
        logs: logs.await.unwrap(),
    }
}

impl LoggedChat {
    fn assert_no_secret(&self) {
        for secret in &self.secrets {
            assert!(
                !self.logs.contains(secret.as_str()),
                "{secret} appears in the logs:\n{}",
                self.logs
            );
        }
    }
}

#[tokio::test]
async fn default_logs_are_text_and_carry_no_token_password_or_message_body() {
    let run = logged_chat(&[]).await;
    assert!(
        run.logs.contains(" INFO ") && run.logs.contains("listening"),
        "expected the human-readable start-up line: {}",
        run.logs
    );
    assert!(
        !run.logs.trim_start().starts_with('{'),
        "text by default: {}",
        run.logs
    );
    run.assert_no_secret();
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_ids_and_no_secrets() {
    let run = logged_chat(&[("LOG_FORMAT", "json"), ("RUST_LOG", "debug")]).await;
    let lines: Vec<serde_json::Map<String, Value>> = run
        .logs
        .lines()
        .map(|line| match serde_json::from_str(line) {
            Ok(Value::Object(obj)) => obj,
            _ => panic!("not a JSON object: {line:?}\nin:\n{}", run.logs),
        })
        .collect();
    assert!(lines.len() > 10, "debug logs expected:\n{}", run.logs);
    for line in &lines {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(
                line.get(key).is_some_and(Value::is_string),
                "{key} missing or not a string: {line:?}"
            );
        }
    }
    let messages: Vec<&str> = lines
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert!(
        messages.contains(&"chat-service listening") && messages.contains(&"stopped"),
        "start and stop logged: {messages:?}"
    );
    assert!(lines.iter().any(|l| l["level"] == "DEBUG"));
    // Ids are structured fields (whatever their key), not parts of the message text.
    let has_field = |id: &str| {
        lines
            .iter()
            .any(|l| l.iter().any(|(k, v)| k != "message" && v == id))
    };
    assert!(has_field(&run.user), "no field carries the user id");
    assert!(has_field(&run.room), "no field carries the room id");
    // Every close with its reason, and every refusal with its code, at debug.
    let line = |message: &str, field: &str, value: &str| {
        lines.iter().any(|l| {
            l["message"] == message
                && l["level"] == "DEBUG"
                && l.iter().any(|(k, v)| k == field && v == value)
        })
    };
    assert!(
        line("connection closed", "reason", "client"),
        "a close with its reason: {messages:?}"
    );
    assert!(
        line("connection closed", "transport", "raw")
            && line("connection closed", "transport", "socketio"),
        "both sessions' closes: {messages:?}"
    );
    assert!(
        line("event refused", "code", "auth_failed"),
        "the bad token's refusal: {messages:?}"
    );
    run.assert_no_secret();
}

#[tokio::test]
async fn a_bad_log_format_stops_start_up_naming_the_variable() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-service"))
        .env("LOG_FORMAT", "yaml")
        .env("PORT", "0")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("LOG_FORMAT"), "{stderr}");
    assert!(out.stdout.is_empty(), "it never listened");
}
