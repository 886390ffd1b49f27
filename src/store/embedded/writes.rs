//! The embedded store's writer: an OS thread of its own (`Writes::start_thread`) that owns the
//! only connection that writes (rusqlite, on the same SQLite library sqlx links). Each batch
//! is one `BEGIN IMMEDIATE .. COMMIT` (one fsync of the WAL, `synchronous=FULL`) made of
//! prepared statements kept in the connection's cache, one execution per row: the idempotency
//! lookup, the messages (in batch order, so `seq` follows it), each room's `lastMessage`, the
//! outbox entries. Then the checkpointer is told.
//!
//! The statements run on this thread, in this process's memory: a row costs a few
//! microseconds, so there is no need to pack a run into one statement (the sqlx writer this
//! replaced encoded every row set as one JSON parameter to save round trips to sqlx's worker
//! thread; BENCHMARKS.md, "The durable write").

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::checkpoint::Checkpoints;
use super::{Fields, lifecycle, outbox, sqlite_error};
use crate::domain::{Message, MessageChange, NewRoom, ReadMarker, Room, RoomId, UserId, now_ms};
use crate::store::batch::{
    Answers, AppendRun, ApplyBatch, Failing, OutboxCount, OutboxState, Reply, Transaction, Write,
    apply_in_order, conclude, newest_per_room, refuse,
};
use crate::store::rows::{
    message_columns, message_from_row, room_columns, room_from_row, user_ids,
};
use crate::store::{Appended, Changed, Key, MarkedRead, StoreError, key_of};

/// The writer's page cache (`PRAGMA cache_size`, negative = KiB): 64 MiB. SQLite's default
/// (2 MB) is less than the (room, seq) index of a million messages.
const WRITER_CACHE: i64 = -65536;

/// The WAL file is cut back to this size (bytes) when SQLite restarts it after a checkpoint
/// (`PRAGMA journal_size_limit`); without it the file keeps its largest size.
const WAL_SIZE_LIMIT: i64 = 16 * 1024 * 1024;

/// Prepared statements the connection keeps (every statement of the writer, with room).
const STATEMENTS: usize = 64;

/// Opens the writer's connection on `file` (created when missing): WAL, `synchronous=FULL`
/// (the WAL is fsynced at every commit, so a commit is durable when it returns), and no
/// automatic checkpoint (`wal_autocheckpoint=0`): run by the writer, a checkpoint would stall
/// every commit behind it; the checkpointer thread does it on its own connection.
pub(super) fn open(file: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        file,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "cache_size", WRITER_CACHE)?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENTS);
    Ok(conn)
}

/// What the writer owns: the only connection that writes.
pub(super) struct Writer {
    /// `None` after a failed batch: the connection is closed (SQLite rolls back whatever the
    /// failed transaction left open, e.g. after a `COMMIT` refused on a full disk) and the
    /// next batch opens a fresh one, so no batch ever runs inside a transaction left over.
    conn: Option<Connection>,
    file: PathBuf,
    outbox: Arc<OutboxState>,
    checkpoints: Checkpoints,
    failing: Failing,
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        file: PathBuf,
        outbox: Arc<OutboxState>,
        checkpoints: Checkpoints,
    ) -> Self {
        Self {
            conn: Some(conn),
            file,
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

    // Runs on the writer thread (`block_on`): nothing here waits on the runtime.
    async fn apply(&mut self, ops: Vec<Write>) {
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => match open(&self.file) {
                Ok(conn) => conn,
                Err(e) => {
                    let e = sqlite_error(e);
                    self.failing.fail(Self::STORE, &e);
                    refuse(ops, &e);
                    return;
                }
            },
        };
        let mut answers = Answers::with_capacity(ops.len());
        let mut count = self.outbox.count();
        let result = async {
            // Cached like every statement of the writer: not parsed again per batch.
            conn.prepare_cached("BEGIN IMMEDIATE")
                .and_then(|mut s| s.execute([]))
                .map_err(sqlite_error)?;
            apply_in_order(&mut Tx(&mut conn), ops, &mut count, &mut answers).await?;
            conn.prepare_cached("COMMIT")
                .and_then(|mut s| s.execute([]))
                .map_err(sqlite_error)
                .map(|_| ())
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
            self.checkpoints.committed(&conn);
            self.conn = Some(conn);
        }
        // Otherwise `conn` is dropped here: closing it rolls back the failed transaction.
    }

    async fn finish(mut self) {
        self.checkpoints.stop();
        // Closing the last connection checkpoints the whole WAL and removes it.
        drop(self.conn.take());
    }
}

