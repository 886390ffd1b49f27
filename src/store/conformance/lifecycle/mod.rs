//! The message lifecycle (SPEC 10, the store's lifecycle contract): edits, tombstones,
//! replies and reactions as `history`, `after` and `get_message` read them back; the
//! refusals; repeats that change nothing; the change log a `since` resume replays; read
//! markers, receipts and unread counts; the outbox entries of edits and deletes; the deleted
//! text gone from the backend's raw data; changes racing on one message (also between two
//! instances of a shared backend).
//!
//! Where each property lives:
//! - `changes.rs`: edits, tombstones, replies and reactions read back; refusals; repeats;
//!   the users of a reaction;
//! - `log.rs`: the change log (`changes_since`); read markers, receipts, unread counts;
//! - `outbox.rs`: the outbox entries of edits and deletes, the deleted text gone from the raw
//!   data, a restart;
//! - `races.rs`: changes racing on one message;
//! - `old.rs`: the lifecycle on messages written before it existed;
//! - here: the helpers they share and `lifecycle`, which runs them all.

mod changes;
mod log;
mod old;
mod outbox;
mod races;

pub use changes::{changes_read_back, idempotent_repeats, reaction_users, refusals};
pub use log::{change_log, read_markers_and_unread};
pub use old::lifecycle_on_old_messages;
pub use outbox::lifecycle_outbox;
pub use races::racing_changes;

use super::{Backend, Run, message};
use crate::domain::{
    ChangeKind, Emoji, Message, MessageBody, MessageChange, MessageId, Reaction, ReadMarker,
    RoomId, UserId, now_ms,
};
use crate::store::{Changed, MessageStore, StoreError};

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
