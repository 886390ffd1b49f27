//! Row decoding of the SQL backends (embedded SQLite, PostgreSQL): `messages`, `rooms` and
//! `outbox` rows become domain values the same way in both, whatever sqlx row type carries
//! them. The column lists are here too ([`message_columns!`], [`room_columns!`],
//! [`outbox_columns!`]), so a query selects the columns in the order the decoder reads them.

use std::collections::HashMap;

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{Key, OutboxEntry, OutboxEvent, StoreError, key_of};
use crate::domain::{
    ClientMessageId, Emoji, LastMessage, Message, MessageBody, MessageId, MessageType, Reaction,
    ReadMarker, Room, RoomEvent, RoomId, RoomType, UserId, Username,
};

/// The `messages` columns `message_from_row` reads, each with the prefix `$p` (`"m."`).
macro_rules! message_columns {
    ($p:literal) => {
        concat!(
            $p,
            "message_id, ",
            $p,
            "room_id, ",
            $p,
            "user_id, ",
            $p,
            "username, ",
            $p,
            "message, ",
            $p,
            "message_type, ",
            $p,
            "timestamp, ",
            $p,
            "client_message_id, ",
            $p,
            "reply_to, ",
            $p,
            "edited_at, ",
            $p,
            "deleted_at"
        )
    };
}

/// The `rooms` columns `room_from_row` reads, each with the prefix `$p` (`"r."`).
macro_rules! room_columns {
    ($p:literal) => {
        concat!(
            $p,
            "room_id, ",
            $p,
            "type, ",
            $p,
            "private, ",
            $p,
            "created_at, ",
            $p,
            "updated_at, ",
            $p,
            "last_content, ",
            $p,
            "last_timestamp, ",
            $p,
            "last_sender"
        )
    };
}

/// The `outbox` columns `outbox_entry_from_row` reads (`receiver_ids` as JSON text).
macro_rules! outbox_columns {
    ($receiver_ids:literal) => {
        concat!(
            "seq, message_id, room_id, sender_id, receiver_id, ",
            $receiver_ids,
            ", message, timestamp, event"
        )
    };
}

pub(crate) use {message_columns, outbox_columns, room_columns};

/// What the decoders read of a row: text, integers and flags by column index. Every sqlx row
/// whose database decodes those types is one.
pub(crate) trait Columns {
    fn text(&self, i: usize) -> Result<String, StoreError>;
    fn maybe_text(&self, i: usize) -> Result<Option<String>, StoreError>;
    fn int(&self, i: usize) -> Result<i64, StoreError>;
    fn maybe_int(&self, i: usize) -> Result<Option<i64>, StoreError>;
    fn flag(&self, i: usize) -> Result<bool, StoreError>;
}

impl<R> Columns for R
where
    R: Row,
    usize: ColumnIndex<R>,
    String: Type<R::Database> + for<'r> Decode<'r, R::Database>,
    i64: Type<R::Database> + for<'r> Decode<'r, R::Database>,
    bool: Type<R::Database> + for<'r> Decode<'r, R::Database>,
{
    fn text(&self, i: usize) -> Result<String, StoreError> {
        self.try_get(i).map_err(decode_error)
    }

    fn maybe_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        self.try_get(i).map_err(decode_error)
    }

    fn int(&self, i: usize) -> Result<i64, StoreError> {
        self.try_get(i).map_err(decode_error)
    }

    fn maybe_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        self.try_get(i).map_err(decode_error)
    }

    fn flag(&self, i: usize) -> Result<bool, StoreError> {
        self.try_get(i).map_err(decode_error)
    }
}

fn decode_error(e: sqlx::Error) -> StoreError {
    StoreError::Internal(e.to_string())
}

pub(crate) fn corrupt(what: &str) -> StoreError {
    StoreError::Internal(format!("stored {what} is not valid"))
}

/// A message from the columns of `message_columns!`.
pub(crate) fn message_from_row(row: &impl Columns) -> Result<Message, StoreError> {
    Ok(Message {
        message_id: MessageId::parse(&row.text(0)?).map_err(|_| corrupt("message id"))?,
        room_id: RoomId::parse(&row.text(1)?).map_err(|_| corrupt("room id"))?,
        user_id: UserId::parse(&row.text(2)?).map_err(|_| corrupt("user id"))?,
        username: Username::parse(&row.text(3)?).map_err(|_| corrupt("username"))?,
        message: MessageBody::from_stored(row.text(4)?),
        message_type: MessageType::parse_stored(&row.text(5)?)
            .ok_or_else(|| corrupt("message type"))?,
        timestamp: row.int(6)? as u64,
        client_message_id: row
            .maybe_text(7)?
            .and_then(|s| ClientMessageId::parse(&s).ok()),
        reply_to: row
            .maybe_text(8)?
            .map(|s| MessageId::parse(&s).map_err(|_| corrupt("reply id")))
            .transpose()?,
        edited_at: row.maybe_int(9)?.map(|t| t as u64),
        deleted: row.maybe_int(10)?.is_some(),
        reactions: Vec::new(),
        rev: 0,
    })
}

/// `(message_id, emoji, user_id)` rows, oldest first, as each message's reactions.
pub(crate) fn attach_reactions(
    messages: &mut [Message],
    rows: impl IntoIterator<Item = (String, String, String)>,
) -> Result<(), StoreError> {
    let mut by_message: HashMap<String, Vec<(Emoji, UserId)>> = HashMap::new();
    for (message, emoji, user) in rows {
        let emoji = Emoji::parse(&emoji).map_err(|_| corrupt("emoji"))?;
        let user = UserId::parse(&user).map_err(|_| corrupt("reaction user id"))?;
        by_message.entry(message).or_default().push((emoji, user));
    }
    for m in messages {
        if let Some(pairs) = by_message.remove(m.message_id.as_str()) {
            m.reactions = Reaction::group(pairs);
        }
    }
    Ok(())
}

