//! PostgreSQL scans for the operator's commands (see the scan contract in `store`): every
//! room id (room records and rooms that only have messages), a room's oldest messages by
//! `seq`, a room's message count.

use sqlx::postgres::PgPool;

use super::db_error;
use super::reads::{self, with_reactions};
use crate::domain::{Message, MessageId, RoomId};
use crate::store::rows::{message_columns, message_from_row};
use crate::store::{StoreError, stored_room_id};

pub(super) async fn room_ids(
    pool: &PgPool,
    after: Option<&RoomId>,
    limit: usize,
) -> Result<Vec<RoomId>, StoreError> {
    // `COLLATE "C"`: byte order, the order of the other backends.
    let ids: Vec<(String,)> = sqlx::query_as(
        r#"SELECT room_id COLLATE "C" FROM rooms WHERE room_id COLLATE "C" > $1
           UNION SELECT DISTINCT room_id COLLATE "C" FROM messages WHERE room_id COLLATE "C" > $1
           ORDER BY 1 LIMIT $2"#,
    )
    .bind(after.map_or("", RoomId::as_str))
    .bind(limit as i64)
    .fetch_all(pool)
    .await
    .map_err(db_error)?;
    ids.into_iter().map(|(id,)| stored_room_id(&id)).collect()
}

pub(super) async fn scan(
    pool: &PgPool,
    room: &RoomId,
    after: Option<&MessageId>,
    limit: usize,
) -> Result<Vec<Message>, StoreError> {
    if let Some(after) = after {
        return reads::after(pool, room, after, limit)
            .await?
            .ok_or(StoreError::UnknownCursor);
    }
    let rows = sqlx::query(concat!(
        "SELECT ",
        message_columns!(""),
        " FROM messages WHERE room_id = $1 ORDER BY seq LIMIT $2"
    ))
    .bind(room.as_str())
    .bind(limit as i64)
    .fetch_all(pool)
    .await
    .map_err(db_error)?;
    let messages = rows
        .iter()
        .map(message_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    with_reactions(pool, messages).await
}

pub(super) async fn count(pool: &PgPool, room: &RoomId) -> Result<u64, StoreError> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM messages WHERE room_id = $1")
        .bind(room.as_str())
        .fetch_one(pool)
        .await
        .map_err(db_error)?;
    Ok(n.max(0) as u64)
}
