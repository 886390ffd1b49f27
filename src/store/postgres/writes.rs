//! The PostgreSQL writer: each batch is one transaction from the pool under a deadline
//! (`BATCH_TIMEOUT`). A run of appends costs a constant number of statements (`UNNEST(..)
//! WITH ORDINALITY ORDER BY ord` multi-row inserts): the idempotency lookup, the messages,
//! the rooms' upsert (rooms sorted, so two instances cannot deadlock), the outbox entries. A
//! racing duplicate from another instance is absorbed by `ON CONFLICT DO NOTHING` and
//! answered with the stored message. Changes and read markers (SPEC 10) keep their place in
//! the batch (`lifecycle.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnection, PgPool};

use super::{db_error, lifecycle, outbox, reads};
use crate::domain::{Message, MessageChange, NewRoom, ReadMarker, Room, RoomId, UserId, now_ms};
use crate::store::batch::{
    Answers, AppendRun, ApplyBatch, Failing, OutboxCount, OutboxState, Reply, Transaction, Write,
    apply_in_order, conclude, newest_per_room,
};
use crate::store::rows::{by_key, message_columns, message_from_row};
use crate::store::{Appended, Changed, Key, MarkedRead, StoreError, key_of};

/// A batch that has not committed by then fails with `Unavailable`.
const BATCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The transaction-level advisory lock every batch takes first: the writers of instances that
/// share a database commit one batch at a time. Without it, two batches that lock the same
/// `rooms` rows in different orders (a join splits a batch's appends into several runs, each
/// sorted by room on its own) deadlocked, and PostgreSQL failed both. One writer at a time is
/// the embedded store's shape too; group commit keeps the batches large under contention.
const WRITER_LOCK: i64 = 0x6368_6174_5752; // "chatWR"

/// How often the writer re-reads the outbox size for the `max_pending` bound.
const OUTBOX_RECOUNT: Duration = Duration::from_secs(1);

pub(super) struct Writer {
    pool: PgPool,
    outbox: Arc<OutboxState>,
    /// When the outbox was last counted.
    counted: Instant,
    failing: Failing,
}

impl Writer {
    pub(super) fn new(pool: PgPool, outbox: Arc<OutboxState>) -> Self {
        Self {
            pool,
            outbox,
            counted: Instant::now(),
            failing: Failing::default(),
        }
    }
}

impl ApplyBatch for Writer {
    type Op = Write;
    const STORE: &'static str = "postgres";
    const MAX_BATCH: usize = 2048;

    async fn apply(&mut self, ops: Vec<Write>) {
        let recount = self.outbox.config.is_some() && self.counted.elapsed() >= OUTBOX_RECOUNT;
        if recount {
            self.counted = Instant::now();
        }
        let mut answers = Answers::with_capacity(ops.len());
        let mut count = self.outbox.count();
        let result = tokio::time::timeout(BATCH_TIMEOUT, async {
            let mut tx = self.pool.begin().await.map_err(db_error)?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(WRITER_LOCK)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            if recount {
                count.pending = outbox::count(&mut *tx).await?;
            }
            apply_in_order(&mut *tx, ops, &mut count, &mut answers).await?;
            tx.commit().await.map_err(db_error)
        })
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!(
                "postgres: no commit within {BATCH_TIMEOUT:?}"
            )))
        });
        conclude(
            Self::STORE,
            result,
            answers,
            &self.outbox,
            count,
            &mut self.failing,
        );
    }
}

/// The writes of one batch, on the writer's connection inside the batch's transaction.
impl Transaction for PgConnection {
    /// Consecutive appends of a batch: idempotency lookup, messages, rooms, outbox, each one
    /// statement for the whole run.
    async fn appends(
        &mut self,
        appends: Vec<(Message, Reply<Appended>)>,
        count: &mut OutboxCount,
        answers: &mut Answers,
    ) -> Result<(), StoreError> {
        let conn = self;
        // Stored messages for the idempotency keys of this run.
        let keys: Vec<Key> = appends.iter().filter_map(|(m, _)| key_of(m)).collect();
        let mut known = HashMap::new();
        if !keys.is_empty() {
            let rooms: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
            let users: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
            let cmids: Vec<&str> = keys.iter().map(|k| k.2.as_str()).collect();
            let rows = sqlx::query(concat!(
                "SELECT ",
                message_columns!("m."),
                " FROM messages m
                 JOIN UNNEST($1::text[], $2::text[], $3::text[]) AS k(room_id, user_id, cmid)
                   ON m.room_id = k.room_id AND m.user_id = k.user_id
                  AND m.client_message_id = k.cmid"
            ))
            .bind(&rooms)
            .bind(&users)
            .bind(&cmids)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_error)?;
            known = by_key(&rows)?;
        }

