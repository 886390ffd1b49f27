//! `STORAGE=postgres`: PostgreSQL through sqlx (`DATABASE_URL`), shareable by several instances.
//!
//! **Schema.** Created and upgraded at start-up by the numbered migrations below (embedded
//! SQL, applied in one transaction under an advisory lock, recorded in
//! `chat_schema_migrations`), so instances starting together never race. Ids are
//! `TEXT COLLATE "C"` (byte order, like the Rust side's sorting); times are epoch milliseconds
//! (`BIGINT`), as in the API. `messages.seq` (`BIGSERIAL`) orders a room's history; a unique
//! partial index on `(room_id, user_id, client_message_id)` is the idempotency key.
//!
//! **Writes: group commit.** One writer task per store takes every queued write at once (up to
//! `MAX_BATCH`) and commits them in one transaction: consecutive appends are written with one
//! idempotency lookup, one multi-row `INSERT .. SELECT FROM UNNEST(..) WITH ORDINALITY ORDER
//! BY ord` (so `seq` follows the batch order), one room upsert (rooms sorted, so two instances
//! never deadlock) and one outbox insert; joins, room creations and outbox acks keep their
//! place in the batch. Each caller is answered only after the commit. A concurrent duplicate
//! from another instance is caught by `ON CONFLICT DO NOTHING` and answered with the stored
//! message. Order within a room is the commit order of one instance; two instances writing to
//! the same room interleave by `seq` allocation.
//!
//! **Outbox.** Entries are written in the message's transaction. `outbox_pending` is a claim:
//! `UPDATE .. SET claimed_by = <this store>, claimed_until = now() + lease WHERE seq IN (SELECT
//! .. FOR UPDATE SKIP LOCKED)`: another instance skips claimed entries until the lease
//! (`OUTBOX_LEASE`, longer than a publish batch) expires; this store gets its own claimed
//! entries again (a relay retrying a failed batch), and `close` releases its claims so a
//! restarted instance resends them at once. The `max_pending` bound uses a count kept by the
//! writer and re-read from the database every second (other instances add entries too).
//!
//! **Outage.** The pool's acquire timeout (`PostgresConfig::acquire_timeout`, 2 s by default)
//! and a deadline on every batch (`BATCH_TIMEOUT`) make writes fail with
//! `StoreError::Unavailable` instead of hanging; nothing is acknowledged unless its
//! transaction committed (a batch that timed out during its commit may still be stored: the
//! client's retry with the same `clientMessageId` then gets the stored message). The pool
//! reconnects by itself when the database is back; `ping` (`/ready`) runs `SELECT 1`.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Row};
use tokio::sync::{Notify, mpsc, oneshot};

use super::{
    Appended, Key, MessageStore, OutboxConfig, OutboxEntry, StoreError, key_of, receivers_of,
};
use crate::domain::{
    ClientMessageId, LastMessage, Message, MessageBody, MessageId, MessageType, NewRoom, Room,
    RoomId, RoomType, UserId, Username, now_ms,
};

/// Most writes committed together.
const MAX_BATCH: usize = 2048;
/// A batch that has not committed by then fails with `Unavailable`.
const BATCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a claimed outbox entry is withheld from other instances.
const OUTBOX_LEASE_SECS: f64 = 60.0;
/// How often the writer re-reads the outbox size for the `max_pending` bound.
const OUTBOX_RECOUNT: Duration = Duration::from_secs(1);

/// The migrations, in order; each is applied once per database (schema).
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    r#"
    CREATE TABLE messages (
        seq BIGSERIAL PRIMARY KEY,
        message_id TEXT COLLATE "C" NOT NULL UNIQUE,
        room_id TEXT COLLATE "C" NOT NULL,
        user_id TEXT COLLATE "C" NOT NULL,
        username TEXT NOT NULL,
        message TEXT NOT NULL,
        message_type TEXT NOT NULL,
        timestamp BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        client_message_id TEXT COLLATE "C"
    );
    CREATE INDEX messages_room_seq ON messages (room_id, seq);
    CREATE UNIQUE INDEX messages_idempotency ON messages (room_id, user_id, client_message_id)
        WHERE client_message_id IS NOT NULL;
    CREATE TABLE rooms (
        room_id TEXT COLLATE "C" PRIMARY KEY,
        type TEXT NOT NULL,
        private BOOLEAN NOT NULL,
        pair_key TEXT COLLATE "C" UNIQUE,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        last_content TEXT,
        last_timestamp BIGINT,
        last_sender TEXT COLLATE "C"
    );
    CREATE TABLE room_participants (
        room_id TEXT COLLATE "C" NOT NULL,
        user_id TEXT COLLATE "C" NOT NULL,
        PRIMARY KEY (room_id, user_id)
    );
    CREATE INDEX room_participants_user ON room_participants (user_id);
    CREATE TABLE outbox (
        seq BIGSERIAL PRIMARY KEY,
        message_id TEXT NOT NULL,
        room_id TEXT NOT NULL,
        sender_id TEXT NOT NULL,
        receiver_id TEXT,
        receiver_ids JSONB NOT NULL,
        message TEXT NOT NULL,
        timestamp BIGINT NOT NULL,
        claimed_by TEXT,
        claimed_until TIMESTAMPTZ
    );
    "#,
)];

