//! The store conformance suite (`chat_service::store::conformance`) against every backend the
//! test machine runs: the embedded store here; PostgreSQL in `postgres.rs`.

use std::sync::Arc;

use async_trait::async_trait;
use chat_service::store::conformance::{self, Backend};
use chat_service::store::embedded::EmbeddedStore;
use chat_service::store::{MessageStore, OutboxConfig, OutboxEvent, StoreError};

/// An embedded store in its own temporary folder.
struct Embedded(tempfile::TempDir);

#[async_trait]
impl Backend for Embedded {
    async fn open(
        &self,
        outbox: Option<OutboxConfig>,
    ) -> Result<Arc<dyn MessageStore>, StoreError> {
        Ok(Arc::new(
            EmbeddedStore::open_with(self.0.path(), outbox).await?,
        ))
    }

    fn shared(&self) -> bool {
        false
    }

    /// The rows of the SQLite file, and the bytes of the journal (sends are durable there
    /// first).
    async fn raw_contains(&self, text: &str) -> bool {
        let journal = std::fs::read(self.0.path().join("chat.journal")).unwrap_or_default();
        sqlite_contains(&self.0.path().join("chat.db"), text).await
            || journal.windows(text.len()).any(|w| w == text.as_bytes())
    }
}

/// Whether `text` appears in any column of any row of any table of the SQLite file (read on
/// a connection of its own, beside the store's).
pub async fn sqlite_contains(file: &std::path::Path, text: &str) -> bool {
    use sqlx::Connection;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
    let options = SqliteConnectOptions::new().filename(file).read_only(true);
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .expect("open the database file");
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&mut conn)
            .await
            .expect("tables");
    for table in tables {
        let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info(?1)")
            .bind(&table)
            .fetch_all(&mut conn)
            .await
            .expect("columns");
        let any = columns
            .iter()
            .map(|c| format!("instr(CAST(\"{c}\" AS TEXT), ?1) > 0"))
            .collect::<Vec<_>>()
            .join(" OR ");
        let found: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM \"{table}\" WHERE {any}"
        )))
        .bind(text)
        .fetch_one(&mut conn)
        .await
        .expect("search a table");
        if found > 0 {
            return true;
        }
    }
    false
}

#[tokio::test]
async fn embedded_store_passes_the_conformance_suite() {
    conformance::run_all(&Embedded(tempfile::tempdir().expect("temp dir"))).await;
}

/// The writer never checkpoints itself; the checkpointer task must keep the WAL short. One
/// commit per append writes several pages (table, indexes, room), so 2000 sequential appends
/// would leave a WAL of 30 MB or more if nothing copied it back into the database.
#[tokio::test]
async fn embedded_store_keeps_its_wal_short_under_sustained_commits() {
    use chat_service::domain::{
        Message, MessageBody, MessageId, MessageType, RoomId, UserId, Username, now_ms,
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path()).await.expect("open");
    let user = UserId::parse("wal-writer").unwrap();
    for i in 0..2000 {
        let now = now_ms();
        store
            .append(Message::new(
                MessageId::generate(now),
                RoomId::parse(&format!("wal-room-{}", i % 50)).unwrap(),
                user.clone(),
                Username::parse("wal writer").unwrap(),
                MessageBody::parse(&format!("message {i}"), 4000).unwrap(),
                MessageType::Text,
                now,
                None,
            ))
            .await
            .expect("append");
    }
    let wal = std::fs::metadata(dir.path().join("chat.db-wal"))
        .expect("the WAL exists while the store is open")
        .len();
    assert!(
        wal < 12 * 1024 * 1024,
        "WAL is {wal} bytes after 2000 commits: checkpoints do not keep up"
    );
    assert_eq!(
        store
            .history(&RoomId::parse("wal-room-7").unwrap(), 100, None)
            .await
            .expect("history")
            .len(),
        40
    );
    store.close().await;
}

