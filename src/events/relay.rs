//! The outbox relay: one task that moves pending outbox entries to the `EventPublisher`.
//!
//! Loop: read up to `batch` pending entries (oldest first); publish them as one batch (every
//! publish in flight, confirms awaited together); mark them sent. When the outbox is empty it
//! sleeps until the store signals a commit with new entries, or `poll` passes (which also
//! picks up entries that another writer added). A failed publish is retried with the same
//! entries after a bounded exponential back-off (100 ms doubling to 5 s); while idle and
//! disconnected it reconnects on the same back-off, so `/ready` turns green again without
//! traffic. One batch is in flight at a time, so events leave in outbox order.
//!
//! Shutdown: when `stop` is cancelled the relay keeps publishing until the outbox is empty or
//! a publish fails, then returns; the composition root bounds this with the shutdown timeout.
//! Whatever is left stays in the outbox and is sent after the next start.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::EventPublisher;
use crate::domain::now_ms;
use crate::metrics::OutboxStats;
use crate::store::{MessageStore, OutboxEntry};

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Most entries per publish batch.
    pub batch: usize,
    /// Idle re-check of the outbox.
    pub poll: Duration,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch: 4096,
            poll: Duration::from_secs(1),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

pub struct OutboxRelay {
    store: Arc<dyn MessageStore>,
    publisher: Arc<dyn EventPublisher>,
    cfg: RelayConfig,
    /// Depth, oldest age, confirms, failures, broker up (`GET /metrics`).
    stats: Arc<OutboxStats>,
}

struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
    /// Whether a failure was reported and not yet followed by a success.
    failing: bool,
}

impl Backoff {
    fn fail(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

impl OutboxRelay {
    pub fn new(
        store: Arc<dyn MessageStore>,
        publisher: Arc<dyn EventPublisher>,
        cfg: RelayConfig,
    ) -> Self {
        Self {
            store,
            publisher,
            cfg,
            stats: Arc::default(),
        }
    }

    /// The relay's figures, for the metrics registry.
    pub fn stats(&self) -> Arc<OutboxStats> {
        self.stats.clone()
    }

    /// What the relay sees in the outbox: its depth (counted by the store only when the read
    /// was full) and the age of its oldest entry.
    async fn observe(&self, entries: &[OutboxEntry]) {
        let depth = if entries.len() < self.cfg.batch {
            Some(entries.len() as u64)
        } else {
            self.store.outbox_len().await.ok()
        };
        if let Some(depth) = depth {
            self.stats.depth.set(depth as i64);
        }
        let age = entries
            .first()
            .map_or(0, |e| now_ms().saturating_sub(e.timestamp));
        self.stats
            .oldest_age_ms
            .store(age, std::sync::atomic::Ordering::Relaxed);
    }

    fn broker_up(&self, up: bool) {
        self.stats
            .broker_up
            .store(up, std::sync::atomic::Ordering::Relaxed);
    }

    /// Runs until `stop` is cancelled and the outbox is flushed (or a publish fails then).
    pub async fn run(self, stop: CancellationToken) {
        let signal = self.store.outbox_signal();
        let mut backoff = Backoff {
            next: self.cfg.min_backoff,
            min: self.cfg.min_backoff,
            max: self.cfg.max_backoff,
            failing: false,
        };
        loop {
            let stopping = stop.is_cancelled();
            let entries = match self.store.outbox_pending(self.cfg.batch).await {
                Ok(entries) => entries,
                Err(e) => {
                    if stopping {
                        return;
                    }
                    tracing::warn!(error = %e, "outbox relay: cannot read the outbox");
                    self.pause(backoff.fail(), &stop).await;
                    continue;
                }
            };
            self.observe(&entries).await;
            if entries.is_empty() {
                if stopping {
                    tracing::info!("outbox relay: flushed");
                    return;
                }
                let up = self.publisher.ping().await.is_ok();
                self.broker_up(up);
                if !up {
                    match self.publisher.connect().await {
                        Ok(()) => self.recovered(&mut backoff),
                        Err(e) => {
                            self.failed(&mut backoff, &e.to_string());
                            self.pause(backoff.fail(), &stop).await;
                            continue;
                        }
                    }
                }
                tokio::select! {
                    () = signal.notified() => {}
                    () = tokio::time::sleep(self.cfg.poll) => {}
                    () = stop.cancelled() => {}
                }
                continue;
            }
            match self.publisher.publish_batch(&entries).await {
                Ok(()) => {
                    self.stats.confirmed.add(entries.len() as u64);
                    self.recovered(&mut backoff);
                    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
                    if let Err(e) = self.store.outbox_mark_sent(&seqs).await {
                        // They will be published again: the at-least-once window.
                        tracing::warn!(error = %e, count = seqs.len(), "outbox relay: published but not marked sent");
                        if stopping {
                            return;
                        }
                        self.pause(backoff.fail(), &stop).await;
                    }
                }
                Err(e) => {
                    self.stats.failures.inc();
                    if stopping {
                        let left = self.store.outbox_len().await.unwrap_or(0);
                        tracing::warn!(error = %e, pending = left, "outbox relay: stopping with events pending; they are sent after the next start");
                        return;
                    }
                    self.failed(&mut backoff, &e.to_string());
                    self.pause(backoff.fail(), &stop).await;
                }
            }
        }
    }

    fn failed(&self, backoff: &mut Backoff, error: &str) {
        self.broker_up(false);
        if !backoff.failing {
            backoff.failing = true;
            tracing::warn!(%error, "notification broker unavailable: events wait in the outbox and are retried");
        } else {
            tracing::debug!(%error, "notification broker still unavailable");
        }
    }

    fn recovered(&self, backoff: &mut Backoff) {
        self.broker_up(true);
        backoff.reset();
        if backoff.failing {
            backoff.failing = false;
            tracing::info!("notification broker reachable again: relaying the outbox");
        }
    }

    async fn pause(&self, wait: Duration, stop: &CancellationToken) {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => {}
        }
    }
}