macro_rules! message_columns {
    ($p:literal) => {
        concat!(
            $p,
            "message_id, ",
            $p,
            "room_id, ",
            $p,
            "user_id, ",
            $p,
            "username, ",
            $p,
            "message, ",
            $p,
            "message_type, ",
            $p,
            "timestamp, ",
            $p,
            "client_message_id"
        )
    };
}

/// The room columns and its participants (sorted), for `room_from_row`.
macro_rules! room_select {
    () => {
        "SELECT r.room_id, r.type, r.private, r.created_at, r.updated_at, r.last_content,
            r.last_timestamp, r.last_sender,
            ARRAY(SELECT p2.user_id FROM room_participants p2 WHERE p2.room_id = r.room_id
                  ORDER BY p2.user_id) AS participants
         FROM rooms r"
    };
}

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

enum Write {
    Append(Message, oneshot::Sender<Result<Appended, StoreError>>),
    CreateRoom(NewRoom, oneshot::Sender<Result<(Room, bool), StoreError>>),
    AddMember(RoomId, UserId, oneshot::Sender<Result<(), StoreError>>),
    MarkSent(Vec<u64>, oneshot::Sender<Result<(), StoreError>>),
    Close(oneshot::Sender<()>),
}

pub struct PostgresStore {
    writes: mpsc::Sender<Write>,
    pool: PgPool,
    outbox: Arc<OutboxState>,
    /// This store's name in `outbox.claimed_by`.
    owner: String,
}

struct OutboxState {
    config: Option<OutboxConfig>,
    /// Pending entries as last counted plus this writer's changes since.
    pending: AtomicU64,
    signal: Arc<Notify>,
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

fn closed<T>(_: T) -> StoreError {
    StoreError::Unavailable("postgres store is closed".into())
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Internal(format!("stored {what} is not valid"))
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

impl PostgresStore {
    /// Connects, runs the migrations and starts the writer task.
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
        migrate(&pool, cfg.schema.as_deref()).await?;
        let pending = count_outbox(&pool).await?;
        let outbox = Arc::new(OutboxState {
            config: cfg.outbox,
            pending: AtomicU64::new(pending),
            signal: Arc::new(Notify::new()),
        });
        let (tx, rx) = mpsc::channel(8 * MAX_BATCH);
        tokio::spawn(run_writer(pool.clone(), rx, outbox.clone()));
        Ok(Self {
            writes: tx,
            pool,
            outbox,
            owner: format!("store-{}", MessageId::generate(now_ms())),
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

    async fn seq_of(&self, room: &RoomId, id: &MessageId) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar::<_, i64>(
            "SELECT seq FROM messages WHERE message_id = $1 AND room_id = $2",
        )
        .bind(id.as_str())
        .bind(room.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)
    }
}

/// Applies the migrations this database has not seen yet.
async fn migrate(pool: &PgPool, schema: Option<&str>) -> Result<(), StoreError> {
    let mut tx = pool.begin().await.map_err(db_error)?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('chat-service schema migrations'))")
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    if let Some(schema) = schema {
        let create = format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(schema));
        sqlx::raw_sql(AssertSqlSafe(create))
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
    }
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS chat_schema_migrations (
            version INTEGER PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    let current: i32 =
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM chat_schema_migrations")
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?;
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        sqlx::raw_sql(*sql)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::Internal(format!("migration {version}: {e}")))?;
        sqlx::query("INSERT INTO chat_schema_migrations (version) VALUES ($1)")
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        tracing::info!(version, "postgres: applied schema migration");
    }
    tx.commit().await.map_err(db_error)
}

async fn count_outbox(pool: &PgPool) -> Result<u64, StoreError> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
        .fetch_one(pool)
        .await
        .map_err(db_error)?;
    Ok(n as u64)
}

