//! The embedded store's tables and indexes, created at open when missing (`IF NOT EXISTS`: a
//! file written by an earlier version opens as is).
//!
//! `messages.seq` orders a room's history; the unique partial index on
//! `(room_id, user_id, client_message_id)` is the idempotency key.

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
];

/// Creates what is missing (on the writer's connection, at open).
pub(super) fn create(conn: &Connection) -> Result<(), StoreError> {
    for stmt in SCHEMA {
        conn.execute(stmt, []).map_err(sqlite_error)?;
    }
    Ok(())
}
