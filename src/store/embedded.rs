//! `STORAGE=embedded`: an SQLite file (`DATA_DIR/chat.db`, WAL, `synchronous=FULL`), no server.
//!
//! Writes go through one writer task that takes every queued write at once and commits them
//! in one transaction (group commit): one fsync covers the whole batch, and each caller is
//! answered only after that commit. Reads use a small pool of separate connections, which WAL
//! lets run beside the writer.
//!
//! Appends: the consecutive appends of a batch are written with a fixed number of statements
//! (`append_all`: each row set is one JSON array parameter expanded by `json_each`), not one
//! round trip to SQLite's worker thread per message.
//!
//! Outbox: with `OutboxConfig`, `append_all` writes the `outbox` row in the same transaction as
//! the message (so the group commit covers both with one fsync). The writer task is the only
//! writer, so it keeps the pending count in memory (loaded at open): the `max_pending` check
//! costs no query, and `outbox_mark_sent` goes through the same queue (one `DELETE` per batch).

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Row};
use tokio::sync::{Notify, mpsc, oneshot};

use super::{
    Appended, Key, MessageStore, OutboxConfig, OutboxEntry, StoreError, key_of, receivers_of,
};
use crate::domain::{
    ClientMessageId, LastMessage, Message, MessageBody, MessageId, MessageType, NewRoom, Room,
    RoomId, RoomType, UserId, Username, now_ms,
};

/// Most writes committed together.
const MAX_BATCH: usize = 4096;

/// The writer's page cache (`PRAGMA cache_size`, negative = KiB): 64 MiB.
const WRITER_CACHE: &str = "-65536";

/// Least time between two checkpoints of the checkpointer task.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// WAL length (frames of one page) past which the writer finishes a checkpoint itself: 4 MiB
/// of 4 KiB pages.
const WAL_FRAMES_LIMIT: i64 = 1024;

/// The WAL file is cut back to this size (bytes) when SQLite restarts it after a checkpoint
/// (`PRAGMA journal_size_limit`); without it the file keeps its largest size.
const WAL_SIZE_LIMIT: &str = "16777216";

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id TEXT NOT NULL UNIQUE,
        room_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        username TEXT NOT NULL,
        message TEXT NOT NULL,
        message_type TEXT NOT NULL,
        timestamp INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        client_message_id TEXT
    )",
    "CREATE INDEX IF NOT EXISTS messages_room_seq ON messages(room_id, seq)",
    "CREATE UNIQUE INDEX IF NOT EXISTS messages_idempotency
        ON messages(room_id, user_id, client_message_id) WHERE client_message_id IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS rooms (
        room_id TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        private INTEGER NOT NULL,
        pair_key TEXT UNIQUE,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        last_content TEXT,
        last_timestamp INTEGER,
        last_sender TEXT
    )",
    "CREATE TABLE IF NOT EXISTS room_participants (
        room_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        PRIMARY KEY (room_id, user_id)
    ) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS room_participants_user ON room_participants(user_id)",
    "CREATE TABLE IF NOT EXISTS outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id TEXT NOT NULL,
        room_id TEXT NOT NULL,
        sender_id TEXT NOT NULL,
        receiver_id TEXT,
        receiver_ids TEXT NOT NULL,
        message TEXT NOT NULL,
        timestamp INTEGER NOT NULL
    )",
];

macro_rules! message_columns {
    () => {
        "message_id, room_id, user_id, username, message, message_type, timestamp, client_message_id"
    };
}
macro_rules! room_columns {
    ($p:literal) => {
        concat!(
            $p,
            "room_id, ",
            $p,
            "type, ",
            $p,
            "private, ",
            $p,
            "created_at, ",
            $p,
            "updated_at, ",
            $p,
            "last_content, ",
            $p,
            "last_timestamp, ",
            $p,
            "last_sender"
        )
    };
}

enum Write {
    Append(Message, oneshot::Sender<Result<Appended, StoreError>>),
    CreateRoom(NewRoom, oneshot::Sender<Result<(Room, bool), StoreError>>),
    AddMember(RoomId, UserId, oneshot::Sender<Result<(), StoreError>>),
    MarkSent(Vec<u64>, oneshot::Sender<Result<(), StoreError>>),
    Close(oneshot::Sender<()>),
}