fn message_from_row(row: &PgRow) -> Result<Message, StoreError> {
    let get = |i: usize| row.try_get::<String, _>(i).map_err(db_error);
    Ok(Message {
        message_id: MessageId::parse(&get(0)?).map_err(|_| corrupt("message id"))?,
        room_id: RoomId::parse(&get(1)?).map_err(|_| corrupt("room id"))?,
        user_id: UserId::parse(&get(2)?).map_err(|_| corrupt("user id"))?,
        username: Username::parse(&get(3)?).map_err(|_| corrupt("username"))?,
        message: MessageBody::from_stored(get(4)?),
        message_type: MessageType::parse_stored(&get(5)?).ok_or_else(|| corrupt("message type"))?,
        timestamp: row.try_get::<i64, _>(6).map_err(db_error)? as u64,
        client_message_id: row
            .try_get::<Option<String>, _>(7)
            .map_err(db_error)?
            .and_then(|s| ClientMessageId::parse(&s).ok()),
    })
}

fn room_from_row(row: &PgRow) -> Result<Room, StoreError> {
    let room_type: String = row.try_get(1).map_err(db_error)?;
    let last_content: Option<String> = row.try_get(5).map_err(db_error)?;
    let last_timestamp: Option<i64> = row.try_get(6).map_err(db_error)?;
    let last_sender: Option<String> = row.try_get(7).map_err(db_error)?;
    let participants: Vec<String> = row.try_get(8).map_err(db_error)?;
    let last_message = match (last_content, last_timestamp, last_sender) {
        (Some(content), Some(ts), Some(sender)) => Some(LastMessage {
            content: MessageBody::from_stored(content),
            timestamp: ts as u64,
            sender_id: UserId::parse(&sender).map_err(|_| corrupt("sender id"))?,
        }),
        _ => None,
    };
    Ok(Room {
        room_id: RoomId::parse(&row.try_get::<String, _>(0).map_err(db_error)?)
            .map_err(|_| corrupt("room id"))?,
        room_type: RoomType::parse(&room_type).map_err(|_| corrupt("room type"))?,
        participants: participants
            .iter()
            .map(|s| UserId::parse(s).map_err(|_| corrupt("participant id")))
            .collect::<Result<_, _>>()?,
        private: row.try_get::<bool, _>(2).map_err(db_error)?,
        last_message,
        created_at: row.try_get::<i64, _>(3).map_err(db_error)? as u64,
        updated_at: row.try_get::<i64, _>(4).map_err(db_error)? as u64,
    })
}

fn outbox_entry_from_row(row: &PgRow) -> Result<OutboxEntry, StoreError> {
    let get = |i: usize| row.try_get::<String, _>(i).map_err(db_error);
    let user = |s: &str| UserId::parse(s).map_err(|_| corrupt("outbox user id"));
    let receiver_ids: Vec<String> =
        serde_json::from_str(&get(5)?).map_err(|_| corrupt("outbox receivers"))?;
    Ok(OutboxEntry {
        seq: row.try_get::<i64, _>(0).map_err(db_error)? as u64,
        message_id: MessageId::parse(&get(1)?).map_err(|_| corrupt("outbox message id"))?,
        room_id: RoomId::parse(&get(2)?).map_err(|_| corrupt("outbox room id"))?,
        sender_id: user(&get(3)?)?,
        receiver_id: row
            .try_get::<Option<String>, _>(4)
            .map_err(db_error)?
            .map(|s| user(&s))
            .transpose()?,
        receiver_ids: receiver_ids
            .iter()
            .map(|s| user(s))
            .collect::<Result<_, _>>()?,
        message: get(6)?,
        timestamp: row.try_get::<i64, _>(7).map_err(db_error)? as u64,
    })
}

