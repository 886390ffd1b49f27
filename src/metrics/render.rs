//! The exposition text of `Metrics` (Prometheus text format 0.0.4, checked by
//! `promtool check metrics` in `tests/api/prometheus.rs`), and the process figures read from
//! `/proc` at each scrape (Linux; absent elsewhere).

use std::fmt::{Display, Write as _};
use std::sync::atomic::Ordering;

use super::{
    CLOSE_REASONS, EVENTS, Histogram, Metrics, OUTCOMES, RATE_LIMITS, ROOM_EVENTS, STORE_ERRORS,
    TRANSPORTS,
};

struct Text<'a> {
    out: String,
    instance: &'a str,
}

impl Text<'_> {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        let _ = write!(self.out, "{name}{{instance_id=\"{}\"", self.instance);
        for (k, v) in labels {
            let _ = write!(self.out, ",{k}=\"{v}\"");
        }
        let _ = writeln!(self.out, "}} {value}");
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (i, count) in h.buckets.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = match h.bounds_us.get(i) {
                Some(us) => (*us as f64 / 1e6).to_string(),
                None => "+Inf".to_string(),
            };
            self.sample(&bucket, &[("le", &le)], cumulative);
        }
        let sum = h.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        self.sample(&format!("{name}_sum"), &[], sum);
        self.sample(&format!("{name}_count"), &[], cumulative);
    }
}

pub(super) fn render(m: &Metrics) -> String {
    let mut t = Text {
        out: String::with_capacity(16 * 1024),
        instance: &m.instance_id,
    };
    connections(m, &mut t);
    chat(m, &mut t);
    adapters(m, &mut t);
    process(&mut t);
    t.out
}

fn connections(m: &Metrics, t: &mut Text) {
    t.family(
        "chat_connections_open",
        "gauge",
        "Open client sessions, by transport.",
    );
    for (i, transport) in TRANSPORTS.iter().enumerate() {
        let v = m.connections_open[i].get();
        t.sample("chat_connections_open", &[("transport", transport)], v);
    }
    t.family(
        "chat_connections_opened_total",
        "counter",
        "Client sessions opened, by the transport they started on.",
    );
    for (i, transport) in TRANSPORTS.iter().enumerate() {
        let v = m.connections_opened[i].get();
        t.sample(
            "chat_connections_opened_total",
            &[("transport", transport)],
            v,
        );
    }
    t.family(
        "chat_connections_closed_total",
        "counter",
        "Client sessions closed, by the transport they ended on and why.",
    );
    for (i, transport) in TRANSPORTS.iter().enumerate() {
        for (j, reason) in CLOSE_REASONS.iter().enumerate() {
            let v = m.connections_closed[i][j].get();
            t.sample(
                "chat_connections_closed_total",
                &[("transport", transport), ("reason", reason)],
                v,
            );
        }
    }
    t.single(
        "chat_connections_upgraded_total",
        "counter",
        "Socket.IO polling sessions upgraded to a WebSocket.",
        m.connections_upgraded.get(),
    );
    t.single(
        "chat_authenticated_connections",
        "gauge",
        "Authenticated client sessions.",
        m.authenticated_connections.get(),
    );
    t.single(
        "chat_authenticated_users",
        "gauge",
        "Distinct users with an authenticated session on this instance.",
        m.authenticated_users.get(),
    );
    t.single(
        "chat_rooms_local",
        "gauge",
        "Rooms with at least one member connected to this instance.",
        m.rooms_local.get(),
    );
}

