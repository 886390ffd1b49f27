//! The PostgreSQL store's message lifecycle (SPEC 10) on the writer's connection, inside the
//! batch's transaction (so under the writer lock that every instance's batch takes first):
//! edits, deletes (tombstones), reactions, the room's change log and read markers. The same
//! tables and steps as the embedded store (`embedded/lifecycle.rs`), statement for statement:
//! the store's lifecycle contract (`store` module docs).

use sqlx::postgres::PgConnection;

use super::{db_error, reads};
use crate::domain::{
    ChangeKind, MAX_REACTIONS_PER_MESSAGE, Message, MessageChange, ReadMarker, RoomEvent,
};
use crate::store::batch::OutboxCount;
use crate::store::rows::read_marker;
use crate::store::{Changed, MarkedRead, OutboxEvent, StoreError, receivers_of};

/// Applies one change (refusals are `Err` with `StoreError::is_refusal`, returned before
/// anything is written).
pub(super) async fn change(
    conn: &mut PgConnection,
    c: &MessageChange,
    count: &mut OutboxCount,
) -> Result<Changed, StoreError> {
    let (id, user) = (c.message_id.as_str(), c.user_id.as_str());
    let current = reads::message_in(&mut *conn, &c.room_id, &c.message_id)
        .await?
        .ok_or(StoreError::NotFound)?;
    let author = current.user_id.as_str() == user;
    let at = c.at as i64;
    let (event, rev) = match &c.kind {
        ChangeKind::Edit(text) => {
            if current.deleted {
                return Err(StoreError::NotFound);
            }
            if !author {
                return Err(StoreError::NotAuthor);
            }
            if count.enabled() {
                count.admit()?;
                outbox_entry(conn, &current, OutboxEvent::Edited, text.as_str(), at).await?;
            }
            sqlx::query("UPDATE messages SET message = $1, edited_at = $2 WHERE message_id = $3")
                .bind(text.as_str())
                .bind(at)
                .bind(id)
                .execute(&mut *conn)
                .await
                .map_err(db_error)?;
            last_message_text(conn, &current, text.as_str()).await?;
            let rev = log(conn, c, "edited", None, None).await?;
            let event = RoomEvent::Edited {
                room_id: c.room_id.clone(),
                message_id: c.message_id.clone(),
                message: text.clone(),
                edited_at: c.at,
                user_id: c.user_id.clone(),
            };
            (event, Some(rev))
        }
        ChangeKind::Delete => {
            if !author {
                return Err(StoreError::NotAuthor);
            }
            if current.deleted {
                let deleted_at: Option<i64> =
                    sqlx::query_scalar("SELECT deleted_at FROM messages WHERE message_id = $1")
                        .bind(id)
                        .fetch_one(&mut *conn)
                        .await
                        .map_err(db_error)?;
                let event = RoomEvent::Deleted {
                    room_id: c.room_id.clone(),
                    message_id: c.message_id.clone(),
                    deleted_at: deleted_at.unwrap_or(0) as u64,
                    user_id: c.user_id.clone(),
                };
                (event, None)
            } else {
                if count.enabled() {
                    count.admit()?;
                    outbox_entry(conn, &current, OutboxEvent::Deleted, "", at).await?;
                }
                // The text goes from the row, from the entries still pending and from the
                // room's last message.
                sqlx::query(
                    "UPDATE messages SET message = '', deleted_at = $1 WHERE message_id = $2",
                )
                .bind(at)
                .bind(id)
                .execute(&mut *conn)
                .await
                .map_err(db_error)?;
                sqlx::query("UPDATE outbox SET message = '' WHERE message_id = $1")
                    .bind(id)
                    .execute(&mut *conn)
                    .await
                    .map_err(db_error)?;
                last_message_text(conn, &current, "").await?;
                let rev = log(conn, c, "deleted", None, None).await?;
                let event = RoomEvent::Deleted {
                    room_id: c.room_id.clone(),
                    message_id: c.message_id.clone(),
                    deleted_at: c.at,
                    user_id: c.user_id.clone(),
                };
                (event, Some(rev))
            }
        }
        ChangeKind::React { emoji, add } => {
            if current.deleted {
                return Err(StoreError::NotFound);
            }
            let shown = current.reactions.iter().find(|r| &r.emoji == emoji);
            // Asked of the table, not of `user_ids` (which history cuts to the newest).
            let mine: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM reactions
                                 WHERE message_id = $1 AND emoji = $2 AND user_id = $3)",
            )
            .bind(id)
            .bind(emoji.as_str())
            .bind(user)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_error)?;
            let effective = mine != *add;
            if effective {
                if *add {
                    if shown.is_none() && current.reactions.len() >= MAX_REACTIONS_PER_MESSAGE {
                        return Err(StoreError::TooManyReactions);
                    }
                    sqlx::query(
                        "INSERT INTO reactions (message_id, emoji, user_id, at)
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(id)
                    .bind(emoji.as_str())
                    .bind(user)
                    .bind(at)
                    .execute(&mut *conn)
                    .await
                    .map_err(db_error)?;
                } else {
                    sqlx::query(
                        "DELETE FROM reactions WHERE message_id = $1 AND emoji = $2 AND user_id = $3",
                    )
                    .bind(id)
                    .bind(emoji.as_str())
                    .bind(user)
                    .execute(&mut *conn)
                    .await
                    .map_err(db_error)?;
                }
            }
            let before = shown.map_or(0, |r| r.count);
            let count_now = match (effective, add) {
                (false, _) => before,
                (true, true) => before + 1,
                (true, false) => before.saturating_sub(1),
            };
            let rev = if effective {
                Some(log(conn, c, "reaction", Some(*add), Some(count_now)).await?)
            } else {
                None
            };
            let event = RoomEvent::Reaction {
                room_id: c.room_id.clone(),
                message_id: c.message_id.clone(),
                emoji: emoji.clone(),
                user_id: c.user_id.clone(),
                added: *add,
                count: count_now,
            };
            (event, rev)
        }
    };
    let mut message = reads::message_in(&mut *conn, &c.room_id, &c.message_id)
        .await?
        .ok_or(StoreError::NotFound)?;
    if let Some(rev) = rev {
        message.rev = rev;
    }
    Ok(Changed {
        event,
        message,
        effective: rev.is_some(),
    })
}

