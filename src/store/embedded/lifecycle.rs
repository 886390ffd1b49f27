//! The embedded store's message lifecycle (SPEC 10) on the writer's connection, inside the
//! batch's transaction: edits, deletes (tombstones), reactions, the room's change log and
//! read markers (the store's lifecycle contract, `store` module docs).

use rusqlite::{Connection, OptionalExtension, params};

use super::writes::participants;
use super::{Fields, sqlite_error, to_json};
use crate::domain::{
    ChangeKind, Emoji, MAX_REACTIONS_PER_MESSAGE, Message, MessageChange, Reaction, ReadMarker,
    RoomEvent, UserId,
};
use crate::store::batch::OutboxCount;
use crate::store::rows::{corrupt, message_columns, message_from_row};
use crate::store::{Changed, MarkedRead, OutboxEvent, StoreError, receivers_of};

/// The message `id` of `room`, in its current state (reactions included).
pub(super) fn message(
    conn: &Connection,
    room: &str,
    id: &str,
) -> Result<Option<Message>, StoreError> {
    let mut stmt = conn
        .prepare_cached(concat!(
            "SELECT ",
            message_columns!(""),
            " FROM messages WHERE message_id = ?1 AND room_id = ?2"
        ))
        .map_err(sqlite_error)?;
    let mut rows = stmt.query([id, room]).map_err(sqlite_error)?;
    let Some(row) = rows.next().map_err(sqlite_error)? else {
        return Ok(None);
    };
    let mut m = message_from_row(&Fields(row))?;
    m.reactions = reactions(conn, id)?;
    Ok(Some(m))
}

