//! The embedded store's reads, on the pool of read-only connections (WAL lets them run beside
//! the writer): history pages by `seq`, `after`, rooms with their participants.

use sqlx::sqlite::SqlitePool;

use super::internal;
use crate::domain::{Message, MessageId, Room, RoomId, UserId};
use crate::store::StoreError;
use crate::store::rows::{
    message_columns, message_from_row, room_columns, room_from_row, user_ids,
};

pub(super) async fn history(
    pool: &SqlitePool,
    room: &RoomId,
    limit: usize,
    before: Option<&MessageId>,
) -> Result<Vec<Message>, StoreError> {
    let before_seq = match before {
        Some(id) => seq_of(pool, room, id)
            .await?
            .ok_or(StoreError::UnknownCursor)?,
        None => i64::MAX,
    };
    let rows = sqlx::query(concat!(
        "SELECT ",
        message_columns!(""),
        " FROM messages WHERE room_id = ? AND seq < ?
         ORDER BY seq DESC LIMIT ?"
    ))
    .bind(room.as_str())
    .bind(before_seq)
    .bind(limit as i64)
    .fetch_all(pool)
    .await
    .map_err(internal)?;
    let mut messages = rows
        .iter()
        .map(message_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    messages.reverse();
    Ok(messages)
}

pub(super) async fn after(
    pool: &SqlitePool,
    room: &RoomId,
    after: &MessageId,
    limit: usize,
) -> Result<Option<Vec<Message>>, StoreError> {
    let Some(seq) = seq_of(pool, room, after).await? else {
        return Ok(None);
    };
    let rows = sqlx::query(concat!(
        "SELECT ",
        message_columns!(""),
        " FROM messages WHERE room_id = ? AND seq > ?
         ORDER BY seq ASC LIMIT ?"
    ))
    .bind(room.as_str())
    .bind(seq)
    .bind(limit as i64)
    .fetch_all(pool)
    .await
    .map_err(internal)?;
    rows.iter()
        .map(message_from_row)
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The `seq` of message `id` when it belongs to `room`.
async fn seq_of(
    pool: &SqlitePool,
    room: &RoomId,
    id: &MessageId,
) -> Result<Option<i64>, StoreError> {
    sqlx::query_scalar::<_, i64>("SELECT seq FROM messages WHERE message_id = ? AND room_id = ?")
        .bind(id.as_str())
        .bind(room.as_str())
        .fetch_optional(pool)
        .await
        .map_err(internal)
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
    let rows = sqlx::query(concat!(
        "SELECT ",
        room_columns!("r."),
        " FROM rooms r
         JOIN room_participants p ON p.room_id = r.room_id
         WHERE p.user_id = ? ORDER BY COALESCE(r.last_timestamp, r.updated_at) DESC LIMIT 1000"
    ))
    .bind(user.as_str())
    .fetch_all(pool)
    .await
    .map_err(internal)?;
    let mut rooms = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: String = sqlx::Row::try_get(row, 0).map_err(internal)?;
        rooms.push(room_from_row(row, participants(pool, &id).await?)?);
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
