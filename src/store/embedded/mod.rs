//! `STORAGE=embedded`: an SQLite file (`DATA_DIR/chat.db`, WAL, `synchronous=FULL`), no server.
//!
//! Writes go through the group-commit writer (`store::batch`), run on an OS thread of its own
//! (`Writes::start_thread`) that owns the only connection that writes (rusqlite, on the same
//! SQLite library sqlx links): it takes every queued write at once, applies them with cached
//! prepared statements in one `BEGIN IMMEDIATE .. COMMIT`, so one fsync covers the whole batch,
//! and answers each caller only after that commit. A write costs its caller one queue send and
//! one reply; no tokio task or sqlx worker thread sits between the queue and SQLite. Reads use
//! a small sqlx pool of separate read-only connections, which WAL lets run beside the writer.
//!
//! Outbox: with `OutboxConfig`, the writer writes the `outbox` row in the same transaction as
//! the message (so the group commit covers both with one fsync). The writer is the only
//! writer, so it keeps the pending count in memory (loaded at open): the `max_pending` check
//! costs no query, and `outbox_mark_sent` goes through the same queue.
//!
//! # Map
//! - `mod.rs`: [`EmbeddedStore`]: opening (connections, pragmas, writer and checkpointer) and
//!   the `MessageStore` impl, which queues writes and hands reads to `reads` / `outbox`.
//! - `schema.rs`: the tables and indexes, created at open.
//! - `writes.rs`: the writer: its connection, the batch's transaction, appends, room creation,
//!   members.
//! - `reads.rs`: history, `after`, rooms (with unread counts), one message, the change log
//!   since a message, read receipts.
//! - `lifecycle.rs`: the writer's side of SPEC 10: edits, deletes, reactions, the change
//!   log, read markers.
//! - `outbox.rs`: the entries written beside their messages, pending entries, marking sent.
//! - `scan.rs`: the operator's scans (every room id, a room's first messages, counts).
//! - `checkpoint.rs`: the checkpointer thread that keeps the WAL short beside the writer.

mod checkpoint;
mod lifecycle;
mod outbox;
mod reads;
mod scan;
mod schema;
mod writes;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::Notify;

use super::batch::{OutboxState, Write, Writes};
use super::rows::Columns;
use super::{Appended, Changed, MarkedRead, MessageStore, OutboxConfig, OutboxEntry, StoreError};
use crate::domain::{
    Message, MessageChange, MessageId, NewRoom, ReadMarker, Room, RoomEvent, RoomId, UserId,
};

pub struct EmbeddedStore {
    writes: Writes<Write>,
    reads: SqlitePool,
    outbox: Arc<OutboxState>,
}

/// SQLite's primary result codes (the low byte of an extended code) that mean the storage is
/// unavailable: SQLITE_READONLY 8, SQLITE_IOERR 10, SQLITE_FULL 13, SQLITE_CANTOPEN 14.
fn unavailable_code(code: i64) -> bool {
    matches!(code & 0xff, 8 | 10 | 13 | 14)
}

/// SQLite's errors through sqlx (the reads): a full disk, an I/O error, a file that cannot be
/// opened or written are the storage being unavailable (the client may retry, and the
/// condition heals once space or the device comes back); anything else is internal.
fn internal(e: sqlx::Error) -> StoreError {
    let unavailable = e
        .as_database_error()
        .and_then(|d| d.code())
        .and_then(|c| c.parse::<i64>().ok())
        .is_some_and(unavailable_code);
    if unavailable {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Internal(e.to_string())
    }
}

/// Whether a rusqlite error is the storage being unavailable (see `internal`).
fn sqlite_unavailable(e: &rusqlite::Error) -> bool {
    e.sqlite_error()
        .is_some_and(|f| unavailable_code(i64::from(f.extended_code)))
}

/// SQLite's errors through rusqlite (the writer and the checkpointer), sorted as `internal`.
fn sqlite_error(e: rusqlite::Error) -> StoreError {
    if sqlite_unavailable(&e) {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Internal(e.to_string())
    }
}

/// A rusqlite row as the shared row decoders (`store::rows`) read it.
struct Fields<'a, 'r>(&'a rusqlite::Row<'r>);

impl Columns for Fields<'_, '_> {
    fn text(&self, i: usize) -> Result<String, StoreError> {
        self.0.get(i).map_err(sqlite_error)
    }