fn reactions(conn: &Connection, id: &str) -> Result<Vec<Reaction>, StoreError> {
    let pairs: Vec<(String, String)> = conn
        .prepare_cached("SELECT emoji, user_id FROM reactions WHERE message_id = ?1 ORDER BY rowid")
        .and_then(|mut s| s.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(sqlite_error)?;
    let pairs = pairs
        .into_iter()
        .map(|(e, u)| {
            Ok((
                Emoji::parse(&e).map_err(|_| corrupt("emoji"))?,
                UserId::parse(&u).map_err(|_| corrupt("reaction user id"))?,
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Reaction::group(pairs))
}

/// Applies one change (refusals are `Err` with `StoreError::is_refusal`).
pub(super) fn change(
    conn: &Connection,
    c: &MessageChange,
    count: &mut OutboxCount,
) -> Result<Changed, StoreError> {
    let (room, id, user) = (
        c.room_id.as_str(),
        c.message_id.as_str(),
        c.user_id.as_str(),
    );
    let current = message(conn, room, id)?.ok_or(StoreError::NotFound)?;
    let author = current.user_id.as_str() == user;
    let at = c.at as i64;
    let (event, effective) = match &c.kind {
        ChangeKind::Edit(text) => {
            if current.deleted {
                return Err(StoreError::NotFound);
            }
            if !author {
                return Err(StoreError::NotAuthor);
            }
            if count.enabled() {
                count.admit()?;
                outbox_entry(conn, &current, OutboxEvent::Edited, text.as_str(), at)?;
            }
            conn.prepare_cached(
                "UPDATE messages SET message = ?1, edited_at = ?2 WHERE message_id = ?3",
            )
            .and_then(|mut s| s.execute(params![text.as_str(), at, id]))
            .map_err(sqlite_error)?;
            last_message_text(conn, &current, text.as_str())?;
            log(conn, c, "edited", None, None)?;
            let event = RoomEvent::Edited {
                room_id: c.room_id.clone(),
                message_id: c.message_id.clone(),
                message: text.clone(),
                edited_at: c.at,
                user_id: c.user_id.clone(),
            };
            (event, true)
        }
        ChangeKind::Delete => {
            if !author {
                return Err(StoreError::NotAuthor);
            }
            if current.deleted {
                let deleted_at: i64 = conn
                    .prepare_cached("SELECT deleted_at FROM messages WHERE message_id = ?1")
                    .and_then(|mut s| s.query_row([id], |r| r.get(0)))
                    .map_err(sqlite_error)?;
                let event = RoomEvent::Deleted {
                    room_id: c.room_id.clone(),
                    message_id: c.message_id.clone(),
                    deleted_at: deleted_at as u64,
                    user_id: c.user_id.clone(),
                };
                (event, false)
            } else {
                if count.enabled() {
                    count.admit()?;
                    outbox_entry(conn, &current, OutboxEvent::Deleted, "", at)?;
                }
                // The text goes from the row, from the entries still pending and from the
                // room's last message.
                conn.prepare_cached(
                    "UPDATE messages SET message = '', deleted_at = ?1 WHERE message_id = ?2",
                )
                .and_then(|mut s| s.execute(params![at, id]))
                .map_err(sqlite_error)?;
                conn.prepare_cached("UPDATE outbox SET message = '' WHERE message_id = ?1")
                    .and_then(|mut s| s.execute([id]))
                    .map_err(sqlite_error)?;
                last_message_text(conn, &current, "")?;
                log(conn, c, "deleted", None, None)?;
                let event = RoomEvent::Deleted {
                    room_id: c.room_id.clone(),
                    message_id: c.message_id.clone(),
                    deleted_at: c.at,
                    user_id: c.user_id.clone(),
                };
                (event, true)
            }
        }
        ChangeKind::React { emoji, add } => {
            if current.deleted {
                return Err(StoreError::NotFound);
            }
            let shown = current.reactions.iter().find(|r| &r.emoji == emoji);
            let mine = shown.is_some_and(|r| r.user_ids.contains(&c.user_id))
                || (shown.is_some_and(|r| r.count as usize > r.user_ids.len())
                    && reacted(conn, id, emoji.as_str(), user)?);
            let effective = mine != *add;
            if effective {
                if *add {
                    if shown.is_none() && current.reactions.len() >= MAX_REACTIONS_PER_MESSAGE {
                        return Err(StoreError::TooManyReactions);
                    }
                    conn.prepare_cached(
                        "INSERT INTO reactions (message_id, emoji, user_id, at) VALUES (?1, ?2, ?3, ?4)",
                    )
                    .and_then(|mut s| s.execute(params![id, emoji.as_str(), user, at]))
                    .map_err(sqlite_error)?;
                } else {
                    conn.prepare_cached(
                        "DELETE FROM reactions WHERE message_id = ?1 AND emoji = ?2 AND user_id = ?3",
                    )
                    .and_then(|mut s| s.execute(params![id, emoji.as_str(), user]))
                    .map_err(sqlite_error)?;
                }
            }
            let before = shown.map_or(0, |r| r.count);
            let count_now = match (effective, add) {
                (false, _) => before,
                (true, true) => before + 1,
                (true, false) => before - 1,
            };
            if effective {
                log(conn, c, "reaction", Some(*add), Some(count_now))?;
            }
            let event = RoomEvent::Reaction {
                room_id: c.room_id.clone(),
                message_id: c.message_id.clone(),
                emoji: emoji.clone(),
                user_id: c.user_id.clone(),
                added: *add,
                count: count_now,
            };
            (event, effective)
        }
    };
    let mut message = message(conn, room, id)?.ok_or(StoreError::NotFound)?;
    if effective {
        message.rev = conn.last_insert_rowid() as u64;
    }
    Ok(Changed {
        event,
        message,
        effective,
    })
}

/// Whether `user` reacted with `emoji` (for reactions whose user list was cut to the newest).
fn reacted(conn: &Connection, id: &str, emoji: &str, user: &str) -> Result<bool, StoreError> {
    conn.prepare_cached(
        "SELECT 1 FROM reactions WHERE message_id = ?1 AND emoji = ?2 AND user_id = ?3",
    )
    .and_then(|mut s| s.query_row([id, emoji, user], |_| Ok(())).optional())
    .map(|r| r.is_some())
    .map_err(sqlite_error)
}

/// Appends the change to the room's log (the last statement of a change, so its rowid is the
/// message's new `rev`).
fn log(
    conn: &Connection,
    c: &MessageChange,
    kind: &str,
    added: Option<bool>,
    count: Option<u64>,
) -> Result<(), StoreError> {
    let emoji = match &c.kind {
        ChangeKind::React { emoji, .. } => Some(emoji.as_str()),
        _ => None,
    };
    conn.prepare_cached(
        "INSERT INTO message_changes (room_id, message_id, kind, user_id, emoji, added, count, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut s| {
        s.execute(params![
            c.room_id.as_str(),
            c.message_id.as_str(),
            kind,
            c.user_id.as_str(),
            emoji,
            added,
            count.map(|n| n as i64),
            c.at as i64
        ])
    })
    .map(|_| ())
    .map_err(sqlite_error)
}

/// The room's `lastMessage` text follows an edit or delete of the message it shows.
fn last_message_text(conn: &Connection, m: &Message, text: &str) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE rooms SET last_content = ?1
         WHERE room_id = ?2 AND last_timestamp = ?3 AND last_sender = ?4",
    )
    .and_then(|mut s| {
        s.execute(params![
            text,
            m.room_id.as_str(),
            m.timestamp as i64,
            m.user_id.as_str()
        ])
    })
    .map(|_| ())
    .map_err(sqlite_error)
}

/// The outbox entry of an edit or delete; receivers: the room's participants but the author.
fn outbox_entry(
    conn: &Connection,
    m: &Message,
    event: OutboxEvent,
    text: &str,
    at: i64,
) -> Result<(), StoreError> {
    let members = participants(conn, m.room_id.as_str()).map_err(sqlite_error)?;
    let (receiver, receivers) = receivers_of(&members, m.user_id.as_str());
    conn.prepare_cached(
        "INSERT INTO outbox (message_id, room_id, sender_id, receiver_id, receiver_ids,
            message, timestamp, event)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut s| {
        s.execute(params![
            m.message_id.as_str(),
            m.room_id.as_str(),
            m.user_id.as_str(),
            receiver,
            to_json(&receivers).unwrap_or_else(|_| "[]".into()),
            text,
            at,
            event.as_str()
        ])
    })
    .map(|_| ())
    .map_err(sqlite_error)
}

