//! SPEC 6: messages and rooms survive a restart; acks come only after the durable write;
//! graceful shutdown finishes in-flight writes.

use serde_json::json;

use crate::support::spawn_app;

#[tokio::test]
async fn messages_rooms_and_idempotency_survive_a_restart() {
    let app = spawn_app().await;
    let mut a = app.member("a", "keep").await;
    let first = a
        .emit_ack(
            "send_message",
            json!({"roomId": "keep", "message": "before restart", "clientMessageId": "k1"}),
        )
        .await;
    a.say("keep", "second").await;
    let (status, _) = app
        .post(
            "/api/chat/rooms",
            &json!({"type": "direct", "participants": ["a", "b"]}),
            &[("x-user-id", "a")],
        )
        .await;
    assert_eq!(status, 201);
    drop(a);

    let app = app.restart().await;
    assert_eq!(app.stored_texts("keep").await, ["before restart", "second"]);
    let mut b = app.user("b").await;
    let (history, _) = b.join("keep").await;
    assert_eq!(history[0]["messageId"], first["messageId"]);
    assert_eq!(history[0]["timestamp"], first["timestamp"]);
    // The idempotency key is durable too.
    let mut a = app.member("a", "keep").await;
    let again = a
        .emit_ack(
            "send_message",
            json!({"roomId": "keep", "message": "before restart", "clientMessageId": "k1"}),
        )
        .await;
    assert_eq!(again, first);
    let (_, body) = app.get_with("/api/chat/rooms", &[("x-user-id", "b")]).await;
    assert_eq!(body["rooms"][0]["type"], "direct");
}

#[tokio::test]
async fn graceful_shutdown_keeps_every_acknowledged_message() {
    let mut app = crate::support::spawn_app_with(&[
        "--rate-limit-per-sec",
        "0",
        "--event-rate-limit-per-sec",
        "0",
    ])
    .await;
    let mut a = app.member("a", "drain").await;
    // Pipeline many sends, then stop while they are in flight (the first one has reached the
    // server; most of the rest are queued or on the wire).
    let mut acks: Vec<_> = (0..200)
        .map(|i| {
            a.emit_with_ack(
                "send_message",
                json!({"roomId": "drain", "message": format!("m{i}")}),
            )
        })
        .collect();
    let first = acks.remove(0).await.unwrap();
    assert_eq!(first["success"], true);
    app.stop().await;
    let mut acked = vec![first["messageId"].as_str().unwrap().to_string()];
    for ack in acks {
        if let Ok(ack) = ack.await
            && ack["success"] == true
        {
            acked.push(ack["messageId"].as_str().unwrap().to_string());
        }
    }
    a.closed().await;
    let app = app.restart().await;
    let (_, body) = app.get("/api/chat/drain/history?limit=1000").await;
    let stored: Vec<String> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["messageId"].as_str().unwrap().to_string())
        .collect();
    for id in &acked {
        assert!(stored.contains(id), "acked message {id} was lost");
    }
    // What was stored is a prefix of what was sent, in order: nothing half-way, no gaps.
    let texts: Vec<&str> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..texts.len()).map(|i| format!("m{i}")).collect();
    assert_eq!(texts, expected);
    eprintln!(
        "acked {} of 200 before shutdown, stored {}",
        acked.len(),
        texts.len()
    );
}
