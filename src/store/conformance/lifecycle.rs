//! The message lifecycle (SPEC 10, the store's lifecycle contract): edits, tombstones,
//! replies and reactions as `history`, `after` and `get_message` read them back; the
//! refusals; repeats that change nothing; the change log a `since` resume replays; read
//! markers, receipts and unread counts; the outbox entries of edits and deletes; the deleted
//! text gone from the backend's raw data; changes racing on one message (also between two
//! instances of a shared backend).

use std::collections::HashSet;
use std::sync::Arc;

use super::{Backend, Run, message};
use crate::domain::{
    ChangeKind, Emoji, MAX_REACTION_USERS, MAX_REACTIONS_PER_MESSAGE, Message, MessageBody,
    MessageChange, MessageId, Reaction, ReadMarker, RoomEvent, RoomId, UserId, now_ms,
};
use crate::store::{Changed, MessageStore, OutboxConfig, OutboxEntry, OutboxEvent, StoreError};

fn emoji(s: &str) -> Emoji {
    Emoji::parse(s).expect("emoji")
}

fn edit(text: &str) -> ChangeKind {
    ChangeKind::Edit(MessageBody::from_stored(text.to_string()))
}

fn react(e: &str, add: bool) -> ChangeKind {
    ChangeKind::React {
        emoji: emoji(e),
        add,
    }
}

/// `user`'s change of message `id` in `room`, now.
async fn apply(
    store: &dyn MessageStore,
    room: &RoomId,
    id: &MessageId,
    user: &UserId,
    kind: ChangeKind,
) -> Result<Changed, StoreError> {
    apply_at(store, room, id, user, kind, now_ms()).await
}

async fn apply_at(
    store: &dyn MessageStore,
    room: &RoomId,
    id: &MessageId,
    user: &UserId,
    kind: ChangeKind,
    at: u64,
) -> Result<Changed, StoreError> {
    store
        .change(MessageChange {
            room_id: room.clone(),
            message_id: id.clone(),
            user_id: user.clone(),
            at,
            kind,
        })
        .await
}

async fn post(store: &dyn MessageStore, room: &RoomId, user: &UserId, text: &str) -> Message {
    store
        .append(message(room, user, text, None))
        .await
        .expect("append")
        .message
}

async fn get(store: &dyn MessageStore, room: &RoomId, id: &MessageId) -> Message {
    store
        .get_message(room, id)
        .await
        .expect("get_message")
        .expect("the message exists")
}

fn reaction(e: &str, users: &[&UserId]) -> Reaction {
    Reaction {
        emoji: emoji(e),
        count: users.len() as u64,
        user_ids: users.iter().map(|u| (*u).clone()).collect(),
    }
}

fn marker(room: &RoomId, user: &UserId, id: &MessageId, read_at: u64) -> ReadMarker {
    ReadMarker {
        room_id: room.clone(),
        user_id: user.clone(),
        message_id: id.clone(),
        read_at,
    }
}

