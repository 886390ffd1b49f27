//! The bus of a multi-instance deployment: Redis pub/sub on the channels `chat:room:{roomId}`
//! (SPEC 7).
//!
//! # How it works
//! - Envelope: `{"origin": <instance id>, "event": <RoomEvent::to_json>}`.
//! - `publish` hands the event to this instance's handler directly (members here never wait
//!   for Redis, and keep chatting during an outage), then queues the envelope for a single
//!   publisher task. That task drains the queue in order and sends each batch as one pipeline
//!   of `PUBLISH`es, so the events of one connection (published one after the other) reach
//!   the other instances in the same order, and the sender's latency does not include a
//!   Redis round trip. Envelopes whose origin is this instance are dropped on receipt, so
//!   nobody gets an event twice. The queue is bounded (`PUBLISH_QUEUE`): during an outage
//!   the overflow is dropped and logged (other instances' clients resume with `since`).
//! - Subscriptions: one dedicated pub/sub connection owned by the subscriber task. `subscribe`
//!   / `unsubscribe` keep a per-room count of "first local member" / "last local member"
//!   transitions (so two racing transitions of a room can't leave it in the wrong state) and
//!   apply the change on the connection before returning: a join is live on the bus by the
//!   time its ack is sent. The task pings the connection every `PING_EVERY`; when it breaks
//!   (or the ping times out) it reconnects with backoff and subscribes again to every room
//!   that has local members. This is why we drive a plain pub/sub connection ourselves
//!   instead of the RESP3 push channel of `ConnectionManager`: the resubscription, and the
//!   point where the instance counts as "up" again, are explicit and testable.
//! - `PUBLISH` goes through a `ConnectionManager` (reconnects by itself), with short
//!   connection and response timeouts so an outage is noticed in about a second.
//! - On a Redis Cluster (`redis+cluster://`) the channels are sharded (Redis 7): `SPUBLISH`,
//!   one pipeline per slot of a batch (a room's events stay in order), and `SSUBSCRIBE` on a
//!   RESP3 cluster connection whose pushes come through a channel. That connection reaches
//!   every shard that owns a subscribed room; when any of its node connections drops (a
//!   `Disconnection` push) or a ping fails, the subscriber drops it and connects and
//!   subscribes again, as on one Redis, so "up" means the same on both.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use parking_lot::Mutex;
use redis::aio::PubSubSink;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind};
use tokio::sync::mpsc;

use super::{Bus, BusError, BusHandler};
use crate::domain::{RoomEvent, RoomId};
use crate::metrics::RedisBusStats;
use crate::redis_link::{Conn, MAX_BACKOFF, TIMEOUT, Target};

const PUBLISH_QUEUE: usize = 16 * 1024;
const PUBLISH_BATCH: usize = 512;
const PING_EVERY: Duration = Duration::from_secs(3);

/// The pub/sub channel of a room.
pub fn channel(room: &RoomId) -> String {
    format!("chat:room:{room}")
}

type Queued = (String, String, Instant);

/// The subscribing side of the connection: plain pub/sub on one Redis, sharded on a cluster.
#[derive(Clone)]
enum Sink {
    Plain(PubSubSink),
    Sharded(ClusterConnection),
}

impl Sink {
    async fn subscribe(&mut self, channels: &[String]) -> redis::RedisResult<()> {
        match self {
            Self::Plain(s) => s.subscribe(channels).await,
            // One command per channel: a command may not span slots.
            Self::Sharded(c) => {
                let calls = channels.iter().map(|ch| {
                    let mut c = c.clone();
                    async move { c.ssubscribe(ch).await }
                });
                futures::future::try_join_all(calls).await.map(|_| ())
            }
        }
    }

    async fn unsubscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Self::Plain(s) => s.unsubscribe(channel).await,
            Self::Sharded(c) => c.sunsubscribe(channel).await,
        }
    }

    async fn ping(&mut self) -> redis::RedisResult<()> {
        match self {
            Self::Plain(s) => s.ping::<redis::Value>().await.map(|_| ()),
            Self::Sharded(c) => redis::cmd("PING").query_async(c).await,
        }
    }
}

/// A message that arrived: taken as it is (no copy) from plain pub/sub.
enum Received {
    Plain(redis::Msg),
    Sharded(String, Vec<u8>),
}

