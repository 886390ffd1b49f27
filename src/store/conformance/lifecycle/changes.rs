//! Edits, tombstones, replies and reactions read back; refusals; repeats; reaction users.

use super::{apply, apply_at, edit, emoji, get, post, react, reaction};
use crate::domain::{
    ChangeKind, MAX_REACTION_USERS, MAX_REACTIONS_PER_MESSAGE, Message, MessageBody, MessageId,
    RoomEvent, UserId, now_ms,
};
use crate::store::conformance::{Run, message};
use crate::store::{MessageStore, StoreError};

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
