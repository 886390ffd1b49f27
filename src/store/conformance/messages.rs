//! Messages: append order, paging with `limit` / `before` and `after`, idempotency (also
//! under racing duplicates, in one instance and between two).

use std::collections::HashSet;
use std::sync::Arc;

use super::{Backend, Run, append_texts, message, numbered, texts};
use crate::domain::{MessageId, now_ms};
use crate::store::{MessageStore, StoreError};

/// Messages of a room come back in append order, oldest first, with every field intact.
pub async fn ordering(store: &dyn MessageStore, run: &Run) {
    let room = run.room("order");
    let user = run.user("alice");
    let first = message(&room, &user, "m0", Some("order-0"));
    let stored = store.append(first.clone()).await.expect("append");
    assert!(
        !stored.duplicate,
        "ordering: a new message is not a duplicate"
    );
    assert_eq!(
        stored.message, first,
        "ordering: append returns the message"
    );
    for i in 1..20 {
        store
            .append(message(&room, &user, &format!("m{i}"), None))
            .await
            .expect("append");
    }
    let all = store.history(&room, 100, None).await.expect("history");
    assert_eq!(
        texts(&all),
        numbered(0..20),
        "ordering: history oldest first"
    );
    assert_eq!(all[0], first, "ordering: fields survive the round trip");
    let after = store
        .after(&room, &first.message_id, 100)
        .await
        .expect("after")
        .expect("after: known id");
    assert_eq!(texts(&after), numbered(1..20), "ordering: after");
    let after = store
        .after(&room, &first.message_id, 3)
        .await
        .expect("after")
        .expect("after: known id");
    assert_eq!(
        texts(&after),
        numbered(1..4),
        "ordering: after with a limit"
    );
}

/// `limit` takes the newest; `before` pages backwards; unknown rooms, cursors and ids.
pub async fn paging(store: &dyn MessageStore, run: &Run) {
    let room = run.room("paging");
    let user = run.user("bob");
    append_texts(store, &room, &user, 12).await;
    let page = store.history(&room, 5, None).await.expect("history");
    assert_eq!(texts(&page), numbered(7..12), "paging: newest page");
    let page = store
        .history(&room, 5, Some(&page[0].message_id))
        .await
        .expect("history before");
    assert_eq!(texts(&page), numbered(2..7), "paging: page before");
    let page = store
        .history(&room, 5, Some(&page[0].message_id))
        .await
        .expect("history before");
    assert_eq!(texts(&page), numbered(0..2), "paging: last page");
    let page = store
        .history(&room, 5, Some(&page[0].message_id))
        .await
        .expect("history before the first");
    assert!(page.is_empty(), "paging: nothing before the first message");

    let unknown = MessageId::generate(now_ms());
    assert!(
        matches!(
            store.history(&room, 5, Some(&unknown)).await,
            Err(StoreError::UnknownCursor)
        ),
        "paging: an unknown cursor is UnknownCursor"
    );
    // A message id of another room is unknown in this one.
    let other = run.room("paging-other");
    let elsewhere = store
        .append(message(&other, &user, "x", None))
        .await
        .expect("append");
    assert!(
        matches!(
            store
                .history(&room, 5, Some(&elsewhere.message.message_id))
                .await,
            Err(StoreError::UnknownCursor)
        ),
        "paging: a cursor of another room is unknown"
    );
    assert!(
        store
            .after(&room, &elsewhere.message.message_id, 5)
            .await
            .expect("after")
            .is_none(),
        "paging: after an id of another room is None"
    );
    assert!(
        store
            .history(&run.room("paging-empty"), 5, None)
            .await
            .expect("history")
            .is_empty(),
        "paging: an unknown room has no history"
    );
}

/// A repeated `(room, user, clientMessageId)` stores nothing and returns the stored message,
/// also when the duplicates race.
pub async fn idempotency(store: Arc<dyn MessageStore>, run: &Run) {
    let room = run.room("idem");
    let (a, b) = (run.user("a"), run.user("b"));
    let first = store
        .append(message(&room, &a, "hello", Some("k1")))
        .await
        .expect("append");
    assert!(!first.duplicate);
    let again = store
        .append(message(&room, &a, "hello again", Some("k1")))
        .await
        .expect("append duplicate");
    assert!(again.duplicate, "idempotency: same key is a duplicate");
    assert_eq!(
        again.message, first.message,
        "idempotency: the stored message is returned"
    );
    let other_user = store
        .append(message(&room, &b, "hello", Some("k1")))
        .await
        .expect("append");
    assert!(!other_user.duplicate, "idempotency: the key is per user");
    let other_room = store
        .append(message(&run.room("idem-2"), &a, "hello", Some("k1")))
        .await
        .expect("append");
    assert!(!other_room.duplicate, "idempotency: the key is per room");
    let no_key = store
        .append(message(&room, &a, "hello", None))
        .await
        .expect("append");
    assert!(!no_key.duplicate, "idempotency: no key, no dedupe");

    // Concurrent duplicates: exactly one is stored, everyone gets its id.
    let racing = (0..16).map(|i| {
        let store = store.clone();
        let m = message(&room, &a, &format!("race {i}"), Some("race"));
        tokio::spawn(async move { store.append(m).await })
    });
    let results: Vec<_> = futures::future::join_all(racing)
        .await
        .into_iter()
        .map(|r| r.expect("task").expect("append"))
        .collect();
    assert_eq!(
        results.iter().filter(|r| !r.duplicate).count(),
        1,
        "idempotency: one of the racing duplicates is stored"
    );
    let ids: HashSet<_> = results
        .iter()
        .map(|r| r.message.message_id.clone())
        .collect();
    assert_eq!(ids.len(), 1, "idempotency: racing duplicates share one id");
    let stored = store.history(&room, 1000, None).await.expect("history");
    assert_eq!(
        texts(&stored).len(),
        4,
        "idempotency: hello, hello (b), hello (no key), one race: {:?}",
        texts(&stored)
    );
}

/// A backend shared by instances: the same key appended through two instances at once is
/// stored once, and both callers get the stored message (the loser of the race too).
pub async fn idempotency_across_instances(backend: &dyn Backend, run: &Run) {
    if !backend.shared() {
        return;
    }
    const ROUNDS: usize = 8;
    let one = backend.open(None).await.expect("open");
    let two = backend.open(None).await.expect("open a second instance");
    let room = run.room("idem-shared");
    let user = run.user("twice");
    for round in 0..ROUNDS {
        let key = format!("shared-{round}");
        let (a, b) = tokio::join!(
            one.append(message(&room, &user, "through one", Some(&key))),
            two.append(message(&room, &user, "through two", Some(&key))),
        );
        let (a, b) = (a.expect("append on one"), b.expect("append on two"));
        assert_eq!(
            a.message, b.message,
            "idempotency across instances: both get the stored message"
        );
        assert_ne!(
            a.duplicate, b.duplicate,
            "idempotency across instances: exactly one of them is new"
        );
    }
    let stored = one.history(&room, 100, None).await.expect("history");
    assert_eq!(
        stored.len(),
        ROUNDS,
        "idempotency across instances: one message per key"
    );
    one.close().await;
    two.close().await;
}
