//! The outbox contract: entries written with their messages, pending until marked sent (also
//! across a restart), the claim between two instances of a shared backend, the bound.

use super::{Backend, Run, message, texts};
use crate::store::{OutboxConfig, StoreError};

/// The outbox contract: one entry per stored message in the same transaction, oldest first,
/// returned again until marked sent (also after a restart), the bound, and between two
/// instances of a shared backend a claim.
pub async fn outbox(backend: &dyn Backend, run: &Run) {
    let unbounded = Some(OutboxConfig {
        max_pending: u64::MAX,
    });
    let store = backend.open(unbounded).await.expect("open with outbox");
    // Start from an empty outbox (entries of earlier runs).
    loop {
        let old = store.outbox_pending(4096).await.expect("outbox_pending");
        if old.is_empty() {
            break;
        }
        let seqs: Vec<u64> = old.iter().map(|e| e.seq).collect();
        store.outbox_mark_sent(&seqs).await.expect("mark_sent");
    }
    assert_eq!(store.outbox_len().await.expect("outbox_len"), 0);

    let room = run.room("outbox");
    let (a, b, c) = (run.user("oa"), run.user("ob"), run.user("oc"));
    store.add_member(&room, &a).await.expect("add_member");
    store.add_member(&room, &b).await.expect("add_member");
    let first = store
        .append(message(&room, &a, "to b", Some("o1")))
        .await
        .expect("append");
    let dup = store
        .append(message(&room, &a, "to b", Some("o1")))
        .await
        .expect("append duplicate");
    assert!(dup.duplicate);
    store.add_member(&room, &c).await.expect("add_member");
    let second = store
        .append(message(&room, &b, "to a and c", None))
        .await
        .expect("append");
    assert_eq!(
        store.outbox_len().await.expect("outbox_len"),
        2,
        "outbox: one entry per stored message"
    );

    let pending = store.outbox_pending(100).await.expect("outbox_pending");
    assert_eq!(pending.len(), 2, "outbox: pending entries");
    let (e1, e2) = (&pending[0], &pending[1]);
    assert!(e1.seq < e2.seq, "outbox: oldest first, increasing seq");
    assert_eq!(e1.message_id, first.message.message_id);
    assert_eq!(e1.room_id, room);
    assert_eq!(e1.sender_id, a);
    assert_eq!(
        e1.receiver_id,
        Some(b.clone()),
        "outbox: the other one of two"
    );
    assert_eq!(e1.receiver_ids, vec![b.clone()]);
    assert_eq!(e1.message, "to b");
    assert_eq!(e1.timestamp, first.message.timestamp);
    assert_eq!(e2.message_id, second.message.message_id);
    assert_eq!(
        e2.receiver_id, None,
        "outbox: no single receiver in a room of three"
    );
    assert_eq!(
        e2.receiver_ids,
        vec![a.clone(), c.clone()],
        "outbox: receivers sorted"
    );

    // Returned again until marked sent, also after a restart.
    let again = store.outbox_pending(100).await.expect("outbox_pending");
    assert_eq!(again, pending, "outbox: pending until marked sent");
    store.close().await;
    let store = backend.open(unbounded).await.expect("reopen");
    let again = store.outbox_pending(100).await.expect("outbox_pending");
    assert_eq!(again, pending, "outbox: pending after a restart");

    if backend.shared() {
        // A second instance does not get entries the first has claimed.
        let other = backend
            .open(unbounded)
            .await
            .expect("open a second instance");
        assert!(
            other
                .outbox_pending(100)
                .await
                .expect("outbox_pending")
                .is_empty(),
            "outbox: claimed entries are not handed to another instance"
        );
        let third = other
            .append(message(&room, &c, "from the other", None))
            .await
            .expect("append");
        let theirs = other.outbox_pending(100).await.expect("outbox_pending");
        assert_eq!(
            theirs.len(),
            1,
            "outbox: the other instance claims new entries"
        );
        assert_eq!(theirs[0].message_id, third.message.message_id);
        other
            .outbox_mark_sent(&[theirs[0].seq])
            .await
            .expect("mark_sent");
        other.close().await;
    }

    store.outbox_mark_sent(&[e1.seq]).await.expect("mark_sent");
    store
        .outbox_mark_sent(&[e1.seq, u64::MAX / 2])
        .await
        .expect("mark_sent of unknown seqs is harmless");
    let left = store.outbox_pending(100).await.expect("outbox_pending");
    assert_eq!(left, vec![e2.clone()], "outbox: sent entries leave");
    assert_eq!(store.outbox_len().await.expect("outbox_len"), 1);
    store.outbox_mark_sent(&[e2.seq]).await.expect("mark_sent");
    assert_eq!(store.outbox_len().await.expect("outbox_len"), 0);
    store.close().await;

    // The bound: a full outbox refuses new messages, stores nothing; replays still succeed.
    let store = backend
        .open(Some(OutboxConfig { max_pending: 2 }))
        .await
        .expect("open bounded");
    let room = run.room("outbox-full");
    let kept = store
        .append(message(&room, &a, "one", Some("f1")))
        .await
        .expect("append");
    store
        .append(message(&room, &a, "two", None))
        .await
        .expect("append");
    assert!(
        matches!(
            store.append(message(&room, &a, "three", None)).await,
            Err(StoreError::OutboxFull(_))
        ),
        "outbox: a full outbox refuses the message"
    );
    let replay = store
        .append(message(&room, &a, "one", Some("f1")))
        .await
        .expect("a replay of a stored message succeeds");
    assert!(replay.duplicate);
    assert_eq!(replay.message, kept.message);
    let stored = store.history(&room, 10, None).await.expect("history");
    assert_eq!(
        texts(&stored),
        ["one", "two"],
        "outbox: the refused message is not stored"
    );
    let pending = store.outbox_pending(100).await.expect("outbox_pending");
    let seqs: Vec<u64> = pending.iter().map(|e| e.seq).collect();
    store.outbox_mark_sent(&seqs).await.expect("mark_sent");
    store.close().await;

    // Without the outbox, no entries are written.
    let store = backend.open(None).await.expect("open without outbox");
    store
        .append(message(&room, &a, "quiet", None))
        .await
        .expect("append");
    assert_eq!(
        store.outbox_len().await.expect("outbox_len"),
        0,
        "outbox: off writes none"
    );
    store.close().await;
}