/// The writer's connection inside a batch's transaction. (`&mut`: the batch's future must be
/// `Send`, and a shared `&Connection` is not.)
struct Tx<'c>(&'c mut Connection);

/// The writes of one batch. The methods are `async` for the shared `apply_in_order`; they
/// never wait.
impl Transaction for Tx<'_> {
    async fn appends(
        &mut self,
        appends: Vec<(Message, Reply<Appended>)>,
        count: &mut OutboxCount,
        answers: &mut Answers,
    ) -> Result<(), StoreError> {
        let conn = &*self.0;
        let known = stored_keys(conn, &appends)?;
        // Stored (or earlier in this run) keys are duplicates; the rest is written.
        let run = AppendRun::sort(appends, known, count, answers);
        if !run.fresh.is_empty() {
            insert_messages(conn, &run.fresh).map_err(sqlite_error)?;
            if count.enabled() {
                outbox::insert_all(conn, &run.fresh)?;
            }
        }
        run.answer(answers);
        Ok(())
    }

    async fn create_room(&mut self, room: NewRoom) -> Result<(Room, bool), StoreError> {
        let conn = &*self.0;
        let pair_key = room.pair_key();
        if let Some(key) = &pair_key {
            let existing: Option<String> = conn
                .prepare_cached("SELECT room_id FROM rooms WHERE pair_key = ?1")
                .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
                .map_err(sqlite_error)?;
            if let Some(id) = existing {
                return Ok((existing_room(conn, &id)?, false));
            }
        }
        let now = now_ms() as i64;
        let inserted = conn
            .prepare_cached(
                "INSERT INTO rooms (room_id, type, private, pair_key, created_at, updated_at)
                 VALUES (?1, ?2, 1, ?3, ?4, ?4) ON CONFLICT(room_id) DO NOTHING",
            )
            .and_then(|mut s| {
                s.execute(params![
                    room.room_id.as_str(),
                    room.room_type.as_str(),
                    pair_key,
                    now
                ])
            })
            .map_err(sqlite_error)?;
        if inserted == 0 {
            return Err(StoreError::RoomExists);
        }
        for user in &room.participants {
            add_member(conn, &room.room_id, user).map_err(sqlite_error)?;
        }
        Ok((existing_room(conn, room.room_id.as_str())?, true))
    }

    async fn add_member(&mut self, room: &RoomId, user: &UserId) -> Result<(), StoreError> {
        add_member(self.0, room, user).map_err(sqlite_error)
    }

    async fn mark_sent(&mut self, seqs: &[u64]) -> Result<u64, StoreError> {
        outbox::mark_sent_in(self.0, seqs).map_err(sqlite_error)
    }

    async fn change(
        &mut self,
        change: &MessageChange,
        count: &mut OutboxCount,
    ) -> Result<Changed, StoreError> {
        lifecycle::change(self.0, change, count)
    }

    async fn mark_read(&mut self, marker: &ReadMarker) -> Result<MarkedRead, StoreError> {
        lifecycle::mark_read(self.0, marker)
    }
}

