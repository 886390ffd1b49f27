//! The embedded store's writes: the writer thread (`Writes::start_thread`, `Writer` below) and
//! the SQL every write runs (the batch's transaction, appends, room creation, members), which
//! the apply thread (`apply.rs`) executes on the only connection that writes (rusqlite, on
//! the same SQLite library sqlx links).
//!
//! A batch of plain sends is durable when its journal record is flushed (`journal.rs`: one
//! `pwrite` + `fdatasync` of a preallocated file), and is answered then; SQLite gets it later,
//! with other records, in one transaction of the apply thread. Any other batch is one
//! `BEGIN IMMEDIATE .. COMMIT` (`synchronous=FULL`) of the apply thread, after the records
//! before it. The statements are prepared once and kept in the connection's cache, one
//! execution per row: the idempotency lookup, the messages (in order, so `seq` follows it),
//! each room's `lastMessage`, the outbox entries.
//!
//! The statements run on this thread, in this process's memory: a row costs a few
//! microseconds, so there is no need to pack a run into one statement (the sqlx writer this
//! replaced encoded every row set as one JSON parameter to save round trips to sqlx's worker
//! thread; BENCHMARKS.md, "The durable write").

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::apply::{Progress, ToApply};
use super::journal::{self, Journal};
use super::record::{self, Record};
use super::{Fields, lifecycle, outbox, sqlite_error};
use crate::domain::{
    ChangeKind, Message, MessageChange, NewRoom, ReadMarker, Room, RoomId, UserId, now_ms,
};
use crate::store::batch::{
    Answers, AppendRun, ApplyBatch, Failing, OutboxCount, OutboxState, Reply, Transaction, Write,
    conclude, newest_per_room, refuse,
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

/// The writer thread (`embedded-writer`, the batch writer's thread): it owns the queue and
/// the journal. A batch of plain sends is sorted against the stored idempotency keys (SQLite,
/// read on this thread's own connection, and the keys of records not yet in SQLite), written
/// to the journal as one record, flushed, and answered; the record then goes to the apply
/// thread. Any other batch goes to the apply thread, which commits it after the records
/// before it while this thread waits, so every write keeps the queue's order.
pub(super) struct Writer {
    /// For the idempotency lookups; `None` after a failure (opened again at the next batch).
    conn: Option<Connection>,
    file: PathBuf,
    journal: Journal,
    /// Sends with a `clientMessageId` whose records are not in SQLite yet: key, record.
    unapplied: HashMap<Key, (u64, Message)>,
    outbox: Arc<OutboxState>,
    failing: Failing,
    progress: Arc<Progress>,
    apply: Option<Sender<ToApply>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        file: PathBuf,
        journal: Journal,
        outbox: Arc<OutboxState>,
        progress: Arc<Progress>,
        apply: Sender<ToApply>,
        thread: JoinHandle<()>,
    ) -> Self {
        Self {
            conn: Some(conn),
            file,
            journal,
            unapplied: HashMap::new(),
            outbox,
            failing: Failing::default(),
            progress,
            apply: Some(apply),
            thread: Some(thread),
        }
    }

    /// Hands `ops` to the apply thread and waits until it has answered them.
    fn through_sqlite(&mut self, ops: Vec<Write>) {
        let closed = || StoreError::Unavailable(format!("{} store is closed", Self::STORE));
        let (done, answered) = std::sync::mpsc::sync_channel(1);
        let Some(apply) = &self.apply else {
            refuse(ops, &closed());
            return;
        };
        match apply.send(ToApply::Batch(ops, done)) {
            Ok(()) => {
                let _ = answered.recv();
            }
            Err(std::sync::mpsc::SendError(ToApply::Batch(ops, _))) => refuse(ops, &closed()),
            Err(_) => {}
        }
    }

    /// A batch of plain sends: journaled, flushed, answered.
    fn journaled(&mut self, appends: Vec<(Message, Reply<Appended>)>) {
        if let Some(why) = self.progress.failing.lock().clone() {
            refuse_appends(appends, &StoreError::Unavailable(why));
            return;
        }
        let applied = *self.progress.applied.borrow();
        self.unapplied.retain(|_, (lsn, _)| *lsn > applied);
        if applied >= self.journal.last && !self.journal.is_rewound() {
            self.journal.rewind();
        }
        let conn = match self.conn.take() {
            Some(conn) => Ok(conn),
            None => open(&self.file).map_err(sqlite_error),
        };
        let known = conn.and_then(|conn| {
            let known = stored_keys(&conn, &appends);
            self.conn = known.is_ok().then_some(conn);
            known
        });
        let mut known = match known {
            Ok(known) => known,
            Err(e) => {
                self.failing.fail(Self::STORE, &e);
                refuse_appends(appends, &e);
                return;
            }
        };
        for (m, _) in &appends {
            if let Some(k) = key_of(m)
                && let Some((_, record)) = self.unapplied.get(&k)
            {
                known.entry(k).or_insert_with(|| record.clone());
            }
        }
        let mut count = self.outbox.count();
        let mut answers = Answers::with_capacity(appends.len());
        let run = AppendRun::sort(appends, known, &mut count, &mut answers);
        let result = if run.fresh.is_empty() {
            Ok(())
        } else {
            self.record(&run.fresh, count.enabled())
        };
        run.answer(&mut answers);
        // The relay is woken by the apply thread, once the entries are in SQLite.
        count.added = 0;
        conclude(
            Self::STORE,
            result,
            answers,
            &self.outbox,
            count,
            &mut self.failing,
        );
    }

    /// Writes and flushes the record of `fresh`, then hands it to the apply thread.
    fn record(&mut self, fresh: &[Message], outbox: bool) -> Result<(), StoreError> {
        let payload = record::encode(fresh, outbox);
        if !self.journal.fits(payload.len()) {
            // The other half, if SQLite holds all of it (under load it does: it was written a
            // half ago); otherwise wait for the apply thread, then the file's start.
            if !self.journal.turn(*self.progress.applied.borrow()) {
                self.wait_applied()?;
                self.journal.rewind();
            }
            if !self.journal.fits(payload.len()) {
                // `apply` sends larger runs through SQLite: not reached.
                return Err(StoreError::Internal("a journal record too large".into()));
            }
        }
        let lsn = self
            .journal
            .append(&payload)
            .map_err(|e| StoreError::Unavailable(format!("cannot write the journal: {e}")))?;
        for m in fresh {
            if let Some(k) = key_of(m) {
                self.unapplied.insert(k, (lsn, m.clone()));
            }
        }
        let record = Record {
            lsn,
            outbox,
            messages: fresh.to_vec(),
        };
        if self.progress.hand_over(record)
            && let Some(apply) = &self.apply
        {
            let _ = apply.send(ToApply::Records);
        }
        // After the record is handed over: a reader that sees this number asks for it after
        // it.
        self.progress.written.store(lsn, Ordering::Release);
        Ok(())
    }

    /// Waits until every record written is in SQLite (the journal is full), or refuses.
    fn wait_applied(&mut self) -> Result<(), StoreError> {
        if let Some(apply) = &self.apply {
            let _ = apply.send(ToApply::Flush);
        }
        let deadline = Instant::now() + JOURNAL_FULL_WAIT;
        while *self.progress.applied.borrow() < self.journal.last {
            if let Some(why) = self.progress.failing.lock().clone() {
                return Err(StoreError::Unavailable(why));
            }
            if Instant::now() > deadline {
                return Err(StoreError::Unavailable(
                    "the journal is full and not yet applied".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }
}

/// How long a send waits for the apply thread when the journal is full.
const JOURNAL_FULL_WAIT: Duration = Duration::from_secs(5);

/// Answers every send of a run with `e` (as `refuse` answers a batch).
fn refuse_appends(appends: Vec<(Message, Reply<Appended>)>, e: &StoreError) {
    refuse(
        appends
            .into_iter()
            .map(|(m, r)| Write::Append(m, r))
            .collect(),
        e,
    );
}

impl ApplyBatch for Writer {
    type Op = Write;
    const STORE: &'static str = "embedded";
    const MAX_BATCH: usize = 4096;

    // Runs on the writer thread (`block_on`): nothing here waits on the runtime.
    async fn apply(&mut self, ops: Vec<Write>) {
        let mut size = 0;
        let plain = ops.iter().all(|op| match op {
            // At most what the record's JSON takes (a control character escapes to six
            // bytes; ids and the name are short).
            Write::Append(m, _) => {
                size += 6 * m.message.as_str().len() + 512;
                true
            }
            _ => false,
        });
        if !plain || size > journal::MAX_RECORD {
            let deletes = ops.iter().any(
                |op| matches!(op, Write::Change(c, _) if matches!(c.kind, ChangeKind::Delete)),
            );
            self.through_sqlite(ops);
            // Every record is in SQLite now (unless that failed): the deleted text leaves
            // the journal too.
            if deletes
                && *self.progress.applied.borrow() >= self.journal.last
                && let Err(e) = self.journal.erase()
            {
                tracing::warn!(error = %e, "embedded store: cannot zero the journal after a delete");
            }
            return;
        }
        let appends = ops
            .into_iter()
            .filter_map(|op| match op {
                Write::Append(m, reply) => Some((m, reply)),
                _ => None,
            })
            .collect();
        self.journaled(appends);
    }

    async fn finish(mut self) {
        // The apply thread writes what it holds, checkpoints and stops.
        if let Some(apply) = self.apply.take() {
            let _ = apply.send(ToApply::Stop);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        drop(self.conn.take());
    }
}

/// The writer's connection inside a batch's transaction. (`&mut`: the batch's future must be
/// `Send`, and a shared `&Connection` is not.)
pub(super) struct Tx<'c>(pub(super) &'c mut Connection);

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
pub(super) fn insert_messages(conn: &Connection, fresh: &[Message]) -> rusqlite::Result<()> {
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
