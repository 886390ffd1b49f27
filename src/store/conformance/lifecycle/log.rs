//! The change log a `since` resume replays; read markers, receipts and unread counts.

use super::{apply, apply_at, edit, emoji, marker, post, react};
use crate::domain::{
    ChangeKind, Message, MessageBody, MessageId, RoomEvent, RoomId, UserId, now_ms,
};
use crate::store::conformance::{Run, message};
use crate::store::{MessageStore, StoreError};

/// The change log: `changes_since` gives the changes of the room's messages up to `since`,
/// made at or after its time, oldest first, as the events the members got (an edit shows the
/// current text; edits of messages deleted since are left out); `None` for an unknown
/// `since`; `limit` holds.
pub async fn change_log(store: &dyn MessageStore, run: &Run) {
    let room = run.room("resume");
    let (a, b) = (run.user("sa"), run.user("sb"));
    let m1 = post(store, &room, &a, "one").await;
    let m2 = post(store, &room, &a, "two").await;
    let since = post(store, &room, &b, "since").await;
    let later = post(store, &room, &a, "later").await;
    let t = later.timestamp;

    // Before `since`'s time: not replayed.
    apply_at(
        store,
        &room,
        &m1.message_id,
        &b,
        react("👀", true),
        since.timestamp.saturating_sub(60_000),
    )
    .await
    .expect("an old reaction");
    apply_at(store, &room, &m1.message_id, &a, edit("one, edited"), t + 1)
        .await
        .expect("edit");
    apply_at(store, &room, &m2.message_id, &a, edit("two, edited"), t + 2)
        .await
        .expect("edit");
    apply_at(
        store,
        &room,
        &since.message_id,
        &a,
        react("👍", true),
        t + 3,
    )
    .await
    .expect("react");
    // A message after `since`: the client gets it whole, its changes are not replayed.
    apply_at(
        store,
        &room,
        &later.message_id,
        &a,
        edit("later, edited"),
        t + 4,
    )
    .await
    .expect("edit later");
    apply_at(
        store,
        &room,
        &m1.message_id,
        &a,
        edit("one, edited twice"),
        t + 5,
    )
    .await
    .expect("edit again");
    apply_at(store, &room, &m2.message_id, &a, ChangeKind::Delete, t + 6)
        .await
        .expect("delete");
    apply_at(
        store,
        &room,
        &since.message_id,
        &a,
        react("👍", false),
        t + 7,
    )
    .await
    .expect("unreact");
    // Not effective: not logged.
    apply_at(store, &room, &m2.message_id, &a, ChangeKind::Delete, t + 8)
        .await
        .expect("delete again");

    let one = MessageBody::from_stored("one, edited twice".into());
    let want = vec![
        RoomEvent::Edited {
            room_id: room.clone(),
            message_id: m1.message_id.clone(),
            message: one.clone(),
            edited_at: t + 1,
            user_id: a.clone(),
        },
        RoomEvent::Reaction {
            room_id: room.clone(),
            message_id: since.message_id.clone(),
            emoji: emoji("👍"),
            user_id: a.clone(),
            added: true,
            count: 1,
        },
        RoomEvent::Edited {
            room_id: room.clone(),
            message_id: m1.message_id.clone(),
            message: one,
            edited_at: t + 5,
            user_id: a.clone(),
        },
        RoomEvent::Deleted {
            room_id: room.clone(),
            message_id: m2.message_id.clone(),
            deleted_at: t + 6,
            user_id: a.clone(),
        },
        RoomEvent::Reaction {
            room_id: room.clone(),
            message_id: since.message_id.clone(),
            emoji: emoji("👍"),
            user_id: a.clone(),
            added: false,
            count: 0,
        },
    ];
    let got = store
        .changes_since(&room, &since.message_id, 100)
        .await
        .expect("changes_since")
        .expect("a known since");
    assert_eq!(got, want, "lifecycle: changes_since");
    let page = store
        .changes_since(&room, &since.message_id, 2)
        .await
        .expect("changes_since")
        .expect("a known since");
    assert_eq!(page, want[..2], "lifecycle: changes_since with a limit");

    let from_later = store
        .changes_since(&room, &later.message_id, 100)
        .await
        .expect("changes_since")
        .expect("known");
    assert!(
        from_later.iter().any(
            |e| matches!(e, RoomEvent::Edited { message_id, .. } if *message_id == later.message_id)
        ),
        "lifecycle: since the last message, its own edit is replayed: {from_later:?}"
    );
    assert!(
        store
            .changes_since(&room, &MessageId::generate(now_ms()), 100)
            .await
            .expect("changes_since")
            .is_none(),
        "lifecycle: changes_since of an unknown message is None"
    );
    let elsewhere = post(store, &run.room("resume-other"), &a, "elsewhere").await;
    assert!(
        store
            .changes_since(&room, &elsewhere.message_id, 100)
            .await
            .expect("changes_since")
            .is_none(),
        "lifecycle: changes_since of another room's message is None"
    );
}

