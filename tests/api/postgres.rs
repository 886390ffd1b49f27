//! `STORAGE=postgres` against the machine's PostgreSQL (`POSTGRES_TEST_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`): the conformance suite in a fresh schema, and
//! the app's acceptance behaviours through `spawn_app_with(["--storage", "postgres", ..])`.
//! A missing PostgreSQL fails these tests (never skipped).

use std::sync::Arc;

use async_trait::async_trait;
use chat_service::domain::{MessageId, now_ms};
use chat_service::store::conformance::{self, Backend};
use chat_service::store::postgres::{PostgresConfig, PostgresStore};
use chat_service::store::{MessageStore, OutboxConfig, StoreError};
use serde_json::json;

use crate::support::spawn_app_with;

pub fn pg_url() -> String {
    std::env::var("POSTGRES_TEST_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A unique id for this run's rooms, users and schemas.
fn unique(prefix: &str) -> String {
    format!("{prefix}{}", MessageId::generate(now_ms()))
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
    let app = spawn_app_with(&["--storage", "postgres", "--database-url", &url]).await;
    let (room, a, b) = (unique("pg-room-"), unique("pg-a-"), unique("pg-b-"));
    let (status, ready) = app.get("/ready").await;
    assert_eq!(status, 200, "{ready}");

    let mut alice = app.member(&a, &room).await;
    let first = alice
        .emit_ack(
            "send_message",
            json!({"roomId": room, "message": "before restart", "clientMessageId": "k1"}),
        )
        .await;
    assert_eq!(first["success"], true, "{first}");
    alice.say(&room, "second").await;
    let (status, _) = app
        .post(
            "/api/chat/rooms",
            &json!({"type": "direct", "participants": [a, b]}),
            &[("x-user-id", a.as_str())],
        )
        .await;
    assert_eq!(status, 201);
    drop(alice);

    let app = app.restart().await;
    assert_eq!(app.stored_texts(&room).await, ["before restart", "second"]);
    let (status, page) = app
        .get(&format!(
            "/api/chat/{room}/history?limit=1&before={}",
            app.get(&format!("/api/chat/{room}/history?limit=1"))
                .await
                .1["messages"][0]["messageId"]
                .as_str()
                .unwrap()
        ))
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["messages"][0]["messageId"], first["messageId"]);
    let mut alice = app.member(&a, &room).await;
    let again = alice
        .emit_ack(
            "send_message",
            json!({"roomId": room, "message": "before restart", "clientMessageId": "k1"}),
        )
        .await;
    assert_eq!(again, first, "the idempotency key survives the restart");
    assert_eq!(app.stored_texts(&room).await.len(), 2);
    let (_, body) = app
        .get_with("/api/chat/rooms", &[("x-user-id", b.as_str())])
        .await;
    assert_eq!(body["rooms"][0]["type"], "direct", "{body}");
}