/// Moves the user's marker forward to `m.message_id` (never backwards).
pub(super) fn mark_read(conn: &Connection, m: &ReadMarker) -> Result<MarkedRead, StoreError> {
    let (room, user) = (m.room_id.as_str(), m.user_id.as_str());
    let seq: i64 = conn
        .prepare_cached("SELECT seq FROM messages WHERE message_id = ?1 AND room_id = ?2")
        .and_then(|mut s| {
            s.query_row([m.message_id.as_str(), room], |r| r.get(0))
                .optional()
        })
        .map_err(sqlite_error)?
        .ok_or(StoreError::NotFound)?;
    let current: Option<(String, i64, i64)> = conn
        .prepare_cached(
            "SELECT message_id, seq, read_at FROM read_markers WHERE room_id = ?1 AND user_id = ?2",
        )
        .and_then(|mut s| {
            s.query_row([room, user], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
        })
        .map_err(sqlite_error)?;
    if let Some((message, current_seq, read_at)) = current
        && current_seq >= seq
    {
        return Ok(MarkedRead {
            marker: crate::store::rows::read_marker(&m.room_id, user, &message, read_at)?,
            moved: false,
        });
    }
    conn.prepare_cached(
        "INSERT INTO read_markers (room_id, user_id, message_id, seq, read_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(room_id, user_id) DO UPDATE SET message_id = excluded.message_id,
            seq = excluded.seq, read_at = excluded.read_at",
    )
    .and_then(|mut s| {
        s.execute(params![
            room,
            user,
            m.message_id.as_str(),
            seq,
            m.read_at as i64
        ])
    })
    .map_err(sqlite_error)?;
    Ok(MarkedRead {
        marker: m.clone(),
        moved: true,
    })
}
