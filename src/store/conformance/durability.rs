//! Durability: many writers at once lose nothing and keep each writer's order; what a store
//! wrote survives closing and reopening it.

use std::sync::Arc;

use super::{Backend, Run, message, numbered, texts};
use crate::domain::{NewRoom, RoomType};
use crate::store::MessageStore;

/// Many tasks appending at once: everything is stored, each writer's messages in its order.
pub async fn concurrent_writers(store: Arc<dyn MessageStore>, run: &Run) {
    const WRITERS: usize = 16;
    const EACH: usize = 50;
    let room = run.room("busy");
    let tasks = (0..WRITERS).map(|w| {
        let store = store.clone();
        let room = room.clone();
        let own = run.room(&format!("busy-{w}"));
        let user = run.user(&format!("w{w}"));
        tokio::spawn(async move {
            for i in 0..EACH {
                store
                    .append(message(
                        &room,
                        &user,
                        &format!("{w}:{i}"),
                        Some(&format!("c{i}")),
                    ))
                    .await
                    .expect("append");
                store
                    .append(message(&own, &user, &format!("m{i}"), None))
                    .await
                    .expect("append");
            }
        })
    });
    for t in futures::future::join_all(tasks).await {
        t.expect("writer task");
    }
    let all = store.history(&room, 10_000, None).await.expect("history");
    assert_eq!(
        all.len(),
        WRITERS * EACH,
        "concurrent writers: every message stored"
    );
    for w in 0..WRITERS {
        let mine: Vec<_> = texts(&all)
            .into_iter()
            .filter(|t| t.starts_with(&format!("{w}:")))
            .collect();
        let expected: Vec<_> = (0..EACH).map(|i| format!("{w}:{i}")).collect();
        assert_eq!(
            mine, expected,
            "concurrent writers: writer {w} in its order"
        );
        let own = store
            .history(&run.room(&format!("busy-{w}")), 10_000, None)
            .await
            .expect("history");
        assert_eq!(
            texts(&own),
            numbered(0..EACH),
            "concurrent writers: room of {w}"
        );
    }
}

/// Messages, rooms, members and idempotency keys survive closing and reopening.
pub async fn restart_persistence(backend: &dyn Backend, run: &Run) {
    let room = run.room("restart");
    let user = run.user("keeper");
    let store = backend.open(None).await.expect("open");
    let first = store
        .append(message(&room, &user, "kept", Some("keep-1")))
        .await
        .expect("append");
    store.add_member(&room, &user).await.expect("add_member");
    let pair = NewRoom::new(
        run.room("restart-direct"),
        RoomType::Direct,
        vec![user.clone(), run.user("other")],
    )
    .expect("new room");
    store.create_room(pair.clone()).await.expect("create_room");
    store.close().await;
    assert!(
        store
            .append(message(&room, &user, "late", None))
            .await
            .is_err(),
        "restart: a closed store refuses writes"
    );

    let store = backend.open(None).await.expect("reopen");
    let history = store.history(&room, 10, None).await.expect("history");
    assert_eq!(
        history,
        vec![first.message.clone()],
        "restart: messages kept"
    );
    let again = store
        .append(message(&room, &user, "kept", Some("keep-1")))
        .await
        .expect("append");
    assert!(again.duplicate, "restart: idempotency keys kept");
    assert_eq!(again.message, first.message);
    let kept = store
        .get_room(&room)
        .await
        .expect("get_room")
        .expect("room kept");
    assert_eq!(
        kept.participants,
        vec![user.clone()],
        "restart: members kept"
    );
    let rooms = store.rooms_of(&user).await.expect("rooms_of");
    assert_eq!(rooms.len(), 2, "restart: rooms kept");
    store.close().await;
}