/// Edits, tombstones, replies and reactions read back the same through `history`, `after`
/// and `get_message`; each effective change answers its event and the message's new state,
/// with a `rev` that grows; the room's `lastMessage` follows an edit or delete of its message.
pub async fn changes_read_back(store: &dyn MessageStore, run: &Run) {
    let room = run.room("life");
    let (a, b) = (run.user("la"), run.user("lb"));
    store.add_member(&room, &a).await.expect("add_member");
    store.add_member(&room, &b).await.expect("add_member");
    let first = post(store, &room, &a, "first").await;
    let original = post(store, &room, &a, "original").await;
    let reply = Message {
        reply_to: Some(original.message_id.clone()),
        ..message(&room, &b, "a reply", None)
    };
    let stored = store.append(reply.clone()).await.expect("append a reply");
    assert_eq!(
        stored.message.reply_to,
        Some(original.message_id.clone()),
        "lifecycle: append keeps replyTo"
    );
    let doomed = post(store, &room, &a, "doomed").await;

    let t_edit = now_ms();
    let edited = apply_at(
        store,
        &room,
        &original.message_id,
        &a,
        edit("edited"),
        t_edit,
    )
    .await
    .expect("edit");
    assert!(edited.effective, "lifecycle: an edit is effective");
    assert_eq!(
        edited.event,
        RoomEvent::Edited {
            room_id: room.clone(),
            message_id: original.message_id.clone(),
            message: MessageBody::from_stored("edited".into()),
            edited_at: t_edit,
            user_id: a.clone(),
        },
        "lifecycle: the edit's event"
    );
    assert_eq!(edited.message.message.as_str(), "edited");
    assert_eq!(edited.message.edited_at, Some(t_edit));
    assert!(
        edited.message.rev > 0,
        "lifecycle: a changed message has a rev"
    );

    let t_delete = now_ms();
    let deleted = apply_at(
        store,
        &room,
        &doomed.message_id,
        &a,
        ChangeKind::Delete,
        t_delete,
    )
    .await
    .expect("delete");
    assert!(deleted.effective, "lifecycle: a delete is effective");
    assert_eq!(
        deleted.event,
        RoomEvent::Deleted {
            room_id: room.clone(),
            message_id: doomed.message_id.clone(),
            deleted_at: t_delete,
            user_id: a.clone(),
        },
        "lifecycle: the delete's event"
    );
    assert!(deleted.message.deleted);
    assert_eq!(
        deleted.message.message.as_str(),
        "",
        "lifecycle: a tombstone has no text"
    );
    let room_now = store
        .get_room(&room)
        .await
        .expect("get_room")
        .expect("room");
    let last = room_now.last_message.expect("lastMessage");
    assert_eq!(
        (last.content.as_str(), &last.sender_id, last.timestamp),
        ("", &a, doomed.timestamp),
        "lifecycle: a deleted last message leaves no text in the room"
    );

    // Reactions: b 👍, a 👍, b ❤️; the counts and users (oldest first) in first-seen order.
    let mut revs = vec![edited.message.rev];
    for (user, e, count) in [(&b, "👍", 1), (&a, "👍", 2), (&b, "❤️", 1)] {
        let r = apply(store, &room, &original.message_id, user, react(e, true))
            .await
            .expect("add_reaction");
        assert!(r.effective, "lifecycle: a new reaction is effective");
        assert_eq!(
            r.event,
            RoomEvent::Reaction {
                room_id: room.clone(),
                message_id: original.message_id.clone(),
                emoji: emoji(e),
                user_id: user.clone(),
                added: true,
                count,
            },
            "lifecycle: the reaction's event"
        );
        revs.push(r.message.rev);
    }
    assert!(
        revs.windows(2).all(|w| w[0] < w[1]),
        "lifecycle: each effective change raises the message's rev: {revs:?}"
    );
    let reactions = vec![reaction("👍", &[&b, &a]), reaction("❤️", &[&b])];

    let check = |m: &Message, what: &str| {
        if m.message_id == original.message_id {
            assert_eq!(m.message.as_str(), "edited", "{what}: edited text");
            assert_eq!(m.edited_at, Some(t_edit), "{what}: editedAt");
            assert!(!m.deleted, "{what}: not deleted");
            assert_eq!(m.reactions, reactions, "{what}: reactions");
            assert_eq!(m.timestamp, original.timestamp, "{what}: timestamp kept");
        } else if m.message_id == stored.message.message_id {
            assert_eq!(
                m.reply_to,
                Some(original.message_id.clone()),
                "{what}: replyTo"
            );
            assert_eq!(m.message.as_str(), "a reply");
            assert!(m.reactions.is_empty() && m.edited_at.is_none() && !m.deleted);
        } else if m.message_id == doomed.message_id {
            assert!(m.deleted, "{what}: a tombstone");
            assert_eq!(m.message.as_str(), "", "{what}: a tombstone has no text");
            assert_eq!(m.edited_at, None, "{what}: a delete is no edit");
            assert_eq!(m.user_id, a, "{what}: the tombstone keeps its author");
        } else {
            assert_eq!(m.message_id, first.message_id);
            assert_eq!(m.message.as_str(), "first");
            assert!(m.reply_to.is_none() && m.reactions.is_empty() && !m.deleted);
            assert_eq!(m.edited_at, None);
        }
    };
    let history = store.history(&room, 10, None).await.expect("history");
    assert_eq!(history.len(), 4, "lifecycle: a tombstone stays in history");
    for m in &history {
        check(m, "lifecycle history");
    }
    let after = store
        .after(&room, &first.message_id, 10)
        .await
        .expect("after")
        .expect("known");
    assert_eq!(after.len(), 3);
    for m in &after {
        check(m, "lifecycle after");
    }
    for m in [&first, &original, &stored.message, &doomed] {
        check(
            &get(store, &room, &m.message_id).await,
            "lifecycle get_message",
        );
    }
    assert!(
        store
            .get_message(&run.room("life-other"), &original.message_id)
            .await
            .expect("get_message")
            .is_none(),
        "lifecycle: get_message of another room is None"
    );
    assert!(
        store
            .get_message(&room, &MessageId::generate(now_ms()))
            .await
            .expect("get_message")
            .is_none(),
        "lifecycle: get_message of an unknown id is None"
    );

    // An edit of the room's last message changes the room's lastMessage text.
    let last = post(store, &room, &b, "last one").await;
    apply(store, &room, &last.message_id, &b, edit("last one, fixed"))
        .await
        .expect("edit");
    let room_now = store
        .get_room(&room)
        .await
        .expect("get_room")
        .expect("room");
    assert_eq!(
        room_now.last_message.expect("lastMessage").content.as_str(),
        "last one, fixed",
        "lifecycle: an edit of the last message shows in the room"
    );
}

