//! SPEC 3: every validation rule refuses with `invalid_payload` (error event + failed ack),
//! stores nothing, broadcasts nothing, and leaves the connection usable.

use serde_json::{Value, json};

use crate::support::spawn_app_with;

#[tokio::test]
async fn bad_payloads_are_refused_and_nothing_is_stored_or_broadcast() {
    let app = spawn_app_with(&["--max-message-length", "10"]).await;
    let mut a = app.member("a", "v").await;
    let mut b = app.member("b", "v").await;
    a.event("user_joined").await;
    let long_room = "r".repeat(129);
    let cases: Vec<(&str, Value)> = vec![
        ("join_room", json!({"roomId": ""})),
        ("join_room", json!({"roomId": long_room})),
        ("join_room", json!({"roomId": "has space"})),
        ("join_room", json!({"roomId": "a/b"})),
        ("join_room", json!({"roomId": 42})),
        ("join_room", json!({})),
        ("join_room", json!("v")),
        ("join_room", json!(7)),
        ("join_room", Value::Null),
        ("join_room", json!({"roomId": "v", "since": "not-an-id"})),
        ("leave_room", json!({"roomId": "bad room"})),
        ("send_message", json!({"roomId": "v", "message": ""})),
        (
            "send_message",
            json!({"roomId": "v", "message": "   \n\t "}),
        ),
        ("send_message", json!({"roomId": "v", "message": 5})),
        ("send_message", json!({"roomId": "v", "message": ["x"]})),
        (
            "send_message",
            json!({"roomId": "v", "message": {"text": "x"}}),
        ),
        ("send_message", json!({"roomId": "v"})),
        (
            "send_message",
            json!({"roomId": "v", "message": "12345678901"}),
        ),
        (
            "send_message",
            json!({"roomId": "v", "message": "😀".repeat(11)}),
        ),
        (
            "send_message",
            json!({"roomId": "v", "message": "ok", "messageType": "system"}),
        ),
        (
            "send_message",
            json!({"roomId": "v", "message": "ok", "messageType": "video"}),
        ),
        (
            "send_message",
            json!({"roomId": "v", "message": "bell\u{7}"}),
        ),
        (
            "send_message",
            json!({"roomId": "v", "message": "ok", "clientMessageId": ""}),
        ),
        ("send_message", json!("just a string")),
        ("typing", json!({"roomId": "v", "isTyping": "yes"})),
        ("typing", json!({"roomId": "v"})),
        ("authenticate", json!({"userId": ""})),
        ("authenticate", json!({"userId": {"nested": true}})),
    ];
    for (event, data) in &cases {
        let ack = a.emit_ack(event, data.clone()).await;
        assert_eq!(ack["success"], false, "{event} {data} was accepted: {ack}");
        assert_eq!(
            ack["error"]["code"], "invalid_payload",
            "{event} {data}: {ack}"
        );
        assert!(
            ack["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        let err = a.event("error").await;
        assert_eq!(err["code"], "invalid_payload");
        assert_eq!(err["message"], ack["error"]["message"]);
    }
    // Exactly at the limit, counted in characters (not bytes), passes.
    a.say("v", &"😀".repeat(10)).await;
    a.say("v", "still ok").await;
    assert_eq!(
        app.stored_texts("v").await,
        ["😀".repeat(10), "still ok".to_string()]
    );
    // b saw only the two valid messages.
    assert_eq!(b.event("new_message").await["message"], "😀".repeat(10));
    assert_eq!(b.event("new_message").await["message"], "still ok");
    assert!(b.received("new_message").is_empty());
    assert!(b.received("user_typing").is_empty());
}

#[tokio::test]
async fn an_oversized_frame_is_refused_and_the_service_is_unaffected() {
    let app = spawn_app_with(&["--max-payload-bytes", "2000"]).await;
    let mut a = app.member("a", "big").await;
    a.emit(
        "send_message",
        json!({"roomId": "big", "message": "x".repeat(10_000)}),
    );
    a.closed().await;
    assert!(app.stored_texts("big").await.is_empty());
    let mut b = app.member("b", "big").await;
    b.say("big", "small is fine").await;
    assert_eq!(app.stored_texts("big").await, ["small is fine"]);
}
