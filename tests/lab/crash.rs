//! kill -9 under load: a chat-service process is killed (SIGKILL) while several clients keep
//! sends in flight, then restarted on the same store, 20 times in a row. Clients retry what
//! was not acked with the same `clientMessageId` after each restart (as a reconnecting client
//! does). At the end every acked message is in the REST history exactly once under its acked
//! id, nothing is stored twice, and every stored message's `message.sent` event reached
//! RabbitMQ at least once (the outbox survives the kills).

use std::collections::{HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::broker::{BROKER, TestQueue, broker_url, collect_ids_with_gaps};
use crate::procs::{CHAT_BIN, Service, chat_command};
use crate::support::{SioClient, unique};
use crate::traffic::{ACK_WAIT, Sent, check_stored, send, stored};

const ITERATIONS: usize = 20;
const CLIENTS: usize = 4;
/// Sends each client keeps in flight.
const IN_FLIGHT: usize = 8;

/// The test's PostgreSQL (as in the `api` tests).
fn pg_url() -> String {
    std::env::var("POSTGRES_TEST_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A schema of the test database for one test; dropped on drop (also when the test fails).
struct Schema {
    name: String,
}

impl Schema {
    async fn create() -> Schema {
        use sqlx::Connection;
        let name = unique("lab_crash").replace('-', "_");
        let mut conn = sqlx::PgConnection::connect(&pg_url())
            .await
            .expect("the crash test needs PostgreSQL (POSTGRES_TEST_URL)");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{name}\"")))
            .execute(&mut conn)
            .await
            .expect("create schema");
        Schema { name }
    }

    /// `DATABASE_URL` of the service: the test database with this schema first in its
    /// `search_path`.
    fn url(&self) -> String {
        let base = pg_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}options=-c%20search_path%3D{}", self.name)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([&pg_url(), "-q", "-c"])
            .arg(format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name))
            .output();
    }
}

/// One client's load until its connection dies: `IN_FLIGHT` sends outstanding at all times.
/// Returns the acked sends and the texts whose ack never came.
async fn load(mut client: SioClient, room: String, user: String) -> (Vec<Sent>, Vec<String>) {
    let mut inflight = VecDeque::new();
    let mut sent = Vec::new();
    let mut unacked = Vec::new();
    let acked = |text: String, ack: serde_json::Value, started: Instant| {
        assert_eq!(
            ack["success"], true,
            "{user}: send refused under load: {ack}"
        );
        Sent {
            room: room.clone(),
            text,
            id: Some(ack["messageId"].as_str().unwrap().into()),
            error: None,
            latency: started.elapsed(),
            on: "crash",
        }
    };
    loop {
        while inflight.len() < IN_FLIGHT {
            let text = format!("{user}-{}", unique("m"));
            let rx = client.emit_with_ack(
                "send_message",
                json!({"roomId": room, "message": text, "clientMessageId": text}),
            );
            inflight.push_back((text, rx, Instant::now()));
        }
        let (text, rx, started) = inflight.pop_front().unwrap();
        match tokio::time::timeout(ACK_WAIT, rx).await {
            Ok(Ok(ack)) => sent.push(acked(text, ack, started)),
            // The connection died with the process.
            Ok(Err(_)) | Err(_) => {
                unacked.push(text);
                break;
            }
        }
    }
    // Acks that arrived before the connection died count; the rest were not acked.
    for (text, mut rx, started) in inflight {
        match rx.try_recv() {
            Ok(ack) => sent.push(acked(text, ack, started)),
            Err(_) => unacked.push(text),
        }
    }
    (sent, unacked)
}

#[derive(Clone, Copy, Debug)]
enum Store {
    Embedded,
    Postgres,
}