/// Refusals: unknown message, message of another room, not the author, edit or reaction of a
/// deleted message, the 21st distinct emoji. A refused change changes nothing.
pub async fn refusals(store: &dyn MessageStore, run: &Run) {
    let room = run.room("refuse");
    let other_room = run.room("refuse-other");
    let (a, b) = (run.user("fa"), run.user("fb"));
    let m = post(store, &room, &a, "mine").await;
    let elsewhere = post(store, &other_room, &a, "elsewhere").await;
    let unknown = MessageId::generate(now_ms());
    let kinds = || {
        [
            edit("x"),
            ChangeKind::Delete,
            react("👍", true),
            react("👍", false),
        ]
    };
    for kind in kinds() {
        for (id, what) in [
            (&unknown, "an unknown id"),
            (&elsewhere.message_id, "another room's message"),
        ] {
            let got = apply(store, &room, id, &a, kind.clone()).await;
            assert!(
                matches!(got, Err(StoreError::NotFound)),
                "lifecycle: {kind:?} of {what} is NotFound: {got:?}"
            );
        }
    }
    for kind in [edit("not yours"), ChangeKind::Delete] {
        let got = apply(store, &room, &m.message_id, &b, kind.clone()).await;
        assert!(
            matches!(got, Err(StoreError::NotAuthor)),
            "lifecycle: {kind:?} by another user is NotAuthor: {got:?}"
        );
    }
    assert_eq!(
        get(store, &room, &m.message_id).await,
        m,
        "lifecycle: refused changes change nothing"
    );

    // At most MAX_REACTIONS_PER_MESSAGE distinct emoji; more users on a shown one are fine.
    for i in 0..MAX_REACTIONS_PER_MESSAGE {
        apply(
            store,
            &room,
            &m.message_id,
            &b,
            react(&format!("e{i}"), true),
        )
        .await
        .expect("a reaction within the bound");
    }
    let got = apply(store, &room, &m.message_id, &a, react("one-too-many", true)).await;
    assert!(
        matches!(got, Err(StoreError::TooManyReactions)),
        "lifecycle: the 21st distinct emoji is TooManyReactions: {got:?}"
    );
    let more = apply(store, &room, &m.message_id, &a, react("e0", true))
        .await
        .expect("another user on a shown emoji");
    assert!(more.effective);
    assert_eq!(more.message.reactions.len(), MAX_REACTIONS_PER_MESSAGE);
    assert_eq!(more.message.reactions[0], reaction("e0", &[&b, &a]));
    // Removing one makes room for another.
    apply(store, &room, &m.message_id, &b, react("e19", false))
        .await
        .expect("remove");
    apply(store, &room, &m.message_id, &a, react("one-more", true))
        .await
        .expect("a reaction once another is gone");

    // A deleted message cannot be edited or reacted to (NotFound); a delete by another user
    // is still NotAuthor.
    apply(store, &room, &m.message_id, &a, ChangeKind::Delete)
        .await
        .expect("delete");
    for kind in [edit("too late"), react("e1", true), react("e0", false)] {
        let got = apply(store, &room, &m.message_id, &a, kind.clone()).await;
        assert!(
            matches!(got, Err(StoreError::NotFound)),
            "lifecycle: {kind:?} of a deleted message is NotFound: {got:?}"
        );
    }
    let got = apply(store, &room, &m.message_id, &b, ChangeKind::Delete).await;
    assert!(
        matches!(got, Err(StoreError::NotAuthor)),
        "lifecycle: deleting another user's tombstone is NotAuthor: {got:?}"
    );
    let now = get(store, &room, &m.message_id).await;
    assert!(now.deleted && now.message.as_str().is_empty());
    assert_eq!(
        now.edited_at, None,
        "lifecycle: the refused edit left no trace"
    );
}

