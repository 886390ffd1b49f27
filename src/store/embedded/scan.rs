//! The embedded store's scans for the operator's commands (see the scan contract in
//! `store`): every room id (room records and rooms that only have messages), a room's oldest
//! messages by `seq`, a room's message count.

use sqlx::sqlite::SqlitePool;

use super::internal;
use super::reads::{self, with_reactions};
use crate::domain::{Message, MessageId, RoomId};
use crate::store::StoreError;
use crate::store::rows::{message_columns, message_from_row};

pub(super) async fn room_ids(
    pool: &SqlitePool,
    after: Option<&RoomId>,
    limit: usize,
) -> Result<Vec<RoomId>, StoreError> {
    let ids: Vec<(String,)> = sqlx::query_as(
        "SELECT room_id FROM rooms WHERE room_id > ?1
         UNION SELECT DISTINCT room_id FROM messages WHERE room_id > ?1
         ORDER BY 1 LIMIT ?2",
    )
    .bind(after.map_or("", RoomId::as_str))
    .bind(limit as i64)
    .fetch_all(pool)
    .await
    .map_err(internal)?;
    ids.into_iter()
        .map(|(id,)| crate::store::stored_room_id(&id))
        .collect()
}

pub(super) async fn scan(
    pool: &SqlitePool,
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
        " FROM messages WHERE room_id = ? ORDER BY seq LIMIT ?"
    ))
    .bind(room.as_str())
    .bind(limit as i64)
    .fetch_all(pool)
    .await
    .map_err(internal)?;
    let messages = rows
        .iter()
        .map(message_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    with_reactions(pool, messages).await
}

pub(super) async fn count(pool: &SqlitePool, room: &RoomId) -> Result<u64, StoreError> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM messages WHERE room_id = ?")
        .bind(room.as_str())
        .fetch_one(pool)
        .await
        .map_err(internal)?;
    Ok(n.max(0) as u64)
}
