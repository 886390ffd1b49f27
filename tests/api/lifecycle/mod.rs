//! SPEC 10, the message lifecycle, black-box: edits, deletes, replies, reactions and read
//! receipts on Socket.IO and the raw WebSocket protocol, through REST, across a resume and
//! across two instances on Redis.
//!
//! Where each test lives: `events.rs` (Socket.IO: every change to every member, bad input),
//! `rest.rs` (the REST paths), `resume.rs` (a `since` resume), `raw.rs` (the raw WebSocket
//! protocol), `instances.rs` (two instances and the Redis history cache); the helpers they
//! share are here.

mod events;
mod instances;
mod raw;
mod rest;
mod resume;

use serde_json::{Value, json};

use crate::support::{Endpoint, SioClient};

const CHANGES: [&str; 4] = [
    "message_edited",
    "message_deleted",
    "reaction_updated",
    "read_receipt",
];

/// A REST call as `user` (AUTH_MODE=none: `X-User-Id`).
async fn rest(
    app: &Endpoint,
    method: &str,
    path: &str,
    user: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = reqwest::Client::new()
        .request(method, app.url(path))
        .header("x-user-id", user)
        .header("x-username", user);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.expect("http");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn history(app: &Endpoint, room: &str) -> Vec<Value> {
    let (status, body) = app
        .get(&format!("/api/chat/{room}/history?limit=1000"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["messages"].as_array().expect("messages").clone()
}

fn refused(ack: &Value, code: &str) {
    assert_eq!(ack["success"], false, "{ack}");
    assert_eq!(ack["error"]["code"], code, "{ack}");
}

async fn edit(c: &mut SioClient, room: &str, id: &Value, text: &str) -> Value {
    c.emit_ack(
        "edit_message",
        json!({"roomId": room, "messageId": id, "message": text}),
    )
    .await
}

async fn react(c: &mut SioClient, event: &str, room: &str, id: &Value, emoji: &str) -> Value {
    c.emit_ack(
        event,
        json!({"roomId": room, "messageId": id, "emoji": emoji}),
    )
    .await
}

async fn c_delete(c: &mut SioClient, room: &str, id: &Value) -> Value {
    c.emit_ack("delete_message", json!({"roomId": room, "messageId": id}))
        .await
}
