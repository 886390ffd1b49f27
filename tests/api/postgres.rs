//! `STORAGE=postgres` against the machine's PostgreSQL (`POSTGRES_TEST_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`): the conformance suite in a fresh schema, and
//! the app's acceptance behaviours through `spawn_app_with(["--storage", "postgres", ..])`.
//! A missing PostgreSQL fails these tests (never skipped).

use std::sync::Arc;

use async_trait::async_trait;
use chat_service::store::conformance::{self, Backend};
use chat_service::store::postgres::{PostgresConfig, PostgresStore};
use chat_service::store::{MessageStore, OutboxConfig, StoreError};

use crate::stores::{
    outage_fails_fast_and_heals, restart_keeps_messages_rooms_and_idempotency, unique,
};
use crate::support::{TcpProxy, spawn_app_with};

pub fn pg_url() -> String {
    std::env::var("POSTGRES_TEST_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// The PostgreSQL store in a schema of its own (dropped at the end of the test).
struct Postgres {
    schema: String,
}

#[async_trait]
impl Backend for Postgres {
    async fn open(
        &self,
        outbox: Option<OutboxConfig>,
    ) -> Result<Arc<dyn MessageStore>, StoreError> {
        Ok(Arc::new(
            PostgresStore::open(PostgresConfig {
                schema: Some(self.schema.clone()),
                outbox,
                ..PostgresConfig::new(pg_url())
            })
            .await?,
        ))
    }

    fn shared(&self) -> bool {
        true
    }

    async fn raw_contains(&self, text: &str) -> bool {
        schema_contains(&self.schema, text).await
    }
}

/// Whether `text` appears in any row of any table of `schema` (each row as its text form).
async fn schema_contains(schema: &str, text: &str) -> bool {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&pg_url())
        .await
        .expect("connect to search the test schema");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = $1 AND table_type = 'BASE TABLE'",
    )
    .bind(schema)
    .fetch_all(&mut conn)
    .await
    .expect("tables");
    assert!(!tables.is_empty(), "the schema {schema} has tables");
    for table in tables {
        let found: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT EXISTS (SELECT 1 FROM \"{schema}\".\"{table}\" t WHERE strpos(t::text, $1) > 0)"
        )))
        .bind(text)
        .fetch_one(&mut conn)
        .await
        .expect("search a table");
        if found {
            return true;
        }
    }
    false
}

pub async fn drop_schema(schema: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&pg_url())
        .await
        .expect("connect to drop the test schema");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(&mut conn)
    .await
    .expect("drop the test schema");
}

#[tokio::test]
async fn postgres_store_passes_the_conformance_suite() {
    let backend = Postgres {
        schema: unique("chat_test_"),
    };
    conformance::run_all(&backend).await;
    drop_schema(&backend.schema).await;
}

#[tokio::test]
async fn app_on_postgres_keeps_messages_rooms_and_idempotency_across_a_restart() {
    let url = pg_url();
    restart_keeps_messages_rooms_and_idempotency(&[
        "--storage",
        "postgres",
        "--database-url",
        &url,
    ])
    .await;
}

/// The host:port of the test database (the proxy's upstream).
fn upstream() -> std::net::SocketAddr {
    use std::net::ToSocketAddrs;
    let url = pg_url();
    let rest = url.split('@').nth(1).unwrap_or("127.0.0.1:5432/test");
    let host = rest.split(['/', '?']).next().unwrap_or("127.0.0.1:5432");
    let host = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:5432")
    };
    host.to_socket_addrs()
        .expect("resolve the PostgreSQL host")
        .next()
        .expect("an address")
}

#[tokio::test]
async fn database_outage_fails_sends_fast_shows_in_ready_and_heals_by_itself() {
    let proxy = TcpProxy::start(upstream()).await;
    let url = format!("postgres://postgres@{}/test", proxy.addr);
    outage_fails_fast_and_heals(&["--storage", "postgres", "--database-url", &url], &proxy).await;
}

