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

async fn drop_schema(schema: &str) {
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
