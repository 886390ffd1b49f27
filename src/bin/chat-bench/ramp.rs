//! What a run measures: one phase at `--rate`, or with `--ramp` a search for the maximum
//! sustainable rate. The ramp starts at `--rate` and multiplies it by `--ramp-factor` for up to
//! `--ramp-steps` steps, and stops at the first step that fails: a step passes when every
//! message was delivered without errors and its p99 is at most `--p99-max-ms`. The maximum
//! sustainable rate is the last step that passed. Each step is its own phase.

use serde_json::{Value, json};

use crate::bench::Bench;
use crate::report::ramp_summary;

/// One phase at `--rate`: its summary and whether it passed.
pub async fn fixed(bench: &mut Bench) -> (Value, bool) {
    let rate = bench.args.rate;
    bench.measure(1, rate).await
}

/// The ramp: its summary and whether any step passed.
pub async fn ramp(bench: &mut Bench) -> (Value, bool) {
    let args = bench.args.clone();
    let mut rate = args.rate;
    let mut steps = Vec::new();
    let mut best: Option<(f64, Value)> = None;
    for step in 1..=args.ramp_steps.max(1) {
        let (mut summary, passed) = bench.measure(step as u32, rate).await;
        let p99 = summary["latency_ms"]["p99"].as_f64().unwrap_or(f64::MAX);
        let passed = passed && p99 <= args.p99_max_ms;
        summary["passed"] = json!(passed);
        if !args.quiet {
            eprintln!(
                "ramp step {step}: {rate:.0}/s -> delivery {:.4}, p99 {p99} ms: {}",
                summary["delivery_ratio"].as_f64().unwrap_or(0.0),
                if passed { "pass" } else { "fail" }
            );
        }
        steps.push(summary.clone());
        if !passed {
            break;
        }
        best = Some((rate, summary));
        rate *= args.ramp_factor;
    }
    let any_passed = best.is_some();
    (ramp_summary(&args, best, steps), any_passed)
}
