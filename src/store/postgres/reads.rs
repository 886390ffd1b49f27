//! PostgreSQL reads, on the pool: history pages by `seq`, `after`, rooms with their
//! participants (one query: an `ARRAY(..)` column).

use sqlx::Row;
use sqlx::postgres::{PgConnection, PgPool, PgRow};

use super::db_error;
use crate::domain::{Message, MessageId, Room, RoomId, UserId};
use crate::store::StoreError;
use crate::store::rows::{
    message_columns, message_from_row, room_columns, room_from_row, user_ids,
};

/// The room columns and its participants (sorted), for `room_from_pg_row`.
macro_rules! room_select {
    () => {
        concat!(
            "SELECT ",
            room_columns!("r."),
            ",
            ARRAY(SELECT p2.user_id FROM room_participants p2 WHERE p2.room_id = r.room_id
                  ORDER BY p2.user_id) AS participants
         FROM rooms r"
        )
    };
}

pub(super) async fn history(
    pool: &PgPool,
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
        " FROM messages WHERE room_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
    ))
    .bind(room.as_str())
    .bind(before_seq)
    .bind(limit as i64)
    .fetch_all(pool)
    .await
    .map_err(db_error)?;
    let mut messages = rows
        .iter()
        .map(message_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    messages.reverse();
    Ok(messages)
}

pub(super) async fn after(
    pool: &PgPool,
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
        " FROM messages WHERE room_id = $1 AND seq > $2 ORDER BY seq ASC LIMIT $3"
    ))
    .bind(room.as_str())
    .bind(seq)
    .bind(limit as i64)
    .fetch_all(pool)
    .await
    .map_err(db_error)?;
    rows.iter()
        .map(message_from_row)
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The `seq` of message `id` when it belongs to `room`.
async fn seq_of(pool: &PgPool, room: &RoomId, id: &MessageId) -> Result<Option<i64>, StoreError> {
    sqlx::query_scalar::<_, i64>("SELECT seq FROM messages WHERE message_id = $1 AND room_id = $2")
        .bind(id.as_str())
        .bind(room.as_str())
        .fetch_optional(pool)
        .await
        .map_err(db_error)
}

/// A room (on the pool's connection, or inside the writer's transaction).
pub(super) async fn room(
    conn: &mut PgConnection,
    room_id: &str,
) -> Result<Option<Room>, StoreError> {
    let row = sqlx::query(concat!(room_select!(), " WHERE r.room_id = $1"))
        .bind(room_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?;
    row.as_ref().map(room_from_pg_row).transpose()
}

/// The rooms `user` takes part in, most recently active first (1000 at most).
pub(super) async fn rooms_of(pool: &PgPool, user: &UserId) -> Result<Vec<Room>, StoreError> {
    let rows = sqlx::query(concat!(
        room_select!(),
        " JOIN room_participants p ON p.room_id = r.room_id
         WHERE p.user_id = $1
         ORDER BY COALESCE(r.last_timestamp, r.updated_at) DESC LIMIT 1000"
    ))
    .bind(user.as_str())
    .fetch_all(pool)
    .await
    .map_err(db_error)?;
    rows.iter().map(room_from_pg_row).collect()
}

/// A row of `room_select!`: the room columns, then the participants' array.
fn room_from_pg_row(row: &PgRow) -> Result<Room, StoreError> {
    let participants: Vec<String> = row.try_get(8).map_err(db_error)?;
    room_from_row(row, user_ids(&participants)?)
}