/// Read markers never move backwards; receipts list them oldest read first; `rooms_of`
/// counts others' messages after the marker (all without one), tombstones not counted.
pub async fn read_markers_and_unread(store: &dyn MessageStore, run: &Run) {
    let room = run.room("reads");
    let quiet = run.room("reads-quiet");
    let (a, b) = (run.user("ma"), run.user("mb"));
    for r in [&room, &quiet] {
        store.add_member(r, &a).await.expect("add_member");
        store.add_member(r, &b).await.expect("add_member");
    }
    let m: Vec<Message> = [("a0", &a), ("a1", &a), ("b2", &b), ("a3", &a), ("a4", &a)]
        .iter()
        .map(|(t, u)| message(&room, u, t, None))
        .collect();
    for x in &m {
        store.append(x.clone()).await.expect("append");
    }
    let unread = |rooms: Vec<crate::domain::Room>| -> Vec<(RoomId, Option<u64>)> {
        let mut v: Vec<_> = rooms
            .into_iter()
            .map(|r| (r.room_id, r.unread_count))
            .collect();
        v.sort_by(|x, y| x.0.cmp(&y.0));
        v
    };
    let of = |u: &UserId| {
        let u = u.clone();
        async move { unread(store.rooms_of(&u).await.expect("rooms_of")) }
    };
    let expect = |r: u64, q: u64| {
        let mut v = vec![(room.clone(), Some(r)), (quiet.clone(), Some(q))];
        v.sort_by(|x, y| x.0.cmp(&y.0));
        v
    };
    assert_eq!(
        of(&b).await,
        expect(4, 0),
        "lifecycle: no marker, every message of others unread"
    );
    assert_eq!(
        of(&a).await,
        expect(1, 0),
        "lifecycle: one's own messages are never unread"
    );

    let t = now_ms();
    let moved = store
        .mark_read(marker(&room, &b, &m[1].message_id, t))
        .await
        .expect("mark_read");
    assert!(moved.moved);
    assert_eq!(moved.marker, marker(&room, &b, &m[1].message_id, t));
    assert_eq!(
        of(&b).await,
        expect(2, 0),
        "lifecycle: unread after the marker"
    );
    let back = store
        .mark_read(marker(&room, &b, &m[0].message_id, t + 10))
        .await
        .expect("mark_read backwards");
    assert!(!back.moved, "lifecycle: a marker never moves backwards");
    assert_eq!(
        back.marker,
        marker(&room, &b, &m[1].message_id, t),
        "lifecycle: the current marker is returned"
    );
    let same = store
        .mark_read(marker(&room, &b, &m[1].message_id, t + 20))
        .await
        .expect("mark_read again");
    assert!(
        !same.moved,
        "lifecycle: the same message again does not move it"
    );
    assert_eq!(same.marker.read_at, t);
    for (id, what) in [
        (MessageId::generate(now_ms()), "an unknown message"),
        (
            post(store, &run.room("reads-other"), &a, "x")
                .await
                .message_id,
            "another room's message",
        ),
    ] {
        let got = store.mark_read(marker(&room, &b, &id, t)).await;
        assert!(
            matches!(got, Err(StoreError::NotFound)),
            "lifecycle: mark_read of {what} is NotFound: {got:?}"
        );
    }

    // A tombstone is not unread; a deleted message still moves a marker.
    apply(store, &room, &m[3].message_id, &a, ChangeKind::Delete)
        .await
        .expect("delete");
    assert_eq!(
        of(&b).await,
        expect(1, 0),
        "lifecycle: deleted messages are not unread"
    );
    let a_read = store
        .mark_read(marker(&room, &a, &m[3].message_id, t + 5))
        .await
        .expect("mark_read of a tombstone");
    assert!(a_read.moved);
    assert_eq!(of(&a).await, expect(0, 0));
    let forward = store
        .mark_read(marker(&room, &b, &m[4].message_id, t + 30))
        .await
        .expect("mark_read forward");
    assert!(forward.moved);
    assert_eq!(of(&b).await, expect(0, 0));

    let receipts = store.receipts(&room).await.expect("receipts");
    assert_eq!(
        receipts,
        vec![
            marker(&room, &a, &m[3].message_id, t + 5),
            marker(&room, &b, &m[4].message_id, t + 30),
        ],
        "lifecycle: receipts, oldest read first"
    );
    assert!(store.receipts(&quiet).await.expect("receipts").is_empty());
}
