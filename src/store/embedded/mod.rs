//! `STORAGE=embedded`: an SQLite file (`DATA_DIR/chat.db`, WAL, `synchronous=FULL`) and a
//! journal (`DATA_DIR/chat.journal`), no server.
//!
//! Writes go through the group-commit writer (`store::batch`), run on an OS thread of its own
//! (`Writes::start_thread`): it takes every queued write at once. A batch of plain sends is
//! written to the journal as one record and flushed (one `fdatasync`), and each sender is
//! answered then; the apply thread writes the records into SQLite later, many per transaction
//! (`apply.rs`), and records the last one applied in the same transaction, so that at open the
//! records a crash left unapplied are written first (`journal.rs`). Any other write (edits,
//! rooms, read markers, ...) is committed by the apply thread at once, after the records
//! before it, while the writer waits. Reads use a small sqlx pool of separate read-only
//! connections, which WAL lets run beside the writer; a read first waits until the records
//! flushed so far are in SQLite (`caught_up`: at once when they are), so it sees every
//! acknowledged send.
//!
//! Outbox: with `OutboxConfig`, a send's journal record says so (one flush covers the message
//! and its entry), and the apply thread writes the `outbox` row in the same transaction as the
//! message, then wakes the relay. The writer thread is the only writer, so it keeps the
//! pending count in memory (loaded at open): the `max_pending` check costs no query, and
//! `outbox_mark_sent` goes through the same queue.
//!
//! # Map
//! - `mod.rs`: [`EmbeddedStore`]: opening (connections, pragmas, writer and checkpointer) and
//!   the `MessageStore` impl, which queues writes and hands reads to `reads` / `outbox`.
//! - `schema.rs`: the tables and indexes, created at open.
//! - `writes.rs`: the writer thread (sends into the journal, other writes handed on), and the
//!   SQL of the batch's transaction: appends, room creation, members.
//! - `journal.rs`: the journal file: records, their flush, the scan at open.
//! - `apply.rs`: the apply thread, the only connection that writes SQLite.
//! - `reads.rs`: history, `after`, rooms (with unread counts), one message, the change log
//!   since a message, read receipts.
//! - `lifecycle.rs`: the writer's side of SPEC 10: edits, deletes, reactions, the change
//!   log, read markers.
//! - `outbox.rs`: the entries written beside their messages, pending entries, marking sent.
//! - `scan.rs`: the operator's scans (every room id, a room's first messages, counts).
//! - `checkpoint.rs`: the checkpointer thread that keeps the WAL short beside the writer.

mod apply;
mod checkpoint;
mod journal;
mod lifecycle;
mod outbox;
mod reads;
mod record;
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
    /// The journal's progress: a read first waits for the flushed records (`caught_up`).
    progress: Arc<apply::Progress>,
    apply: std::sync::mpsc::Sender<apply::ToApply>,
}

/// Longest a read waits for the journal's records to reach SQLite before it is refused.
const CATCH_UP: Duration = Duration::from_secs(5);

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

/// The writer's commit window by default, µs (`EMBEDDED_COMMIT_WINDOW_US`): none. Since the
/// journal, a send's durable write is one small flush, and holding batches open for it cost
/// more CPU and latency than it saved (BENCHMARKS.md, "The journal").
pub const DEFAULT_COMMIT_WINDOW_US: u64 = 0;

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
        let (writer, checkpointer, pending, journal, reader) = {
            let (file, dir) = (file.clone(), dir.to_path_buf());
            tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
                let writer = writes::open(&file).map_err(|e| {
                    StoreError::Unavailable(format!("cannot open {}: {e}", file.display()))
                })?;
                schema::create(&writer)?;
                let journal = recover(&writer, &dir)?;
                let pending = outbox::count(&writer)?;
                let checkpointer = checkpoint::open(&file).map_err(sqlite_error)?;
                let reader = writes::open(&file).map_err(sqlite_error)?;
                Ok((writer, checkpointer, pending, journal, reader))
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
        let progress = apply::Progress::new(journal.last);
        let (apply, to_apply) = std::sync::mpsc::channel();
        let applier = apply::Applier::new(
            writer,
            file.clone(),
            outbox.clone(),
            checkpoints,
            progress.clone(),
        );
        let thread = applier
            .start(to_apply)
            .map_err(|e| StoreError::Internal(format!("cannot start the apply thread: {e}")))?;
        let writer = writes::Writer::new(
            reader,
            file,
            journal,
            outbox.clone(),
            progress.clone(),
            apply.clone(),
            thread,
        );
        let writes = Writes::start_thread(writer, "embedded-writer", window)
            .map_err(|e| StoreError::Internal(format!("cannot start the writer: {e}")))?;
        Ok(Self {
            writes,
            reads,
            outbox,
            progress,
            apply,
        })
    }

    /// Waits until the records flushed so far are in SQLite (at once when they are): a read
    /// sees every acknowledged send.
    async fn caught_up(&self) -> Result<(), StoreError> {
        if self.progress.caught_up() {
            return Ok(());
        }
        let target = self.progress.written.load(Ordering::Acquire);
        let mut applied = self.progress.applied.subscribe();
        let _ = self.apply.send(apply::ToApply::Flush);
        match tokio::time::timeout(CATCH_UP, applied.wait_for(|a| *a >= target)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(StoreError::Unavailable(
                self.progress.failing.lock().clone().unwrap_or_else(|| {
                    "the embedded store's journal is not yet written into SQLite".into()
                }),
            )),
        }
    }
}

