//! What a run measures: one phase at `--rate`, or with `--ramp` a search for the maximum
//! sustainable rate. The ramp starts at `--rate` and multiplies it by `--ramp-factor` for up to
//! `--ramp-steps` steps. A step passes when every message was delivered without errors and
//! its p99 is at most `--p99-max-ms`. A step that fails is run once more at the same rate, and
//! the ramp stops only when that second attempt fails too: one latency spike of a shared
//! machine does not decide the maximum. The maximum sustainable rate is the highest step that
//! passed, at either attempt.
//!
//! Each attempt is its own phase (phase numbers are never reused, so a late delivery of one
//! attempt is not counted in the next). A step's JSON is its deciding attempt (the first when
//! it passed, else the second) with `attempts` (1 or 2) and, when it was run twice, the
//! failed first attempt as `first_attempt`.

use serde_json::{Value, json};

use crate::bench::Bench;
use crate::report::ramp_summary;

/// Attempts at one rate before a ramp step counts as failed.
pub const ATTEMPTS_PER_STEP: u32 = 2;

/// One phase at `--rate`: its summary and whether it passed.
pub async fn fixed(bench: &mut Bench) -> (Value, bool) {
    let rate = bench.args.rate;
    bench.measure(1, rate).await
}

/// The ramp: its summary and whether any step passed.
pub async fn ramp(bench: &mut Bench) -> (Value, bool) {
    let args = bench.args.clone();
    let mut rate = args.rate;
    let mut phase = 0u32;
    let mut steps = Vec::new();
    let mut best: Option<(f64, Value)> = None;
    for step in 1..=args.ramp_steps.max(1) {
        let mut failed_attempt: Option<Value> = None;
        let mut attempt = 0;
        let (mut summary, passed) = loop {
            attempt += 1;
            phase += 1;
            let (mut summary, passed) = bench.measure(phase, rate).await;
            let p99 = summary["latency_ms"]["p99"].as_f64().unwrap_or(f64::MAX);
            let passed = passed && p99 <= args.p99_max_ms;
            summary["passed"] = json!(passed);
            let last = passed || attempt == ATTEMPTS_PER_STEP;
            if !args.quiet {
                eprintln!(
                    "ramp step {step}{}: {rate:.0}/s -> delivery {:.4}, p99 {p99} ms: {}",
                    if attempt > 1 { " (again)" } else { "" },
                    summary["delivery_ratio"].as_f64().unwrap_or(0.0),
                    match (passed, last) {
                        (true, _) => "pass",
                        (false, true) => "fail",
                        (false, false) => "fail, once more at the same rate",
                    }
                );
            }
            if last {
                break (summary, passed);
            }
            failed_attempt = Some(summary);
        };
        summary["attempts"] = json!(attempt);
        if passed {
            best = Some((rate, summary.clone()));
        }
        if let Some(first) = failed_attempt {
            summary["first_attempt"] = first;
        }
        steps.push(summary);
        if !passed {
            break;
        }
        rate *= args.ramp_factor;
    }
    let any_passed = best.is_some();
    (ramp_summary(&args, best, steps), any_passed)
}