pub struct EmbeddedStore {
    writes: mpsc::Sender<Write>,
    reads: SqlitePool,
    outbox: Arc<OutboxState>,
}

/// Shared between the store handle and its writer task.
struct OutboxState {
    config: Option<OutboxConfig>,
    /// Committed pending entries (only the writer changes it).
    pending: AtomicU64,
    signal: Arc<Notify>,
}

fn internal(e: sqlx::Error) -> StoreError {
    StoreError::Internal(e.to_string())
}

fn closed<T>(_: T) -> StoreError {
    StoreError::Unavailable("embedded store is closed".into())
}

impl EmbeddedStore {
    /// Opens (creating if needed) `dir/chat.db` without the outbox and starts the writer task.
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
        let mut writer = SqliteConnection::connect_with(
            &options
                .clone()
                .pragma("cache_size", WRITER_CACHE)
                .pragma("wal_autocheckpoint", "0")
                .pragma("journal_size_limit", WAL_SIZE_LIMIT),
        )
        .await
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", file.display())))?;
        for stmt in SCHEMA {
            sqlx::query(*stmt)
                .execute(&mut writer)
                .await
                .map_err(internal)?;
        }
        let reads = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone().read_only(true))
            .await
            .map_err(internal)?;
        let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
            .fetch_one(&mut writer)
            .await
            .map_err(internal)?;
        let outbox = Arc::new(OutboxState {
            config: outbox,
            pending: AtomicU64::new(pending as u64),
            signal: Arc::new(Notify::new()),
        });
        let checkpointer = SqliteConnection::connect_with(&options)
            .await
            .map_err(internal)?;
        let committed = Arc::new(Notify::new());
        let wal_frames = Arc::new(AtomicI64::new(0));
        let checkpoints = tokio::spawn(run_checkpointer(
            checkpointer,
            committed.clone(),
            wal_frames.clone(),
        ));
        let (tx, rx) = mpsc::channel(8 * MAX_BATCH);
        tokio::spawn(run_writer(
            writer,
            rx,
            outbox.clone(),
            Checkpoints {
                committed,
                wal_frames,
                task: checkpoints,
            },
        ));
        Ok(Self {
            writes: tx,
            reads,
            outbox,
        })
    }

    async fn write<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Write,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writes.send(make(tx)).await.map_err(closed)?;
        rx.await.map_err(closed)?
    }

    async fn load_room(&self, room_id: &str) -> Result<Option<Room>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            room_columns!(""),
            " FROM rooms WHERE room_id = ?"
        ))
        .bind(room_id)
        .fetch_optional(&self.reads)
        .await
        .map_err(internal)?;
        match row {
            Some(row) => {
                let participants = participants(&self.reads, room_id).await?;
                Ok(Some(room_from_row(&row, participants)?))
            }
            None => Ok(None),
        }
    }

    async fn seq_of(&self, room: &RoomId, id: &MessageId) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar::<_, i64>(
            "SELECT seq FROM messages WHERE message_id = ? AND room_id = ?",
        )
        .bind(id.as_str())
        .bind(room.as_str())
        .fetch_optional(&self.reads)
        .await
        .map_err(internal)
    }
}

async fn participants(
    conn: impl sqlx::SqliteExecutor<'_>,
    room_id: &str,
) -> Result<Vec<UserId>, StoreError> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT user_id FROM room_participants WHERE room_id = ? ORDER BY user_id",
    )
    .bind(room_id)
    .fetch_all(conn)
    .await
    .map_err(internal)?;
    ids.iter()
        .map(|s| UserId::parse(s).map_err(|e| StoreError::Internal(e.0)))
        .collect()
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Internal(format!("stored {what} is not valid"))
}

