//! Every client and server event of SPEC 2 with its exact payload.

use serde_json::{Value, json};

use crate::support::{keys, spawn_app};

#[tokio::test]
async fn authenticate_join_send_and_receive_with_exact_payloads() {
    let app = spawn_app().await;
    let mut alice = app.client().await;
    let ack = alice
        .emit_ack(
            "authenticate",
            json!({"userId": "u-alice", "username": "alice"}),
        )
        .await;
    assert_eq!(
        ack,
        json!({"success": true, "userId": "u-alice", "username": "alice"})
    );
    assert_eq!(
        alice.event("authenticated").await,
        json!({"userId": "u-alice", "username": "alice"})
    );
    let (history, users) = alice.join("room-1").await;
    assert_eq!(history, json!([]));
    assert_eq!(users, json!([{"userId": "u-alice", "username": "alice"}]));

    let mut bob = app.user("u-bob").await;
    let (_, users) = bob.join("room-1").await;
    assert_eq!(
        users,
        json!([{"userId": "u-alice", "username": "alice"}, {"userId": "u-bob", "username": "u-bob"}])
    );
    assert_eq!(
        alice.event("user_joined").await,
        json!({"roomId": "room-1", "userId": "u-bob", "username": "u-bob"})
    );

    let ack = alice
        .emit_ack(
            "send_message",
            json!({"roomId": "room-1", "message": "Hello!"}),
        )
        .await;
    assert_eq!(keys(&ack), ["messageId", "success", "timestamp"]);
    for client in [&mut alice, &mut bob] {
        let msg = client.event("new_message").await;
        assert_eq!(
            keys(&msg),
            [
                "message",
                "messageId",
                "messageType",
                "roomId",
                "timestamp",
                "userId",
                "username"
            ]
        );
        assert_eq!(msg["messageId"], ack["messageId"]);
        assert_eq!(msg["timestamp"], ack["timestamp"]);
        assert!(msg["timestamp"].is_u64());
        assert_eq!(msg["message"], "Hello!");
        assert_eq!(msg["messageType"], "text");
        assert_eq!(msg["userId"], "u-alice");
        assert_eq!(msg["username"], "alice");
        assert_eq!(msg["roomId"], "room-1");
    }
    let ack = bob
        .emit_ack(
            "send_message",
            json!({"roomId": "room-1", "message": "pic.png", "messageType": "image"}),
        )
        .await;
    assert_eq!(ack["success"], true);
    assert_eq!(alice.event("new_message").await["messageType"], "image");
}

#[tokio::test]
async fn every_event_before_authenticate_is_refused_and_the_connection_stays_usable() {
    let app = spawn_app().await;
    let mut c = app.client().await;
    for (event, data) in [
        ("join_room", json!({"roomId": "r"})),
        ("leave_room", json!({"roomId": "r"})),
        ("send_message", json!({"roomId": "r", "message": "hi"})),
        ("typing", json!({"roomId": "r", "isTyping": true})),
    ] {
        let ack = c.emit_ack(event, data).await;
        assert_eq!(
            ack,
            json!({"success": false, "error": {"code": "not_authenticated", "message": "Not authenticated"}}),
            "{event}"
        );
        assert_eq!(
            c.event("error").await,
            json!({"message": "Not authenticated", "code": "not_authenticated"})
        );
    }
    // An event without an ack still gets the error event.
    c.emit("join_room", json!({"roomId": "r"}));
    assert_eq!(c.event("error").await["code"], "not_authenticated");
    let ack = c
        .emit_ack("authenticate", json!({"userId": "u1", "username": "one"}))
        .await;
    assert_eq!(ack["success"], true);
    c.join("r").await;
    assert!(app.stored_texts("r").await.is_empty());
}

#[tokio::test]
async fn joining_twice_is_harmless() {
    let app = spawn_app().await;
    let mut a = app.member("a", "twice").await;
    let mut b = app.member("b", "twice").await;
    a.event("user_joined").await;
    let (_, users) = b.join("twice").await;
    assert_eq!(users.as_array().unwrap().len(), 2);
    b.say("twice", "after second join").await;
    // The message is the barrier: by then a second user_joined would have arrived.
    a.event("new_message").await;
    assert!(a.received("user_joined").is_empty());
    // b is still a member once, and gets each message once.
    b.event("new_message").await;
    a.say("twice", "second").await;
    assert_eq!(b.event("new_message").await["message"], "second");
    assert!(b.received("new_message").is_empty());
}

#[tokio::test]
async fn typing_reaches_other_members_only() {
    let app = spawn_app().await;
    let mut a = app.member("a", "t").await;
    let mut b = app.member("b", "t").await;
    a.event("user_joined").await;
    let ack = a
        .emit_ack("typing", json!({"roomId": "t", "isTyping": true}))
        .await;
    assert_eq!(ack, json!({"success": true}));
    assert_eq!(
        b.event("user_typing").await,
        json!({"roomId": "t", "userId": "a", "username": "a", "isTyping": true})
    );
    a.emit_ack("typing", json!({"roomId": "t", "isTyping": false}))
        .await;
    assert_eq!(b.event("user_typing").await["isTyping"], false);
    // Barrier: a message both receive; the typer never got its own typing events.
    b.say("t", "x").await;
    a.event("new_message").await;
    assert!(a.received("user_typing").is_empty());
}

#[tokio::test]
async fn typing_not_renewed_expires_as_false() {
    let app = spawn_app().await;
    let mut a = app.member("a", "exp").await;
    let mut b = app.member("b", "exp").await;
    a.emit_ack("typing", json!({"roomId": "exp", "isTyping": true}))
        .await;
    assert_eq!(b.event("user_typing").await["isTyping"], true);
    let started = std::time::Instant::now();
    // The expiry comes from the server after ~10 s; wait for the event itself.
    let expired = b
        .event_within("user_typing", |_| true, std::time::Duration::from_secs(15))
        .await;
    assert_eq!(
        expired,
        json!({"roomId": "exp", "userId": "a", "username": "a", "isTyping": false})
    );
    assert!(started.elapsed() >= std::time::Duration::from_secs(8));
}

