//! Acceptance behaviours every production store shows through the app (issue 6), shared by
//! `postgres.rs` and `mongo.rs`: each starts the app on its backend with `args`.

use std::time::{Duration, Instant};

use chat_service::domain::{MessageId, now_ms};
use serde_json::json;

use crate::support::{TcpProxy, TestApp, spawn_app_with};

/// A unique name for this run's rooms, users, schemas and databases.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", MessageId::generate(now_ms()))
}

/// Messages (with paging), a private direct room and an idempotency key survive a restart of
/// the app on the same database. Returns the restarted app.
pub async fn restart_keeps_messages_rooms_and_idempotency(args: &[&str]) -> TestApp {
    let app = spawn_app_with(args).await;
    let (room, a, b) = (unique("st-room-"), unique("st-a-"), unique("st-b-"));
    let (status, ready) = app.get("/ready").await;
    assert_eq!(status, 200, "{ready}");

    let mut alice = app.member(&a, &room).await;
    let first = alice
        .emit_ack(
            "send_message",
            json!({"roomId": room, "message": "before restart", "clientMessageId": "k1"}),
        )
        .await;
    assert_eq!(first["success"], true, "{first}");
    alice.say(&room, "second").await;
    let (status, _) = app
        .post(
            "/api/chat/rooms",
            &json!({"type": "direct", "participants": [a, b]}),
            &[("x-user-id", a.as_str())],
        )
        .await;
    assert_eq!(status, 201);
    drop(alice);

    let app = app.restart().await;
    assert_eq!(app.stored_texts(&room).await, ["before restart", "second"]);
    let newest = app
        .get(&format!("/api/chat/{room}/history?limit=1"))
        .await
        .1["messages"][0]["messageId"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, page) = app
        .get(&format!("/api/chat/{room}/history?limit=1&before={newest}"))
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["messages"][0]["messageId"], first["messageId"]);
    let mut alice = app.member(&a, &room).await;
    let again = alice
        .emit_ack(
            "send_message",
            json!({"roomId": room, "message": "before restart", "clientMessageId": "k1"}),
        )
        .await;
    assert_eq!(again, first, "the idempotency key survives the restart");
    assert_eq!(app.stored_texts(&room).await.len(), 2);
    let (_, body) = app
        .get_with("/api/chat/rooms", &[("x-user-id", b.as_str())])
        .await;
    assert_eq!(body["rooms"][0]["type"], "direct", "{body}");
    app
}

/// With the database behind `proxy` (which `args` point the app at): a cut makes sends fail
/// fast with `unavailable` and `/ready` 503 `store: down`; after the restore the app is ready
/// again by itself and stores. Returns the app.
pub async fn outage_fails_fast_and_heals(args: &[&str], proxy: &TcpProxy) -> TestApp {
    let app = spawn_app_with(args).await;
    let (room, user) = (unique("st-outage-"), unique("st-u-"));
    let mut alice = app.member(&user, &room).await;
    alice.say(&room, "before").await;

    proxy.cut();
    let started = Instant::now();
    let ack = alice
        .emit_ack("send_message", json!({"roomId": room, "message": "during"}))
        .await;
    assert_eq!(ack["success"], false, "{ack}");
    assert_eq!(ack["error"]["code"], "unavailable", "{ack}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "the send failed fast: {:?}",
        started.elapsed()
    );
    let (status, body) = app.get("/ready").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["dependencies"]["store"]["status"], "down", "{body}");

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = app.get("/ready").await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "store did not come back: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ack = alice
        .emit_ack("send_message", json!({"roomId": room, "message": "after"}))
        .await;
    assert_eq!(ack["success"], true, "{ack}");
    assert_eq!(app.stored_texts(&room).await, ["before", "after"]);
    app
}