/// Two instances on one database: their group-commit writers' transactions must never
/// deadlock each other. Joins (each one inserts into `rooms` and `room_participants`) split a
/// batch's appends into several runs, so two instances joining and chatting in rooms in
/// opposite orders locked the same `rooms` rows in opposite orders: "deadlock detected", and
/// every send of both batches failed (found by the churn soak on PostgreSQL).
#[tokio::test]
async fn two_instances_on_one_database_never_deadlock() {
    let url = pg_url();
    let args = [
        "--storage",
        "postgres",
        "--database-url",
        url.as_str(),
        "--rate-limit-per-sec",
        "0",
        "--event-rate-limit-per-sec",
        "0",
    ];
    let (a, b) = (spawn_app_with(&args).await, spawn_app_with(&args).await);
    let rooms: Vec<String> = (0..12).map(|_| unique("pgdl")).collect();
    let mut tasks = Vec::new();
    for (i, app) in [&a, &b, &a, &b, &a, &b, &a, &b].into_iter().enumerate() {
        let mut order = rooms.clone();
        if i % 2 == 1 {
            order.reverse();
        }
        order.rotate_left(i / 2);
        let mut c = app.user(&unique("pgdl-u")).await;
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for round in 0..6 {
                let acks: Vec<_> = order
                    .iter()
                    .flat_map(|room| {
                        [
                            c.emit_with_ack("join_room", serde_json::json!({"roomId": room})),
                            c.emit_with_ack(
                                "send_message",
                                serde_json::json!({"roomId": room, "message": format!("{round}")}),
                            ),
                        ]
                    })
                    .collect();
                for ack in acks {
                    let ack = tokio::time::timeout(crate::support::WAIT * 4, ack)
                        .await
                        .expect("ack in time")
                        .expect("ack");
                    if ack["success"] != true {
                        failures.push(ack);
                    }
                }
            }
            failures
        }));
    }
    for t in tasks {
        let failures = t.await.unwrap();
        assert!(failures.is_empty(), "refused: {failures:?}");
    }
}

