//! The embedded store's list of every room id for the operator's commands (see the scan contract in
//! `store`): room records and rooms that only have messages, in byte order. A room's
//! messages by `seq` and its count are shared with the other SQL backend
//! (`store/sql_reads.rs`, in `reads.rs`).

use sqlx::sqlite::SqlitePool;

use super::internal;
use crate::domain::RoomId;
use crate::store::StoreError;

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
