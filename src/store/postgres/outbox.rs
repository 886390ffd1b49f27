//! The PostgreSQL outbox: entries written in the batch's transaction beside their messages;
//! `claim` (the relay's `outbox_pending`) hands entries to one instance at a time under a
//! lease; marking sent deletes them (through the writer's queue); `release` hands this
//! store's claims back at close.

use std::collections::HashMap;

use sqlx::postgres::{PgConnection, PgPool};

use super::db_error;
use crate::domain::Message;
use crate::store::rows::{members_by_room, outbox_columns, outbox_entry_from_row};
use crate::store::{OutboxEntry, StoreError, receivers_of};

/// How long a claimed outbox entry is withheld from other instances.
const OUTBOX_LEASE_SECS: f64 = 60.0;

/// Pending entries, all instances'.
pub(super) async fn count(conn: impl sqlx::PgExecutor<'_>) -> Result<u64, StoreError> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
        .fetch_one(conn)
        .await
        .map_err(db_error)?;
    Ok(n as u64)
}

/// Claims the oldest `limit` entries that are unclaimed, whose lease expired, or that are
/// already `owner`'s, and returns them oldest first.
pub(super) async fn claim(
    pool: &PgPool,
    owner: &str,
    limit: usize,
) -> Result<Vec<OutboxEntry>, StoreError> {
    let rows = sqlx::query(concat!(
        "UPDATE outbox SET claimed_by = $1,
            claimed_until = now() + make_interval(secs => $2)
         WHERE seq IN (
            SELECT seq FROM outbox
             WHERE claimed_until IS NULL OR claimed_until < now() OR claimed_by = $1
             ORDER BY seq LIMIT $3
             FOR UPDATE SKIP LOCKED)
         RETURNING ",
        outbox_columns!("receiver_ids::text")
    ))
    .bind(owner)
    .bind(OUTBOX_LEASE_SECS)
    .bind(limit as i64)
    .fetch_all(pool)
    .await
    .map_err(db_error)?;
    let mut entries = rows
        .iter()
        .map(outbox_entry_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| e.seq);
    Ok(entries)
}

/// Hands `owner`'s claims back (they would expire anyway).
pub(super) async fn release(pool: &PgPool, owner: &str) {
    let released = sqlx::query(
        "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = $1",
    )
    .bind(owner)
    .execute(pool)
    .await;
    if let Err(e) = released {
        tracing::warn!(error = %e, "postgres: could not release outbox claims (they expire)");
    }
}

/// One entry per written message, receivers from the rooms' participants now.
pub(super) async fn insert_all(
    conn: &mut PgConnection,
    written: &[&Message],
    rooms: &[&str],
) -> Result<(), StoreError> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT room_id, user_id FROM room_participants WHERE room_id = ANY($1::text[])
         ORDER BY room_id, user_id",
    )
    .bind(rooms)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    let members: HashMap<String, Vec<String>> = members_by_room(rows);
    let empty = Vec::new();
    let mut receiver = Vec::with_capacity(written.len());
    let mut receivers = Vec::with_capacity(written.len());
    for m in written {
        let all = members.get(m.room_id.as_str()).unwrap_or(&empty);
        let (single, others) = receivers_of(all, m.user_id.as_str());
        receiver.push(single.map(str::to_string));
        receivers
            .push(serde_json::to_string(&others).map_err(|e| StoreError::Internal(e.to_string()))?);
    }
    let col = |f: fn(&Message) -> &str| written.iter().map(|m| f(m)).collect::<Vec<&str>>();
    sqlx::query(
        "INSERT INTO outbox (message_id, room_id, sender_id, receiver_id, receiver_ids, message,
            timestamp)
         SELECT id, room, sender, receiver, receivers::jsonb, body, ts
           FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                       $7::bigint[])
                WITH ORDINALITY AS t(id, room, sender, receiver, receivers, body, ts, ord)
          ORDER BY ord",
    )
    .bind(col(|m| m.message_id.as_str()))
    .bind(col(|m| m.room_id.as_str()))
    .bind(col(|m| m.user_id.as_str()))
    .bind(&receiver)
    .bind(&receivers)
    .bind(col(|m| m.message.as_str()))
    .bind(
        written
            .iter()
            .map(|m| m.timestamp as i64)
            .collect::<Vec<_>>(),
    )
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Deletes the entries `seqs` (unknown ones are ignored); how many there were.
pub(super) async fn mark_sent_in(conn: &mut PgConnection, seqs: &[u64]) -> Result<u64, StoreError> {
    if seqs.is_empty() {
        return Ok(0);
    }
    let seqs: Vec<i64> = seqs.iter().filter_map(|s| i64::try_from(*s).ok()).collect();
    let done = sqlx::query("DELETE FROM outbox WHERE seq = ANY($1::bigint[])")
        .bind(&seqs)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(done.rows_affected())
}