async fn load_room(conn: &mut PgConnection, room_id: &str) -> Result<Option<Room>, StoreError> {
    let row = sqlx::query(concat!(room_select!(), " WHERE r.room_id = $1"))
        .bind(room_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?;
    row.as_ref().map(room_from_row).transpose()
}

/// A write's answer, held until the batch commits.
enum Reply {
    Append(oneshot::Sender<Result<Appended, StoreError>>, Appended),
    CreateRoom(
        oneshot::Sender<Result<(Room, bool), StoreError>>,
        (Room, bool),
    ),
    Unit(oneshot::Sender<Result<(), StoreError>>),
    /// An answer of its own that does not depend on the commit (RoomExists, OutboxFull).
    Refused(oneshot::Sender<Result<Appended, StoreError>>, StoreError),
    RoomRefused(oneshot::Sender<Result<(Room, bool), StoreError>>),
}

impl Reply {
    fn ok(self) {
        match self {
            Reply::Append(tx, v) => drop(tx.send(Ok(v))),
            Reply::CreateRoom(tx, v) => drop(tx.send(Ok(v))),
            Reply::Unit(tx) => drop(tx.send(Ok(()))),
            Reply::Refused(tx, e) => drop(tx.send(Err(e))),
            Reply::RoomRefused(tx) => drop(tx.send(Err(StoreError::RoomExists))),
        }
    }

    fn fail(self, e: &StoreError) {
        let e = || match e {
            StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
            other => StoreError::Internal(other.to_string()),
        };
        match self {
            Reply::Append(tx, _) | Reply::Refused(tx, _) => drop(tx.send(Err(e()))),
            Reply::CreateRoom(tx, _) | Reply::RoomRefused(tx) => drop(tx.send(Err(e()))),
            Reply::Unit(tx) => drop(tx.send(Err(e()))),
        }
    }
}

async fn run_writer(pool: PgPool, mut rx: mpsc::Receiver<Write>, outbox: Arc<OutboxState>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut counted = Instant::now();
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
            let recount = outbox.config.is_some() && counted.elapsed() >= OUTBOX_RECOUNT;
            if recount {
                counted = Instant::now();
            }
            commit_batch(&pool, ops, &outbox, recount).await;
        }
        if let Some(done) = close {
            rx.close();
            while let Ok(w) = rx.try_recv() {
                if let Write::Close(d) = w {
                    let _ = d.send(());
                }
            }
            let _ = done.send(());
            return;
        }
    }
}

async fn commit_batch(pool: &PgPool, ops: Vec<Write>, outbox: &OutboxState, recount: bool) {
    let mut replies = Vec::with_capacity(ops.len());
    let mut delta = Delta {
        pending: outbox.pending.load(Ordering::Relaxed),
        added: 0,
    };
    let result = tokio::time::timeout(BATCH_TIMEOUT, async {
        let mut tx = pool.begin().await.map_err(db_error)?;
        if recount {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?;
            delta.pending = n as u64;
        }
        let mut appends = Vec::new();
        for op in ops {
            if let Write::Append(message, reply) = op {
                appends.push((message, reply));
                continue;
            }
            if !appends.is_empty() {
                append_all(
                    &mut tx,
                    std::mem::take(&mut appends),
                    outbox,
                    &mut delta,
                    &mut replies,
                )
                .await?;
            }
            match op {
                Write::Append(..) | Write::Close(_) => unreachable!("handled above"),
                Write::MarkSent(seqs, reply) => {
                    let removed = mark_sent_in(&mut tx, &seqs).await?;
                    delta.pending = delta.pending.saturating_sub(removed);
                    replies.push(Reply::Unit(reply));
                }
                Write::CreateRoom(room, reply) => match create_room_in(&mut tx, room).await? {
                    Some(v) => replies.push(Reply::CreateRoom(reply, v)),
                    None => replies.push(Reply::RoomRefused(reply)),
                },
                Write::AddMember(room, user, reply) => {
                    add_member_in(&mut tx, &room, &user).await?;
                    replies.push(Reply::Unit(reply));
                }
            }
        }
        if !appends.is_empty() {
            append_all(&mut tx, appends, outbox, &mut delta, &mut replies).await?;
        }
        tx.commit().await.map_err(db_error)
    })
    .await
    .unwrap_or_else(|_| {
        Err(StoreError::Unavailable(format!(
            "postgres: no commit within {BATCH_TIMEOUT:?}"
        )))
    });
    match result {
        Ok(()) => {
            outbox.pending.store(delta.pending, Ordering::Relaxed);
            if delta.added > 0 {
                outbox.signal.notify_one();
            }
            let refused = replies
                .iter()
                .filter(|r| matches!(r, Reply::Refused(_, StoreError::OutboxFull(_))))
                .count();
            if refused > 0 {
                tracing::warn!(
                    pending = delta.pending,
                    refused,
                    "notification outbox full: refusing new messages until the relay catches up (OUTBOX_MAX_PENDING)"
                );
            }
            replies.into_iter().for_each(Reply::ok);
        }
        Err(e) => {
            tracing::error!(error = %e, "postgres store batch failed");
            replies.into_iter().for_each(|r| r.fail(&e));
        }
    }
}