/// The stored messages whose idempotency keys the appends carry, by key.
fn stored_keys(
    conn: &Connection,
    appends: &[(Message, Reply<Appended>)],
) -> Result<HashMap<Key, Message>, StoreError> {
    let mut known = HashMap::new();
    let mut keys = appends.iter().filter_map(|(m, _)| key_of(m)).peekable();
    if keys.peek().is_none() {
        return Ok(known);
    }
    let mut stmt = conn
        .prepare_cached(concat!(
            "SELECT ",
            message_columns!(""),
            " FROM messages WHERE room_id = ?1 AND user_id = ?2 AND client_message_id = ?3"
        ))
        .map_err(sqlite_error)?;
    for key in keys {
        if known.contains_key(&key) {
            continue;
        }
        let mut rows = stmt
            .query(params![key.0, key.1, key.2])
            .map_err(sqlite_error)?;
        if let Some(row) = rows.next().map_err(sqlite_error)? {
            let stored = message_from_row(&Fields(row))?;
            known.insert(key, stored);
        }
    }
    Ok(known)
}

/// New messages in batch order, then each room's newest of them as its `lastMessage` (an
/// unknown room becomes an open group).
fn insert_messages(conn: &Connection, fresh: &[Message]) -> rusqlite::Result<()> {
    let now = now_ms() as i64;
    let mut insert = conn.prepare_cached(
        "INSERT INTO messages (message_id, room_id, user_id, username, message, message_type,
            timestamp, created_at, client_message_id, reply_to)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for m in fresh {
        insert.execute(params![
            m.message_id.as_str(),
            m.room_id.as_str(),
            m.user_id.as_str(),
            m.username.as_str(),
            m.message.as_str(),
            m.message_type.as_str(),
            m.timestamp as i64,
            now,
            m.client_message_id.as_ref().map(|c| c.as_str()),
            m.reply_to.as_ref().map(|r| r.as_str()),
        ])?;
    }
    let mut room = conn.prepare_cached(
        "INSERT INTO rooms (room_id, type, private, created_at, updated_at, last_content,
            last_timestamp, last_sender)
         VALUES (?1, 'group', 0, ?2, ?2, ?3, ?2, ?4)
         ON CONFLICT(room_id) DO UPDATE SET updated_at = excluded.updated_at,
            last_content = excluded.last_content, last_timestamp = excluded.last_timestamp,
            last_sender = excluded.last_sender",
    )?;
    for m in newest_per_room(fresh) {
        room.execute(params![
            m.room_id.as_str(),
            m.timestamp as i64,
            m.message.as_str(),
            m.user_id.as_str()
        ])?;
    }
    Ok(())
}

/// Records `user` in `room` (an unknown room becomes an open group).
fn add_member(conn: &Connection, room: &RoomId, user: &UserId) -> rusqlite::Result<()> {
    let now = now_ms() as i64;
    conn.prepare_cached(
        "INSERT INTO rooms (room_id, type, private, created_at, updated_at)
         VALUES (?1, 'group', 0, ?2, ?2) ON CONFLICT(room_id) DO NOTHING",
    )?
    .execute(params![room.as_str(), now])?;
    conn.prepare_cached(
        "INSERT OR IGNORE INTO room_participants (room_id, user_id) VALUES (?1, ?2)",
    )?
    .execute(params![room.as_str(), user.as_str()])?;
    Ok(())
}

/// A room the writer knows exists (inside its transaction), with its participants.
fn existing_room(conn: &Connection, room_id: &str) -> Result<Room, StoreError> {
    let participants = participants(conn, room_id).map_err(sqlite_error)?;
    let mut stmt = conn
        .prepare_cached(concat!(
            "SELECT ",
            room_columns!(""),
            " FROM rooms WHERE room_id = ?1"
        ))
        .map_err(sqlite_error)?;
    let mut rows = stmt.query([room_id]).map_err(sqlite_error)?;
    let row = rows
        .next()
        .map_err(sqlite_error)?
        .ok_or_else(|| StoreError::Internal(format!("room {room_id} vanished")))?;
    room_from_row(&Fields(row), user_ids(&participants)?)
}

/// A room's participants, sorted.
pub(super) fn participants(conn: &Connection, room_id: &str) -> rusqlite::Result<Vec<String>> {
    conn.prepare_cached(
        "SELECT user_id FROM room_participants WHERE room_id = ?1 ORDER BY user_id",
    )?
    .query_map([room_id], |r| r.get(0))?
    .collect()
}
