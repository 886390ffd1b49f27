//! The embedded store's outbox: entries written in the batch's transaction beside their
//! messages, read in `seq` order by the relay (no claim: one instance owns the file), deleted
//! through the writer's queue when sent. The pending count lives in memory (`OutboxState`),
//! loaded here at open.

use std::collections::HashMap;

use sqlx::sqlite::{SqliteConnection, SqlitePool};

use super::{internal, to_json};
use crate::domain::Message;
use crate::store::rows::{members_by_room, outbox_columns, outbox_entry_from_row};
use crate::store::{OutboxEntry, StoreError, receivers_of};

/// Pending entries now (at open).
pub(super) async fn count(conn: &mut SqliteConnection) -> Result<u64, StoreError> {
    let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
        .fetch_one(conn)
        .await
        .map_err(internal)?;
    Ok(pending as u64)
}

/// The oldest `limit` entries.
pub(super) async fn pending(
    pool: &SqlitePool,
    limit: usize,
) -> Result<Vec<OutboxEntry>, StoreError> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        outbox_columns!("receiver_ids"),
        " FROM outbox ORDER BY seq LIMIT ?"
    ))
    .bind(limit as i64)
    .fetch_all(pool)
    .await
    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    rows.iter().map(outbox_entry_from_row).collect()
}

/// One entry per new message, receivers from the rooms' participants now.
pub(super) async fn insert_all(
    conn: &mut SqliteConnection,
    messages: &[Message],
    rooms: &[&str],
) -> Result<(), StoreError> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT room_id, user_id FROM room_participants
         WHERE room_id IN (SELECT value FROM json_each(?)) ORDER BY room_id, user_id",
    )
    .bind(to_json(rooms)?)
    .fetch_all(&mut *conn)
    .await
    .map_err(internal)?;
    let members: HashMap<String, Vec<String>> = members_by_room(rows);
    let empty = Vec::new();
    let mut entries = Vec::with_capacity(messages.len());
    for m in messages {
        let all = members.get(m.room_id.as_str()).unwrap_or(&empty);
        let sender = m.user_id.as_str();
        let (receiver, receivers) = receivers_of(all, sender);
        entries.push((
            m.message_id.as_str(),
            m.room_id.as_str(),
            sender,
            receiver,
            to_json(&receivers)?,
            m.message.as_str(),
            m.timestamp as i64,
        ));
    }
    sqlx::query(
        "INSERT INTO outbox (message_id, room_id, sender_id, receiver_id, receiver_ids, message,
            timestamp)
         SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),
            json_extract(value, '$[2]'), json_extract(value, '$[3]'),
            json_extract(value, '$[4]'), json_extract(value, '$[5]'),
            json_extract(value, '$[6]')
         FROM json_each(?) ORDER BY key",
    )
    .bind(to_json(&entries)?)
    .execute(&mut *conn)
    .await
    .map_err(internal)?;
    Ok(())
}

/// Deletes the entries `seqs` (unknown ones are ignored); how many there were.
pub(super) async fn mark_sent_in(
    conn: &mut SqliteConnection,
    seqs: &[u64],
) -> Result<u64, StoreError> {
    if seqs.is_empty() {
        return Ok(0);
    }
    let done = sqlx::query("DELETE FROM outbox WHERE seq IN (SELECT value FROM json_each(?))")
        .bind(to_json(seqs)?)
        .execute(&mut *conn)
        .await
        .map_err(internal)?;
    Ok(done.rows_affected())
}
