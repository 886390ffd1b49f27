//! Prometheus metrics (`GET /metrics`, text exposition format): a small hand-written registry.
//!
//! Every figure is an atomic (a counter, a gauge, or a histogram's fixed buckets), updated with
//! one relaxed `fetch_add` where it happens and read only when `/metrics` is scraped: no lock,
//! no allocation and no map lookup on the hot path. Labels are
//! fixed sets known at compile time (transports, close reasons, event names, outcome codes), so
//! the number of series is bounded: no room or user id is ever a label. Every series carries
//! `instance_id` (the instance id of `app.rs`, also the Redis bus origin); it is not called
//! `instance` because Prometheus sets that label itself (the scraped target).
//!
//! This module names nothing else of the crate: every layer may use it. `Metrics` holds what the
//! use cases and the transports count; the adapters keep their own figures in a stats struct of
//! this module (`RedisBusStats`, `OutboxStats`, `HistoryCacheStats`, `StoreStats`), which the
//! composition root registers here, so `chat/` never names an adapter. `render.rs` writes the
//! exposition text and reads the process figures from `/proc`.

mod render;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How a session reaches the client (the `transport` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Socket.IO on a WebSocket (opened on one, or upgraded from polling).
    SocketIo = 0,
    /// Socket.IO long-polling.
    Polling = 1,
    /// The raw JSON-frame protocol on a WebSocket.
    Raw = 2,
}

pub const TRANSPORTS: [&str; 3] = ["socketio", "polling", "raw"];

/// Why a session ended (the `reason` label of `chat_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed, its transport broke, or it broke the protocol.
    Client = 0,
    /// No answer to the heartbeat in time.
    PingTimeout = 1,
    /// Not authenticated (or no Socket.IO CONNECT) in time.
    Timeout = 2,
    /// Its outbound queue was full: cut off.
    SlowConsumer = 3,
    /// Refused by a limit that closes the connection (`too_many_connections`).
    Limit = 4,
    /// Another close the server decided (e.g. a polling request that broke the session).
    Server = 5,
    /// Graceful shutdown of the instance.
    Shutdown = 6,
}

pub const CLOSE_REASONS: [&str; 7] = [
    "client",
    "ping_timeout",
    "timeout",
    "slow_consumer",
    "limit",
    "server",
    "shutdown",
];

/// The `event` label of `chat_events_total`: the client events, and `other` for any other name.
pub const EVENTS: [&str; 11] = [
    "authenticate",
    "join_room",
    "leave_room",
    "send_message",
    "typing",
    "edit_message",
    "delete_message",
    "add_reaction",
    "remove_reaction",
    "mark_read",
    "other",
];

/// The `outcome` label of `chat_events_total`: `ok`, or the error code of the refusal
/// (`ChatError::code`, checked against this list by a test in `chat/error.rs`).
pub const OUTCOMES: [&str; 13] = [
    "ok",
    "not_authenticated",
    "auth_failed",
    "token_expired",
    "invalid_payload",
    "forbidden",
    "not_found",
    "rate_limited",
    "too_many_connections",
    "payload_too_large",
    "unavailable",
    "internal",
    "other",
];

/// The kinds of room events on the bus (the `event` label of the bus counters).
pub const ROOM_EVENTS: [&str; 8] = [
    "message", "joined", "left", "typing", "edited", "deleted", "reaction", "read",
];

/// Which rate limit refused (the `limit` label of `chat_rate_limited_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    /// The per-user send rate (`RATE_LIMIT_PER_SEC`).
    Messages = 0,
    /// The per-connection event budget (`EVENT_RATE_PER_SEC`).
    Events = 1,
}

pub const RATE_LIMITS: [&str; 2] = ["messages", "events"];

/// Upper bounds of `chat_durable_write_seconds`, microseconds: 50 µs to 1 s. Finer around
/// 1 ms (issue 16's p99 target): a quantile is interpolated inside its bucket, and between
/// 1 and 2.5 ms alone a p99 of 1.1 ms read as 2.3 ms.
pub const DURABLE_WRITE_BUCKETS_US: [u64; 17] = [
    50, 100, 250, 500, 750, 1_000, 1_500, 2_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000,
    250_000, 500_000, 1_000_000,
];

/// Upper bounds of `chat_delivery_latency_seconds`, microseconds: 1 ms (the message timestamp's
/// resolution) to 10 s.
pub const DELIVERY_BUCKETS_US: [u64; 12] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    10_000_000,
];