impl Received {
    /// (channel, payload)
    fn parts(&self) -> (&str, &[u8]) {
        match self {
            Self::Plain(m) => (m.get_channel_name(), m.get_payload_bytes()),
            Self::Sharded(ch, payload) => (ch, payload),
        }
    }
}

/// The messages arriving on that connection.
enum Incoming {
    Plain(redis::aio::PubSubStream),
    Sharded(mpsc::UnboundedReceiver<PushInfo>),
}

impl Incoming {
    /// The next message; `None` when the connection is gone.
    async fn next(&mut self) -> Option<Received> {
        match self {
            Self::Plain(s) => s.next().await.map(Received::Plain),
            Self::Sharded(rx) => loop {
                let push = rx.recv().await?;
                match push.kind {
                    PushKind::SMessage | PushKind::Message => {
                        let mut data = push.data.into_iter();
                        let (Some(ch), Some(payload)) = (data.next(), data.next()) else {
                            continue;
                        };
                        let ch: String = redis::from_redis_value(ch).unwrap_or_default();
                        let payload: Vec<u8> = redis::from_redis_value(payload).unwrap_or_default();
                        return Some(Received::Sharded(ch, payload));
                    }
                    PushKind::Disconnection => return None,
                    _ => continue,
                }
            },
        }
    }
}

#[derive(Default)]
struct Subscriptions {
    sink: Option<Sink>,
    /// Rooms subscribed on the current connection.
    active: std::collections::HashSet<RoomId>,
}

pub struct RedisBus {
    origin: String,
    target: Target,
    conn: Conn,
    handler: OnceLock<Arc<dyn BusHandler>>,
    /// (channel, envelope, when it was queued).
    queue: mpsc::Sender<Queued>,
    queue_rx: Mutex<Option<mpsc::Receiver<Queued>>>,
    stats: Arc<RedisBusStats>,
    /// room -> (first-local-member transitions) - (last-local-member transitions).
    wanted: Mutex<HashMap<RoomId, i64>>,
    subs: tokio::sync::Mutex<Subscriptions>,
    up: tokio::sync::watch::Sender<bool>,
    dropped: AtomicU64,
    /// Envelopes queued, and envelopes the publisher has finished with (sent or failed).
    queued: AtomicU64,
    finished: tokio::sync::watch::Sender<u64>,
}

