//! The embedded store's writer: each batch is one SQLite transaction on the writer's own
//! connection (one fsync), then the checkpointer is told. A run of appends costs a fixed
//! number of statements, each row set passed as one JSON array parameter and expanded by
//! `json_each`: the idempotency lookup, the messages (in batch order, so `seq` follows it),
//! the rooms' `lastMessage`, the outbox entries.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

use super::checkpoint::Checkpoints;
use super::{internal, outbox, reads, to_json};
use crate::domain::{Message, NewRoom, Room, RoomId, UserId, now_ms};
use crate::store::batch::{
    Answers, AppendRun, ApplyBatch, Failing, OutboxCount, OutboxState, Reply, Transaction, Write,
    apply_in_order, conclude, newest_per_room, refuse,
};
use crate::store::rows::{by_key, message_columns};
use crate::store::{Appended, Key, StoreError, key_of};

/// What the writer owns: the only connection that writes.
pub(super) struct Writer {
    /// `None` after a failed batch: the connection is closed (SQLite rolls back whatever the
    /// failed transaction left open) and the next batch opens a fresh one. A connection that
    /// outlived a failed `COMMIT` (a full disk) kept sqlx's transaction depth at 1, so every
    /// later batch ran as a savepoint of a transaction that never committed: acked, not stored.
    conn: Option<SqliteConnection>,
    options: SqliteConnectOptions,
    outbox: Arc<OutboxState>,
    checkpoints: Checkpoints,
    failing: Failing,
}

impl Writer {
    pub(super) fn new(
        conn: SqliteConnection,
        options: SqliteConnectOptions,
        outbox: Arc<OutboxState>,
        checkpoints: Checkpoints,
    ) -> Self {
        Self {
            conn: Some(conn),
            options,
            outbox,
            checkpoints,
            failing: Failing::default(),
        }
    }
}

impl ApplyBatch for Writer {
    type Op = Write;
    const STORE: &'static str = "embedded";
    const MAX_BATCH: usize = 4096;

    async fn apply(&mut self, ops: Vec<Write>) {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => match SqliteConnection::connect_with(&self.options).await {
                Ok(conn) => conn,
                Err(e) => {
                    let e = internal(e);
                    self.failing.fail(Self::STORE, &e);
                    refuse(ops, &e);
                    return;
                }
            },
        };
        let mut conn = conn;
        let mut answers = Answers::with_capacity(ops.len());
        let mut count = self.outbox.count();
        let result = async {
            let mut tx = conn.begin().await.map_err(internal)?;
            apply_in_order(&mut *tx, ops, &mut count, &mut answers).await?;
            tx.commit().await.map_err(internal)
        }
        .await;
        let ok = result.is_ok();
        conclude(
            Self::STORE,
            result,
            answers,
            &self.outbox,
            count,
            &mut self.failing,
        );
        if ok {
            self.checkpoints.committed(&mut conn).await;
            self.conn = Some(conn);
        } else {
            let _ = conn.close().await;
        }
    }

    async fn finish(mut self) {
        // Closing the last connection checkpoints the whole WAL and removes it.
        self.checkpoints.stop().await;
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
    }
}

/// The writes of one batch, on the writer's connection inside the batch's transaction.
impl Transaction for SqliteConnection {
    /// Consecutive appends of a batch, written with a constant number of statements.
    async fn appends(
        &mut self,
        appends: Vec<(Message, Reply<Appended>)>,
        count: &mut OutboxCount,
        answers: &mut Answers,
    ) -> Result<(), StoreError> {
        let conn = self;
        let keys: Vec<Key> = appends.iter().filter_map(|(m, _)| key_of(m)).collect();
        let mut known = HashMap::new();
        if !keys.is_empty() {
            let rows = sqlx::query(concat!(
                "SELECT ",
                message_columns!("m."),
                " FROM json_each(?) k CROSS JOIN messages m
                 WHERE m.room_id = json_extract(k.value, '$[0]')
                   AND m.user_id = json_extract(k.value, '$[1]')
                   AND m.client_message_id = json_extract(k.value, '$[2]')"
            ))
            .bind(to_json(&keys)?)
            .fetch_all(&mut *conn)
            .await
            .map_err(internal)?;
            known = by_key(&rows)?;
        }

        // Stored (or earlier in this run) keys are duplicates; the rest is written.
        let run = AppendRun::sort(appends, known, count, answers);
        let fresh = &run.fresh;
        if !fresh.is_empty() {
            let rows: Vec<_> = fresh
                .iter()
                .map(|m| {
                    (
                        m.message_id.as_str(),
                        m.room_id.as_str(),
                        m.user_id.as_str(),
                        m.username.as_str(),
                        m.message.as_str(),
                        m.message_type.as_str(),
                        m.timestamp as i64,
                        m.client_message_id.as_ref().map(|c| c.as_str()),
                    )
                })
                .collect();
            sqlx::query(
                "INSERT INTO messages (message_id, room_id, user_id, username, message, message_type,
                    timestamp, created_at, client_message_id)
                 SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),
                    json_extract(value, '$[2]'), json_extract(value, '$[3]'),
                    json_extract(value, '$[4]'), json_extract(value, '$[5]'),
                    json_extract(value, '$[6]'), ?2, json_extract(value, '$[7]')
                 FROM json_each(?1) ORDER BY key",
            )
            .bind(to_json(&rows)?)
            .bind(now_ms() as i64)
            .execute(&mut *conn)
            .await
            .map_err(internal)?;