/// The tables of the embedded store as the sqlx writer (main before the rusqlite writer) created
/// them: a frozen copy, so that a later change of `schema.rs` cannot make this test pass by
/// changing both sides.
const SCHEMA_BEFORE_RUSQLITE: &[&str] = &[
    "CREATE TABLE messages (
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
    "CREATE INDEX messages_room_seq ON messages(room_id, seq)",
    "CREATE UNIQUE INDEX messages_idempotency
        ON messages(room_id, user_id, client_message_id) WHERE client_message_id IS NOT NULL",
    "CREATE TABLE rooms (
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
    "CREATE TABLE room_participants (
        room_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        PRIMARY KEY (room_id, user_id)
    ) WITHOUT ROWID",
    "CREATE INDEX room_participants_user ON room_participants(user_id)",
    "CREATE TABLE outbox (
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

/// A database written through sqlx (as the store wrote it before its writer moved to rusqlite)
/// and copied while that connection was still open, its last commits only in the WAL (as after
/// a crash), opens with its messages, idempotency keys, rooms and outbox, and takes new writes
/// after them.
#[tokio::test]
async fn embedded_store_opens_a_database_written_by_the_sqlx_writer() {
    use std::str::FromStr;

    use chat_service::domain::{
        ClientMessageId, Message, MessageBody, MessageId, MessageType, RoomId, UserId, Username,
        now_ms,
    };
    use sqlx::Connection;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode};

    let written = tempfile::tempdir().expect("temp dir");
    let options = SqliteConnectOptions::from_str("sqlite://")
        .unwrap()
        .filename(written.path().join("chat.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .pragma("wal_autocheckpoint", "0");
    let mut old = SqliteConnection::connect_with(&options)
        .await
        .expect("sqlx opens");
    for stmt in SCHEMA_BEFORE_RUSQLITE {
        sqlx::query(*stmt).execute(&mut old).await.expect("schema");
    }
    let t0 = now_ms() - 10_000;
    let ids: Vec<String> = (0..3)
        .map(|i| MessageId::generate(t0 + i).as_str().to_string())
        .collect();
    sqlx::query(
        "INSERT INTO rooms (room_id, type, private, created_at, updated_at, last_content,
            last_timestamp, last_sender) VALUES ('old-room', 'group', 0, ?1, ?1, 'old 2', ?1, 'alice')",
    )
    .bind(t0 as i64)
    .execute(&mut old)
    .await
    .expect("room");
    for user in ["alice", "bob"] {
        sqlx::query("INSERT INTO room_participants (room_id, user_id) VALUES ('old-room', ?)")
            .bind(user)
            .execute(&mut old)
            .await
            .expect("participant");
    }
    for (i, id) in ids.iter().enumerate() {
        sqlx::query(
            "INSERT INTO messages (message_id, room_id, user_id, username, message, message_type,
                timestamp, created_at, client_message_id)
             VALUES (?, 'old-room', 'alice', 'Alice', ?, 'text', ?, ?, ?)",
        )
        .bind(id)
        .bind(format!("old {i}"))
        .bind((t0 + i as u64) as i64)
        .bind(t0 as i64)
        .bind(format!("client-{i}"))
        .execute(&mut old)
        .await
        .expect("message");
    }
    sqlx::query(
        "INSERT INTO outbox (message_id, room_id, sender_id, receiver_id, receiver_ids, message,
            timestamp) VALUES (?, 'old-room', 'alice', 'bob', '[\"bob\"]', 'old 2', ?)",
    )
    .bind(&ids[2])
    .bind((t0 + 2) as i64)
    .execute(&mut old)
    .await
    .expect("outbox entry");
    // The copy is what a crash leaves: the commits are in the WAL, not yet in the database.
    let copy = tempfile::tempdir().expect("temp dir");
    for file in ["chat.db", "chat.db-wal"] {
        std::fs::copy(written.path().join(file), copy.path().join(file)).expect("copy");
    }
    assert!(
        std::fs::metadata(copy.path().join("chat.db-wal"))
            .expect("WAL")
            .len()
            > 0,
        "the copied commits are in the WAL"
    );
    old.close().await.expect("close the old connection");

    let outbox = Some(OutboxConfig { max_pending: 100 });
    let store = EmbeddedStore::open_with(copy.path(), outbox)
        .await
        .expect("the new store opens the old file");
    let room = RoomId::parse("old-room").unwrap();
    let history = store.history(&room, 10, None).await.expect("history");
    let texts: Vec<&str> = history.iter().map(|m| m.message.as_str()).collect();
    assert_eq!(texts, ["old 0", "old 1", "old 2"]);
    assert_eq!(store.outbox_len().await.unwrap(), 1);

    let alice = UserId::parse("alice").unwrap();
    let message = |text: &str, client: &str| {
        let now = now_ms();
        Message::new(
            MessageId::generate(now),
            room.clone(),
            alice.clone(),
            Username::parse("Alice").unwrap(),
            MessageBody::parse(text, 4000).unwrap(),
            MessageType::Text,
            now,
            Some(ClientMessageId::parse(client).unwrap()),
        )
    };
    // The old idempotency key holds: a replay returns the stored message.
    let replay = store
        .append(message("replayed", "client-1"))
        .await
        .expect("replay");
    assert!(replay.duplicate);
    assert_eq!(replay.message.message_id.as_str(), ids[1]);
    assert_eq!(replay.message.message.as_str(), "old 1");

    let before = std::time::Instant::now();
    let new = store
        .append(message("new 3", "client-3"))
        .await
        .expect("append");
    assert!(!new.duplicate);
    // The end of the durable write (`chat_durable_write_seconds` ends there): reported by the
    // writer, between the call and its return.
    let committed = new
        .committed
        .expect("the embedded store reports its flush's end");
    assert!(before <= committed && committed <= std::time::Instant::now());
    let old_last = MessageId::parse(&ids[2]).unwrap();
    let after = store
        .after(&room, &old_last, 10)
        .await
        .expect("after")
        .expect("the old message is known");
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].message_id, new.message.message_id);

    // The outbox keeps the old entry first; the new one follows with the old participants.
    let pending = store.outbox_pending(10).await.expect("pending");
    assert_eq!(pending.len(), 2);
    assert_eq!(pending[0].message_id.as_str(), ids[2]);
    assert_eq!(pending[1].message_id, new.message.message_id);
    assert_eq!(pending[1].receiver_ids, vec![UserId::parse("bob").unwrap()]);
    assert!(pending[0].seq < pending[1].seq);
    let got = store.get_room(&room).await.expect("room").expect("exists");
    assert_eq!(got.participants.len(), 2);
    assert_eq!(
        got.last_message.expect("last message").content.as_str(),
        "new 3"
    );
    store.close().await;

    // And it all survives a restart of the new store.
    let store = EmbeddedStore::open_with(copy.path(), outbox)
        .await
        .expect("reopen");
    assert_eq!(store.history(&room, 10, None).await.unwrap().len(), 4);
    assert_eq!(store.outbox_len().await.unwrap(), 2);

    // The message lifecycle (SPEC 10) on the old file's messages; the old pending entry of
    // the deleted one is blanked, and its text is gone from the file's rows.
    let old: Vec<MessageId> = ids.iter().map(|i| MessageId::parse(i).unwrap()).collect();
    let bob = UserId::parse("bob").unwrap();
    conformance::lifecycle_on_old_messages(&store, &room, &old, &alice, &bob).await;
    let pending = store.outbox_pending(10).await.expect("pending");
    let events: Vec<(&str, OutboxEvent, &str)> = pending
        .iter()
        .map(|e| (e.message_id.as_str(), e.event, e.message.as_str()))
        .collect();
    assert_eq!(
        events,
        [
            (ids[2].as_str(), OutboxEvent::Sent, ""),
            (new.message.message_id.as_str(), OutboxEvent::Sent, "new 3"),
            (
                pending[2].message_id.as_str(),
                OutboxEvent::Sent,
                "a reply to an old message"
            ),
            (ids[0].as_str(), OutboxEvent::Edited, "old, edited"),
            (ids[2].as_str(), OutboxEvent::Deleted, ""),
        ],
        "the old entry first, blanked by the delete"
    );
    assert!(!sqlite_contains(&copy.path().join("chat.db"), "old 2").await);
    assert!(sqlite_contains(&copy.path().join("chat.db"), "old 1").await);
    store.close().await;
}
