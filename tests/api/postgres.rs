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

/// A TCP proxy in front of PostgreSQL that the test can cut (every connection dropped, the
/// port refusing) and restore on the same port: a database outage without touching the
/// shared server.
struct Proxy {
    port: u16,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        Proxy {
            port,
            task: Some(tokio::spawn(Self::serve(listener))),
        }
    }

    async fn serve(listener: tokio::net::TcpListener) {
        let upstream = {
            let url = pg_url();
            let rest = url.split('@').nth(1).unwrap_or("127.0.0.1:5432/test");
            rest.split('/')
                .next()
                .unwrap_or("127.0.0.1:5432")
                .to_string()
        };
        // Dropped with this task: aborts every proxied connection.
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                continue;
            };
            let upstream = upstream.clone();
            conns.spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/test", self.port)
    }

    fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    async fn restore(&mut self) {
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        };
        self.task = Some(tokio::spawn(Self::serve(listener)));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

#[tokio::test]
async fn database_outage_fails_sends_fast_shows_in_ready_and_heals_by_itself() {
    use std::time::{Duration, Instant};
    let mut proxy = Proxy::start().await;
    let url = proxy.url();
    let app = spawn_app_with(&["--storage", "postgres", "--database-url", &url]).await;
    let (room, user) = (unique("pg-outage-"), unique("pg-u-"));
    let mut alice = app.member(&user, &room).await;
    alice.say(&room, "before").await;

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let ack = alice
        .emit_ack("send_message", json!({"roomId": room, "message": "during"}))
        .await;
    assert_eq!(ack["success"], false, "{ack}");
    assert_eq!(ack["error"]["code"], "unavailable", "{ack}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the send failed fast: {:?}",
        started.elapsed()
    );
    let (status, body) = app.get("/ready").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["dependencies"]["store"]["status"], "down", "{body}");

    proxy.restore().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = app.get("/ready").await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "store did not come back: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ack = alice
        .emit_ack("send_message", json!({"roomId": room, "message": "after"}))
        .await;
    assert_eq!(ack["success"], true, "{ack}");
    assert_eq!(app.stored_texts(&room).await, ["before", "after"]);
}