        // What to insert; duplicates (stored, or earlier in this run) are answered as such.
        let mut run = AppendRun::sort(appends, known, count, answers);

        let mut stored: HashSet<String> = HashSet::new();
        if !run.fresh.is_empty() {
            let fresh = &run.fresh;
            let col = |f: fn(&Message) -> &str| fresh.iter().map(f).collect::<Vec<&str>>();
            let ids = col(|m| m.message_id.as_str());
            let rooms = col(|m| m.room_id.as_str());
            let users = col(|m| m.user_id.as_str());
            let names = col(|m| m.username.as_str());
            let bodies = col(|m| m.message.as_str());
            let types = col(|m| m.message_type.as_str());
            let times: Vec<i64> = fresh.iter().map(|m| m.timestamp as i64).collect();
            let cmids: Vec<Option<&str>> = fresh
                .iter()
                .map(|m| m.client_message_id.as_ref().map(|c| c.as_str()))
                .collect();
            let replies: Vec<Option<&str>> = fresh
                .iter()
                .map(|m| m.reply_to.as_ref().map(|r| r.as_str()))
                .collect();
            let inserted: Vec<String> = sqlx::query_scalar(
                "INSERT INTO messages (message_id, room_id, user_id, username, message, message_type,
                    timestamp, created_at, client_message_id, reply_to)
                 SELECT id, room, usr, name, body, kind, ts, $9, cmid, reply
                   FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                               $6::text[], $7::bigint[], $8::text[], $10::text[])
                        WITH ORDINALITY AS t(id, room, usr, name, body, kind, ts, cmid, reply, ord)
                  ORDER BY ord
                 ON CONFLICT DO NOTHING
                 RETURNING message_id",
            )
            .bind(&ids)
            .bind(&rooms)
            .bind(&users)
            .bind(&names)
            .bind(&bodies)
            .bind(&types)
            .bind(&times)
            .bind(&cmids)
            .bind(now_ms() as i64)
            .bind(&replies)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_error)?;
            stored.extend(inserted);
        }

        // Lost a race with another instance for an idempotency key: answer with its message.
        let lost: Vec<usize> = (0..run.fresh.len())
            .filter(|&i| !stored.contains(run.fresh[i].message_id.as_str()))
            .collect();
        for i in lost {
            let m = &run.fresh[i];
            let Some(k) = key_of(m) else {
                return Err(StoreError::Internal(format!(
                    "message {} was not stored",
                    m.message_id
                )));
            };
            let row = sqlx::query(concat!(
                "SELECT ",
                message_columns!(""),
                " FROM messages WHERE room_id = $1 AND user_id = $2 AND client_message_id = $3"
            ))
            .bind(&k.0)
            .bind(&k.1)
            .bind(&k.2)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_error)?;
            run.lost_race(i, message_from_row(&row)?, count);
        }
        let written: Vec<&Message> = run
            .fresh
            .iter()
            .filter(|m| stored.contains(m.message_id.as_str()))
            .collect();

        if !written.is_empty() {
            // rooms: create unknown ones as open groups, keep lastMessage / updatedAt; the last
            // message of each room in this run, rooms in id order (no deadlock between instances).
            let newest = newest_per_room(written.iter().copied());
            let rooms: Vec<&str> = newest.iter().map(|m| m.room_id.as_str()).collect();
            let times: Vec<i64> = newest.iter().map(|m| m.timestamp as i64).collect();
            let bodies: Vec<&str> = newest.iter().map(|m| m.message.as_str()).collect();
            let senders: Vec<&str> = newest.iter().map(|m| m.user_id.as_str()).collect();
            sqlx::query(
                "INSERT INTO rooms (room_id, type, private, created_at, updated_at, last_content,
                    last_timestamp, last_sender)
                 SELECT room, 'group', false, ts, ts, body, ts, sender
                   FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[])
                        WITH ORDINALITY AS t(room, ts, body, sender, ord)
                  ORDER BY ord
                 ON CONFLICT (room_id) DO UPDATE SET updated_at = GREATEST(rooms.updated_at, excluded.updated_at),
                    last_content = excluded.last_content, last_timestamp = excluded.last_timestamp,
                    last_sender = excluded.last_sender
                  WHERE rooms.last_timestamp IS NULL OR rooms.last_timestamp <= excluded.last_timestamp",
            )
            .bind(&rooms)
            .bind(&times)
            .bind(&bodies)
            .bind(&senders)
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;

            if count.enabled() {
                outbox::insert_all(conn, &written, &rooms).await?;
            }
        }
        run.answer(answers);
        Ok(())
    }

    /// `Err(RoomExists)` when the room id is taken.
    async fn create_room(&mut self, room: NewRoom) -> Result<(Room, bool), StoreError> {
        let conn = self;
        let pair_key = room.pair_key();
        let by_pair =
            async |conn: &mut PgConnection, key: &str| -> Result<Option<Room>, StoreError> {
                let id: Option<String> =
                    sqlx::query_scalar("SELECT room_id FROM rooms WHERE pair_key = $1")
                        .bind(key)
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(db_error)?;
                match id {
                    Some(id) => reads::room(conn, &id).await,
                    None => Ok(None),
                }
            };
        if let Some(key) = &pair_key
            && let Some(existing) = by_pair(conn, key).await?
        {
            return Ok((existing, false));
        }
        let now = now_ms() as i64;
        let inserted = sqlx::query(
            "INSERT INTO rooms (room_id, type, private, pair_key, created_at, updated_at)
             VALUES ($1, $2, true, $3, $4, $4) ON CONFLICT DO NOTHING",
        )
        .bind(room.room_id.as_str())
        .bind(room.room_type.as_str())
        .bind(&pair_key)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
        if inserted.rows_affected() == 0 {
            // Another instance may have created the pair's room meanwhile.
            if let Some(key) = &pair_key
                && let Some(existing) = by_pair(conn, key).await?
            {
                return Ok((existing, false));
            }
            return Err(StoreError::RoomExists);
        }
        let users: Vec<&str> = room.participants.iter().map(|u| u.as_str()).collect();
        sqlx::query(
            "INSERT INTO room_participants (room_id, user_id)
             SELECT $1, u FROM UNNEST($2::text[]) AS t(u) ON CONFLICT DO NOTHING",
        )
        .bind(room.room_id.as_str())
        .bind(&users)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
        let created = reads::room(conn, room.room_id.as_str())
            .await?
            .ok_or_else(|| StoreError::Internal("created room not found".into()))?;
        Ok((created, true))
    }

    async fn add_member(&mut self, room: &RoomId, user: &UserId) -> Result<(), StoreError> {
        let conn = self;
        let now = now_ms() as i64;
        sqlx::query(
            "INSERT INTO rooms (room_id, type, private, created_at, updated_at)
             VALUES ($1, 'group', false, $2, $2) ON CONFLICT (room_id) DO NOTHING",
        )
        .bind(room.as_str())
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
        sqlx::query(
            "INSERT INTO room_participants (room_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(room.as_str())
        .bind(user.as_str())
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn change(
        &mut self,
        change: &MessageChange,
        count: &mut OutboxCount,
    ) -> Result<Changed, StoreError> {
        lifecycle::change(self, change, count).await
    }

    async fn mark_read(&mut self, marker: &ReadMarker) -> Result<MarkedRead, StoreError> {
        lifecycle::mark_read(self, marker).await
    }

    async fn mark_sent(&mut self, seqs: &[u64]) -> Result<u64, StoreError> {
        outbox::mark_sent_in(self, seqs).await
    }
}