fn message_from_row(row: &SqliteRow) -> Result<Message, StoreError> {
    let get = |i: usize| row.try_get::<String, _>(i).map_err(internal);
    Ok(Message {
        message_id: MessageId::parse(&get(0)?).map_err(|_| corrupt("message id"))?,
        room_id: RoomId::parse(&get(1)?).map_err(|_| corrupt("room id"))?,
        user_id: UserId::parse(&get(2)?).map_err(|_| corrupt("user id"))?,
        username: Username::parse(&get(3)?).map_err(|_| corrupt("username"))?,
        message: MessageBody::from_stored(get(4)?),
        message_type: MessageType::parse_stored(&get(5)?).ok_or_else(|| corrupt("message type"))?,
        timestamp: row.try_get::<i64, _>(6).map_err(internal)? as u64,
        client_message_id: row
            .try_get::<Option<String>, _>(7)
            .map_err(internal)?
            .and_then(|s| ClientMessageId::parse(&s).ok()),
    })
}

fn room_from_row(row: &SqliteRow, participants: Vec<UserId>) -> Result<Room, StoreError> {
    let room_type: String = row.try_get(1).map_err(internal)?;
    let last_content: Option<String> = row.try_get(5).map_err(internal)?;
    let last_timestamp: Option<i64> = row.try_get(6).map_err(internal)?;
    let last_sender: Option<String> = row.try_get(7).map_err(internal)?;
    let last_message = match (last_content, last_timestamp, last_sender) {
        (Some(content), Some(ts), Some(sender)) => Some(LastMessage {
            content: MessageBody::from_stored(content),
            timestamp: ts as u64,
            sender_id: UserId::parse(&sender).map_err(|_| corrupt("sender id"))?,
        }),
        _ => None,
    };
    Ok(Room {
        room_id: RoomId::parse(&row.try_get::<String, _>(0).map_err(internal)?)
            .map_err(|_| corrupt("room id"))?,
        room_type: RoomType::parse(&room_type).map_err(|_| corrupt("room type"))?,
        participants,
        private: row.try_get::<i64, _>(2).map_err(internal)? != 0,
        last_message,
        created_at: row.try_get::<i64, _>(3).map_err(internal)? as u64,
        updated_at: row.try_get::<i64, _>(4).map_err(internal)? as u64,
    })
}

/// A write's answer, held until the batch commits.
enum Reply {
    Append(oneshot::Sender<Result<Appended, StoreError>>, Appended),
    CreateRoom(
        oneshot::Sender<Result<(Room, bool), StoreError>>,
        (Room, bool),
    ),
    /// `AddMember` and `MarkSent`.
    Unit(oneshot::Sender<Result<(), StoreError>>),
}

impl Reply {
    fn ok(self) {
        match self {
            Reply::Append(tx, v) => drop(tx.send(Ok(v))),
            Reply::CreateRoom(tx, v) => drop(tx.send(Ok(v))),
            Reply::Unit(tx) => drop(tx.send(Ok(()))),
        }
    }

    fn fail(self, e: &StoreError) {
        let e = || StoreError::Internal(e.to_string());
        match self {
            Reply::Append(tx, _) => drop(tx.send(Err(e()))),
            Reply::CreateRoom(tx, _) => drop(tx.send(Err(e()))),
            Reply::Unit(tx) => drop(tx.send(Err(e()))),
        }
    }
}