/// The schema as migration 1 created it before SPEC 10 (d25a967): a frozen copy, so that a
/// later change of `schema.rs` cannot make the upgrade test pass by changing both sides.
const SCHEMA_BEFORE_LIFECYCLE: &str = r#"
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
    CREATE TABLE chat_schema_migrations (
        version INTEGER PRIMARY KEY,
        applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    INSERT INTO chat_schema_migrations (version) VALUES (1);
"#;

/// A database written before SPEC 10 (migration 1 only, with messages, a room, participants
/// and a pending outbox entry) is upgraded at open: its messages read back and take every
/// lifecycle change, its old entry reads as `message.sent` and is blanked by a delete, and
/// the upgraded database opens again.
#[tokio::test]
async fn postgres_store_upgrades_a_database_written_before_the_lifecycle() {
    use std::str::FromStr;

    use chat_service::domain::{
        ClientMessageId, Message, MessageBody, MessageId, MessageType, RoomId, UserId, Username,
        now_ms,
    };
    use chat_service::store::OutboxEvent;
    use sqlx::Connection;
    use sqlx::postgres::{PgConnectOptions, PgConnection};

    let schema = unique("chat_old_");
    let mut admin = PgConnection::connect(&pg_url()).await.expect("connect");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
        .execute(&mut admin)
        .await
        .expect("create the schema");
    let options = PgConnectOptions::from_str(&pg_url())
        .unwrap()
        .options([("search_path", schema.as_str())]);
    let mut old = PgConnection::connect_with(&options).await.expect("connect");
    sqlx::raw_sql(SCHEMA_BEFORE_LIFECYCLE)
        .execute(&mut old)
        .await
        .expect("the old schema");
    let t0 = now_ms() - 10_000;
    let ids: Vec<String> = (0..3)
        .map(|i| MessageId::generate(t0 + i).as_str().to_string())
        .collect();
    sqlx::query(
        "INSERT INTO rooms (room_id, type, private, created_at, updated_at, last_content,
            last_timestamp, last_sender)
         VALUES ('old-room', 'group', false, $1, $2, 'old 2', $2, 'alice')",
    )
    .bind(t0 as i64)
    .bind((t0 + 2) as i64)
    .execute(&mut old)
    .await
    .expect("room");
    sqlx::query(
        "INSERT INTO room_participants (room_id, user_id) VALUES ('old-room', 'alice'),
            ('old-room', 'bob')",
    )
    .execute(&mut old)
    .await
    .expect("participants");
    for (i, id) in ids.iter().enumerate() {
        sqlx::query(
            "INSERT INTO messages (message_id, room_id, user_id, username, message, message_type,
                timestamp, created_at, client_message_id)
             VALUES ($1, 'old-room', 'alice', 'Alice', $2, 'text', $3, $4, $5)",
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
            timestamp) VALUES ($1, 'old-room', 'alice', 'bob', '[\"bob\"]', 'old 2', $2)",
    )
    .bind(&ids[2])
    .bind((t0 + 2) as i64)
    .execute(&mut old)
    .await
    .expect("outbox entry");
    old.close().await.expect("close");

    let backend = Postgres {
        schema: schema.clone(),
    };
    let outbox = Some(OutboxConfig { max_pending: 100 });
    let store = backend.open(outbox).await.expect("open the old database");
    let room = RoomId::parse("old-room").unwrap();
    let (alice, bob) = (
        UserId::parse("alice").unwrap(),
        UserId::parse("bob").unwrap(),
    );
    let texts: Vec<String> = store
        .history(&room, 10, None)
        .await
        .expect("history")
        .iter()
        .map(|m| m.message.as_str().to_string())
        .collect();
    assert_eq!(texts, ["old 0", "old 1", "old 2"]);
    let pending = store.outbox_pending(10).await.expect("pending");
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].event, pending[0].message.as_str()),
        (OutboxEvent::Sent, "old 2"),
        "an old entry reads as message.sent"
    );
    let replay = store
        .append(Message::new(
            MessageId::generate(now_ms()),
            room.clone(),
            alice.clone(),
            Username::parse("Alice").unwrap(),
            MessageBody::parse("replayed", 100).unwrap(),
            MessageType::Text,
            now_ms(),
            Some(ClientMessageId::parse("client-1").unwrap()),
        ))
        .await
        .expect("replay");
    assert!(replay.duplicate, "the old idempotency key holds");
    assert_eq!(replay.message.message_id.as_str(), ids[1]);

    let old_ids: Vec<MessageId> = ids.iter().map(|i| MessageId::parse(i).unwrap()).collect();
    conformance::lifecycle_on_old_messages(&*store, &room, &old_ids, &alice, &bob).await;
    let pending = store.outbox_pending(10).await.expect("pending");
    let events: Vec<(&str, OutboxEvent, &str)> = pending
        .iter()
        .map(|e| (e.message_id.as_str(), e.event, e.message.as_str()))
        .collect();
    assert_eq!(
        events,
        [
            (ids[2].as_str(), OutboxEvent::Sent, ""),
            (
                pending[1].message_id.as_str(),
                OutboxEvent::Sent,
                "a reply to an old message"
            ),
            (ids[0].as_str(), OutboxEvent::Edited, "old, edited"),
            (ids[2].as_str(), OutboxEvent::Deleted, ""),
        ],
        "the old entry first, blanked by the delete"
    );
    assert!(
        !schema_contains(&schema, "old 2").await,
        "the deleted text is gone"
    );
    assert!(schema_contains(&schema, "old 1").await);
    store.close().await;

    // The upgraded database opens again (migration 2 is recorded, not run twice).
    let store = backend.open(outbox).await.expect("reopen");
    let history = store.history(&room, 10, None).await.expect("history");
    assert_eq!(history.len(), 4);
    assert_eq!(history[0].message.as_str(), "old, edited");
    assert!(history[2].deleted);
    let versions: Vec<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT version FROM \"{schema}\".chat_schema_migrations ORDER BY version"
    )))
    .fetch_all(&mut admin)
    .await
    .expect("versions");
    assert_eq!(versions, [1, 2]);
    store.close().await;
    drop_schema(&schema).await;
}