fn chat(m: &Metrics, t: &mut Text) {
    t.family(
        "chat_events_total",
        "counter",
        "Client events handled, by event and outcome (ok or the error code).",
    );
    for (i, event) in EVENTS.iter().enumerate() {
        for (j, outcome) in OUTCOMES.iter().enumerate() {
            let v = m.events[i][j].get();
            t.sample(
                "chat_events_total",
                &[("event", event), ("outcome", outcome)],
                v,
            );
        }
    }
    t.single(
        "chat_messages_stored_total",
        "counter",
        "Messages stored durably (idempotent replays excluded).",
        m.messages_stored.get(),
    );
    t.single(
        "chat_messages_duplicate_total",
        "counter",
        "Sends answered with an already stored message (clientMessageId replays).",
        m.messages_duplicate.get(),
    );
    t.single(
        "chat_deliveries_total",
        "counter",
        "Room events queued for a local recipient.",
        m.deliveries.get(),
    );
    t.histogram(
        "chat_delivery_latency_seconds",
        "From a message's timestamp (before its durable write) to its hand-off to the local recipients' outboxes.",
        &m.delivery_latency,
    );
    t.histogram(
        "chat_durable_write_seconds",
        "From send_message's store append to the end of its durable write (the commit or journal flush, group commit included).",
        &m.durable_write,
    );
    t.family(
        "chat_rate_limited_total",
        "counter",
        "Events refused by a rate limit: messages (per user) or events (per connection).",
    );
    for (i, limit) in RATE_LIMITS.iter().enumerate() {
        let v = m.rate_limited[i].get();
        t.sample("chat_rate_limited_total", &[("limit", limit)], v);
    }
    t.family(
        "chat_bus_published_total",
        "counter",
        "Room events published on the bus, by kind.",
    );
    for (i, kind) in ROOM_EVENTS.iter().enumerate() {
        let v = m.bus_published[i].get();
        t.sample("chat_bus_published_total", &[("event", kind)], v);
    }
    t.family(
        "chat_bus_received_total",
        "counter",
        "Room events received from the bus for local members, by kind.",
    );
    for (i, kind) in ROOM_EVENTS.iter().enumerate() {
        let v = m.bus_received[i].get();
        t.sample("chat_bus_received_total", &[("event", kind)], v);
    }
}

fn adapters(m: &Metrics, t: &mut Text) {
    let cache_hits = m.cache.get().map_or(0, |c| c.hits.get());
    if let Some(store) = m.store.get() {
        t.family(
            "chat_history_reads_total",
            "counter",
            "History reads (join, resume, REST), by where they were answered from.",
        );
        t.sample(
            "chat_history_reads_total",
            &[("source", "cache")],
            cache_hits,
        );
        t.sample(
            "chat_history_reads_total",
            &[("source", "store")],
            store.history_reads.get(),
        );
        t.family(
            "chat_store_errors_total",
            "counter",
            "Store operations that failed, by kind.",
        );
        for (i, kind) in STORE_ERRORS.iter().enumerate() {
            let v = store.errors[i].get();
            t.sample("chat_store_errors_total", &[("kind", kind)], v);
        }
    }
    if let Some(cache) = m.cache.get() {
        t.single(
            "chat_history_cache_skipped_total",
            "counter",
            "History cache calls not made because Redis was failing (one probe a second goes through).",
            cache.skipped.get(),
        );
    }
    if let Some(bus) = m.redis_bus.get() {
        t.single(
            "chat_redis_up",
            "gauge",
            "Whether the Redis bus's subscriber connection is up.",
            u8::from(bus.up.load(Ordering::Relaxed)),
        );
        t.single(
            "chat_bus_remote_sent_total",
            "counter",
            "Envelopes published to Redis for the other instances.",
            bus.sent.get(),
        );
        t.single(
            "chat_bus_remote_failed_total",
            "counter",
            "Envelopes whose Redis publish failed.",
            bus.failed.get(),
        );
        t.single(
            "chat_bus_remote_dropped_total",
            "counter",
            "Envelopes dropped because the Redis publish queue was full.",
            bus.dropped.get(),
        );
        t.single(
            "chat_bus_remote_received_total",
            "counter",
            "Room events received from other instances through Redis.",
            bus.received.get(),
        );
        t.single(
            "chat_bus_queued",
            "gauge",
            "Envelopes waiting to be published to Redis.",
            bus.queued.get(),
        );
        t.single(
            "chat_bus_lag_seconds",
            "gauge",
            "How long the last published batch's oldest envelope waited before Redis had it.",
            bus.lag_us.load(Ordering::Relaxed) as f64 / 1e6,
        );
    }
    if let Some(outbox) = m.outbox.get() {
        t.single(
            "chat_outbox_depth",
            "gauge",
            "Notification events waiting in the outbox.",
            outbox.depth.get(),
        );
        t.single(
            "chat_outbox_oldest_age_seconds",
            "gauge",
            "Age of the oldest notification event waiting in the outbox (0 when empty).",
            outbox.oldest_age_ms.load(Ordering::Relaxed) as f64 / 1e3,
        );
        t.single(
            "chat_outbox_published_total",
            "counter",
            "Notification events the broker confirmed.",
            outbox.confirmed.get(),
        );
        t.single(
            "chat_outbox_publish_failures_total",
            "counter",
            "Notification publish batches that failed (retried).",
            outbox.failures.get(),
        );
        t.single(
            "chat_broker_up",
            "gauge",
            "Whether the notification broker (RabbitMQ) link is up.",
            u8::from(outbox.broker_up.load(Ordering::Relaxed)),
        );
    }
}