/// The writer's link to the checkpointer: woken after each commit, stopped when the writer
/// stops (at close, or when every store handle is dropped).
struct Checkpoints {
    committed: Arc<Notify>,
    /// Frames in the WAL, as the last checkpoint found them.
    wal_frames: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies committed WAL pages into the database file (`PASSIVE`: never blocks the writer or
/// readers) after a commit, at most once per `CHECKPOINT_INTERVAL`: each checkpoint costs an
/// fsync of the database file, and at low rates (many small commits) one per commit would
/// double the fsyncs. Commits during a checkpoint or the pause wake it once more.
async fn run_checkpointer(
    mut conn: SqliteConnection,
    committed: Arc<Notify>,
    frames: Arc<AtomicI64>,
) {
    loop {
        committed.notified().await;
        checkpoint(&mut conn, &frames).await;
        tokio::time::sleep(CHECKPOINT_INTERVAL).await;
    }
}

/// One `PASSIVE` checkpoint; records the WAL's length in frames.
async fn checkpoint(conn: &mut SqliteConnection, frames: &AtomicI64) {
    match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(conn)
        .await
    {
        Ok((_, log, _)) => frames.store(log, Ordering::Relaxed),
        Err(e) => {
            tracing::warn!(error = %e, "embedded store checkpoint failed (retried after the next commit)")
        }
    }
}

async fn run_writer(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<Write>,
    outbox: Arc<OutboxState>,
    mut checkpoints: Checkpoints,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut close = None;
        let mut ops = Vec::with_capacity(batch.len());
        for w in batch.drain(..) {
            match w {
                Write::Close(done) => close = Some(done),
                other => ops.push(other),
            }
        }
        if !ops.is_empty() {
            commit_batch(&mut conn, ops, &outbox).await;
            checkpoints.committed.notify_one();
            // SQLite restarts the WAL from its start only when a write begins after a
            // checkpoint copied all of it; under steady writes the checkpointer is always a
            // few commits behind, so the WAL would grow without end. Past the limit the writer
            // copies the rest itself (little: the checkpointer did most of it).
            if checkpoints.wal_frames.load(Ordering::Relaxed) > WAL_FRAMES_LIMIT {
                checkpoint(&mut conn, &checkpoints.wal_frames).await;
            }
        }
        if let Some(done) = close {
            rx.close();
            while let Ok(w) = rx.try_recv() {
                if let Write::Close(d) = w {
                    let _ = d.send(());
                }
            }
            // Closing the last connection checkpoints the whole WAL and removes it.
            checkpoints.task.abort();
            let _ = (&mut checkpoints.task).await;
            let _ = conn.close().await;
            let _ = done.send(());
            return;
        }
    }
}

async fn commit_batch(conn: &mut SqliteConnection, ops: Vec<Write>, outbox: &OutboxState) {
    let mut replies = Vec::with_capacity(ops.len());
    let mut pending_errors = Vec::new();
    let mut refused = Vec::new();
    // The outbox size as this batch goes, and the entries it added (applied after the commit).
    let mut count = OutboxCount {
        pending: outbox.pending.load(Ordering::Relaxed),
        added: 0,
    };
    let max_pending = outbox.config.map(|c| c.max_pending);
    let result: Result<(), StoreError> = async {
        let mut tx = conn.begin().await.map_err(internal)?;
        let mut appends = Vec::new();
        for op in ops {
            if let Write::Append(message, reply) = op {
                appends.push((message, reply));
                continue;
            }
            if !appends.is_empty() {
                let run = std::mem::take(&mut appends);
                append_all(
                    &mut tx,
                    run,
                    max_pending,
                    &mut count,
                    &mut replies,
                    &mut refused,
                )
                .await?;
            }
            match op {
                Write::Append(..) | Write::Close(_) => unreachable!("handled above"),
                Write::MarkSent(seqs, reply) => {
                    let removed = mark_sent_in(&mut tx, &seqs).await?;
                    count.pending = count.pending.saturating_sub(removed);
                    replies.push(Reply::Unit(reply));
                }
                Write::CreateRoom(room, reply) => match create_room_in(&mut tx, room).await {
                    Ok(v) => replies.push(Reply::CreateRoom(reply, v)),
                    // A refused room is that caller's answer, not a failure of the batch.
                    Err(StoreError::RoomExists) => pending_errors.push(reply),
                    Err(e) => return Err(e),
                },
                Write::AddMember(room, user, reply) => {
                    add_member_in(&mut tx, &room, &user).await?;
                    replies.push(Reply::Unit(reply));
                }
            }
        }
        if !appends.is_empty() {
            append_all(
                &mut tx,
                appends,
                max_pending,
                &mut count,
                &mut replies,
                &mut refused,
            )
            .await?;
        }
        tx.commit().await.map_err(internal)
    }
    .await;
    match result {
        Ok(()) => {
            outbox.pending.store(count.pending, Ordering::Relaxed);
            if count.added > 0 {
                outbox.signal.notify_one();
            }
            replies.into_iter().for_each(Reply::ok);
        }
        Err(e) => {
            tracing::error!(error = %e, "embedded store batch failed");
            replies.into_iter().for_each(|r| r.fail(&e));
        }
    }
    for reply in pending_errors {
        let _ = reply.send(Err(StoreError::RoomExists));
    }
    if let Some((_, StoreError::OutboxFull(n))) = refused.first() {
        tracing::warn!(
            pending = n,
            refused = refused.len(),
            "notification outbox full: refusing new messages until the relay catches up (OUTBOX_MAX_PENDING)"
        );
    }
    for (reply, e) in refused {
        let _ = reply.send(Err(e));
    }
}

/// The outbox size while a batch is written.
struct OutboxCount {
    pending: u64,
    added: u64,
}

type AppendReply = oneshot::Sender<Result<Appended, StoreError>>;
fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Internal(e.to_string()))
}