async fn crash_loop(store: Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut queue = TestQueue::new().await;
    let schema = match store {
        Store::Postgres => Some(Schema::create().await),
        Store::Embedded => None,
    };
    let mut env = vec![
        ("HOST".to_string(), "127.0.0.1".to_string()),
        ("RABBITMQ_URL".into(), broker_url(BROKER)),
        ("RABBITMQ_QUEUE_NEW_MESSAGE".into(), queue.name.clone()),
        ("RUST_LOG".into(), "warn".into()),
    ];
    match &schema {
        Some(schema) => {
            env.push(("STORAGE".into(), "postgres".into()));
            env.push(("DATABASE_URL".into(), schema.url()));
        }
        None => {
            env.push(("STORAGE".into(), "embedded".into()));
            let data = dir.path().join("data");
            env.push(("DATA_DIR".into(), data.to_str().unwrap().into()));
        }
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let log = dir.path().join("chat-service.log");
    let rooms = [unique("crash"), unique("crash")];
    let users: Vec<String> = (0..CLIENTS).map(|i| unique(&format!("c{i}"))).collect();
    let mut sent: Vec<Sent> = Vec::new();
    // (client, text) of the sends to retry after the next restart.
    let mut unacked: Vec<(usize, String)> = Vec::new();
    let (mut retried, mut starts) = (0, Vec::new());
    let mut iteration = 0;
    let service = loop {
        let mut cmd = Command::new(CHAT_BIN);
        cmd.env_clear().current_dir(dir.path());
        let started = Instant::now();
        let mut service = Service::start(
            "chat-service",
            chat_command(cmd, &env),
            Ipv4Addr::LOCALHOST,
            &log,
        )
        .await;
        starts.push(started.elapsed());
        let mut clients = Vec::new();
        for (i, user) in users.iter().enumerate() {
            clients.push(service.member(user, &rooms[i % 2]).await);
        }
        for (i, text) in unacked.drain(..) {
            let s = send(&mut clients[i], "crash", &rooms[i % 2], &text).await;
            assert!(s.acked(), "retry after restart {iteration}: {s:?}");
            sent.push(s);
            retried += 1;
        }
        if iteration == ITERATIONS {
            break service;
        }
        let tasks: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(i, c)| tokio::spawn(load(c, rooms[i % 2].clone(), users[i].clone())))
            .collect();
        // The kill comes at a random point of the load.
        let under_load = Duration::from_millis(300 + rand::random::<u64>() % 500);
        tokio::time::sleep(under_load).await;
        service.proc.kill9();
        for (i, task) in tasks.into_iter().enumerate() {
            let (acked, lost) = task.await.expect("load task");
            sent.extend(acked);
            unacked.extend(lost.into_iter().map(|t| (i, t)));
        }
        iteration += 1;
    };

    let mut ids = HashSet::new();
    for room in &rooms {
        ids.extend(check_stored(room, &stored(&service, room).await, &sent));
    }
    let acked: HashSet<String> = sent.iter().filter_map(|s| s.id.clone()).collect();
    assert_eq!(
        ids, acked,
        "stored = acked (every unacked send was retried)"
    );
    // PostgreSQL: the entries a killed process had claimed wait for their lease to expire
    // (`OUTBOX_LEASE_SECS`, 60 s: the restarted process is another claimant).
    let all_published = Instant::now();
    let events = collect_ids_with_gaps(&mut queue, &acked, Duration::from_secs(75)).await;
    starts.sort();
    eprintln!(
        "lab: kill -9 x{ITERATIONS} on {store:?}: {} messages acked and stored once, {retried} \
         unacked at a kill and retried, {} events ({} duplicates), the last {} ms after the \
         last restart; start-up median {} ms",
        acked.len(),
        events.len(),
        events.len() - acked.len(),
        all_published.elapsed().as_millis(),
        starts[starts.len() / 2].as_millis()
    );
    drop(service);
    queue.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_on_the_embedded_store_loses_and_duplicates_nothing() {
    crash_loop(Store::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_on_postgres_loses_and_duplicates_nothing() {
    crash_loop(Store::Postgres).await;
}