/// `rooms_of` counts every room's unread messages in its one query per page: the plan reads
/// each room's messages after the caller's marker through the `(room_id, seq)` index and the
/// marker through the `read_markers` key, never scanning `messages` (the plan is printed;
/// docs/ARCHITECTURE.md, "Unread counts", shows it).
#[tokio::test]
async fn rooms_of_counts_unread_messages_through_the_indexes() {
    use chat_service::domain::UserId;
    use chat_service::store::postgres::ROOMS_OF_QUERY;
    use sqlx::Connection;

    let backend = Postgres {
        schema: unique("chat_explain_"),
    };
    let store = backend.open(None).await.expect("open");
    let mut conn = sqlx::PgConnection::connect(&pg_url())
        .await
        .expect("connect");
    let schema = &backend.schema;
    // 200 rooms of 500 messages each (100,000), every 7th deleted; the caller takes part in
    // every 5th room (40) with three others, and has read half of each of 20 of them; 50
    // other readers have markers in every room (10,000).
    let seed = format!(
        r#"SET search_path TO "{schema}";
        INSERT INTO rooms (room_id, type, private, created_at, updated_at, last_timestamp)
             SELECT 'r' || i, 'group', false, 0, i, i FROM generate_series(1, 200) i;
        INSERT INTO room_participants (room_id, user_id)
             SELECT 'r' || i, u FROM generate_series(1, 200) i,
                    unnest(ARRAY['u1', 'u2', 'u3']) u;
        INSERT INTO room_participants (room_id, user_id)
             SELECT 'r' || i, 'caller' FROM generate_series(5, 200, 5) i;
        INSERT INTO messages (message_id, room_id, user_id, username, message, message_type,
                              timestamp, created_at, deleted_at)
             SELECT 'm' || r || '-' || n, 'r' || r, CASE WHEN n % 4 = 0 THEN 'caller' ELSE 'u1' END,
                    'x', 'text', 'text', n, n, CASE WHEN n % 7 = 0 THEN n END
               FROM generate_series(1, 200) r, generate_series(1, 500) n ORDER BY r, n;
        INSERT INTO read_markers (room_id, user_id, message_id, seq, read_at)
             SELECT m.room_id, 'caller', m.message_id, m.seq, 1 FROM messages m
              WHERE m.message_id IN (SELECT 'm' || i || '-250' FROM generate_series(10, 200, 10) i);
        INSERT INTO read_markers (room_id, user_id, message_id, seq, read_at)
             SELECT 'r' || i, 'reader' || u, 'm' || i || '-1', 1, 1
               FROM generate_series(1, 200) i, generate_series(1, 50) u;
        ANALYZE;"#
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(seed))
        .execute(&mut conn)
        .await
        .expect("seed");
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) {ROOMS_OF_QUERY}"
    )))
    .bind("caller")
    .fetch_all(&mut conn)
    .await
    .expect("explain");
    let plan = plan.join("\n");
    println!("{plan}");
    assert!(plan.contains("messages_room_seq"), "{plan}");
    assert!(plan.contains("read_markers_pkey"), "{plan}");
    assert!(!plan.contains("Seq Scan on messages"), "{plan}");

    // And the counts are right: 375 of others in a room, minus the tombstones; half of that
    // after a marker in the middle.
    let rooms = store
        .rooms_of(&UserId::parse("caller").unwrap())
        .await
        .expect("rooms_of");
    assert_eq!(rooms.len(), 40);
    let others = |from: u64| (from..=500).filter(|n| n % 4 != 0 && n % 7 != 0).count() as u64;
    for r in &rooms {
        let i: u64 = r.room_id.as_str()[1..].parse().unwrap();
        let want = if i.is_multiple_of(10) {
            others(251)
        } else {
            others(1)
        };
        assert_eq!(r.unread_count, Some(want), "room {}", r.room_id);
    }
    store.close().await;
    drop_schema(schema).await;
}