/// Repeats change nothing (`effective: false`, the current state): a second delete, a second
/// add, a remove of a reaction never added; and they are not logged.
pub async fn idempotent_repeats(store: &dyn MessageStore, run: &Run) {
    let room = run.room("repeat");
    let (a, b) = (run.user("pa"), run.user("pb"));
    let since = post(store, &room, &a, "anchor").await;
    let m = post(store, &room, &a, "to be deleted twice").await;

    let added = apply(store, &room, &since.message_id, &b, react("👍", true))
        .await
        .expect("add");
    let again = apply(store, &room, &since.message_id, &b, react("👍", true))
        .await
        .expect("add again");
    assert!(added.effective && !again.effective, "lifecycle: add twice");
    assert!(
        matches!(
            again.event,
            RoomEvent::Reaction {
                count: 1,
                added: true,
                ..
            }
        ),
        "lifecycle: a repeated add answers the current count: {:?}",
        again.event
    );
    assert_eq!(again.message.reactions, vec![reaction("👍", &[&b])]);
    let absent = apply(store, &room, &since.message_id, &a, react("👍", false))
        .await
        .expect("remove absent");
    assert!(!absent.effective, "lifecycle: removing an absent reaction");
    assert!(
        matches!(
            absent.event,
            RoomEvent::Reaction {
                count: 1,
                added: false,
                ..
            }
        ),
        "{:?}",
        absent.event
    );
    let never = apply(store, &room, &since.message_id, &a, react("🎉", false))
        .await
        .expect("remove an emoji nobody shows");
    assert!(!never.effective);
    assert!(matches!(never.event, RoomEvent::Reaction { count: 0, .. }));
    let removed = apply(store, &room, &since.message_id, &b, react("👍", false))
        .await
        .expect("remove");
    assert!(removed.effective);
    assert!(matches!(
        removed.event,
        RoomEvent::Reaction {
            count: 0,
            added: false,
            ..
        }
    ));
    assert!(
        removed.message.reactions.is_empty(),
        "lifecycle: an emoji nobody shows any more is gone"
    );

    let t1 = now_ms();
    let first = apply_at(store, &room, &m.message_id, &a, ChangeKind::Delete, t1)
        .await
        .expect("delete");
    let second = apply_at(
        store,
        &room,
        &m.message_id,
        &a,
        ChangeKind::Delete,
        t1 + 5000,
    )
    .await
    .expect("delete again is harmless");
    assert!(
        first.effective && !second.effective,
        "lifecycle: delete twice"
    );
    assert_eq!(
        second.event, first.event,
        "lifecycle: a repeated delete answers the first deletedAt"
    );
    assert!(second.message.deleted);

    let log = store
        .changes_since(&room, &since.message_id, 100)
        .await
        .expect("changes_since")
        .expect("known");
    assert_eq!(
        log.len(),
        2,
        "lifecycle: only effective changes are logged (add, remove of since; the delete is of a later message): {log:?}"
    );
}

/// Reactions list their users oldest first, newest last, at most `MAX_REACTION_USERS`; a
/// user who removes and adds again moves to the end.
pub async fn reaction_users(store: &dyn MessageStore, run: &Run) {
    let room = run.room("crowd");
    let author = run.user("ca");
    let m = post(store, &room, &author, "react to me").await;
    let users: Vec<UserId> = (0..MAX_REACTION_USERS + 5)
        .map(|i| run.user(&format!("c{i:02}")))
        .collect();
    for u in &users {
        apply(store, &room, &m.message_id, u, react("🔥", true))
            .await
            .expect("add");
    }
    apply(store, &room, &m.message_id, &users[0], react("🔥", false))
        .await
        .expect("remove");
    let back = apply(store, &room, &m.message_id, &users[0], react("🔥", true))
        .await
        .expect("add again");
    assert!(
        back.effective,
        "lifecycle: a user cut from the shown list still removes and adds"
    );
    let r = &get(store, &room, &m.message_id).await.reactions;
    assert_eq!(r.len(), 1);
    assert_eq!(
        r[0].count,
        users.len() as u64,
        "lifecycle: the count is every user"
    );
    let mut newest: Vec<UserId> = users[1..].to_vec();
    newest.push(users[0].clone());
    let newest = newest[newest.len() - MAX_REACTION_USERS..].to_vec();
    assert_eq!(
        r[0].user_ids, newest,
        "lifecycle: the newest {MAX_REACTION_USERS} users, newest last"
    );
    // A user in the cut part removes: the count drops, the list stays the newest.
    let gone = apply(store, &room, &m.message_id, &users[1], react("🔥", false))
        .await
        .expect("remove a user not shown");
    assert!(gone.effective);
    assert!(
        matches!(gone.event, RoomEvent::Reaction { count, .. } if count == users.len() as u64 - 1)
    );
}

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

