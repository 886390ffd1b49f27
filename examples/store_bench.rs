//! Store write and read speed (issue 6): concurrent appends, each acknowledged only after its
//! batch committed (the same `append` the chat service awaits before acking a client), then
//! history reads of 50 messages at the size reached.
//!
//! `cargo run --release --example store_bench -- <embedded|postgres|mongodb> [messages] [writers]`
//! (defaults: 1000000 messages, 1000 concurrent writers, 1000 rooms). The embedded store
//! lives in a temp folder; PostgreSQL (`POSTGRES_BENCH_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`) in a fresh schema dropped at the end; MongoDB
//! (`MONGODB_BENCH_URI`, default `mongodb://127.0.0.1:27017`) in a fresh database dropped at
//! the end.
//! Prints messages/s of the fill and p50/p99/max of `history(room, 50)` over 5000 reads
//! (newest page and a page before a cursor, random rooms, one reader).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_service::domain::{
    Message, MessageBody, MessageId, MessageType, RoomId, UserId, Username, now_ms,
};
use chat_service::store::MessageStore;
use chat_service::store::embedded::EmbeddedStore;
use chat_service::store::mongo::{MongoConfig, MongoStore};
use chat_service::store::postgres::{PostgresConfig, PostgresStore};

const ROOMS: usize = 1000;
const READS: usize = 5000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let backend = args.next().unwrap_or_else(|| "embedded".into());
    let total: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let writers: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let dir = tempfile::tempdir()?;
    let pg_url = std::env::var("POSTGRES_BENCH_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mongo_uri =
        std::env::var("MONGODB_BENCH_URI").unwrap_or_else(|_| "mongodb://127.0.0.1:27017".into());
    let schema = format!("bench_{}", MessageId::generate(now_ms()));
    let store: Arc<dyn MessageStore> = match backend.as_str() {
        "embedded" => Arc::new(EmbeddedStore::open(dir.path()).await?),
        "postgres" => Arc::new(
            PostgresStore::open(PostgresConfig {
                schema: Some(schema.clone()),
                ..PostgresConfig::new(pg_url.clone())
            })
            .await?,
        ),
        "mongodb" => Arc::new(
            MongoStore::open(MongoConfig {
                database: Some(schema.clone()),
                ..MongoConfig::new(mongo_uri.clone())
            })
            .await?,
        ),
        other => anyhow::bail!("unknown backend {other:?} (embedded, postgres, mongodb)"),
    };
    let rooms: Arc<Vec<RoomId>> = Arc::new(
        (0..ROOMS)
            .map(|r| RoomId::parse(&format!("bench-{r}")).unwrap())
            .collect(),
    );

    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let rooms = rooms.clone();
        tasks.push(tokio::spawn(async move {
            let user = UserId::parse(&format!("u{w}")).unwrap();
            let name = Username::parse(&format!("user {w}")).unwrap();
            for i in (w..total).step_by(writers) {
                let now = now_ms();
                let message = Message::new(
                    MessageId::generate(now),
                    rooms[i % ROOMS].clone(),
                    user.clone(),
                    name.clone(),
                    MessageBody::parse(&format!("benchmark message number {i}"), 4000).unwrap(),
                    MessageType::Text,
                    now,
                    None,
                );
                store.append(message).await.expect("append");
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let fill = started.elapsed();
    println!(
        "{backend}: appended {total} messages in {fill:.2?}: {:.0} msg/s ({writers} concurrent writers, acked after commit)",
        total as f64 / fill.as_secs_f64()
    );

    let mut newest = Vec::with_capacity(READS);
    let mut paged = Vec::with_capacity(READS);
    for i in 0..READS {
        let room = &rooms[(i * 7919) % ROOMS];
        let t = Instant::now();
        let page = store.history(room, 50, None).await?;
        newest.push(t.elapsed());
        assert_eq!(page.len(), 50.min(total / ROOMS));
        let t = Instant::now();
        store.history(room, 50, Some(&page[0].message_id)).await?;
        paged.push(t.elapsed());
    }
    for (what, mut times) in [("newest 50", newest), ("50 before a cursor", paged)] {
        times.sort();
        let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        println!(
            "{backend}: history {what} at {total} stored: p50 {:?} p99 {:?} max {:?} ({READS} reads)",
            at(0.50),
            at(0.99),
            times.last().copied().unwrap_or(Duration::ZERO)
        );
    }
    store.close().await;
    if backend == "postgres" {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&pg_url).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA \"{schema}\" CASCADE"
        )))
        .execute(&mut conn)
        .await?;
    }
    if backend == "mongodb" {
        mongodb::Client::with_uri_str(&mongo_uri)
            .await?
            .database(&schema)
            .drop()
            .await?;
    }
    Ok(())
}