/// A monotonic counter.
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Default, Debug)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A histogram with fixed bucket bounds (microseconds): one relaxed add for the bucket and one
/// for the sum per observation; the count is the buckets' total.
#[derive(Debug)]
pub struct Histogram {
    bounds_us: &'static [u64],
    /// One per bound, then the overflow (`+Inf`); not cumulative (rendering makes them so).
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn new(bounds_us: &'static [u64]) -> Self {
        Self {
            bounds_us,
            buckets: (0..=bounds_us.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let us = ns / 1000;
        // Bucket bounds are inclusive (`le`): a value equal to a bound counts in it.
        let i = self.bounds_us.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
}

/// What the store reports: history reads that reached the durable store, and its errors.
/// Counted by `store::metered::MeteredStore`, the decorator of the durable store.
#[derive(Default, Debug)]
pub struct StoreStats {
    pub history_reads: Counter,
    /// By kind: unavailable, internal, outbox_full.
    pub errors: [Counter; 3],
}

pub const STORE_ERRORS: [&str; 3] = ["unavailable", "internal", "outbox_full"];

/// History reads answered by the Redis history list alone (`store/redis_cache.rs`).
#[derive(Default, Debug)]
pub struct HistoryCacheStats {
    pub hits: Counter,
    /// Cache calls not made because Redis was failing (between the probes).
    pub skipped: Counter,
}

/// The Redis bus (`bus/redis.rs`).
#[derive(Default, Debug)]
pub struct RedisBusStats {
    /// Envelopes published to Redis (pipelines that succeeded).
    pub sent: Counter,
    /// Envelopes whose pipeline failed (other instances miss them).
    pub failed: Counter,
    /// Envelopes dropped because the publish queue was full.
    pub dropped: Counter,
    /// Events received from other instances.
    pub received: Counter,
    /// Envelopes waiting for the publisher task.
    pub queued: Gauge,
    /// How long the last published batch's oldest envelope waited, queue plus round trip, µs.
    pub lag_us: AtomicU64,
    /// Whether the subscriber connection is up.
    pub up: AtomicBool,
}

/// The outbox relay (`events/relay.rs`).
#[derive(Default, Debug)]
pub struct OutboxStats {
    /// Pending entries when the relay last looked.
    pub depth: Gauge,
    /// Age of the oldest pending entry when the relay last looked, ms (0 when empty).
    pub oldest_age_ms: AtomicU64,
    /// Events the broker confirmed.
    pub confirmed: Counter,
    /// Publish batches that failed (connection, nack, timeout).
    pub failures: Counter,
    /// Whether the relay's broker link is up.
    pub broker_up: AtomicBool,
}

/// The registry of one instance.
pub struct Metrics {
    instance_id: String,
    /// By transport.
    pub connections_open: [Gauge; 3],
    pub connections_opened: [Counter; 3],
    /// By transport, then close reason.
    pub connections_closed: [[Counter; 7]; 3],
    /// Polling sessions that upgraded to a WebSocket (they move from `polling` to `socketio`).
    pub connections_upgraded: Counter,
    pub authenticated_connections: Gauge,
    pub authenticated_users: Gauge,
    pub rooms_local: Gauge,
    /// By event, then outcome.
    events: [[Counter; OUTCOMES.len()]; EVENTS.len()],
    pub messages_stored: Counter,
    pub messages_duplicate: Counter,
    /// Room events handed to local recipients' outboxes.
    pub deliveries: Counter,
    pub delivery_latency: Histogram,
    pub durable_write: Histogram,
    /// By room event kind.
    pub bus_published: [Counter; ROOM_EVENTS.len()],
    pub bus_received: [Counter; ROOM_EVENTS.len()],
    pub rate_limited: [Counter; 2],
    store: OnceLock<Arc<StoreStats>>,
    cache: OnceLock<Arc<HistoryCacheStats>>,
    redis_bus: OnceLock<Arc<RedisBusStats>>,
    outbox: OnceLock<Arc<OutboxStats>>,
}

impl Metrics {
    pub fn new(instance_id: impl Into<String>) -> Self {
        Self {
            instance_id: instance_id.into(),
            connections_open: Default::default(),
            connections_opened: Default::default(),
            connections_closed: Default::default(),
            connections_upgraded: Counter::default(),
            authenticated_connections: Gauge::default(),
            authenticated_users: Gauge::default(),
            rooms_local: Gauge::default(),
            events: Default::default(),
            messages_stored: Counter::default(),
            messages_duplicate: Counter::default(),
            deliveries: Counter::default(),
            delivery_latency: Histogram::new(&DELIVERY_BUCKETS_US),
            durable_write: Histogram::new(&DURABLE_WRITE_BUCKETS_US),
            bus_published: Default::default(),
            bus_received: Default::default(),
            rate_limited: Default::default(),
            store: OnceLock::new(),
            cache: OnceLock::new(),
            redis_bus: OnceLock::new(),
            outbox: OnceLock::new(),
        }
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// A session started on `transport`.
    pub fn connection_opened(&self, transport: Transport) {
        self.connections_opened[transport as usize].inc();
        self.connections_open[transport as usize].inc();
    }

    /// A polling session moved to its WebSocket.
    pub fn connection_upgraded(&self) {
        self.connections_upgraded.inc();
        self.connections_open[Transport::Polling as usize].dec();
        self.connections_open[Transport::SocketIo as usize].inc();
    }

    /// A session ended on `transport` (where it was last).
    pub fn connection_closed(&self, transport: Transport, reason: CloseReason) {
        self.connections_closed[transport as usize][reason as usize].inc();
        self.connections_open[transport as usize].dec();
    }

    /// A client event ran: `refused` is the error code of its refusal.
    pub fn event(&self, name: &str, refused: Option<&str>) {
        let event = EVENTS[..EVENTS.len() - 1]
            .iter()
            .position(|e| *e == name)
            .unwrap_or(EVENTS.len() - 1);
        let outcome = match refused {
            None => 0,
            Some(code) => OUTCOMES[1..12]
                .iter()
                .position(|c| *c == code)
                .map_or(OUTCOMES.len() - 1, |i| i + 1),
        };
        self.events[event][outcome].inc();
    }

    /// Events counted for `event` (a name of `EVENTS`) with `outcome` (of `OUTCOMES`).
    pub fn events(&self, event: &str, outcome: &str) -> u64 {
        let e = EVENTS.iter().position(|x| *x == event);
        let o = OUTCOMES.iter().position(|x| *x == outcome);
        match (e, o) {
            (Some(e), Some(o)) => self.events[e][o].get(),
            _ => 0,
        }
    }

    pub fn rate_limited(&self, limit: RateLimit) {
        self.rate_limited[limit as usize].inc();
    }

    pub fn register_store(&self, stats: Arc<StoreStats>) {
        let _ = self.store.set(stats);
    }

    pub fn register_history_cache(&self, stats: Arc<HistoryCacheStats>) {
        let _ = self.cache.set(stats);
    }

    pub fn register_redis_bus(&self, stats: Arc<RedisBusStats>) {
        let _ = self.redis_bus.set(stats);
    }

    pub fn register_outbox(&self, stats: Arc<OutboxStats>) {
        let _ = self.outbox.set(stats);
    }

    /// The outbox relay's figures, once registered (with RabbitMQ).
    pub fn outbox_stats(&self) -> Option<&OutboxStats> {
        self.outbox.get().map(|s| &**s)
    }

    /// The exposition text (Prometheus text format 0.0.4).
    pub fn render(&self) -> String {
        render::render(self)
    }
}

/// The content type of `render`'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_inclusive_and_count_everything() {
        let h = Histogram::new(&DURABLE_WRITE_BUCKETS_US);
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(51));
        h.observe(Duration::from_secs(5));
        assert_eq!(h.buckets[0].load(Ordering::Relaxed), 1);
        assert_eq!(h.buckets[1].load(Ordering::Relaxed), 1);
        assert_eq!(
            h.buckets[DURABLE_WRITE_BUCKETS_US.len()].load(Ordering::Relaxed),
            1
        );
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn events_fall_into_fixed_labels() {
        let m = Metrics::new("i");
        m.event("send_message", None);
        m.event("send_message", Some("rate_limited"));
        m.event("whatever-a-client-sends", Some("invalid_payload"));
        m.event("typing", Some("a-code-nobody-knows"));
        assert_eq!(m.events("send_message", "ok"), 1);
        assert_eq!(m.events("send_message", "rate_limited"), 1);
        assert_eq!(m.events("other", "invalid_payload"), 1);
        assert_eq!(m.events("typing", "other"), 1);
    }
}
