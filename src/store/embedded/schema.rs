//! The embedded store's tables and indexes, created at open when missing (`IF NOT EXISTS`: a
//! file written by an earlier version opens as is).
//!
//! `messages.seq` orders a room's history; the unique partial index on
//! `(room_id, user_id, client_message_id)` is the idempotency key.
//!
//! Migrations (SPEC 10, message lifecycle): a file written before it gets the columns
//! `messages.reply_to`, `edited_at`, `deleted_at` and `outbox.event` (`ALTER TABLE .. ADD
//! COLUMN` when `table_info` lacks them; old rows read as never edited, not deleted,
//! `message.sent`), and the tables `reactions`, `read_markers` and `message_changes` (the
//! room's change log that `since` resume replays).

use rusqlite::Connection;

use super::sqlite_error;
use crate::store::StoreError;

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
    "CREATE TABLE IF NOT EXISTS reactions (
        message_id TEXT NOT NULL,
        emoji TEXT NOT NULL,
        user_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        UNIQUE (message_id, emoji, user_id)
    )",
    "CREATE TABLE IF NOT EXISTS read_markers (
        room_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        read_at INTEGER NOT NULL,
        PRIMARY KEY (room_id, user_id)
    ) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS message_changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        room_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        user_id TEXT NOT NULL,
        emoji TEXT,
        added INTEGER,
        count INTEGER,
        at INTEGER NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS message_changes_room ON message_changes(room_id, at)",
    // The last journal record written into the tables above (`journal.rs`).
    "CREATE TABLE IF NOT EXISTS journal_state (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        applied INTEGER NOT NULL
    )",
];

/// Columns added after the first schema: `(table, column, definition)`.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("messages", "reply_to", "TEXT"),
    ("messages", "edited_at", "INTEGER"),
    ("messages", "deleted_at", "INTEGER"),
    ("outbox", "event", "TEXT NOT NULL DEFAULT 'message.sent'"),
];

/// Creates what is missing (on the writer's connection, at open), and adds the columns a file
/// of an earlier version lacks.
pub(super) fn create(conn: &Connection) -> Result<(), StoreError> {
    for stmt in SCHEMA {
        conn.execute(stmt, []).map_err(sqlite_error)?;
    }
    for (table, column, definition) in ADDED_COLUMNS {
        let present: bool = conn
            .query_row(
                &format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
                [column],
                |r| r.get::<_, i64>(0),
            )
            .map_err(sqlite_error)?
            > 0;
        if !present {
            conn.execute(
                &format!("ALTER TABLE {table} ADD COLUMN {column} {definition}"),
                [],
            )
            .map_err(sqlite_error)?;
        }
    }
    Ok(())
}
