//! The PostgreSQL store's list of every room id for the operator's commands (see the scan
//! contract in `store`): room records and rooms that only have messages, in byte order. A
//! room's messages by `seq` and its count are shared with the other SQL backend
//! (`store/sql_reads.rs`, in `reads.rs`).

use sqlx::postgres::PgPool;

use super::db_error;
use crate::domain::RoomId;
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
