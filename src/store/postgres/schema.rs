//! The PostgreSQL schema: numbered migrations embedded in the binary, applied at start-up in
//! one transaction under `pg_advisory_xact_lock` and recorded in `chat_schema_migrations`
//! (plain SQL rather than `sqlx::migrate!`: no extra feature or folder, and the lock makes
//! simultaneous starts safe). A change of schema is a new entry at the end of `MIGRATIONS`.
//!
//! - 1: messages, rooms, participants, the outbox.
//! - 2 (SPEC 10, the message lifecycle): `messages.reply_to`, `edited_at`, `deleted_at`,
//!   `outbox.event` (and an index of the outbox by message, for the blanking of a deleted
//!   message's pending entries), the tables `reactions`, `read_markers` and `message_changes`
//!   (the room's change log that a `since` resume replays): the embedded store's tables.

use sqlx::AssertSqlSafe;
use sqlx::postgres::PgPool;

use super::db_error;
use crate::store::StoreError;

/// The migrations, in order; each is applied once per database (schema).
const MIGRATIONS: &[(i32, &str)] = &[
    (
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
    ),
    (
        2,
        // SPEC 10, the message lifecycle. Every statement is idempotent (`IF NOT EXISTS`), so a
        // database written before it is upgraded in place: old rows read as never edited, not
        // deleted, no reply, and old outbox entries as `message.sent`.
        r#"
    ALTER TABLE messages ADD COLUMN IF NOT EXISTS reply_to TEXT COLLATE "C";
    ALTER TABLE messages ADD COLUMN IF NOT EXISTS edited_at BIGINT;
    ALTER TABLE messages ADD COLUMN IF NOT EXISTS deleted_at BIGINT;
    ALTER TABLE outbox ADD COLUMN IF NOT EXISTS event TEXT NOT NULL DEFAULT 'message.sent';
    CREATE INDEX IF NOT EXISTS outbox_message ON outbox (message_id);
    CREATE TABLE IF NOT EXISTS reactions (
        id BIGSERIAL PRIMARY KEY,
        message_id TEXT COLLATE "C" NOT NULL,
        emoji TEXT COLLATE "C" NOT NULL,
        user_id TEXT COLLATE "C" NOT NULL,
        at BIGINT NOT NULL,
        UNIQUE (message_id, emoji, user_id)
    );
    CREATE TABLE IF NOT EXISTS read_markers (
        room_id TEXT COLLATE "C" NOT NULL,
        user_id TEXT COLLATE "C" NOT NULL,
        message_id TEXT COLLATE "C" NOT NULL,
        seq BIGINT NOT NULL,
        read_at BIGINT NOT NULL,
        PRIMARY KEY (room_id, user_id)
    );
    CREATE TABLE IF NOT EXISTS message_changes (
        seq BIGSERIAL PRIMARY KEY,
        room_id TEXT COLLATE "C" NOT NULL,
        message_id TEXT COLLATE "C" NOT NULL,
        kind TEXT NOT NULL,
        user_id TEXT COLLATE "C" NOT NULL,
        emoji TEXT,
        added BOOLEAN,
        count BIGINT,
        at BIGINT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS message_changes_room ON message_changes (room_id, at);
    "#,
    ),
];

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Applies the migrations this database has not seen yet.
pub(super) async fn migrate(pool: &PgPool, schema: Option<&str>) -> Result<(), StoreError> {
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
