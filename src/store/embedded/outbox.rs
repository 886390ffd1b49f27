//! The embedded store's outbox: entries written in the batch's transaction beside their
//! messages (on the writer's connection), read in `seq` order by the relay through the read
//! pool (no claim: one instance owns the file), deleted through the writer's queue when sent. The pending count lives in memory (`OutboxState`),
//! loaded here at open.

use std::collections::HashMap;

use rusqlite::{Connection, params};
use sqlx::sqlite::SqlitePool;

use super::writes::participants;
use super::{sqlite_error, to_json};
use crate::domain::Message;
use crate::store::rows::{outbox_columns, outbox_entry_from_row};
use crate::store::{OutboxEntry, StoreError, receivers_of};

/// Pending entries now (at open, on the writer's connection).
pub(super) fn count(conn: &Connection) -> Result<u64, StoreError> {
    let pending: i64 = conn
        .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
        .map_err(sqlite_error)?;
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

/// One entry per new message (inside the batch's transaction), receivers from the rooms'
/// participants now.
pub(super) fn insert_all(conn: &Connection, messages: &[Message]) -> Result<(), StoreError> {
    let mut members: HashMap<&str, Vec<String>> = HashMap::new();
    for m in messages {
        let room = m.room_id.as_str();
        if !members.contains_key(room) {
            let users = participants(conn, room).map_err(sqlite_error)?;
            members.insert(room, users);
        }
    }
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO outbox (message_id, room_id, sender_id, receiver_id, receiver_ids,
                message, timestamp)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(sqlite_error)?;
    for m in messages {
        let sender = m.user_id.as_str();
        let (receiver, receivers) = receivers_of(&members[m.room_id.as_str()], sender);
        insert
            .execute(params![
                m.message_id.as_str(),
                m.room_id.as_str(),
                sender,
                receiver,
                to_json(&receivers)?,
                m.message.as_str(),
                m.timestamp as i64,
            ])
            .map_err(sqlite_error)?;
    }
    Ok(())
}

/// Deletes the entries `seqs` (unknown ones are ignored); how many there were.
pub(super) fn mark_sent_in(conn: &Connection, seqs: &[u64]) -> rusqlite::Result<u64> {
    let mut delete = conn.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?;
    let mut removed = 0;
    for &seq in seqs {
        removed += delete.execute([seq as i64])? as u64;
    }
    Ok(removed)
}