/// Consecutive appends of a batch, written with a constant number of statements (each row
/// set passed as one JSON array and expanded by `json_each`): the idempotency lookup, the
/// messages (in batch order, so `seq` follows it), the rooms' `lastMessage`, the outbox.
async fn append_all(
    conn: &mut SqliteConnection,
    appends: Vec<(Message, AppendReply)>,
    max_pending: Option<u64>,
    count: &mut OutboxCount,
    replies: &mut Vec<Reply>,
    refused: &mut Vec<(AppendReply, StoreError)>,
) -> Result<(), StoreError> {
    let keys: Vec<Key> = appends.iter().filter_map(|(m, _)| key_of(m)).collect();
    let mut known: HashMap<Key, Message> = HashMap::new();
    if !keys.is_empty() {
        let rows = sqlx::query(concat!(
            "SELECT ",
            message_columns!(),
            " FROM json_each(?) k CROSS JOIN messages m
             WHERE m.room_id = json_extract(k.value, '$[0]')
               AND m.user_id = json_extract(k.value, '$[1]')
               AND m.client_message_id = json_extract(k.value, '$[2]')"
        ))
        .bind(to_json(&keys)?)
        .fetch_all(&mut *conn)
        .await
        .map_err(internal)?;
        for row in &rows {
            let m = message_from_row(row)?;
            if let Some(k) = key_of(&m) {
                known.insert(k, m);
            }
        }
    }

    // Stored (or earlier in this run) keys are duplicates; the rest is written.
    let mut fresh: Vec<Message> = Vec::with_capacity(appends.len());
    let mut answers: Vec<(AppendReply, Result<usize, Key>)> = Vec::with_capacity(appends.len());
    for (message, reply) in appends {
        let key = key_of(&message);
        if let Some(k) = key.as_ref().filter(|k| known.contains_key(*k)).cloned() {
            answers.push((reply, Err(k)));
            continue;
        }
        if let Some(max) = max_pending {
            if count.pending >= max {
                refused.push((reply, StoreError::OutboxFull(count.pending)));
                continue;
            }
            count.pending += 1;
            count.added += 1;
        }
        if let Some(k) = key {
            known.insert(k, message.clone());
        }
        answers.push((reply, Ok(fresh.len())));
        fresh.push(message);
    }

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
        let mut last: HashMap<&str, &Message> = HashMap::new();
        for m in &fresh {
            last.insert(m.room_id.as_str(), m);
        }
        let rooms: Vec<_> = last
            .values()
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

        if max_pending.is_some() {
            let room_ids: Vec<&str> = last.keys().copied().collect();
            outbox_insert_all(conn, &fresh, &room_ids).await?;
        }
    }

    let mut fresh: Vec<Option<Message>> = fresh.into_iter().map(Some).collect();
    for (reply, answer) in answers {
        let appended = match answer {
            Ok(i) => Appended {
                message: fresh[i].take().expect("each new message is answered once"),
                duplicate: false,
            },
            Err(k) => Appended {
                message: known[&k].clone(),
                duplicate: true,
            },
        };
        replies.push(Reply::Append(reply, appended));
    }
    Ok(())
}