#[tokio::test]
async fn leave_and_disconnect_send_user_left_once_per_user() {
    let app = spawn_app().await;
    let mut a = app.member("a", "l").await;
    let a2 = app.member("a", "l").await; // second connection of the same user
    let mut b = app.member("b", "l").await;
    a.event("user_joined").await; // b
    let ack = a.emit_ack("leave_room", json!({"roomId": "l"})).await;
    assert_eq!(ack, json!({"success": true, "roomId": "l"}));
    // a is still in the room through a2: no user_left yet. Barrier: a message from b.
    b.say("l", "still here?").await;
    b.event("new_message").await;
    assert!(b.received("user_left").is_empty());
    // a (first connection) left: it no longer receives room messages.
    assert!(a.received("new_message").is_empty());
    a2.disconnect();
    assert_eq!(
        b.event("user_left").await,
        json!({"roomId": "l", "userId": "a", "username": "a"})
    );
    let (_, users) = b.join("l").await;
    assert_eq!(users, json!([{"userId": "b", "username": "b"}]));
}

#[tokio::test]
async fn non_members_cannot_send_or_type() {
    let app = spawn_app().await;
    let mut a = app.user("a").await;
    for (event, data) in [
        ("send_message", json!({"roomId": "closed", "message": "hi"})),
        ("typing", json!({"roomId": "closed", "isTyping": true})),
    ] {
        let ack = a.emit_ack(event, data).await;
        assert_eq!(ack["error"]["code"], "forbidden", "{event}");
        assert_eq!(a.event("error").await["code"], "forbidden");
    }
    assert!(app.stored_texts("closed").await.is_empty());
}

#[tokio::test]
async fn events_of_one_connection_are_handled_in_arrival_order() {
    let app = crate::support::spawn_app_with(&["--rate-limit-per-sec", "0"]).await;
    let mut c = app.client().await;
    // No waiting between emits: authenticate, join, then 100 sends.
    let auth = c.emit_with_ack("authenticate", json!({"userId": "o", "username": "o"}));
    let join = c.emit_with_ack("join_room", json!({"roomId": "order"}));
    let acks: Vec<_> = (0..100)
        .map(|i| {
            c.emit_with_ack(
                "send_message",
                json!({"roomId": "order", "message": format!("m{i}")}),
            )
        })
        .collect();
    assert_eq!(auth.await.unwrap()["success"], true);
    assert_eq!(join.await.unwrap()["success"], true);
    let mut last_ts = 0;
    for ack in acks {
        let ack = ack.await.unwrap();
        assert_eq!(ack["success"], true, "{ack}");
        let ts = ack["timestamp"].as_u64().unwrap();
        assert!(ts >= last_ts);
        last_ts = ts;
    }
    for i in 0..100 {
        assert_eq!(c.event("new_message").await["message"], format!("m{i}"));
    }
    let stored = app.stored_texts("order").await;
    assert_eq!(
        stored,
        (0..100).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn repeated_client_message_id_returns_the_original_and_is_not_delivered_twice() {
    let app = spawn_app().await;
    let mut a = app.member("a", "idem").await;
    let mut b = app.member("b", "idem").await;
    let send = json!({"roomId": "idem", "message": "once", "clientMessageId": "c-1"});
    let first = a.emit_ack("send_message", send.clone()).await;
    let again = a.emit_ack("send_message", send).await;
    assert_eq!(first, again);
    assert_eq!(
        b.event("new_message").await["messageId"],
        first["messageId"]
    );
    a.say("idem", "next").await;
    // The next delivery is the distinct message, not a repeat of the first.
    assert_eq!(b.event("new_message").await["message"], "next");
    assert_eq!(app.stored_texts("idem").await, ["once", "next"]);
    // Another user may use the same clientMessageId.
    let other = b
        .emit_ack(
            "send_message",
            json!({"roomId": "idem", "message": "b's", "clientMessageId": "c-1"}),
        )
        .await;
    assert_ne!(other["messageId"], first["messageId"]);
}

#[tokio::test]
async fn history_on_join_is_oldest_first_and_resume_since_is_gap_free() {
    let app = crate::support::spawn_app_with(&["--history-on-join", "5"]).await;
    let mut a = app.member("a", "h").await;
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(a.say("h", &format!("m{i}")).await["messageId"].clone());
    }
    let mut b = app.user("b").await;
    let (history, _) = b.join("h").await;
    let texts: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["m3", "m4", "m5", "m6", "m7"]);

    let mut c = app.user("c").await;
    let ack = c
        .emit_ack("join_room", json!({"roomId": "h", "since": ids[1]}))
        .await;
    assert_eq!(ack["success"], true);
    let resumed = c.event("message_history").await;
    let resumed_ids: Vec<Value> = resumed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["messageId"].clone())
        .collect();
    assert_eq!(resumed_ids, ids[2..].to_vec());
    // `since` the newest message: nothing missed.
    let mut d = app.user("d").await;
    d.emit_ack("join_room", json!({"roomId": "h", "since": ids[7]}))
        .await;
    assert_eq!(d.event("message_history").await, json!([]));
}

#[tokio::test]
async fn unknown_events_get_an_error() {
    let app = spawn_app().await;
    let mut c = app.user("u").await;
    let ack = c.emit_ack("fly_to_moon", json!({})).await;
    assert_eq!(ack["error"]["code"], "invalid_payload");
}