/// The entries of these messages among the pending ones.
async fn entries_of(store: &dyn MessageStore, ids: &[&MessageId]) -> Vec<OutboxEntry> {
    store
        .outbox_pending(100_000)
        .await
        .expect("outbox_pending")
        .into_iter()
        .filter(|e| ids.contains(&&e.message_id))
        .collect()
}

/// Outbox (SPEC 10): an effective edit or delete writes exactly one entry of its event
/// (receivers: the participants but the author), a delete blanks the text of the message's
/// pending entries, repeats and reactions and read markers write none, a full outbox refuses
/// an edit (and changes nothing); the deleted text is gone from the backend's raw data; the
/// changes survive a restart.
pub async fn lifecycle_outbox(backend: &dyn Backend, run: &Run) {
    let unbounded = Some(OutboxConfig {
        max_pending: u64::MAX,
    });
    let store = backend.open(unbounded).await.expect("open with outbox");
    let room = run.room("life-outbox");
    let (a, b, c) = (run.user("xa"), run.user("xb"), run.user("xc"));
    for u in [&a, &b, &c] {
        store.add_member(&room, u).await.expect("add_member");
    }
    let secret = format!("{}-secret-text", run.room("s"));
    let m = post(&*store, &room, &a, &format!("{secret} as sent")).await;
    let other = post(&*store, &room, &b, "stays").await;
    assert!(
        backend.raw_contains(&format!("{secret} as sent")).await,
        "lifecycle: raw_contains finds a stored text"
    );
    let sent = entries_of(&*store, &[&m.message_id]).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].event, OutboxEvent::Sent);

    let t_edit = now_ms();
    let edited_text = format!("{secret} as edited");
    apply_at(
        &*store,
        &room,
        &m.message_id,
        &a,
        edit(&edited_text),
        t_edit,
    )
    .await
    .expect("edit");
    let entries = entries_of(&*store, &[&m.message_id]).await;
    assert_eq!(
        entries.len(),
        2,
        "lifecycle: an edit writes one entry: {entries:?}"
    );
    let e = &entries[1];
    assert!(
        e.seq > sent[0].seq,
        "lifecycle: the edit's entry comes after the message's"
    );
    assert_eq!(
        (
            e.event,
            e.message.as_str(),
            e.timestamp,
            &e.sender_id,
            &e.room_id
        ),
        (OutboxEvent::Edited, edited_text.as_str(), t_edit, &a, &room),
        "lifecycle: the edit's entry"
    );
    assert_eq!(
        e.receiver_ids,
        vec![b.clone(), c.clone()],
        "lifecycle: receivers: all but the author"
    );
    assert_eq!(e.receiver_id, None);

    // Reactions, read markers, refusals write no entry.
    apply(&*store, &room, &m.message_id, &b, react("👍", true))
        .await
        .expect("react");
    store
        .mark_read(marker(&room, &b, &m.message_id, now_ms()))
        .await
        .expect("mark_read");
    assert!(
        apply(&*store, &room, &m.message_id, &b, ChangeKind::Delete)
            .await
            .is_err()
    );
    assert_eq!(entries_of(&*store, &[&m.message_id]).await.len(), 2);

    let t_delete = now_ms();
    apply_at(
        &*store,
        &room,
        &m.message_id,
        &a,
        ChangeKind::Delete,
        t_delete,
    )
    .await
    .expect("delete");
    let entries = entries_of(&*store, &[&m.message_id]).await;
    assert_eq!(
        entries.len(),
        3,
        "lifecycle: a delete writes one entry: {entries:?}"
    );
    let d = &entries[2];
    assert_eq!(
        (d.event, d.message.as_str(), d.timestamp, &d.sender_id),
        (OutboxEvent::Deleted, "", t_delete, &a),
        "lifecycle: the delete's entry"
    );
    assert_eq!(d.receiver_ids, vec![b.clone(), c.clone()]);
    assert_eq!(
        entries.iter().map(|e| e.event).collect::<Vec<_>>(),
        [OutboxEvent::Sent, OutboxEvent::Edited, OutboxEvent::Deleted]
    );
    assert!(
        entries.iter().all(|e| e.message.is_empty()),
        "lifecycle: a delete blanks the text of the message's pending entries: {entries:?}"
    );
    apply(&*store, &room, &m.message_id, &a, ChangeKind::Delete)
        .await
        .expect("delete again");
    assert_eq!(
        entries_of(&*store, &[&m.message_id]).await.len(),
        3,
        "lifecycle: a repeated delete writes no entry"
    );
    for text in [format!("{secret} as sent"), edited_text.clone()] {
        assert!(
            !backend.raw_contains(&text).await,
            "lifecycle: the deleted text {text:?} is gone from the backend's raw data"
        );
    }
    assert!(backend.raw_contains("stays").await);

    // In a room of two, the single receiver is the other participant.
    let pair = run.room("life-pair");
    store.add_member(&pair, &a).await.expect("add_member");
    store.add_member(&pair, &b).await.expect("add_member");
    let p = post(&*store, &pair, &b, "to a").await;
    apply(&*store, &pair, &p.message_id, &b, edit("to a, edited"))
        .await
        .expect("edit");
    let pe = entries_of(&*store, &[&p.message_id]).await;
    assert_eq!(pe.len(), 2);
    assert_eq!(
        (pe[1].receiver_id.as_ref(), &pe[1].receiver_ids),
        (Some(&a), &vec![a.clone()])
    );

    // Drain what this property wrote.
    let mine = entries_of(&*store, &[&m.message_id, &p.message_id, &other.message_id]).await;
    let seqs: Vec<u64> = mine.iter().map(|e| e.seq).collect();
    store.outbox_mark_sent(&seqs).await.expect("mark_sent");
    store.close().await;

    // The changes survive a restart.
    let store = backend.open(None).await.expect("reopen");
    let kept = get(&*store, &room, &m.message_id).await;
    assert!(
        kept.deleted && kept.message.as_str().is_empty(),
        "lifecycle: a tombstone survives a restart"
    );
    assert_eq!(kept.reactions, vec![reaction("👍", &[&b])]);
    assert_eq!(
        get(&*store, &pair, &p.message_id).await.message.as_str(),
        "to a, edited",
        "lifecycle: an edit survives a restart"
    );
    assert_eq!(
        store.receipts(&room).await.expect("receipts").len(),
        1,
        "lifecycle: read markers survive a restart"
    );
    // Without the outbox, changes write no entries.
    let q = post(&*store, &pair, &a, "quiet").await;
    apply(&*store, &pair, &q.message_id, &a, edit("quiet, edited"))
        .await
        .expect("edit");
    apply(&*store, &pair, &q.message_id, &a, ChangeKind::Delete)
        .await
        .expect("delete");
    store.close().await;
    let store = backend.open(unbounded).await.expect("reopen with outbox");
    assert!(
        entries_of(&*store, &[&q.message_id]).await.is_empty(),
        "lifecycle: a store without the outbox writes no change entries"
    );
    store.close().await;

    // A full outbox refuses an edit or delete, which then changes nothing; a reaction (no
    // entry) still goes through.
    let full = backend
        .open(Some(OutboxConfig { max_pending: 1 }))
        .await
        .expect("open bounded");
    let r = post(&*full, &pair, &a, "fills the outbox").await;
    let got = apply(&*full, &pair, &r.message_id, &a, edit("refused")).await;
    assert!(
        matches!(got, Err(StoreError::OutboxFull(_))),
        "lifecycle: a full outbox refuses an edit: {got:?}"
    );
    let got = apply(&*full, &pair, &r.message_id, &a, ChangeKind::Delete).await;
    assert!(
        matches!(got, Err(StoreError::OutboxFull(_))),
        "lifecycle: a full outbox refuses a delete: {got:?}"
    );
    let now = get(&*full, &pair, &r.message_id).await;
    assert_eq!(
        (now.message.as_str(), now.edited_at, now.deleted),
        ("fills the outbox", None, false),
        "lifecycle: a refused edit or delete changes nothing"
    );
    apply(&*full, &pair, &r.message_id, &b, react("👍", true))
        .await
        .expect("a reaction needs no outbox entry");
    let left = entries_of(&*full, &[&r.message_id]).await;
    assert_eq!(left.len(), 1);
    full.outbox_mark_sent(&[left[0].seq])
        .await
        .expect("mark_sent");
    full.close().await;
}

