//! `STORAGE=postgres`: PostgreSQL through sqlx (`DATABASE_URL`), shareable by several instances.
//!
//! **Schema.** Created and upgraded at start-up by numbered migrations (embedded SQL, applied
//! in one transaction under an advisory lock, recorded in `chat_schema_migrations`), so
//! instances starting together never race. Ids are `TEXT COLLATE "C"` (byte order, like the
//! Rust side's sorting); times are epoch milliseconds (`BIGINT`), as in the API.
//! `messages.seq` (`BIGSERIAL`) orders a room's history; a unique partial index on
//! `(room_id, user_id, client_message_id)` is the idempotency key.
//!
//! **Writes: group commit** (`store::batch`). The writer takes every queued write at once (up
//! to `MAX_BATCH`) and commits them in one transaction: consecutive appends are written with
//! one idempotency lookup, one multi-row `INSERT .. SELECT FROM UNNEST(..) WITH ORDINALITY
//! ORDER BY ord` (so `seq` follows the batch order), one room upsert (rooms sorted, so two
//! instances never deadlock) and one outbox insert; joins, room creations and outbox acks keep
//! their place in the batch. Each caller is answered only after the commit. A concurrent
//! duplicate from another instance is caught by `ON CONFLICT DO NOTHING` and answered with the
//! stored message. Order within a room is the commit order of one instance; two instances
//! writing to the same room interleave by `seq` allocation.
//!
//! **Lifecycle (SPEC 10).** Changes (edits, deletes, reactions) and read markers are writes
//! of the same queue, each checked and applied inside the batch's transaction, under the
//! writer lock, so two instances never interleave the check and the write of one message's
//! change. A change is logged in `message_changes` (its `seq` is the message's `rev`); an
//! effective edit or delete writes its `message.edited` / `message.deleted` outbox entry in
//! that transaction, and a delete blanks the text of the message's pending entries and of the
//! room's `last_content`. Reads add reactions with one query per page; `rooms_of` counts
//! unread messages in the rooms query itself.
//!
//! **Outbox.** Entries are written in the message's transaction. `outbox_pending` is a claim:
//! `UPDATE .. SET claimed_by = <this store>, claimed_until = now() + lease WHERE seq IN (SELECT
//! .. FOR UPDATE SKIP LOCKED)`: another instance skips claimed entries until the lease
//! (longer than a publish batch) expires; this store gets its own claimed entries again (a
//! relay retrying a failed batch), and `close` releases its claims so a restarted instance
//! resends them at once. The `max_pending` bound uses a count kept by the writer and re-read
//! from the database every second (other instances add entries too).
//!
//! **Outage.** The pool's acquire timeout (`PostgresConfig::acquire_timeout`, 2 s by default)
//! and a deadline on every batch (`BATCH_TIMEOUT`) make writes fail with
//! `StoreError::Unavailable` instead of hanging; nothing is acknowledged unless its
//! transaction committed (a batch that timed out during its commit may still be stored: the
//! client's retry with the same `clientMessageId` then gets the stored message). The pool
//! reconnects by itself when the database is back; `ping` (`/ready`) runs `SELECT 1`.
//!
//! # Map
//! - `mod.rs`: [`PostgresConfig`], [`PostgresStore`]: connecting, the error mapping, and the
//!   `MessageStore` impl, which queues writes and hands reads to `reads` / `outbox`.
//! - `schema.rs`: the migrations and how they are applied.
//! - `writes.rs`: the writer's batch: one transaction under a deadline, appends, room
//!   creation, members.
//! - `lifecycle.rs`: the writer's side of SPEC 10: edits, deletes, reactions, the change
//!   log, read markers (the embedded store's tables and steps).
//! - `reads.rs`: history, `after` (with reactions), one message, rooms (with unread counts,
//!   in the same query), the change log since a message, read receipts.
//! - `scan.rs`: the operator's scans (every room id, a room's first messages, counts).
//! - `outbox.rs`: the entries written beside their messages, the claim, marking sent,
//!   releasing claims, the count.

mod lifecycle;
mod outbox;
mod reads;
mod scan;
mod schema;
mod writes;

/// The SQL of `rooms_of` (`$1`: the user), one query per page of rooms with the unread
/// counts; public for `EXPLAIN` (docs/ARCHITECTURE.md, "Unread counts").
pub use reads::ROOMS_OF as ROOMS_OF_QUERY;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio::sync::Notify;