/// Appends the change to the room's log; its `seq` is the message's new `rev`.
async fn log(
    conn: &mut PgConnection,
    c: &MessageChange,
    kind: &str,
    added: Option<bool>,
    count: Option<u64>,
) -> Result<u64, StoreError> {
    let emoji = match &c.kind {
        ChangeKind::React { emoji, .. } => Some(emoji.as_str()),
        _ => None,
    };
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO message_changes (room_id, message_id, kind, user_id, emoji, added, count, at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING seq",
    )
    .bind(c.room_id.as_str())
    .bind(c.message_id.as_str())
    .bind(kind)
    .bind(c.user_id.as_str())
    .bind(emoji)
    .bind(added)
    .bind(count.map(|n| n as i64))
    .bind(c.at as i64)
    .fetch_one(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(seq as u64)
}

/// The room's `lastMessage` text follows an edit or delete of the message it shows.
async fn last_message_text(
    conn: &mut PgConnection,
    m: &Message,
    text: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE rooms SET last_content = $1
         WHERE room_id = $2 AND last_timestamp = $3 AND last_sender = $4",
    )
    .bind(text)
    .bind(m.room_id.as_str())
    .bind(m.timestamp as i64)
    .bind(m.user_id.as_str())
    .execute(&mut *conn)
    .await
    .map(|_| ())
    .map_err(db_error)
}

/// The outbox entry of an edit or delete; receivers: the room's participants but the author.
async fn outbox_entry(
    conn: &mut PgConnection,
    m: &Message,
    event: OutboxEvent,
    text: &str,
    at: i64,
) -> Result<(), StoreError> {
    let members: Vec<String> = sqlx::query_scalar(
        "SELECT user_id FROM room_participants WHERE room_id = $1 ORDER BY user_id",
    )
    .bind(m.room_id.as_str())
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    let (receiver, receivers) = receivers_of(&members, m.user_id.as_str());
    let receivers =
        serde_json::to_string(&receivers).map_err(|e| StoreError::Internal(e.to_string()))?;
    sqlx::query(
        "INSERT INTO outbox (message_id, room_id, sender_id, receiver_id, receiver_ids, message,
            timestamp, event)
         VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8)",
    )
    .bind(m.message_id.as_str())
    .bind(m.room_id.as_str())
    .bind(m.user_id.as_str())
    .bind(receiver)
    .bind(receivers)
    .bind(text)
    .bind(at)
    .bind(event.as_str())
    .execute(&mut *conn)
    .await
    .map(|_| ())
    .map_err(db_error)
}

/// Moves the user's marker forward to `m.message_id` (never backwards, in room order).
pub(super) async fn mark_read(
    conn: &mut PgConnection,
    m: &ReadMarker,
) -> Result<MarkedRead, StoreError> {
    let (room, user) = (m.room_id.as_str(), m.user_id.as_str());
    let seq: i64 =
        sqlx::query_scalar("SELECT seq FROM messages WHERE message_id = $1 AND room_id = $2")
            .bind(m.message_id.as_str())
            .bind(room)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_error)?
            .ok_or(StoreError::NotFound)?;
    let current: Option<(String, i64, i64)> = sqlx::query_as(
        "SELECT message_id, seq, read_at FROM read_markers WHERE room_id = $1 AND user_id = $2",
    )
    .bind(room)
    .bind(user)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)?;
    if let Some((message, current_seq, read_at)) = current
        && current_seq >= seq
    {
        return Ok(MarkedRead {
            marker: read_marker(&m.room_id, user, &message, read_at)?,
            moved: false,
        });
    }
    sqlx::query(
        "INSERT INTO read_markers (room_id, user_id, message_id, seq, read_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (room_id, user_id) DO UPDATE SET message_id = excluded.message_id,
            seq = excluded.seq, read_at = excluded.read_at",
    )
    .bind(room)
    .bind(user)
    .bind(m.message_id.as_str())
    .bind(seq)
    .bind(m.read_at as i64)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(MarkedRead {
        marker: m.clone(),
        moved: true,
    })
}
