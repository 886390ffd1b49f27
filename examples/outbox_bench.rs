//! Notification outbox throughput (issue 5): fills an embedded store (with the outbox) in a
//! temp folder, then measures the relay publishing every event to a fresh durable queue on the
//! local RabbitMQ with publisher confirms, until the outbox is empty.
//!
//! `cargo run --release --example outbox_bench -- [messages] [amqp-url]`
//! (defaults: 200000, amqp://guest:guest@127.0.0.1:5672/%2f). Prints events/s.
//! Before the relay it measures the broker's ceiling in the same run: the same events, read
//! beforehand, published by the same publisher in batches of the same size to another fresh
//! queue; the relay's figure is also printed as a fraction of it.
//! `BENCH_BATCH=n` overrides the relay's batch size; `BENCH_PHASES=1` first times the read,
//! publish and mark steps of five batches (those events are not part of the figure).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_service::domain::{
    Message, MessageBody, MessageId, MessageType, RoomId, UserId, Username,
};
use chat_service::events::EventPublisher;
use chat_service::events::amqp::{AmqpConfig, AmqpPublisher};
use chat_service::events::relay::{OutboxRelay, RelayConfig};
use chat_service::store::embedded::EmbeddedStore;
use chat_service::store::{MessageStore, OutboxConfig};
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

const WRITERS: usize = 512;
const ROOMS: usize = 100;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let total: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(200_000);
    let url = args
        .next()
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let dir = tempfile::tempdir()?;
    let store = Arc::new(
        EmbeddedStore::open_with(
            dir.path(),
            Some(OutboxConfig {
                max_pending: u64::MAX,
            }),
        )
        .await?,
    );
    let rooms: Vec<RoomId> = (0..ROOMS)
        .map(|r| RoomId::parse(&format!("bench-{r}")).unwrap())
        .collect();
    for room in &rooms {
        for u in 0..3 {
            store
                .add_member(room, &UserId::parse(&format!("u{u}")).unwrap())
                .await?;
        }
    }

    let started = Instant::now();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let rooms = rooms.clone();
        writers.push(tokio::spawn(async move {
            let user = UserId::parse(&format!("u{}", w % 3)).unwrap();
            let name = Username::parse(&format!("user {}", w % 3)).unwrap();
            for i in (w..total).step_by(WRITERS) {
                let now = chat_service::domain::now_ms();
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
    for w in writers {
        w.await?;
    }
    let fill = started.elapsed();
    assert_eq!(store.outbox_len().await? as usize, total);
    println!(
        "appended {total} messages with their outbox entries in {fill:.2?} ({:.0} msg/s, {WRITERS} concurrent writers)",
        total as f64 / fill.as_secs_f64()
    );

    let mut relay_cfg = RelayConfig::default();
    if let Ok(batch) = std::env::var("BENCH_BATCH") {
        relay_cfg.batch = batch.parse()?;
    }
    // The broker's own ceiling, measured in the same run: the same events, already read and
    // serialized by nothing but the publisher, in batches of the same size, to another fresh
    // queue (no store reads, no marking). The relay cannot beat this.
    let entries = store.outbox_pending(total).await?;
    let ceiling_queue = format!("bench-ceiling-{:016x}", rand::random::<u64>());
    let ceiling_publisher = AmqpPublisher::new(AmqpConfig {
        url: url.clone(),
        queue: ceiling_queue.clone(),
        timeout: Duration::from_secs(30),
    });
    ceiling_publisher.connect().await?;
    let started = Instant::now();
    for batch in entries.chunks(relay_cfg.batch) {
        ceiling_publisher.publish_batch(batch).await?;
    }
    let ceiling = total as f64 / started.elapsed().as_secs_f64();
    println!(
        "broker ceiling: {total} pre-read events published with confirms in {:.2?}: {ceiling:.0} events/s",
        started.elapsed()
    );
    drop(entries);
    ceiling_publisher.close().await;

    let queue = format!("bench-{:016x}", rand::random::<u64>());
    let publisher = Arc::new(AmqpPublisher::new(AmqpConfig {
        url: url.clone(),
        queue: queue.clone(),
        timeout: Duration::from_secs(30),
    }));
    publisher.connect().await?; // not part of the measurement
    if std::env::var("BENCH_PHASES").is_ok() {
        for _ in 0..5 {
            let t = Instant::now();
            let e = store.outbox_pending(relay_cfg.batch).await?;
            let t1 = t.elapsed();
            publisher.publish_batch(&e).await?;
            let t2 = t.elapsed();
            store
                .outbox_mark_sent(&e.iter().map(|e| e.seq).collect::<Vec<_>>())
                .await?;
            println!(
                "read {t1:?} publish {:?} mark {:?}",
                t2 - t1,
                t.elapsed() - t2
            );
        }
    }
    let stop = CancellationToken::new();
    let started = Instant::now();
    let relay = tokio::spawn(
        OutboxRelay::new(store.clone(), publisher.clone(), relay_cfg).run(stop.clone()),
    );
    while store.outbox_len().await? > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drain = started.elapsed();
    stop.cancel();
    relay.await?;
    let relayed = total as f64 / drain.as_secs_f64();
    println!(
        "relayed {total} events with publisher confirms in {drain:.2?}: {relayed:.0} events/s ({:.2} of the broker ceiling)",
        relayed / ceiling
    );

    // Check on the broker, then clean up.
    let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await?;
    let chan = conn.create_channel().await?;
    chan.queue_delete(ceiling_queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    let q = chan
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    println!("queue {queue} holds {} messages", q.message_count());
    chan.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    publisher.close().await;
    store.close().await;
    Ok(())
}