impl RedisBus {
    /// `origin` identifies this instance in the envelopes (unique per process).
    pub fn new(url: &str, origin: String) -> Result<Self, BusError> {
        let target = Target::parse(url).map_err(|e| BusError(e.to_string()))?;
        let conn = target.connection().map_err(|e| BusError(e.to_string()))?;
        let (queue, queue_rx) = mpsc::channel(PUBLISH_QUEUE);
        Ok(Self {
            origin,
            target,
            conn,
            handler: OnceLock::new(),
            queue,
            queue_rx: Mutex::new(Some(queue_rx)),
            stats: Arc::default(),
            wanted: Mutex::new(HashMap::new()),
            subs: tokio::sync::Mutex::new(Subscriptions::default()),
            up: tokio::sync::watch::Sender::new(false),
            dropped: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            finished: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Connects the receiving side; called once by the composition root.
    pub fn set_handler(&self, handler: Arc<dyn BusHandler>) {
        let _ = self.handler.set(handler);
    }

    /// The bus's figures, for the metrics registry.
    pub fn stats(&self) -> Arc<RedisBusStats> {
        self.stats.clone()
    }

    /// Whether the subscriber connection is up (all local rooms subscribed).
    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// Waits until the subscriber connection is up, at most `wait`; returns whether it is.
    pub async fn wait_connected(&self, wait: Duration) -> bool {
        let mut rx = self.up.subscribe();
        tokio::time::timeout(wait, rx.wait_for(|up| *up))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn set_up(&self, up: bool) -> bool {
        self.stats.up.store(up, Ordering::Relaxed);
        self.up.send_replace(up)
    }

    /// The publisher and subscriber loops; runs until the task is aborted (at shutdown).
    pub async fn run(self: Arc<Self>) {
        let rx = self.queue_rx.lock().take();
        let Some(rx) = rx else {
            return;
        };
        tokio::join!(self.clone().publisher(rx), self.subscriber());
    }

    async fn publisher(self: Arc<Self>, mut rx: mpsc::Receiver<Queued>) {
        let mut conn = self.conn.clone();
        let mut failing = false;
        let mut batch = Vec::with_capacity(PUBLISH_BATCH);
        while rx.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
            let n = batch.len() as u64;
            let result = if self.target.is_cluster() {
                publish_sharded(&conn, &batch).await
            } else {
                let mut pipe = redis::pipe();
                for (channel, payload, _) in &batch {
                    pipe.publish(channel, payload).ignore();
                }
                pipe.query_async::<()>(&mut conn).await
            };
            self.stats.queued.add(-(n as i64));
            match result {
                Ok(()) => {
                    self.stats.sent.add(n);
                    let oldest = batch[0].2.elapsed().as_micros();
                    self.stats
                        .lag_us
                        .store(u64::try_from(oldest).unwrap_or(u64::MAX), Ordering::Relaxed);
                    if failing {
                        tracing::info!("redis bus: publishing again");
                        failing = false;
                    }
                }
                Err(e) => {
                    self.stats.failed.add(n);
                    if !failing {
                        tracing::warn!(cause = %e, lost = batch.len(), "redis bus: publish failed; other instances miss these events");
                        failing = true;
                    }
                }
            }
            self.finished.send_modify(|f| *f += n);
            batch.clear();
        }
    }

    async fn subscriber(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let (sink, mut incoming) = match self.connect().await {
                Ok(pair) => pair,
                Err(e) => {
                    if self.set_up(false) {
                        tracing::warn!(cause = %e, "redis bus: disconnected");
                    } else {
                        tracing::debug!(cause = %e, "redis bus: reconnect failed");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            backoff = Duration::from_millis(50);
            self.set_up(true);
            tracing::info!(origin = %self.origin, "redis bus: connected and subscribed");
            let mut ping = tokio::time::interval(PING_EVERY);
            ping.tick().await;
            loop {
                tokio::select! {
                    msg = incoming.next() => match msg {
                        Some(received) => {
                            let (channel, payload) = received.parts();
                            self.on_message(channel, payload);
                        }
                        None => break,
                    },
                    _ = ping.tick() => {
                        let mut s = sink.clone();
                        match tokio::time::timeout(TIMEOUT, s.ping()).await {
                            Ok(Ok(_)) => {}
                            _ => break,
                        }
                    }
                }
            }
            self.set_up(false);
            self.subs.lock().await.sink = None;
            tracing::warn!("redis bus: connection lost, reconnecting");
        }
    }

    /// Opens the pub/sub connection and subscribes to every room with local members.
    async fn connect(&self) -> Result<(Sink, Incoming), String> {
        let (mut sink, incoming) = match &self.target {
            Target::Single(client) => {
                let pubsub = tokio::time::timeout(TIMEOUT, client.get_async_pubsub())
                    .await
                    .map_err(|_| "connect timed out".to_string())?
                    .map_err(|e| e.to_string())?;
                let (sink, stream) = pubsub.split();
                (Sink::Plain(sink), Incoming::Plain(stream))
            }
            Target::Cluster(nodes) => {
                let (tx, rx) = mpsc::unbounded_channel();
                let client = crate::redis_link::cluster_builder(nodes)
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(tx)
                    .build()
                    .map_err(|e| e.to_string())?;
                let conn = tokio::time::timeout(TIMEOUT, client.get_async_connection())
                    .await
                    .map_err(|_| "connect timed out".to_string())?
                    .map_err(|e| e.to_string())?;
                (Sink::Sharded(conn), Incoming::Sharded(rx))
            }
        };
        let mut subs = self.subs.lock().await;
        let rooms: Vec<RoomId> = self
            .wanted
            .lock()
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, _)| r.clone())
            .collect();
        if !rooms.is_empty() {
            let channels: Vec<String> = rooms.iter().map(channel).collect();
            tokio::time::timeout(TIMEOUT, sink.subscribe(&channels))
                .await
                .map_err(|_| "subscribe timed out".to_string())?
                .map_err(|e| e.to_string())?;
        }
        subs.active = rooms.into_iter().collect();
        subs.sink = Some(sink.clone());
        Ok((sink, incoming))
    }

    fn on_message(&self, channel: &str, payload: &[u8]) {
        let envelope: serde_json::Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(channel, cause = %e, "redis bus: bad envelope");
                return;
            }
        };
        if envelope.get("origin").and_then(|o| o.as_str()) == Some(self.origin.as_str()) {
            return;
        }
        let event = match RoomEvent::from_json(&envelope["event"]) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(channel, cause = %e, "redis bus: bad event");
                return;
            }
        };
        self.stats.received.inc();
        if let Some(h) = self.handler.get() {
            h.on_event(Arc::new(event));
        }
    }

    fn wanted(&self, room: &RoomId) -> bool {
        self.wanted.lock().get(room).is_some_and(|n| *n > 0)
    }

    /// Brings the connection's subscription of `room` in line with `wanted`.
    async fn reconcile(&self, room: &RoomId) -> Result<(), BusError> {
        let mut subs = self.subs.lock().await;
        let want = self.wanted(room);
        if want == subs.active.contains(room) {
            return Ok(());
        }
        // Not connected: applied when the subscriber reconnects.
        let Some(mut sink) = subs.sink.clone() else {
            return Ok(());
        };
        let ch = channel(room);
        let res = if want {
            tokio::time::timeout(TIMEOUT, sink.subscribe(std::slice::from_ref(&ch))).await
        } else {
            tokio::time::timeout(TIMEOUT, sink.unsubscribe(&ch)).await
        };
        match res {
            Ok(Ok(())) => {
                if want {
                    subs.active.insert(room.clone());
                } else {
                    subs.active.remove(room);
                }
                Ok(())
            }
            Ok(Err(e)) => Err(BusError(e.to_string())),
            Err(_) => Err(BusError("redis (un)subscribe timed out".into())),
        }
    }
}