    fn maybe_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        self.0.get(i).map_err(sqlite_error)
    }

    fn int(&self, i: usize) -> Result<i64, StoreError> {
        self.0.get(i).map_err(sqlite_error)
    }

    fn maybe_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        self.0.get(i).map_err(sqlite_error)
    }

    fn flag(&self, i: usize) -> Result<bool, StoreError> {
        self.0.get(i).map_err(sqlite_error)
    }
}

fn to_json<T: serde::Serialize + ?Sized>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Internal(e.to_string()))
}

/// The writer's commit window by default, µs (`EMBEDDED_COMMIT_WINDOW_US`; BENCHMARKS.md,
/// "The durable write: a commit window, and the floor").
pub const DEFAULT_COMMIT_WINDOW_US: u64 = 300;

impl EmbeddedStore {
    /// Opens (creating if needed) `dir/chat.db` without the outbox and starts the writer.
    pub async fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, None).await
    }

    /// Opens `dir/chat.db`; with `outbox`, every appended message also writes its
    /// `message.sent` outbox entry (see the outbox contract in `store`).
    pub async fn open_with(dir: &Path, outbox: Option<OutboxConfig>) -> Result<Self, StoreError> {
        let window = Duration::from_micros(DEFAULT_COMMIT_WINDOW_US);
        Self::open_with_window(dir, outbox, window).await
    }

    /// `open_with`, with the writer's commit window (`EMBEDDED_COMMIT_WINDOW_US`: how long a
    /// small batch may wait for more writes when they arrive fast enough to share its fsync;
    /// `Duration::ZERO`: never).
    pub async fn open_with_window(
        dir: &Path,
        outbox: Option<OutboxConfig>,
        window: Duration,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create DATA_DIR {}: {e}", dir.display()))
        })?;
        let file = dir.join("chat.db");
        // The writer's connection (WAL, `synchronous=FULL`) creates the file and the schema
        // before any reader opens it. Opening blocks for a few milliseconds (file, pragmas,
        // schema): on the blocking pool, not on a runtime worker.
        let (writer, checkpointer, pending) = {
            let file = file.clone();
            tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
                let writer = writes::open(&file).map_err(|e| {
                    StoreError::Unavailable(format!("cannot open {}: {e}", file.display()))
                })?;
                schema::create(&writer)?;
                let pending = outbox::count(&writer)?;
                let checkpointer = checkpoint::open(&file).map_err(sqlite_error)?;
                Ok((writer, checkpointer, pending))
            })
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))??
        };
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(internal)?
            .filename(&file)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .read_only(true);
        let reads = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(internal)?;
        let outbox = OutboxState::new(outbox, pending);
        let checkpoints = checkpoint::Checkpoints::start(checkpointer)
            .map_err(|e| StoreError::Internal(format!("cannot start the checkpointer: {e}")))?;
        let writer = writes::Writer::new(writer, file, outbox.clone(), checkpoints);
        let writes = Writes::start_thread(writer, "embedded-writer", window)
            .map_err(|e| StoreError::Internal(format!("cannot start the writer: {e}")))?;
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

    async fn append_all(&self, messages: Vec<Message>) -> Result<Vec<Appended>, StoreError> {
        self.writes.append_all(messages).await
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

    async fn get_message(
        &self,
        room: &RoomId,
        id: &MessageId,
    ) -> Result<Option<Message>, StoreError> {
        reads::message(&self.reads, room, id).await
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
        reads::changes_since(&self.reads, room, since, limit).await
    }

    async fn mark_read(&self, marker: ReadMarker) -> Result<MarkedRead, StoreError> {
        self.writes.mark_read(marker).await
    }

    async fn receipts(&self, room: &RoomId) -> Result<Vec<ReadMarker>, StoreError> {
        reads::receipts(&self.reads, room).await
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

    async fn room_ids(
        &self,
        after: Option<&RoomId>,
        limit: usize,
    ) -> Result<Vec<RoomId>, StoreError> {
        scan::room_ids(&self.reads, after, limit).await
    }

    async fn scan(
        &self,
        room: &RoomId,
        after: Option<&MessageId>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        reads::scan(&self.reads, room, after, limit).await
    }

    async fn count(&self, room: &RoomId) -> Result<u64, StoreError> {
        reads::count(&self.reads, room).await
    }
}