/// Changes racing on one message (from two instances of a shared backend): every reaction
/// of distinct users counts once, the change log has one entry each, the `rev`s are
/// distinct, and no more than `MAX_REACTIONS_PER_MESSAGE` distinct emoji get in.
pub async fn racing_changes(backend: &dyn Backend, run: &Run) {
    let one = backend.open(None).await.expect("open");
    let two = if backend.shared() {
        backend.open(None).await.expect("open a second instance")
    } else {
        one.clone()
    };
    let room = run.room("race");
    let author = run.user("ra0");
    let anchor = post(&*one, &room, &author, "anchor").await;
    let m = anchor.message_id.clone();
    const USERS: usize = 24;
    let tasks = (0..USERS).map(|i| {
        let store: Arc<dyn MessageStore> = if i % 2 == 0 { one.clone() } else { two.clone() };
        let (room, m, user) = (room.clone(), m.clone(), run.user(&format!("racer{i}")));
        tokio::spawn(async move {
            // Everyone on one emoji, and each on an emoji of its own (only 19 more fit).
            let shared = apply(&*store, &room, &m, &user, react("🏁", true)).await;
            let own = apply(&*store, &room, &m, &user, react(&format!("own{i}"), true)).await;
            (shared, own)
        })
    });
    let mut revs = HashSet::new();
    let (mut own_ok, mut own_refused) = (0, 0);
    for t in futures::future::join_all(tasks).await {
        let (shared, own) = t.expect("racer");
        let shared = shared.expect("a reaction on a shown emoji");
        assert!(shared.effective);
        assert!(
            revs.insert(shared.message.rev),
            "lifecycle: racing changes get distinct revs"
        );
        match own {
            Ok(c) => {
                own_ok += 1;
                assert!(revs.insert(c.message.rev), "lifecycle: distinct revs");
            }
            Err(StoreError::TooManyReactions) => own_refused += 1,
            Err(e) => panic!("lifecycle: racing reaction failed: {e}"),
        }
    }
    assert_eq!(
        (own_ok, own_refused),
        (
            MAX_REACTIONS_PER_MESSAGE - 1,
            USERS + 1 - MAX_REACTIONS_PER_MESSAGE
        ),
        "lifecycle: racing reactions respect the bound"
    );
    let now = get(&*one, &room, &m).await;
    assert_eq!(now.reactions.len(), MAX_REACTIONS_PER_MESSAGE);
    assert_eq!(
        now.reactions
            .iter()
            .find(|r| r.emoji.as_str() == "🏁")
            .map(|r| r.count),
        Some(USERS as u64),
        "lifecycle: racing reactions each count once"
    );
    let log = one
        .changes_since(&room, &m, 1000)
        .await
        .expect("changes_since")
        .expect("known");
    assert_eq!(
        log.len(),
        USERS + MAX_REACTIONS_PER_MESSAGE - 1,
        "lifecycle: one log entry per effective racing change"
    );
    // The logged counts of the shared emoji are 1..=USERS in log order.
    let counts: Vec<u64> = log
        .iter()
        .filter_map(|e| match e {
            RoomEvent::Reaction { emoji, count, .. } if emoji.as_str() == "🏁" => Some(*count),
            _ => None,
        })
        .collect();
    assert_eq!(
        counts,
        (1..=USERS as u64).collect::<Vec<_>>(),
        "lifecycle: the log replays the counts in order"
    );
    one.close().await;
    if backend.shared() {
        two.close().await;
    }
}