            // Each room's last message of this run.
            let newest = newest_per_room(fresh);
            let rooms: Vec<_> = newest
                .iter()
                .map(|m| {
                    (
                        m.room_id.as_str(),
                        m.timestamp as i64,
                        m.message.as_str(),
                        m.user_id.as_str(),
                    )
                })
                .collect();
            sqlx::query(
                "INSERT INTO rooms (room_id, type, private, created_at, updated_at, last_content,
                    last_timestamp, last_sender)
                 SELECT json_extract(value, '$[0]'), 'group', 0, json_extract(value, '$[1]'),
                    json_extract(value, '$[1]'), json_extract(value, '$[2]'),
                    json_extract(value, '$[1]'), json_extract(value, '$[3]')
                 FROM json_each(?) WHERE true
                 ON CONFLICT(room_id) DO UPDATE SET updated_at = excluded.updated_at,
                    last_content = excluded.last_content, last_timestamp = excluded.last_timestamp,
                    last_sender = excluded.last_sender",
            )
            .bind(to_json(&rooms)?)
            .execute(&mut *conn)
            .await
            .map_err(internal)?;

            if count.enabled() {
                let room_ids: Vec<&str> = newest.iter().map(|m| m.room_id.as_str()).collect();
                outbox::insert_all(conn, fresh, &room_ids).await?;
            }
        }
        run.answer(answers);
        Ok(())
    }

    async fn create_room(&mut self, room: NewRoom) -> Result<(Room, bool), StoreError> {
        let conn = self;
        let pair_key = room.pair_key();
        if let Some(key) = &pair_key {
            let existing: Option<String> =
                sqlx::query_scalar("SELECT room_id FROM rooms WHERE pair_key = ?")
                    .bind(key)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(internal)?;
            if let Some(id) = existing {
                return Ok((reads::existing_room(conn, &id).await?, false));
            }
        }
        let now = now_ms() as i64;
        let inserted = sqlx::query(
            "INSERT INTO rooms (room_id, type, private, pair_key, created_at, updated_at)
             VALUES (?, ?, 1, ?, ?, ?) ON CONFLICT(room_id) DO NOTHING",
        )
        .bind(room.room_id.as_str())
        .bind(room.room_type.as_str())
        .bind(pair_key)
        .bind(now)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(internal)?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::RoomExists);
        }
        for user in &room.participants {
            conn.add_member(&room.room_id, user).await?;
        }
        Ok((
            reads::existing_room(conn, room.room_id.as_str()).await?,
            true,
        ))
    }

    async fn add_member(&mut self, room: &RoomId, user: &UserId) -> Result<(), StoreError> {
        let conn = self;
        let now = now_ms() as i64;
        sqlx::query(
            "INSERT INTO rooms (room_id, type, private, created_at, updated_at)
             VALUES (?, 'group', 0, ?, ?) ON CONFLICT(room_id) DO NOTHING",
        )
        .bind(room.as_str())
        .bind(now)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(internal)?;
        sqlx::query("INSERT OR IGNORE INTO room_participants (room_id, user_id) VALUES (?, ?)")
            .bind(room.as_str())
            .bind(user.as_str())
            .execute(&mut *conn)
            .await
            .map_err(internal)?;
        Ok(())
    }

    async fn mark_sent(&mut self, seqs: &[u64]) -> Result<u64, StoreError> {
        outbox::mark_sent_in(self, seqs).await
    }
}
