//! The embedded store's reads, on the pool of read-only connections (WAL lets them run beside
//! the writer): history pages by `seq`, `after`, rooms with their participants.

use sqlx::sqlite::SqlitePool;

use super::internal;
use crate::domain::{Message, MessageId, Room, RoomId, UserId};
use crate::store::StoreError;
use crate::store::rows::{
    attach_reactions, message_columns, message_from_row, room_columns, room_from_row, user_ids,
};

// history, after, seq_of, changes_since, receipts, scan and count: the same queries as the
// other SQL backend (store/sql_reads.rs).
crate::store::sql_reads::shared_reads!(SqlitePool, internal);

/// The messages with their reactions (one query for the page).
pub(super) async fn with_reactions(
    pool: &SqlitePool,
    mut messages: Vec<Message>,
) -> Result<Vec<Message>, StoreError> {
    if messages.is_empty() {
        return Ok(messages);
    }
    let ids: Vec<&str> = messages.iter().map(|m| m.message_id.as_str()).collect();
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT message_id, emoji, user_id FROM reactions
         WHERE message_id IN (SELECT value FROM json_each(?)) ORDER BY rowid",
    )
    .bind(serde_json::to_string(&ids).map_err(|e| StoreError::Internal(e.to_string()))?)
    .fetch_all(pool)
    .await
    .map_err(internal)?;
    attach_reactions(&mut messages, rows)?;
    Ok(messages)
}

pub(super) async fn message(
    pool: &SqlitePool,
    room: &RoomId,
    id: &MessageId,
) -> Result<Option<Message>, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        message_columns!(""),
        " FROM messages WHERE message_id = ? AND room_id = ?"
    ))
    .bind(id.as_str())
    .bind(room.as_str())
    .fetch_optional(pool)
    .await
    .map_err(internal)?;
    match row {
        Some(row) => Ok(with_reactions(pool, vec![message_from_row(&row)?])
            .await?
            .pop()),
        None => Ok(None),
    }
}

pub(super) async fn room(pool: &SqlitePool, room_id: &str) -> Result<Option<Room>, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        room_columns!(""),
        " FROM rooms WHERE room_id = ?"
    ))
    .bind(room_id)
    .fetch_optional(pool)
    .await
    .map_err(internal)?;
    match row {
        Some(row) => Ok(Some(room_from_row(
            &row,
            participants(pool, room_id).await?,
        )?)),
        None => Ok(None),
    }
}

/// The rooms `user` takes part in, most recently active first (1000 at most).
pub(super) async fn rooms_of(pool: &SqlitePool, user: &UserId) -> Result<Vec<Room>, StoreError> {
    // The unread count is a column of the same query (SPEC 10: one query per page of rooms):
    // messages of others after the caller's marker, tombstones not counted.
    let rows = sqlx::query(concat!(
        "SELECT ",
        room_columns!("r."),
        ", (SELECT COUNT(*) FROM messages m
              WHERE m.room_id = r.room_id AND m.user_id <> ?1 AND m.deleted_at IS NULL
                AND m.seq > COALESCE((SELECT k.seq FROM read_markers k
                                      WHERE k.room_id = r.room_id AND k.user_id = ?1), 0))
         FROM rooms r
         JOIN room_participants p ON p.room_id = r.room_id
         WHERE p.user_id = ?1 ORDER BY COALESCE(r.last_timestamp, r.updated_at) DESC LIMIT 1000"
    ))
    .bind(user.as_str())
    .fetch_all(pool)
    .await
    .map_err(internal)?;
    let mut rooms = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: String = sqlx::Row::try_get(row, 0).map_err(internal)?;
        let unread: i64 = sqlx::Row::try_get(row, 8).map_err(internal)?;
        let mut room = room_from_row(row, participants(pool, &id).await?)?;
        room.unread_count = Some(unread as u64);
        rooms.push(room);
    }
    Ok(rooms)
}

/// A room's participants, sorted.
async fn participants(
    conn: impl sqlx::SqliteExecutor<'_>,
    room_id: &str,
) -> Result<Vec<UserId>, StoreError> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT user_id FROM room_participants WHERE room_id = ? ORDER BY user_id",
    )
    .bind(room_id)
    .fetch_all(conn)
    .await
    .map_err(internal)?;
    user_ids(&ids)
}