/// A batch's `SPUBLISH`es on a cluster: one pipeline per slot (a pipeline may not span slots),
/// each in the batch's order, all concurrent on the connection.
async fn publish_sharded(conn: &Conn, batch: &[Queued]) -> redis::RedisResult<()> {
    let mut by_slot: HashMap<redis::cluster_routing::Slot, redis::Pipeline> = HashMap::new();
    for (channel, payload, _) in batch {
        let slot = redis::cluster_routing::Slot::for_key(channel.as_bytes());
        let pipe = by_slot.entry(slot).or_insert_with(redis::pipe);
        pipe.cmd("SPUBLISH").arg(channel).arg(payload).ignore();
    }
    let calls = by_slot.into_values().map(|pipe| {
        let mut c = conn.clone();
        async move { pipe.query_async::<()>(&mut c).await }
    });
    futures::future::try_join_all(calls).await.map(|_| ())
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, event: Arc<RoomEvent>) -> Result<(), BusError> {
        let payload = serde_json::json!({"origin": self.origin, "event": event.to_json()});
        let ch = channel(event.room_id());
        if let Some(h) = self.handler.get() {
            h.on_event(event);
        }
        // Counted before the publisher task can take it, so the gauge never goes below 0.
        self.stats.queued.inc();
        if self
            .queue
            .try_send((ch, payload.to_string(), Instant::now()))
            .is_ok()
        {
            self.queued.fetch_add(1, Ordering::AcqRel);
        } else {
            self.stats.queued.dec();
            self.stats.dropped.inc();
            let n = self.dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n + 1,
                    "redis bus: publish queue full, events not sent to other instances"
                );
            }
        }
        Ok(())
    }

    async fn subscribe(&self, room: &RoomId) -> Result<(), BusError> {
        *self.wanted.lock().entry(room.clone()).or_default() += 1;
        self.reconcile(room).await
    }

    async fn flush(&self) {
        let queued = self.queued.load(Ordering::Acquire);
        let _ = self.finished.subscribe().wait_for(|f| *f >= queued).await;
    }

    async fn subscribed(&self, room: &RoomId) -> Result<(), BusError> {
        // `reconcile` waits for the subscription in flight (it holds `subs`), and retries one
        // that failed.
        self.reconcile(room).await
    }

    async fn unsubscribe(&self, room: &RoomId) -> Result<(), BusError> {
        {
            let mut wanted = self.wanted.lock();
            let n = wanted.entry(room.clone()).or_default();
            *n -= 1;
            if *n == 0 {
                wanted.remove(room);
            }
        }
        self.reconcile(room).await
    }

    async fn health(&self) -> Option<(&'static str, Result<(), BusError>)> {
        if !self.is_up() {
            return Some(("redis", Err(BusError("not connected".into()))));
        }
        let mut conn = self.conn.clone();
        let res = match tokio::time::timeout(
            TIMEOUT,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(BusError(e.to_string())),
            Err(_) => Err(BusError("ping timed out".into())),
        };
        Some(("redis", res))
    }
}
