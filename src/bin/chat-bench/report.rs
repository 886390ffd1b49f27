//! The report: one phase's JSON summary (`summarize`: counters, latency percentiles, errors,
//! the server's CPU as user + kernel and its RSS, pass or fail), the ramp's summary around its
//! steps (`ramp_summary`), and writing the result to stdout and `--json`.
//!
//! The JSON is read by `bench/summarize.js`, `bench/plot.py` and `tests/bench_loss.rs`: fields
//! are only ever added, never renamed.

use serde_json::{Value, json};

use crate::Args;
use crate::procfs::{ProcSample, load_average};
use crate::stats::{PhaseResult, hist_from};

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The JSON summary of one phase and whether it passed (all delivered, no errors).
pub fn summarize(
    args: &Args,
    rate: f64,
    r: &PhaseResult,
    connect: (usize, u64),
    baseline: Option<ProcSample>,
    start: Option<ProcSample>,
    end: Option<ProcSample>,
) -> (Value, bool) {
    let c = &r.counters;
    let h = hist_from(&r.hist);
    let ratio = if c.expected == 0 {
        1.0
    } else {
        c.delivered as f64 / c.expected as f64
    };
    let errors = connect.1 + c.send_errors + c.ack_failed + c.disconnects + c.server_errors;
    let passed = c.delivered >= c.expected && errors == 0 && connect.0 == args.connections;
    // The server's CPU during the measured window: (total, user, kernel) seconds.
    let cpu = match (start, end) {
        (Some(s), Some(e)) => Some((
            e.cpu_seconds() - s.cpu_seconds(),
            e.cpu_user_s - s.cpu_user_s,
            e.cpu_sys_s - s.cpu_sys_s,
        )),
        _ => None,
    };
    let per_delivery = |seconds: f64| (c.delivered > 0).then(|| seconds * 1e6 / c.delivered as f64);
    let per_conn = match (baseline, start) {
        (Some(b), Some(s)) if connect.0 > 0 => {
            Some((s.rss_kb as f64 - b.rss_kb as f64) / connect.0 as f64)
        }
        _ => None,
    };
    let summary = json!({
        "label": args.label,
        "protocol": args.protocol,
        "upgrade": args.upgrade,
        "connections": args.connections,
        "connected": connect.0,
        "room_size": args.room_size,
        "message_size": args.message_size,
        "workers": args.workers,
        "offered_rate": rate,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "sent": c.sent,
        "acked": c.acked,
        "expected_deliveries": c.expected,
        "delivered": c.delivered,
        "delivery_ratio": ratio,
        "delivered_per_s": c.delivered as f64 / args.duration.max(1e-9),
        "latency_ms": {
            "p50": ms(h.value_at_quantile(0.5)),
            "p90": ms(h.value_at_quantile(0.9)),
            "p99": ms(h.value_at_quantile(0.99)),
            "p99_9": ms(h.value_at_quantile(0.999)),
            "max": ms(h.max()),
        },
        "errors": {
            "total": errors,
            "connect": connect.1,
            "send": c.send_errors,
            "ack_failed": c.ack_failed,
            "disconnects": c.disconnects,
            "server_error_events": c.server_errors,
            "duplicates_or_reordered": c.duplicates,
        },
        "server": {
            "pid": args.server_pid,
            "cpu_seconds": cpu.map(|c| c.0),
            "cpu_us_per_delivery": cpu.and_then(|c| per_delivery(c.0)),
            "cpu_user_seconds": cpu.map(|c| c.1),
            "cpu_user_us_per_delivery": cpu.and_then(|c| per_delivery(c.1)),
            "cpu_sys_seconds": cpu.map(|c| c.2),
            "cpu_sys_us_per_delivery": cpu.and_then(|c| per_delivery(c.2)),
            "rss_kb_before_connect": baseline.map(|s| s.rss_kb),
            "rss_kb_start": start.map(|s| s.rss_kb),
            "rss_kb_end": end.map(|s| s.rss_kb),
            "rss_per_connection_kb": per_conn,
            "rss_total_per_connection_kb": start.filter(|_| connect.0 > 0).map(|s| s.rss_kb as f64 / connect.0 as f64),
        },
        "load_average": load_average(),
        "passed": passed,
    });
    (summary, passed)
}

/// The ramp's JSON: its rule, the highest passing rate, that step's passing attempt (`best`,
/// null when no step passed) and every step.
pub fn ramp_summary(args: &Args, best: Option<(f64, Value)>, steps: Vec<Value>) -> Value {
    json!({
        "ramp": true,
        "p99_max_ms": args.p99_max_ms,
        "attempts_per_step": crate::ramp::ATTEMPTS_PER_STEP,
        "max_sustainable_rate": best.as_ref().map(|(r, _)| *r),
        "best": best.map(|(_, s)| s),
        "steps": steps,
    })
}

/// Prints the summary on stdout and writes it to `--json`; false when the file cannot be
/// written.
pub fn write(args: &Args, summary: &Value) -> bool {
    let text = serde_json::to_string_pretty(summary).unwrap_or_default();
    println!("{text}");
    if let Some(path) = &args.json
        && let Err(e) = std::fs::write(path, format!("{text}\n"))
    {
        eprintln!("chat-bench: write {}: {e}", path.display());
        return false;
    }
    true
}