async fn mark_sent_in(conn: &mut SqliteConnection, seqs: &[u64]) -> Result<u64, StoreError> {
    if seqs.is_empty() {
        return Ok(0);
    }
    let list = serde_json::to_string(seqs).map_err(|e| StoreError::Internal(e.to_string()))?;
    let done = sqlx::query("DELETE FROM outbox WHERE seq IN (SELECT value FROM json_each(?))")
        .bind(list)
        .execute(&mut *conn)
        .await
        .map_err(internal)?;
    Ok(done.rows_affected())
}

/// One outbox entry per new message, receivers from the rooms' participants now.
async fn outbox_insert_all(
    conn: &mut SqliteConnection,
    messages: &[Message],
    rooms: &[&str],
) -> Result<(), StoreError> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT room_id, user_id FROM room_participants
         WHERE room_id IN (SELECT value FROM json_each(?)) ORDER BY room_id, user_id",
    )
    .bind(to_json(&rooms)?)
    .fetch_all(&mut *conn)
    .await
    .map_err(internal)?;
    let mut members: HashMap<String, Vec<String>> = HashMap::new();
    for (room, user) in rows {
        members.entry(room).or_default().push(user);
    }
    let empty = Vec::new();
    let mut entries = Vec::with_capacity(messages.len());
    for m in messages {
        let all = members.get(m.room_id.as_str()).unwrap_or(&empty);
        let sender = m.user_id.as_str();
        let (receiver, receivers) = receivers_of(all, sender);
        entries.push((
            m.message_id.as_str(),
            m.room_id.as_str(),
            sender,
            receiver,
            to_json(&receivers)?,
            m.message.as_str(),
            m.timestamp as i64,
        ));
    }
    sqlx::query(
        "INSERT INTO outbox (message_id, room_id, sender_id, receiver_id, receiver_ids, message,
            timestamp)
         SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),
            json_extract(value, '$[2]'), json_extract(value, '$[3]'),
            json_extract(value, '$[4]'), json_extract(value, '$[5]'),
            json_extract(value, '$[6]')
         FROM json_each(?) ORDER BY key",
    )
    .bind(to_json(&entries)?)
    .execute(&mut *conn)
    .await
    .map_err(internal)?;
    Ok(())
}

fn outbox_entry_from_row(row: &SqliteRow) -> Result<OutboxEntry, StoreError> {
    let get = |i: usize| row.try_get::<String, _>(i).map_err(internal);
    let user = |s: &str| UserId::parse(s).map_err(|_| corrupt("outbox user id"));
    let receiver_ids: Vec<String> =
        serde_json::from_str(&get(5)?).map_err(|_| corrupt("outbox receivers"))?;
    Ok(OutboxEntry {
        seq: row.try_get::<i64, _>(0).map_err(internal)? as u64,
        message_id: MessageId::parse(&get(1)?).map_err(|_| corrupt("outbox message id"))?,
        room_id: RoomId::parse(&get(2)?).map_err(|_| corrupt("outbox room id"))?,
        sender_id: user(&get(3)?)?,
        receiver_id: row
            .try_get::<Option<String>, _>(4)
            .map_err(internal)?
            .map(|s| user(&s))
            .transpose()?,
        receiver_ids: receiver_ids
            .iter()
            .map(|s| user(s))
            .collect::<Result<_, _>>()?,
        message: get(6)?,
        timestamp: row.try_get::<i64, _>(7).map_err(internal)? as u64,
    })
}

async fn create_room_in(
    conn: &mut SqliteConnection,
    room: NewRoom,
) -> Result<(Room, bool), StoreError> {
    let load = async |conn: &mut SqliteConnection, id: &str| -> Result<Room, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            room_columns!(""),
            " FROM rooms WHERE room_id = ?"
        ))
        .bind(id)
        .fetch_one(&mut *conn)
        .await
        .map_err(internal)?;
        let parts = participants(&mut *conn, id).await?;
        room_from_row(&row, parts)
    };
    let pair_key = room.pair_key();
    if let Some(key) = &pair_key {
        let existing: Option<String> =
            sqlx::query_scalar("SELECT room_id FROM rooms WHERE pair_key = ?")
                .bind(key)
                .fetch_optional(&mut *conn)
                .await
                .map_err(internal)?;
        if let Some(id) = existing {
            return Ok((load(conn, &id).await?, false));
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
        add_member_in(conn, &room.room_id, user).await?;
    }
    Ok((load(conn, room.room_id.as_str()).await?, true))
}