use super::batch::{OutboxState, Write, Writes};
use super::{Appended, MessageStore, OutboxConfig, OutboxEntry, StoreError};
use crate::domain::{
    Message, MessageChange, MessageId, NewRoom, ReadMarker, Room, RoomEvent, RoomId, UserId, now_ms,
};
use crate::store::{Changed, MarkedRead};

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/database` (`DATABASE_URL`).
    pub url: String,
    /// A schema to use (created if missing) instead of the URL's `search_path`; tests use a
    /// fresh one per run.
    pub schema: Option<String>,
    /// Whether appends also write outbox entries (see the outbox contract in `store`).
    pub outbox: Option<OutboxConfig>,
    /// Longest wait for a pooled connection: how fast requests fail while the database is
    /// unreachable.
    pub acquire_timeout: Duration,
    pub max_connections: u32,
}

impl PostgresConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: None,
            outbox: None,
            acquire_timeout: Duration::from_secs(2),
            max_connections: 10,
        }
    }
}

pub struct PostgresStore {
    writes: Writes<Write>,
    pool: PgPool,
    outbox: Arc<OutboxState>,
    /// This store's name in `outbox.claimed_by`.
    owner: String,
}

/// Connection-level failures are `Unavailable` (the caller may retry); the rest `Internal`.
fn db_error(e: sqlx::Error) -> StoreError {
    let unavailable = match &e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        // Class 08: connection exception; 57P: operator intervention (shutdown, cannot
        // connect now); 53: insufficient resources.
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c.starts_with("53")),
        _ => false,
    };
    if unavailable {
        StoreError::Unavailable(format!("postgres: {e}"))
    } else {
        StoreError::Internal(format!("postgres: {e}"))
    }
}

impl PostgresStore {
    /// Connects, runs the migrations and starts the writer.
    pub async fn open(cfg: PostgresConfig) -> Result<Self, StoreError> {
        let mut options = PgConnectOptions::from_str(&cfg.url)
            .map_err(|e| StoreError::Internal(format!("DATABASE_URL: {e}")))?;
        if let Some(schema) = &cfg.schema {
            options = options.options([("search_path", schema.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(cfg.max_connections.max(2))
            .acquire_timeout(cfg.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(db_error)?;
        schema::migrate(&pool, cfg.schema.as_deref()).await?;
        let outbox = OutboxState::new(cfg.outbox, outbox::count(&pool).await?);
        let writes = Writes::start(writes::Writer::new(pool.clone(), outbox.clone()));
        Ok(Self {
            writes,
            pool,
            outbox,
            owner: format!("store-{}", MessageId::generate(now_ms())),
        })
    }
}

#[async_trait]
impl MessageStore for PostgresStore {
    async fn append(&self, message: Message) -> Result<Appended, StoreError> {
        self.writes.append(message).await
    }

    async fn append_all(&self, messages: Vec<Message>) -> Result<Vec<Appended>, StoreError> {
        self.writes.append_all(messages).await
    }

    async fn history(
        &self,
        room: &RoomId,
        limit: usize,
        before: Option<&MessageId>,
    ) -> Result<Vec<Message>, StoreError> {
        reads::history(&self.pool, room, limit, before).await
    }

    async fn after(
        &self,
        room: &RoomId,
        after: &MessageId,
        limit: usize,
    ) -> Result<Option<Vec<Message>>, StoreError> {
        reads::after(&self.pool, room, after, limit).await
    }

    async fn get_room(&self, room: &RoomId) -> Result<Option<Room>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        reads::room(&mut conn, room.as_str()).await
    }

    async fn create_room(&self, room: NewRoom) -> Result<(Room, bool), StoreError> {
        self.writes.create_room(room).await
    }

    async fn add_member(&self, room: &RoomId, user: &UserId) -> Result<(), StoreError> {
        self.writes.add_member(room, user).await
    }

    async fn rooms_of(&self, user: &UserId) -> Result<Vec<Room>, StoreError> {
        reads::rooms_of(&self.pool, user).await
    }

    async fn get_message(
        &self,
        room: &RoomId,
        id: &MessageId,
    ) -> Result<Option<Message>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        reads::message_in(&mut conn, room, id).await
    }

    async fn change(&self, change: MessageChange) -> Result<Changed, StoreError> {
        self.writes.change(change).await
    }

    async fn changes_since(
        &self,
        room: &RoomId,
        since: &MessageId,
        limit: usize,
    ) -> Result<Option<Vec<RoomEvent>>, StoreError> {
        reads::changes_since(&self.pool, room, since, limit).await
    }

    async fn mark_read(&self, marker: ReadMarker) -> Result<MarkedRead, StoreError> {
        self.writes.mark_read(marker).await
    }

    async fn receipts(&self, room: &RoomId) -> Result<Vec<ReadMarker>, StoreError> {
        reads::receipts(&self.pool, room).await
    }

    async fn outbox_pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        outbox::claim(&self.pool, &self.owner, limit).await
    }

    async fn outbox_mark_sent(&self, seqs: &[u64]) -> Result<(), StoreError> {
        self.writes.mark_sent(seqs).await
    }

    async fn outbox_len(&self) -> Result<u64, StoreError> {
        outbox::count(&self.pool).await
    }

    fn outbox_signal(&self) -> Arc<Notify> {
        self.outbox.signal.clone()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.writes.is_closed() {
            return Err(self.writes.closed());
        }
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Unavailable(format!("postgres: {e}")))
    }

    async fn close(&self) {
        self.writes.close().await;
        // Hand this store's claims back, so a restarted instance resends them at once.
        outbox::release(&self.pool, &self.owner).await;
        self.pool.close().await;
    }

    async fn room_ids(
        &self,
        after: Option<&RoomId>,
        limit: usize,
    ) -> Result<Vec<RoomId>, StoreError> {
        scan::room_ids(&self.pool, after, limit).await
    }

    async fn scan(
        &self,
        room: &RoomId,
        after: Option<&MessageId>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        reads::scan(&self.pool, room, after, limit).await
    }

    async fn count(&self, room: &RoomId) -> Result<u64, StoreError> {
        reads::count(&self.pool, room).await
    }
}