/// The outbox count as this batch goes.
struct Delta {
    pending: u64,
    added: u64,
}

/// Consecutive appends of a batch: idempotency lookup, messages, rooms, outbox, each one
/// statement for the whole run.
async fn append_all(
    conn: &mut PgConnection,
    appends: Vec<(Message, oneshot::Sender<Result<Appended, StoreError>>)>,
    outbox: &OutboxState,
    delta: &mut Delta,
    replies: &mut Vec<Reply>,
) -> Result<(), StoreError> {
    // Stored messages for the idempotency keys of this run.
    let keys: Vec<Key> = appends.iter().filter_map(|(m, _)| key_of(m)).collect();
    let mut known: HashMap<Key, Message> = HashMap::new();
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
        for row in &rows {
            let m = message_from_row(row)?;
            if let Some(k) = key_of(&m) {
                known.insert(k, m);
            }
        }
    }

    // What to insert; duplicates (stored, or earlier in this run) are answered as such.
    enum Slot {
        New(Message, oneshot::Sender<Result<Appended, StoreError>>),
        Duplicate(Key, oneshot::Sender<Result<Appended, StoreError>>),
    }
    let mut slots = Vec::with_capacity(appends.len());
    let mut owned = Vec::with_capacity(appends.len());
    let limit = outbox.config.map(|c| c.max_pending);
    for (message, reply) in appends {
        let key = key_of(&message);
        if let Some(k) = &key
            && known.contains_key(k)
        {
            slots.push(Slot::Duplicate(k.clone(), reply));
            continue;
        }
        if let Some(max) = limit {
            if delta.pending >= max {
                replies.push(Reply::Refused(reply, StoreError::OutboxFull(delta.pending)));
                continue;
            }
            delta.pending += 1;
            delta.added += 1;
        }
        if let Some(k) = key {
            known.insert(k, message.clone());
        }
        owned.push(message.clone());
        slots.push(Slot::New(message, reply));
    }
    let fresh: Vec<&Message> = owned.iter().collect();

    let mut stored: HashSet<String> = HashSet::new();
    if !fresh.is_empty() {
        let col = |f: fn(&Message) -> &str| fresh.iter().map(|m| f(m)).collect::<Vec<&str>>();
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
        let inserted: Vec<String> = sqlx::query_scalar(
            "INSERT INTO messages (message_id, room_id, user_id, username, message, message_type,
                timestamp, created_at, client_message_id)
             SELECT id, room, usr, name, body, kind, ts, $9, cmid
               FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                           $6::text[], $7::bigint[], $8::text[])
                    WITH ORDINALITY AS t(id, room, usr, name, body, kind, ts, cmid, ord)
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
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?;
        stored.extend(inserted);
    }

    // Lost a race with another instance for an idempotency key: answer with its message.
    for m in &owned {
        if stored.contains(m.message_id.as_str()) {
            continue;
        }
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
        known.insert(k, message_from_row(&row)?);
        if limit.is_some() {
            delta.pending -= 1;
            delta.added -= 1;
        }
    }
    let written: Vec<&Message> = owned
        .iter()
        .filter(|m| stored.contains(m.message_id.as_str()))
        .collect();

    if !written.is_empty() {
        // rooms: create unknown ones as open groups, keep lastMessage / updatedAt; the last
        // message of each room in this run, rooms in id order (no deadlock between instances).
        let mut last: HashMap<&str, &Message> = HashMap::new();
        for m in &written {
            last.insert(m.room_id.as_str(), m);
        }
        let mut last: Vec<(&str, &Message)> = last.into_iter().collect();
        last.sort_by_key(|(r, _)| *r);
        let rooms: Vec<&str> = last.iter().map(|(r, _)| *r).collect();
        let times: Vec<i64> = last.iter().map(|(_, m)| m.timestamp as i64).collect();
        let bodies: Vec<&str> = last.iter().map(|(_, m)| m.message.as_str()).collect();
        let senders: Vec<&str> = last.iter().map(|(_, m)| m.user_id.as_str()).collect();
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

        if outbox.config.is_some() {
            outbox_insert_all(conn, &written, &rooms).await?;
        }
    }

    for slot in slots {
        match slot {
            Slot::New(message, reply) => {
                let appended = if stored.contains(message.message_id.as_str()) {
                    Appended {
                        message,
                        duplicate: false,
                    }
                } else {
                    let k = key_of(&message).expect("only keyed messages lose a race");
                    Appended {
                        message: known[&k].clone(),
                        duplicate: true,
                    }
                };
                replies.push(Reply::Append(reply, appended));
            }
            Slot::Duplicate(k, reply) => replies.push(Reply::Append(
                reply,
                Appended {
                    message: known[&k].clone(),
                    duplicate: true,
                },
            )),
        }
    }
    Ok(())
}

