//! PostgreSQL reads, on the pool: history pages by `seq` and `after` (with their reactions:
//! one more query per page), one message, rooms with their participants (one query: an
//! `ARRAY(..)` column; `rooms_of` adds the caller's unread count as one more column of that
//! query), the change log since a message, read receipts.

use sqlx::Row;
use sqlx::postgres::{PgConnection, PgPool, PgRow};

use super::db_error;
use crate::domain::{Message, MessageId, Room, RoomId, UserId};
use crate::store::StoreError;
use crate::store::rows::{
    attach_reactions, message_columns, message_from_row, room_columns, room_from_row, user_ids,
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

// history, after, seq_of, changes_since, receipts, scan and count: the same queries as the
// other SQL backend (store/sql_reads.rs).
crate::store::sql_reads::shared_reads!(PgPool, db_error);

/// The messages with their reactions (one query for the page), oldest reaction first.
pub(super) async fn with_reactions(
    conn: impl sqlx::PgExecutor<'_>,
    mut messages: Vec<Message>,
) -> Result<Vec<Message>, StoreError> {
    if messages.is_empty() {
        return Ok(messages);
    }
    let ids: Vec<&str> = messages.iter().map(|m| m.message_id.as_str()).collect();
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT message_id, emoji, user_id FROM reactions
         WHERE message_id = ANY($1::text[]) ORDER BY id",
    )
    .bind(&ids)
    .fetch_all(conn)
    .await
    .map_err(db_error)?;
    attach_reactions(&mut messages, rows)?;
    Ok(messages)
}

/// One message of a room in its current state (on the pool, or inside the writer's
/// transaction).
pub(super) async fn message_in(
    conn: &mut PgConnection,
    room: &RoomId,
    id: &MessageId,
) -> Result<Option<Message>, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        message_columns!(""),
        " FROM messages WHERE message_id = $1 AND room_id = $2"
    ))
    .bind(id.as_str())
    .bind(room.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)?;
    match row {
        Some(row) => Ok(with_reactions(&mut *conn, vec![message_from_row(&row)?])
            .await?
            .pop()),
        None => Ok(None),
    }
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

/// The rooms `user` takes part in, most recently active first (1000 at most), each with the
/// caller's unread count: a column of the same query (SPEC 10: one query per page of rooms),
/// messages of others after the caller's marker (all of them without one), tombstones not
/// counted. `EXPLAIN` of this query: docs/ARCHITECTURE.md, "Unread counts".
pub(super) async fn rooms_of(pool: &PgPool, user: &UserId) -> Result<Vec<Room>, StoreError> {
    let rows = sqlx::query(ROOMS_OF)
        .bind(user.as_str())
        .fetch_all(pool)
        .await
        .map_err(db_error)?;
    rows.iter()
        .map(|row| {
            let unread: i64 = row.try_get(9).map_err(db_error)?;
            let mut room = room_from_pg_row(row)?;
            room.unread_count = Some(unread.max(0) as u64);
            Ok(room)
        })
        .collect()
}

/// The query of `rooms_of` (`$1`: the caller): the columns of `room_select!`, then the
/// unread count.
pub const ROOMS_OF: &str = concat!(
    "SELECT ",
    room_columns!("r."),
    ",
    ARRAY(SELECT p2.user_id FROM room_participants p2 WHERE p2.room_id = r.room_id
          ORDER BY p2.user_id) AS participants,
    (SELECT COUNT(*) FROM messages m
      WHERE m.room_id = r.room_id AND m.user_id <> $1 AND m.deleted_at IS NULL
        AND m.seq > COALESCE((SELECT k.seq FROM read_markers k
                              WHERE k.room_id = r.room_id AND k.user_id = $1), 0)) AS unread
 FROM rooms r
 JOIN room_participants p ON p.room_id = r.room_id
 WHERE p.user_id = $1
 ORDER BY COALESCE(r.last_timestamp, r.updated_at) DESC LIMIT 1000"
);

/// A row of `room_select!`: the room columns, then the participants' array.
fn room_from_pg_row(row: &PgRow) -> Result<Room, StoreError> {
    let participants: Vec<String> = row.try_get(8).map_err(db_error)?;
    room_from_row(row, user_ids(&participants)?)
}
