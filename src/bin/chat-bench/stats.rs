//! Measurement inside one process: the counters every connection task updates (`Stats`,
//! atomics, zeroed at the start of each phase), their plain copy that travels from a child to
//! the parent (`Counters`), a phase's result with its latency histogram as `(µs, count)` pairs
//! (`PhaseResult`), and the histogram helpers used to merge results of several processes.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Latency histogram bounds, in microseconds (1 µs .. 1 h).
const HIST_HIGH_US: u64 = 3_600_000_000;

/// Counters shared by the connection tasks of one process.
#[derive(Default)]
pub struct Stats {
    pub phase: AtomicU32,
    pub sent: AtomicU64,
    pub expected: AtomicU64,
    pub acked: AtomicU64,
    pub ack_failed: AtomicU64,
    pub delivered: AtomicU64,
    pub duplicates: AtomicU64,
    pub send_errors: AtomicU64,
    pub disconnects: AtomicU64,
    pub server_errors: AtomicU64,
    pub open: AtomicU64,
    hist: Mutex<Option<Histogram<u64>>>,
}

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_HIGH_US, 3).expect("histogram bounds")
}

/// A histogram as `(value, count)` pairs: how a phase's latencies travel and are merged.
pub fn hist_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

pub fn hist_from(pairs: &[(u64, u64)]) -> Histogram<u64> {
    let mut h = new_hist();
    for &(v, n) in pairs {
        h.saturating_record_n(v, n);
    }
    h
}

/// One process's counters, as sent from a child to the parent.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Counters {
    pub sent: u64,
    pub expected: u64,
    pub acked: u64,
    pub ack_failed: u64,
    pub delivered: u64,
    pub duplicates: u64,
    pub send_errors: u64,
    pub disconnects: u64,
    pub server_errors: u64,
    pub open: u64,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.sent += o.sent;
        self.expected += o.expected;
        self.acked += o.acked;
        self.ack_failed += o.ack_failed;
        self.delivered += o.delivered;
        self.duplicates += o.duplicates;
        self.send_errors += o.send_errors;
        self.disconnects += o.disconnects;
        self.server_errors += o.server_errors;
        self.open += o.open;
    }
}

/// A phase's result of one process: counters and the recorded latencies (µs, count).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PhaseResult {
    pub counters: Counters,
    pub hist: Vec<(u64, u64)>,
}

/// Adds one process's result to a merged one (`hist` collects the latencies).
pub fn merge(into: &mut PhaseResult, hist: &mut Histogram<u64>, r: &PhaseResult) {
    into.counters.add(&r.counters);
    for &(v, n) in &r.hist {
        hist.saturating_record_n(v, n);
    }
}

impl Stats {
    pub fn snapshot(&self) -> Counters {
        Counters {
            sent: self.sent.load(Ordering::Relaxed),
            expected: self.expected.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            ack_failed: self.ack_failed.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            send_errors: self.send_errors.load(Ordering::Relaxed),
            disconnects: self.disconnects.load(Ordering::Relaxed),
            server_errors: self.server_errors.load(Ordering::Relaxed),
            open: self.open.load(Ordering::Relaxed),
        }
    }

    /// Starts phase `phase`: zeroes the per-phase counters (not `open`, not `disconnects`).
    pub fn reset(&self, phase: u32) {
        for c in [
            &self.sent,
            &self.expected,
            &self.acked,
            &self.ack_failed,
            &self.delivered,
            &self.duplicates,
            &self.send_errors,
            &self.server_errors,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        *self.hist.lock() = Some(new_hist());
        self.phase.store(phase, Ordering::SeqCst);
    }

    pub fn record_latency(&self, us: u64) {
        if let Some(h) = self.hist.lock().as_mut() {
            h.saturating_record(us.max(1));
        }
    }

    pub fn hist_pairs(&self) -> Vec<(u64, u64)> {
        self.hist
            .lock()
            .as_ref()
            .map(hist_pairs)
            .unwrap_or_default()
    }
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