/// One outbox entry per written message, receivers from the rooms' participants now.
async fn outbox_insert_all(
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
    let mut members: HashMap<String, Vec<String>> = HashMap::new();
    for (room, user) in rows {
        members.entry(room).or_default().push(user);
    }
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

async fn mark_sent_in(conn: &mut PgConnection, seqs: &[u64]) -> Result<u64, StoreError> {
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

/// `None` when the room id is taken.
async fn create_room_in(
    conn: &mut PgConnection,
    room: NewRoom,
) -> Result<Option<(Room, bool)>, StoreError> {
    let pair_key = room.pair_key();
    let by_pair = async |conn: &mut PgConnection, key: &str| -> Result<Option<Room>, StoreError> {
        let id: Option<String> =
            sqlx::query_scalar("SELECT room_id FROM rooms WHERE pair_key = $1")
                .bind(key)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db_error)?;
        match id {
            Some(id) => load_room(conn, &id).await,
            None => Ok(None),
        }
    };
    if let Some(key) = &pair_key
        && let Some(existing) = by_pair(conn, key).await?
    {
        return Ok(Some((existing, false)));
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
            return Ok(Some((existing, false)));
        }
        return Ok(None);
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
    let created = load_room(conn, room.room_id.as_str())
        .await?
        .ok_or_else(|| StoreError::Internal("created room not found".into()))?;
    Ok(Some((created, true)))
}

async fn add_member_in(
    conn: &mut PgConnection,
    room: &RoomId,
    user: &UserId,
) -> Result<(), StoreError> {
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

#[async_trait]
impl MessageStore for PostgresStore {
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
            message_columns!(""),
            " FROM messages WHERE room_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
        ))
        .bind(room.as_str())
        .bind(before_seq)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
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
            message_columns!(""),
            " FROM messages WHERE room_id = $1 AND seq > $2 ORDER BY seq ASC LIMIT $3"
        ))
        .bind(room.as_str())
        .bind(seq)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.iter()
            .map(message_from_row)
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    async fn get_room(&self, room: &RoomId) -> Result<Option<Room>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        load_room(&mut conn, room.as_str()).await
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
            room_select!(),
            " JOIN room_participants p ON p.room_id = r.room_id
             WHERE p.user_id = $1
             ORDER BY COALESCE(r.last_timestamp, r.updated_at) DESC LIMIT 1000"
        ))
        .bind(user.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.iter().map(room_from_row).collect()
    }

    async fn outbox_pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let rows = sqlx::query(
            "UPDATE outbox SET claimed_by = $1,
                claimed_until = now() + make_interval(secs => $2)
             WHERE seq IN (
                SELECT seq FROM outbox
                 WHERE claimed_until IS NULL OR claimed_until < now() OR claimed_by = $1
                 ORDER BY seq LIMIT $3
                 FOR UPDATE SKIP LOCKED)
             RETURNING seq, message_id, room_id, sender_id, receiver_id, receiver_ids::text,
                message, timestamp",
        )
        .bind(&self.owner)
        .bind(OUTBOX_LEASE_SECS)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let mut entries = rows
            .iter()
            .map(outbox_entry_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        entries.sort_by_key(|e| e.seq);
        Ok(entries)
    }

    async fn outbox_mark_sent(&self, seqs: &[u64]) -> Result<(), StoreError> {
        let seqs = seqs.to_vec();
        self.write(|tx| Write::MarkSent(seqs, tx)).await
    }

    async fn outbox_len(&self) -> Result<u64, StoreError> {
        count_outbox(&self.pool).await
    }

    fn outbox_signal(&self) -> Arc<Notify> {
        self.outbox.signal.clone()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.writes.is_closed() {
            return Err(StoreError::Unavailable("postgres store is closed".into()));
        }
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Unavailable(format!("postgres: {e}")))
    }

    async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.writes.send(Write::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
        // Hand this store's claims back, so a restarted instance resends them at once.
        let released = sqlx::query(
            "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = $1",
        )
        .bind(&self.owner)
        .execute(&self.pool)
        .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "postgres: could not release outbox claims (they expire)");
        }
        self.pool.close().await;
    }
}