/// Every lifecycle property on one open store, then those that open their own.
pub async fn lifecycle(backend: &dyn Backend, run: &Run) {
    let store = backend.open(None).await.expect("open");
    changes_read_back(&*store, run).await;
    refusals(&*store, run).await;
    idempotent_repeats(&*store, run).await;
    reaction_users(&*store, run).await;
    change_log(&*store, run).await;
    read_markers_and_unread(&*store, run).await;
    store.close().await;
    racing_changes(backend, run).await;
    lifecycle_outbox(backend, run).await;
}

/// The unread count of `reader` in `room` as history shows it: messages of others after
/// `marker` (all without one), tombstones not counted.
async fn unread_in_history(
    store: &dyn MessageStore,
    room: &RoomId,
    reader: &UserId,
    marker: Option<&MessageId>,
) -> u64 {
    let all = store.history(room, 10_000, None).await.expect("history");
    let start = marker.map_or(0, |m| {
        all.iter()
            .position(|x| &x.message_id == m)
            .expect("the marker's message is in history")
            + 1
    });
    all[start..]
        .iter()
        .filter(|m| &m.user_id != reader && !m.deleted)
        .count() as u64
}

async fn unread_of(store: &dyn MessageStore, room: &RoomId, reader: &UserId) -> Option<u64> {
    store
        .rooms_of(reader)
        .await
        .expect("rooms_of")
        .into_iter()
        .find(|r| &r.room_id == room)
        .expect("the reader takes part in the room")
        .unread_count
}

