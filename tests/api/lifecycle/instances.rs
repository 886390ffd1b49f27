//! Changes cross instances on Redis, and the Redis history cache follows the store.

use redis::AsyncCommands;
use serde_json::json;

use super::{CHANGES, c_delete, edit, history, react};
use crate::support::{own_key, redis, spawn_redis_app, unique};

#[tokio::test]
async fn changes_cross_instances_and_the_redis_cache_follows_the_store() {
    let (app_a, app_b) = (spawn_redis_app(&[]).await, spawn_redis_app(&[]).await);
    let room = unique("life-2");
    let (ua, ub) = (unique("ann"), unique("bob"));
    let mut a = app_a.member(&ua, &room).await;
    let mut b = app_b.member(&ub, &room).await;
    let secret = format!("secret {}", unique("text"));
    let ack = a
        .emit_ack(
            "send_message",
            json!({"roomId": room, "message": secret, "clientMessageId": "c-1"}),
        )
        .await;
    let m1 = ack["messageId"].clone();
    let m2 = a.say(&room, "keep").await["messageId"].clone();
    b.event_where("new_message", |m| m["messageId"] == m2).await;

    assert_eq!(edit(&mut a, &room, &m2, "kept").await["success"], true);
    assert_eq!(
        react(&mut a, "add_reaction", &room, &m2, "👍").await["success"],
        true
    );
    assert_eq!(c_delete(&mut a, &room, &m1).await["success"], true);
    let ack = a
        .emit_ack("mark_read", json!({"roomId": room, "messageId": m2}))
        .await;
    assert_eq!(ack["success"], true);
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(b.next_of(&CHANGES).await.0);
    }
    assert_eq!(
        got,
        [
            "message_edited",
            "reaction_updated",
            "message_deleted",
            "read_receipt"
        ]
    );

    // Instance B serves history from the Redis list, which holds the new state.
    let on_b = history(&app_b, &room).await;
    assert_eq!(on_b, history(&app_a, &room).await);
    assert_eq!(
        (on_b[0]["deleted"].clone(), on_b[0]["message"].clone()),
        (json!(true), json!(""))
    );
    assert_eq!(on_b[1]["message"], "kept");
    assert_eq!(on_b[1]["reactions"][0]["count"], 1);
    // The deleted text is gone from Redis: the history list and the idempotency record.
    let mut r = redis().await;
    let items: Vec<String> = r
        .lrange(format!("chat:history:{room}"), 0, -1)
        .await
        .unwrap();
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|i| !i.contains(&secret)), "{items:?}");
    let idem: Option<String> = r
        .get(own_key(
            &format!("chat:history:{room}"),
            &format!(":idem:{ua}:c-1"),
            format!("chat:idem:{room}:{ua}:c-1"),
        ))
        .await
        .unwrap();
    let idem = idem.expect("the idempotency record stays");
    assert!(!idem.contains(&secret), "{idem}");
    // A replay of the deleted message's clientMessageId is still that (deleted) message.
    let replay = a
        .emit_ack(
            "send_message",
            json!({"roomId": room, "message": "again", "clientMessageId": "c-1"}),
        )
        .await;
    assert_eq!(
        (replay["success"].clone(), replay["messageId"].clone()),
        (json!(true), m1)
    );
    assert_eq!(history(&app_a, &room).await.len(), 2);
}