async fn add_member_in(
    conn: &mut SqliteConnection,
    room: &RoomId,
    user: &UserId,
) -> Result<(), StoreError> {
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

#[async_trait]
impl MessageStore for EmbeddedStore {
    async fn append(&self, message: Message) -> Result<Appended, StoreError> {
        self.write(|tx| Write::Append(message, tx)).await
    }

    async fn history(
        &self,
        room: &RoomId,
        limit: usize,
        before: Option<&MessageId>,
    ) -> Result<Vec<Message>, StoreError> {
        let before_seq = match before {
            Some(id) => self
                .seq_of(room, id)
                .await?
                .ok_or(StoreError::UnknownCursor)?,
            None => i64::MAX,
        };
        let rows = sqlx::query(concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE room_id = ? AND seq < ?
             ORDER BY seq DESC LIMIT ?"
        ))
        .bind(room.as_str())
        .bind(before_seq)
        .bind(limit as i64)
        .fetch_all(&self.reads)
        .await
        .map_err(internal)?;
        let mut messages = rows
            .iter()
            .map(message_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        messages.reverse();
        Ok(messages)
    }

    async fn after(
        &self,
        room: &RoomId,
        after: &MessageId,
        limit: usize,
    ) -> Result<Option<Vec<Message>>, StoreError> {
        let Some(seq) = self.seq_of(room, after).await? else {
            return Ok(None);
        };
        let rows = sqlx::query(concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE room_id = ? AND seq > ?
             ORDER BY seq ASC LIMIT ?"
        ))
        .bind(room.as_str())
        .bind(seq)
        .bind(limit as i64)
        .fetch_all(&self.reads)
        .await
        .map_err(internal)?;
        rows.iter()
            .map(message_from_row)
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    async fn get_room(&self, room: &RoomId) -> Result<Option<Room>, StoreError> {
        self.load_room(room.as_str()).await
    }

    async fn create_room(&self, room: NewRoom) -> Result<(Room, bool), StoreError> {
        self.write(|tx| Write::CreateRoom(room, tx)).await
    }

    async fn add_member(&self, room: &RoomId, user: &UserId) -> Result<(), StoreError> {
        let (room, user) = (room.clone(), user.clone());
        self.write(|tx| Write::AddMember(room, user, tx)).await
    }

    async fn rooms_of(&self, user: &UserId) -> Result<Vec<Room>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            room_columns!("r."),
            " FROM rooms r
             JOIN room_participants p ON p.room_id = r.room_id
             WHERE p.user_id = ? ORDER BY COALESCE(r.last_timestamp, r.updated_at) DESC LIMIT 1000"
        ))
        .bind(user.as_str())
        .fetch_all(&self.reads)
        .await
        .map_err(internal)?;
        let mut rooms = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get(0).map_err(internal)?;
            let parts = participants(&self.reads, &id).await?;
            rooms.push(room_from_row(row, parts)?);
        }
        Ok(rooms)
    }

    async fn outbox_pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, message_id, room_id, sender_id, receiver_id, receiver_ids, message,
                timestamp FROM outbox ORDER BY seq LIMIT ?",
        )
        .bind(limit as i64)
        .fetch_all(&self.reads)
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        rows.iter().map(outbox_entry_from_row).collect()
    }

    async fn outbox_mark_sent(&self, seqs: &[u64]) -> Result<(), StoreError> {
        let seqs = seqs.to_vec();
        self.write(|tx| Write::MarkSent(seqs, tx)).await
    }

    async fn outbox_len(&self) -> Result<u64, StoreError> {
        Ok(self.outbox.pending.load(Ordering::Relaxed))
    }

    fn outbox_signal(&self) -> Arc<Notify> {
        self.outbox.signal.clone()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.writes.is_closed() {
            return Err(StoreError::Unavailable("embedded store is closed".into()));
        }
        sqlx::query("SELECT 1")
            .execute(&self.reads)
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.writes.send(Write::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
        self.reads.close().await;
    }
}