/// The lifecycle on messages written before it existed (an earlier schema or version of the
/// backend): `old` are message ids of `room` (oldest first, at least three) by `author`,
/// never changed; `reader` takes part in the room and has no read marker. They read back as
/// never edited, not deleted, without reply or reactions; they can be replied to, edited,
/// reacted to, deleted, marked read; the change log and the unread counts cover them.
pub async fn lifecycle_on_old_messages(
    store: &dyn MessageStore,
    room: &RoomId,
    old: &[MessageId],
    author: &UserId,
    reader: &UserId,
) {
    assert!(old.len() >= 3, "old messages: three at least");
    for id in old {
        let m = get(store, room, id).await;
        assert_eq!(&m.user_id, author, "old messages: written by the author");
        assert!(
            m.edited_at.is_none() && !m.deleted && m.reply_to.is_none() && m.reactions.is_empty(),
            "old messages: read as never changed: {m:?}"
        );
    }
    assert_eq!(
        unread_of(store, room, reader).await,
        Some(unread_in_history(store, room, reader, None).await),
        "old messages: unread without a marker"
    );
    let reply = store
        .append(Message {
            reply_to: Some(old[0].clone()),
            ..message(room, reader, "a reply to an old message", None)
        })
        .await
        .expect("append a reply to an old message")
        .message;
    let edited = apply(store, room, &old[0], author, edit("old, edited"))
        .await
        .expect("edit an old message");
    assert!(edited.effective && edited.message.message.as_str() == "old, edited");
    let reacted = apply(store, room, &old[1], reader, react("👍", true))
        .await
        .expect("react to an old message");
    assert!(reacted.effective);
    let last = old.last().expect("old messages");
    let deleted = apply(store, room, last, author, ChangeKind::Delete)
        .await
        .expect("delete an old message");
    assert!(deleted.effective && deleted.message.deleted);
    let refused = apply(store, room, &old[1], reader, ChangeKind::Delete).await;
    assert!(
        matches!(refused, Err(StoreError::NotAuthor)),
        "old messages: the author rule holds: {refused:?}"
    );

    let history = store.history(room, 10_000, None).await.expect("history");
    let find = |id: &MessageId| {
        history
            .iter()
            .find(|m| &m.message_id == id)
            .expect("in history")
    };
    assert_eq!(find(&old[0]).message.as_str(), "old, edited");
    assert!(find(&old[0]).edited_at.is_some());
    assert_eq!(find(&old[1]).reactions, vec![reaction("👍", &[reader])]);
    assert!(find(last).deleted && find(last).message.as_str().is_empty());
    assert_eq!(find(&reply.message_id).reply_to, Some(old[0].clone()));

    let read = store
        .mark_read(marker(room, reader, &old[0], now_ms()))
        .await
        .expect("mark an old message read");
    assert!(read.moved);
    assert_eq!(
        unread_of(store, room, reader).await,
        Some(unread_in_history(store, room, reader, Some(&old[0])).await),
        "old messages: unread after the marker, the deleted one not counted"
    );
    assert_eq!(
        store.receipts(room).await.expect("receipts"),
        vec![read.marker.clone()]
    );
    let log = store
        .changes_since(room, last, 100)
        .await
        .expect("changes_since")
        .expect("an old message is a known since");
    let kinds: Vec<(&str, &MessageId)> = log
        .iter()
        .map(|e| match e {
            RoomEvent::Edited { message_id, .. } => ("edited", message_id),
            RoomEvent::Deleted { message_id, .. } => ("deleted", message_id),
            RoomEvent::Reaction { message_id, .. } => ("reaction", message_id),
            other => panic!("old messages: unexpected event {other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("edited", &old[0]),
            ("reaction", &old[1]),
            ("deleted", last)
        ],
        "old messages: the change log covers them"
    );
}