/// A number of `/proc/self/status` (`VmRSS:   1234 kB` -> 1234).
fn status_field(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The process figures of the standard client libraries, from `/proc/self` (Linux), and the
/// async runtime's task count.
fn process(t: &mut Text) {
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        && let Some((_, fields)) = stat.rsplit_once(')')
    {
        // Fields after the command name, from `state` (field 3): utime is 14, stime 15.
        let fields: Vec<&str> = fields.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
        if let (Some(user), Some(system)) = (ticks(11), ticks(12)) {
            // USER_HZ: the unit of /proc's CPU times, 100 on every Linux ABI.
            t.single(
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                (user + system) as f64 / 100.0,
            );
        }
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(kb) = status_field(&status, "VmRSS:") {
        t.single(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            kb * 1024,
        );
    }
    if let Some(threads) = status_field(&status, "Threads:") {
        t.single(
            "process_threads",
            "gauge",
            "Number of OS threads in the process.",
            threads,
        );
    }
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        t.single(
            "chat_runtime_tasks",
            "gauge",
            "Tasks alive in the async runtime (about one per connection, plus the background tasks).",
            rt.metrics().num_alive_tasks(),
        );
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        t.single(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            dir.count(),
        );
    }
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits")
        && let Some(max) = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<u64>().ok())
    {
        t.single(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{CloseReason, Metrics, Transport};

    #[test]
    fn the_text_has_every_family_once_with_its_samples() {
        let m = Metrics::new("abc");
        m.connection_opened(Transport::Polling);
        m.connection_upgraded();
        m.connection_closed(Transport::SocketIo, CloseReason::SlowConsumer);
        m.durable_write.observe(Duration::from_micros(300));
        let text = m.render();
        assert!(text.contains(
            "chat_connections_closed_total{instance_id=\"abc\",transport=\"socketio\",reason=\"slow_consumer\"} 1\n"
        ));
        assert!(
            text.contains("chat_connections_open{instance_id=\"abc\",transport=\"socketio\"} 0\n")
        );
        assert!(
            text.contains(
                "chat_durable_write_seconds_bucket{instance_id=\"abc\",le=\"0.00025\"} 0\n"
            )
        );
        assert!(
            text.contains(
                "chat_durable_write_seconds_bucket{instance_id=\"abc\",le=\"0.0005\"} 1\n"
            )
        );
        assert!(text.contains("chat_durable_write_seconds_count{instance_id=\"abc\"} 1\n"));
        let mut types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let n = types.len();
        types.sort_unstable();
        types.dedup();
        assert_eq!(types.len(), n, "a family is declared twice");
        if cfg!(target_os = "linux") {
            assert!(text.contains("process_resident_memory_bytes{"));
            assert!(text.contains("process_open_fds{"));
        }
    }
}
