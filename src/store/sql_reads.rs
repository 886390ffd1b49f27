//! The reads the two SQL backends (embedded SQLite, PostgreSQL) share to the letter: history
//! pages by `seq`, `after` (a `since` resume), a message's `seq`, the change log since a
//! message, a room's read receipts, and the operator's scan and count of a room. One text of each query serves both: their parameters
//! are numbered (`$1`, `$2`, ..), which PostgreSQL takes and sqlx binds by number on SQLite,
//! and the rows are decoded by `store::rows`.
//!
//! [`shared_reads!`] writes these functions into a backend's `reads` module for its pool type
//! and its error mapping (which `sqlx::Error` is `unavailable`); that module supplies
//! `with_reactions(pool, messages)`, the one read whose SQL differs (`json_each` against
//! `ANY($1::text[])`). A macro rather than functions generic over `sqlx::Database`: the bounds
//! sqlx needs for a generic executor, its arguments and every decoded type would be longer
//! than the queries.

/// `shared_reads!(PoolType, error_mapper)`: `history`, `after`, `seq_of`, `changes_since`,
/// `receipts`, `scan` and `count` for that pool, in the calling module.
macro_rules! shared_reads {
    ($pool:ty, $error:path) => {
        pub(super) async fn history(
            pool: &$pool,
            room: &$crate::domain::RoomId,
            limit: usize,
            before: Option<&$crate::domain::MessageId>,
        ) -> Result<Vec<$crate::domain::Message>, $crate::store::StoreError> {
            let before_seq = match before {
                Some(id) => seq_of(pool, room, id)
                    .await?
                    .ok_or($crate::store::StoreError::UnknownCursor)?,
                None => i64::MAX,
            };
            let rows = sqlx::query(concat!(
                "SELECT ",
                $crate::store::rows::message_columns!(""),
                " FROM messages WHERE room_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
            ))
            .bind(room.as_str())
            .bind(before_seq)
            .bind(limit as i64)
            .fetch_all(pool)
            .await
            .map_err($error)?;
            let mut messages = rows
                .iter()
                .map($crate::store::rows::message_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            messages.reverse();
            with_reactions(pool, messages).await
        }

        /// The messages after `after` (a `since` resume), oldest first; `None` when `after`
        /// is not a message of the room.
        pub(super) async fn after(
            pool: &$pool,
            room: &$crate::domain::RoomId,
            after: &$crate::domain::MessageId,
            limit: usize,
        ) -> Result<Option<Vec<$crate::domain::Message>>, $crate::store::StoreError> {
            let Some(seq) = seq_of(pool, room, after).await? else {
                return Ok(None);
            };
            let rows = sqlx::query(concat!(
                "SELECT ",
                $crate::store::rows::message_columns!(""),
                " FROM messages WHERE room_id = $1 AND seq > $2 ORDER BY seq ASC LIMIT $3"
            ))
            .bind(room.as_str())
            .bind(seq)
            .bind(limit as i64)
            .fetch_all(pool)
            .await
            .map_err($error)?;
            let messages = rows
                .iter()
                .map($crate::store::rows::message_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            with_reactions(pool, messages).await.map(Some)
        }

        /// The `seq` of message `id` when it belongs to `room`.
        async fn seq_of(
            pool: &$pool,
            room: &$crate::domain::RoomId,
            id: &$crate::domain::MessageId,
        ) -> Result<Option<i64>, $crate::store::StoreError> {
            sqlx::query_scalar::<_, i64>(
                "SELECT seq FROM messages WHERE message_id = $1 AND room_id = $2",
            )
            .bind(id.as_str())
            .bind(room.as_str())
            .fetch_optional(pool)
            .await
            .map_err($error)
        }

        /// The logged changes of the room's messages up to `since`, made at or after its
        /// time, as the events the members got (edits of messages deleted since are left out
        /// in the query, so they take none of the `limit`); `None` for an unknown `since`.
        pub(super) async fn changes_since(
            pool: &$pool,
            room: &$crate::domain::RoomId,
            since: &$crate::domain::MessageId,
            limit: usize,
        ) -> Result<Option<Vec<$crate::domain::RoomEvent>>, $crate::store::StoreError> {
            let Some((seq, ts)) = sqlx::query_as::<_, (i64, i64)>(
                "SELECT seq, timestamp FROM messages WHERE message_id = $1 AND room_id = $2",
            )
            .bind(since.as_str())
            .bind(room.as_str())
            .fetch_optional(pool)
            .await
            .map_err($error)?
            else {
                return Ok(None);
            };
            type Row = (
                String,
                String,
                String,
                Option<String>,
                Option<bool>,
                Option<i64>,
                i64,
                String,
                Option<i64>,
            );
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT c.kind, c.message_id, c.user_id, c.emoji, c.added, c.count, c.at,
                        m.message, m.deleted_at
                 FROM message_changes c JOIN messages m ON m.message_id = c.message_id
                 WHERE c.room_id = $1 AND c.at >= $2 AND m.seq <= $3
                   AND NOT (c.kind = 'edited' AND m.deleted_at IS NOT NULL)
                 ORDER BY c.seq LIMIT $4",
            )
            .bind(room.as_str())
            .bind(ts)
            .bind(seq)
            .bind(limit as i64)
            .fetch_all(pool)
            .await
            .map_err($error)?;
            let mut events = Vec::with_capacity(rows.len());
            for (kind, message_id, user, emoji, added, count, at, text, deleted_at) in rows {
                if let Some(e) = $crate::store::rows::change_event(
                    room,
                    &kind,
                    &message_id,
                    &user,
                    emoji,
                    added,
                    count,
                    at,
                    text,
                    deleted_at.is_some(),
                )? {
                    events.push(e);
                }
            }
            Ok(Some(events))
        }

        /// A room's oldest messages, or those after `after`, by `seq` (the operator's scan;
        /// an unknown `after` is `UnknownCursor`).
        pub(super) async fn scan(
            pool: &$pool,
            room: &$crate::domain::RoomId,
            after: Option<&$crate::domain::MessageId>,
            limit: usize,
        ) -> Result<Vec<$crate::domain::Message>, $crate::store::StoreError> {
            if let Some(after) = after {
                return self::after(pool, room, after, limit)
                    .await?
                    .ok_or($crate::store::StoreError::UnknownCursor);
            }
            let rows = sqlx::query(concat!(
                "SELECT ",
                $crate::store::rows::message_columns!(""),
                " FROM messages WHERE room_id = $1 ORDER BY seq LIMIT $2"
            ))
            .bind(room.as_str())
            .bind(limit as i64)
            .fetch_all(pool)
            .await
            .map_err($error)?;
            let messages = rows
                .iter()
                .map($crate::store::rows::message_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            with_reactions(pool, messages).await
        }

        /// How many messages a room holds.
        pub(super) async fn count(
            pool: &$pool,
            room: &$crate::domain::RoomId,
        ) -> Result<u64, $crate::store::StoreError> {
            let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM messages WHERE room_id = $1")
                .bind(room.as_str())
                .fetch_one(pool)
                .await
                .map_err($error)?;
            Ok(n.max(0) as u64)
        }

        /// Every read marker of a room, oldest read first.
        pub(super) async fn receipts(
            pool: &$pool,
            room: &$crate::domain::RoomId,
        ) -> Result<Vec<$crate::domain::ReadMarker>, $crate::store::StoreError> {
            let rows: Vec<(String, String, i64)> = sqlx::query_as(
                "SELECT user_id, message_id, read_at FROM read_markers WHERE room_id = $1
                 ORDER BY read_at, user_id",
            )
            .bind(room.as_str())
            .fetch_all(pool)
            .await
            .map_err($error)?;
            rows.iter()
                .map(|(u, m, at)| $crate::store::rows::read_marker(room, u, m, *at))
                .collect()
        }
    };
}

pub(crate) use shared_reads;
