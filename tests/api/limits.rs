//! Per-user connection limit and send rate (SPEC 3).

use serde_json::json;

use crate::support::{SioClient, spawn_app_with};

#[tokio::test]
async fn connections_over_the_per_user_limit_are_refused_and_closed() {
    let app = spawn_app_with(&["--max-connections-per-user", "2"]).await;
    let first = app.user("same").await;
    let _second = app.user("same").await;
    let mut third = app.client().await;
    let ack = third
        .emit_ack(
            "authenticate",
            json!({"userId": "same", "username": "same"}),
        )
        .await;
    assert_eq!(ack["error"]["code"], "too_many_connections");
    assert_eq!(third.event("error").await["code"], "too_many_connections");
    third.closed().await;
    // Other users are not affected.
    app.user("other").await;
    // When one of the two leaves, a new connection is admitted.
    first.disconnect();
    let deadline = tokio::time::Instant::now() + crate::support::WAIT;
    loop {
        let mut c = SioClient::connect(app.addr, None).await;
        let ack = c
            .emit_ack(
                "authenticate",
                json!({"userId": "same", "username": "same"}),
            )
            .await;
        if ack["success"] == true {
            break;
        }
        // The server may not have processed the disconnect yet: that is an event we cannot
        // observe from here, so retry until the deadline.
        assert!(
            tokio::time::Instant::now() < deadline,
            "never re-admitted: {ack}"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn sends_over_the_rate_limit_get_rate_limited() {
    let app = spawn_app_with(&["--rate-limit-per-sec", "1", "--rate-limit-burst", "3"]).await;
    let mut a = app.member("a", "rl").await;
    for i in 0..3 {
        a.say("rl", &format!("m{i}")).await;
    }
    let ack = a
        .emit_ack(
            "send_message",
            json!({"roomId": "rl", "message": "too fast"}),
        )
        .await;
    assert_eq!(ack["error"]["code"], "rate_limited");
    assert_eq!(a.event("error").await["code"], "rate_limited");
    assert_eq!(app.stored_texts("rl").await, ["m0", "m1", "m2"]);
    // The limit is per user: another user is not limited.
    let mut b = app.member("b", "rl").await;
    b.say("rl", "b is fine").await;
}

#[tokio::test]
async fn rate_limit_zero_disables_it() {
    let app = spawn_app_with(&["--rate-limit-per-sec", "0"]).await;
    let mut a = app.member("a", "free").await;
    let acks: Vec<_> = (0..100)
        .map(|i| {
            a.emit_with_ack(
                "send_message",
                json!({"roomId": "free", "message": format!("{i}")}),
            )
        })
        .collect();
    for ack in acks {
        assert_eq!(ack.await.unwrap()["success"], true);
    }
}

#[tokio::test]
async fn events_over_the_per_connection_rate_get_rate_limited() {
    let app = spawn_app_with(&[
        "--event-rate-limit-per-sec",
        "1",
        "--event-rate-limit-burst",
        "5",
        "--rate-limit-per-sec",
        "0",
    ])
    .await;
    let mut a = app.client().await;
    a.emit_ack("authenticate", json!({"userId": "a"})).await;
    // Typing, joins, anything counts: 4 more events fit the burst of 5.
    for _ in 0..2 {
        a.emit_ack("join_room", json!({"roomId": "ev"})).await;
    }
    a.emit_ack("typing", json!({"roomId": "ev", "isTyping": true}))
        .await;
    a.emit_ack("typing", json!({"roomId": "ev", "isTyping": false}))
        .await;
    let ack = a
        .emit_ack("send_message", json!({"roomId": "ev", "message": "sixth"}))
        .await;
    assert_eq!(ack["error"]["code"], "rate_limited");
    assert!(app.stored_texts("ev").await.is_empty());
    // Another connection has its own budget.
    let mut b = app.member("b", "ev").await;
    b.say("ev", "fine").await;
}

#[tokio::test]
async fn a_connection_may_join_a_bounded_number_of_rooms() {
    let app = spawn_app_with(&["--max-rooms-per-connection", "3"]).await;
    let mut a = app.user("a").await;
    for room in ["r1", "r2", "r3"] {
        a.join(room).await;
    }
    let ack = a.emit_ack("join_room", json!({"roomId": "r4"})).await;
    assert_eq!(ack["error"]["code"], "forbidden");
    // Re-joining a room it is in is still fine, and leaving frees a place.
    a.join("r3").await;
    a.emit_ack("leave_room", json!({"roomId": "r1"})).await;
    a.join("r4").await;
}

#[tokio::test]
async fn unauthenticated_connections_are_closed_after_the_timeout() {
    let app = spawn_app_with(&["--auth-timeout-secs", "1"]).await;
    let mut idle = app.client().await;
    let mut authed = app.user("in-time").await;
    let err = idle.event("error").await;
    assert_eq!(err["code"], "auth_failed");
    idle.closed().await;
    // The authenticated connection is unaffected.
    authed.join("still").await;
}

#[tokio::test]
async fn a_slow_socketio_consumer_is_disconnected_instead_of_buffering_without_bound() {
    slow_consumer_is_disconnected(false).await;
}

#[tokio::test]
async fn a_slow_raw_websocket_consumer_is_disconnected_instead_of_buffering_without_bound() {
    slow_consumer_is_disconnected(true).await;
}

async fn slow_consumer_is_disconnected(raw_ws: bool) {
    let app = spawn_app_with(&[
        "--max-outbound-queue",
        "16",
        "--max-message-length",
        "60000",
        "--rate-limit-per-sec",
        "0",
        "--event-rate-limit-per-sec",
        "0",
    ])
    .await;
    // A raw Socket.IO client that joins and then never reads its socket again.
    let mut fast = app.member("fast", "flood").await;
    let stalled = crate::support::stalled_member(app.addr, "slow", "flood", raw_ws).await;
    fast.event("user_joined").await;
    // Large messages, so that the kernel's socket buffers (several MB) fill quickly.
    let text = "x".repeat(50_000);
    let mut acks = Vec::new();
    for _ in 0..2000 {
        acks.push(fast.emit_with_ack("send_message", json!({"roomId": "flood", "message": text})));
        if acks.len() >= 50 {
            for ack in acks.drain(..) {
                assert_eq!(ack.await.unwrap()["success"], true);
            }
            if !fast.received("user_left").is_empty() {
                break;
            }
        }
    }
    let left = fast.event("user_left").await;
    assert_eq!(left["userId"], "slow");
    let transport = if raw_ws { "raw" } else { "socketio" };
    crate::metrics::wait_for(
        &app,
        "chat_connections_closed_total",
        &[("transport", transport), ("reason", "slow_consumer")],
        1.0,
    )
    .await;
    drop(stalled);
    // The sender kept being served throughout.
    fast.say("flood", "after").await;
}
