//! The lifecycle on messages written before it existed.

use super::{apply, edit, get, marker, react, reaction, unread_in_history, unread_of};
use crate::domain::{ChangeKind, Message, MessageId, RoomEvent, RoomId, UserId, now_ms};
use crate::store::conformance::message;
use crate::store::{MessageStore, StoreError};

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