/// Opens the journal and writes into SQLite the records a crash left unapplied (one
/// transaction), before anything else runs.
fn recover(conn: &rusqlite::Connection, dir: &Path) -> Result<journal::Journal, StoreError> {
    let applied = journal::applied(conn)?;
    let (journal, records) = journal::Journal::open(dir, applied).map_err(|e| {
        StoreError::Unavailable(format!("cannot open the journal in {}: {e}", dir.display()))
    })?;
    if !records.is_empty() {
        let messages: usize = records.iter().map(|r| r.messages.len()).sum();
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(sqlite_error)?;
        let written = apply::write_records(conn, &records)
            .and_then(|_| conn.execute_batch("COMMIT").map_err(sqlite_error));
        if let Err(e) = written {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
        tracing::info!(
            records = records.len(),
            messages,
            "embedded store: wrote the journal's unapplied records into SQLite"
        );
    }
    Ok(journal)
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
        self.caught_up().await?;
        reads::history(&self.reads, room, limit, before).await
    }

    async fn after(
        &self,
        room: &RoomId,
        after: &MessageId,
        limit: usize,
    ) -> Result<Option<Vec<Message>>, StoreError> {
        self.caught_up().await?;
        reads::after(&self.reads, room, after, limit).await
    }

    async fn get_room(&self, room: &RoomId) -> Result<Option<Room>, StoreError> {
        self.caught_up().await?;
        reads::room(&self.reads, room.as_str()).await
    }

    async fn create_room(&self, room: NewRoom) -> Result<(Room, bool), StoreError> {
        self.writes.create_room(room).await
    }

    async fn add_member(&self, room: &RoomId, user: &UserId) -> Result<(), StoreError> {
        self.writes.add_member(room, user).await
    }

    async fn rooms_of(&self, user: &UserId) -> Result<Vec<Room>, StoreError> {
        self.caught_up().await?;
        reads::rooms_of(&self.reads, user).await
    }

    async fn get_message(
        &self,
        room: &RoomId,
        id: &MessageId,
    ) -> Result<Option<Message>, StoreError> {
        self.caught_up().await?;
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
        self.caught_up().await?;
        reads::changes_since(&self.reads, room, since, limit).await
    }

    async fn mark_read(&self, marker: ReadMarker) -> Result<MarkedRead, StoreError> {
        self.writes.mark_read(marker).await
    }

    async fn receipts(&self, room: &RoomId) -> Result<Vec<ReadMarker>, StoreError> {
        self.caught_up().await?;
        reads::receipts(&self.reads, room).await
    }

    async fn outbox_pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.caught_up().await?;
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
        self.caught_up().await?;
        scan::room_ids(&self.reads, after, limit).await
    }

    async fn scan(
        &self,
        room: &RoomId,
        after: Option<&MessageId>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.caught_up().await?;
        reads::scan(&self.reads, room, after, limit).await
    }

    async fn count(&self, room: &RoomId) -> Result<u64, StoreError> {
        self.caught_up().await?;
        reads::count(&self.reads, room).await
    }
}
