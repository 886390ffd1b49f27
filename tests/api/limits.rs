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