/// A logged change as the event the members got (`store` lifecycle contract): `kind` is
/// `edited`, `deleted` or `reaction`; `text` the message's current text; `None` for an edit
/// of a message deleted since.
#[allow(clippy::too_many_arguments)]
pub(crate) fn change_event(
    room: &RoomId,
    kind: &str,
    message_id: &str,
    user_id: &str,
    emoji: Option<String>,
    added: Option<bool>,
    count: Option<i64>,
    at: i64,
    text: String,
    deleted: bool,
) -> Result<Option<RoomEvent>, StoreError> {
    let message_id = MessageId::parse(message_id).map_err(|_| corrupt("change message id"))?;
    let user_id = UserId::parse(user_id).map_err(|_| corrupt("change user id"))?;
    Ok(Some(match kind {
        "edited" if deleted => return Ok(None),
        "edited" => RoomEvent::Edited {
            room_id: room.clone(),
            message_id,
            message: MessageBody::from_stored(text),
            edited_at: at as u64,
            user_id,
        },
        "deleted" => RoomEvent::Deleted {
            room_id: room.clone(),
            message_id,
            deleted_at: at as u64,
            user_id,
        },
        "reaction" => RoomEvent::Reaction {
            room_id: room.clone(),
            message_id,
            emoji: Emoji::parse(emoji.as_deref().unwrap_or(""))
                .map_err(|_| corrupt("change emoji"))?,
            user_id,
            added: added.ok_or_else(|| corrupt("change"))?,
            count: count.ok_or_else(|| corrupt("change"))? as u64,
        },
        _ => return Err(corrupt("change kind")),
    }))
}

/// A read marker from `(user_id, message_id, read_at)`.
pub(crate) fn read_marker(
    room: &RoomId,
    user: &str,
    message: &str,
    read_at: i64,
) -> Result<ReadMarker, StoreError> {
    Ok(ReadMarker {
        room_id: room.clone(),
        user_id: UserId::parse(user).map_err(|_| corrupt("reader id"))?,
        message_id: MessageId::parse(message).map_err(|_| corrupt("read message id"))?,
        read_at: read_at as u64,
    })
}

/// Stored messages (rows of `message_columns!`) by their idempotency keys.
pub(crate) fn by_key(rows: &[impl Columns]) -> Result<HashMap<Key, Message>, StoreError> {
    let mut known = HashMap::with_capacity(rows.len());
    for row in rows {
        let m = message_from_row(row)?;
        if let Some(k) = key_of(&m) {
            known.insert(k, m);
        }
    }
    Ok(known)
}

/// A room from the columns of `room_columns!` and its participants (sorted).
pub(crate) fn room_from_row(
    row: &impl Columns,
    participants: Vec<UserId>,
) -> Result<Room, StoreError> {
    let last_message = match (row.maybe_text(5)?, row.maybe_int(6)?, row.maybe_text(7)?) {
        (Some(content), Some(ts), Some(sender)) => Some(LastMessage {
            content: MessageBody::from_stored(content),
            timestamp: ts as u64,
            sender_id: UserId::parse(&sender).map_err(|_| corrupt("sender id"))?,
        }),
        _ => None,
    };
    Ok(Room {
        room_id: RoomId::parse(&row.text(0)?).map_err(|_| corrupt("room id"))?,
        room_type: RoomType::parse(&row.text(1)?).map_err(|_| corrupt("room type"))?,
        participants,
        private: row.flag(2)?,
        last_message,
        created_at: row.int(3)? as u64,
        updated_at: row.int(4)? as u64,
        unread_count: None,
    })
}

/// User ids as stored.
pub(crate) fn user_ids<S: AsRef<str>>(ids: &[S]) -> Result<Vec<UserId>, StoreError> {
    ids.iter()
        .map(|s| UserId::parse(s.as_ref()).map_err(|_| corrupt("participant id")))
        .collect()
}

/// An outbox entry from the columns of `outbox_columns!`.
pub(crate) fn outbox_entry_from_row(row: &impl Columns) -> Result<OutboxEntry, StoreError> {
    let user = |s: &str| UserId::parse(s).map_err(|_| corrupt("outbox user id"));
    let receiver_ids: Vec<String> =
        serde_json::from_str(&row.text(5)?).map_err(|_| corrupt("outbox receivers"))?;
    Ok(OutboxEntry {
        seq: row.int(0)? as u64,
        event: OutboxEvent::parse(&row.text(8)?).ok_or_else(|| corrupt("outbox event"))?,
        message_id: MessageId::parse(&row.text(1)?).map_err(|_| corrupt("outbox message id"))?,
        room_id: RoomId::parse(&row.text(2)?).map_err(|_| corrupt("outbox room id"))?,
        sender_id: user(&row.text(3)?)?,
        receiver_id: row.maybe_text(4)?.map(|s| user(&s)).transpose()?,
        receiver_ids: receiver_ids
            .iter()
            .map(|s| user(s))
            .collect::<Result<_, _>>()?,
        message: row.text(6)?,
        timestamp: row.int(7)? as u64,
    })
}

/// `(room_id, user_id)` rows, sorted, as each room's participants.
pub(crate) fn members_by_room(rows: Vec<(String, String)>) -> HashMap<String, Vec<String>> {
    let mut members: HashMap<String, Vec<String>> = HashMap::new();
    for (room, user) in rows {
        members.entry(room).or_default().push(user);
    }
    members
}
