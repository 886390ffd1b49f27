//! `STORAGE=embedded`: an SQLite file (`DATA_DIR/chat.db`, WAL, `synchronous=FULL`), no server.
//!
//! Writes go through the group-commit writer (`store::batch`): it takes every queued write at
//! once and commits them in one transaction, so one fsync covers the whole batch, and each
//! caller is answered only after that commit. Reads use a small pool of separate connections,
//! which WAL lets run beside the writer.
//!
//! Appends: the consecutive appends of a batch are written with a fixed number of statements
//! (`writes::append_all`: each row set is one JSON array parameter expanded by `json_each`),
//! not one round trip to SQLite's worker thread per message.
//!
//! Outbox: with `OutboxConfig`, `append_all` writes the `outbox` row in the same transaction as
//! the message (so the group commit covers both with one fsync). The writer is the only
//! writer, so it keeps the pending count in memory (loaded at open): the `max_pending` check
//! costs no query, and `outbox_mark_sent` goes through the same queue (one `DELETE` per batch).
//!
//! # Map
//! - `mod.rs`: [`EmbeddedStore`]: opening (connections, pragmas, writer and checkpointer) and
//!   the `MessageStore` impl, which queues writes and hands reads to `reads` / `outbox`.
//! - `schema.rs`: the tables and indexes, created at open.
//! - `writes.rs`: the writer's batch: one transaction, appends, room creation, members.
//! - `reads.rs`: history, `after`, rooms.
//! - `outbox.rs`: the entries written beside their messages, pending entries, marking sent.
//! - `checkpoint.rs`: the checkpointer task that keeps the WAL short beside the writer.

mod checkpoint;
mod outbox;
mod reads;
mod schema;
mod writes;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Connection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use tokio::sync::Notify;

use super::batch::{OutboxState, Write, Writes};
use super::{Appended, MessageStore, OutboxConfig, OutboxEntry, StoreError};
use crate::domain::{Message, MessageId, NewRoom, Room, RoomId, UserId};

/// The writer's page cache (`PRAGMA cache_size`, negative = KiB): 64 MiB.
const WRITER_CACHE: &str = "-65536";

/// The WAL file is cut back to this size (bytes) when SQLite restarts it after a checkpoint
/// (`PRAGMA journal_size_limit`); without it the file keeps its largest size.
const WAL_SIZE_LIMIT: &str = "16777216";

pub struct EmbeddedStore {
    writes: Writes<Write>,
    reads: SqlitePool,
    outbox: Arc<OutboxState>,
}

/// SQLite's errors: a full disk, an I/O error, a file that cannot be opened or written are
/// the storage being unavailable (the client may retry, and the condition heals once space
/// or the device comes back); anything else is internal.
fn internal(e: sqlx::Error) -> StoreError {
    // Primary result codes (the low byte of an extended code): SQLITE_READONLY 8,
    // SQLITE_IOERR 10, SQLITE_FULL 13, SQLITE_CANTOPEN 14.
    let unavailable = e
        .as_database_error()
        .and_then(|d| d.code())
        .and_then(|c| c.parse::<i64>().ok())
        .is_some_and(|c| matches!(c & 0xff, 8 | 10 | 13 | 14));
    if unavailable {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Internal(e.to_string())
    }
}

fn to_json<T: serde::Serialize + ?Sized>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Internal(e.to_string()))
}

impl EmbeddedStore {
    /// Opens (creating if needed) `dir/chat.db` without the outbox and starts the writer.
    pub async fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, None).await
    }

    /// Opens `dir/chat.db`; with `outbox`, every appended message also writes its
    /// `message.sent` outbox entry (see the outbox contract in `store`).
    pub async fn open_with(dir: &Path, outbox: Option<OutboxConfig>) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create DATA_DIR {}: {e}", dir.display()))
        })?;
        let file = dir.join("chat.db");
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(internal)?
            .filename(&file)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        // SQLite's default page cache is 2 MB, less than the (room, seq) index of a million
        // messages (no measurable change in store_bench alone; kept for big stores).
        // The writer never checkpoints (`wal_autocheckpoint=0`): a checkpoint copies the WAL's
        // pages into the database file, and run by the writer it stalls every commit behind
        // it. The checkpointer task does it on its own connection (its own thread), beside
        // the writer.
        let writer_options = options
            .clone()
            .pragma("cache_size", WRITER_CACHE)
            .pragma("wal_autocheckpoint", "0")
            .pragma("journal_size_limit", WAL_SIZE_LIMIT);
        let mut writer = SqliteConnection::connect_with(&writer_options)
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", file.display())))?;
        schema::create(&mut writer).await?;
        let reads = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone().read_only(true))
            .await
            .map_err(internal)?;
        let pending = outbox::count(&mut writer).await?;
        let outbox = OutboxState::new(outbox, pending);
        let checkpointer = SqliteConnection::connect_with(&options)
            .await
            .map_err(internal)?;
        let writes = Writes::start(writes::Writer::new(
            writer,
            writer_options,
            outbox.clone(),
            checkpoint::Checkpoints::start(checkpointer),
        ));
        Ok(Self {
            writes,
            reads,
            outbox,
        })
    }
}

#[async_trait]
impl MessageStore for EmbeddedStore {
    async fn append(&self, message: Message) -> Result<Appended, StoreError> {
        self.writes.append(message).await
    }

    async fn history(
        &self,
        room: &RoomId,
        limit: usize,
        before: Option<&MessageId>,
    ) -> Result<Vec<Message>, StoreError> {
        reads::history(&self.reads, room, limit, before).await
    }

    async fn after(
        &self,
        room: &RoomId,
        after: &MessageId,
        limit: usize,
    ) -> Result<Option<Vec<Message>>, StoreError> {
        reads::after(&self.reads, room, after, limit).await
    }

    async fn get_room(&self, room: &RoomId) -> Result<Option<Room>, StoreError> {
        reads::room(&self.reads, room.as_str()).await
    }

    async fn create_room(&self, room: NewRoom) -> Result<(Room, bool), StoreError> {
        self.writes.create_room(room).await
    }

    async fn add_member(&self, room: &RoomId, user: &UserId) -> Result<(), StoreError> {
        self.writes.add_member(room, user).await
    }

    async fn rooms_of(&self, user: &UserId) -> Result<Vec<Room>, StoreError> {
        reads::rooms_of(&self.reads, user).await
    }

    async fn outbox_pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        outbox::pending(&self.reads, limit).await
    }

    async fn outbox_mark_sent(&self, seqs: &[u64]) -> Result<(), StoreError> {
        self.writes.mark_sent(seqs).await
    }

    async fn outbox_len(&self) -> Result<u64, StoreError> {
        Ok(self.outbox.pending.load(Ordering::Relaxed))
    }

    fn outbox_signal(&self) -> Arc<Notify> {
        self.outbox.signal.clone()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.writes.is_closed() {
            return Err(self.writes.closed());
        }
        sqlx::query("SELECT 1")
            .execute(&self.reads)
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    async fn close(&self) {
        self.writes.close().await;
        self.reads.close().await;
    }
}
