//! RabbitMQ test support: `TestQueue`, an independent lapin consumer on a queue unique to the
//! test, and `TcpProxy`, a TCP forwarder to the broker that a test can cut and restore to
//! simulate an outage. The tests need the local broker (127.0.0.1:5672, guest/guest) and fail
//! loudly without it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

pub const BROKER: &str = "127.0.0.1:5672";

pub fn broker_url(addr: &str) -> String {
    format!("amqp://guest:guest@{addr}/%2f")
}

/// A durable queue named `test-<random>` with a consumer (auto-ack) on it.
pub struct TestQueue {
    pub name: String,
    conn: Connection,
    chan: Channel,
    consumer: Consumer,
}

impl TestQueue {
    pub async fn new() -> TestQueue {
        let name = format!("test-{:016x}", rand::random::<u64>());
        let conn = Connection::connect(&broker_url(BROKER), ConnectionProperties::default())
            .await
            .expect("the tests need RabbitMQ on 127.0.0.1:5672 (guest/guest)");
        let chan = conn.create_channel().await.expect("channel");
        chan.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare test queue");
        let consumer = chan
            .basic_consume(
                name.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume");
        TestQueue {
            name,
            conn,
            chan,
            consumer,
        }
    }

    /// The app's flags to publish to this queue through `addr` (the broker or a proxy).
    pub fn args(&self, addr: &str) -> Vec<String> {
        vec![
            "--rabbitmq-url".into(),
            broker_url(addr),
            "--rabbitmq-queue-new-message".into(),
            self.name.clone(),
            "--rate-limit-per-sec".into(),
            "0".into(),
        ]
    }

    /// The next event (JSON body), or `None` after `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        let delivery = tokio::time::timeout(wait, self.consumer.next())
            .await
            .ok()??;
        let delivery = delivery.expect("delivery");
        assert_eq!(
            delivery
                .properties
                .content_type()
                .as_ref()
                .map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(*delivery.properties.delivery_mode(), Some(2), "persistent");
        Some(serde_json::from_slice(&delivery.data).expect("JSON event"))
    }

    pub async fn next(&mut self) -> Value {
        self.next_within(Duration::from_secs(10))
            .await
            .expect("an event within 10 s")
    }

    /// Deletes the queue.
    pub async fn delete(self) {
        let _ = self
            .chan
            .queue_delete(self.name.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = self.conn.close(200, "bye".into()).await;
    }
}

/// Collects events until every id of `expected` was seen; returns them in arrival order.
pub async fn collect_ids(queue: &mut TestQueue, expected: &HashSet<String>) -> Vec<Value> {
    collect_ids_with_gaps(queue, expected, Duration::from_secs(30)).await
}

/// `collect_ids`, failing when no event comes for `gap`.
pub async fn collect_ids_with_gaps(
    queue: &mut TestQueue,
    expected: &HashSet<String>,
    gap: Duration,
) -> Vec<Value> {
    let mut seen = HashSet::new();
    let mut events = Vec::new();
    while !expected.is_subset(&seen) {
        let Some(event) = queue.next_within(gap).await else {
            let missing: Vec<_> = expected.difference(&seen).collect();
            panic!(
                "{} events missing, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            );
        };
        seen.insert(event["data"]["messageId"].as_str().unwrap().to_string());
        events.push(event);
    }
    events
}

/// Forwards `127.0.0.1:<port>` to the broker while up; `cut` closes every forwarded connection
/// and closes new ones at once, `restore` forwards again (same address).
pub struct TcpProxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl TcpProxy {
    pub async fn start() -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accept = tokio::spawn({
            let (up, conns) = (up.clone(), conns.clone());
            async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        continue;
                    };
                    if !up.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut broker) = TcpStream::connect(BROKER).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
                        }
                    });
                    conns.lock().push(task.abort_handle());
                }
            }
        })
        .abort_handle();
        TcpProxy {
            addr,
            up,
            conns,
            accept,
        }
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// The outage: every open connection is closed, new ones are closed on accept.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().drain(..) {
            c.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
