//! The parent's side of a run (`Bench`): it opens the connections (in this process, or in
//! `--workers` children), runs one phase on every worker at once, prints the progress line,
//! samples the server from `/proc` (and its `/metrics`) at the end of the warm-up and at the
//! end of the phase, and merges the workers' counters and histograms into the phase's summary.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::Args;
use crate::child::{ChildWorker, Msg};
use crate::metrics::{self, Buckets};
use crate::procfs::{ProcSample, clock_ticks, load_average, sample_proc};
use crate::report::summarize;
use crate::stats::{Counters, PhaseResult, hist_pairs, merge, new_hist, now_ns};
use crate::worker::LocalWorker;

enum Worker {
    Local(Arc<LocalWorker>),
    Child(Box<ChildWorker>),
}

/// The connections over all workers, and what was measured before the first phase.
pub struct Bench {
    pub args: Args,
    workers: Vec<Worker>,
    ticks: f64,
    /// The server before the first connection (RSS growth per connection is measured from it).
    baseline: Option<ProcSample>,
    load_before: String,
    connected: usize,
    connect_errors: u64,
    connect_s: f64,
}

impl Bench {
    /// Opens every connection (in this process with one worker, else in child processes).
    pub async fn connect(args: Args) -> Result<Self, String> {
        let run_id = format!("{:x}", now_ns() / 1_000_000 % 0xffff_ffff);
        let ticks = clock_ticks();
        let baseline = sample_proc(&args.server_pid, ticks);
        let load_before = load_average();
        let t0 = Instant::now();
        let n = args.workers.max(1);
        let mut workers = Vec::new();
        let mut connected = 0usize;
        let mut connect_errors = 0u64;
        let mut first_error: Option<String> = None;
        if n == 1 {
            let w = LocalWorker::connect(&args, 0, 1, &run_id).await?;
            connected += w.conns.len();
            connect_errors += w.connect_errors;
            first_error = w.first_connect_error.clone();
            workers.push(Worker::Local(Arc::new(w)));
        } else {
            for i in 0..n {
                workers.push(Worker::Child(Box::new(ChildWorker::spawn(i, n, &run_id)?)));
            }
            for w in &mut workers {
                let Worker::Child(c) = w else { continue };
                match c.rx.recv().await {
                    Some(Msg::Ready(v)) => {
                        connected += v["connected"].as_u64().unwrap_or(0) as usize;
                        connect_errors += v["connect_errors"].as_u64().unwrap_or(0);
                        if first_error.is_none() {
                            first_error = v["first_connect_error"].as_str().map(String::from);
                        }
                    }
                    _ => return Err("a worker failed to start".into()),
                }
            }
        }
        let connect_s = t0.elapsed().as_secs_f64();
        if !args.quiet {
            eprintln!(
                "connected {connected}/{} in {connect_s:.1}s ({connect_errors} failed{})",
                args.connections,
                first_error
                    .as_deref()
                    .map(|e| format!(", first: {e}"))
                    .unwrap_or_default()
            );
        }
        Ok(Self {
            args,
            workers,
            ticks,
            baseline,
            load_before,
            connected,
            connect_errors,
            connect_s,
        })
    }

    fn progress(&self) -> Counters {
        let mut total = Counters::default();
        for w in &self.workers {
            match w {
                Worker::Local(l) => total.add(&l.stats.snapshot()),
                Worker::Child(c) => total.add(&c.progress.lock()),
            }
        }
        total
    }

    /// Runs phase `phase` at `rate`: its JSON summary and whether it passed (all delivered,
    /// no errors; the ramp adds its p99 bound).
    pub async fn measure(&mut self, phase: u32, rate: f64) -> (Value, bool) {
        let (r, start, end, scraped) = self.phase(phase, rate).await;
        let connect = (self.connected, self.connect_errors);
        let (mut summary, passed) =
            summarize(&self.args, rate, &r, connect, self.baseline, start, end);
        summary["server"]["durable_write_ms"] =
            metrics::window(scraped.0.as_ref(), scraped.1.as_ref());
        summary["connect_seconds"] = json!(self.connect_s);
        summary["load_average_before"] = json!(self.load_before);
        (summary, passed)
    }

    /// Runs one phase on every worker; returns (merged result, server at measure start, at end,
    /// its `/metrics` durable-write histogram at measure start and at end).
    async fn phase(
        &mut self,
        phase: u32,
        rate: f64,
    ) -> (
        PhaseResult,
        Option<ProcSample>,
        Option<ProcSample>,
        (Option<Buckets>, Option<Buckets>),
    ) {
        let a = self.args.clone();
        let n = self.workers.len() as f64;
        let mut locals = Vec::new();
        for w in &mut self.workers {
            match w {
                Worker::Local(l) => {
                    let l = l.clone();
                    let share = rate;
                    locals.push(tokio::spawn(async move {
                        l.run_phase(phase, share, a.warmup, a.duration, a.drain)
                            .await
                    }));
                }
                Worker::Child(c) => {
                    *c.progress.lock() = Counters::default();
                    let line = format!(
                        "RUN {phase} {} {} {} {}\n",
                        rate / n,
                        a.warmup,
                        a.duration,
                        a.drain
                    );
                    let _ = c.stdin.write_all(line.as_bytes()).await;
                    let _ = c.stdin.flush().await;
                }
            }
        }
        let started = Instant::now();
        let warmup = Duration::from_secs_f64(a.warmup);
        let mut at_start = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        // Progress until every local worker is done and every child has sent its RESULT.
        let mut merged = PhaseResult::default();
        let mut hist = new_hist();
        let mut waiting_children: Vec<usize> = (0..self.workers.len())
            .filter(|&i| matches!(self.workers[i], Worker::Child(_)))
            .collect();
        let sample_at = tokio::time::sleep(warmup);
        tokio::pin!(sample_at);
        let mut sampled = false;
        let mut scraped_start = None;
        loop {
            let locals_done = locals.iter().all(|h| h.is_finished());
            if locals_done && waiting_children.is_empty() {
                break;
            }
            tokio::select! {
                _ = &mut sample_at, if !sampled => {
                    sampled = true;
                    at_start = sample_proc(&self.args.server_pid, self.ticks);
                    scraped_start = metrics::scrape(&self.args.url).await;
                }
                _ = tick.tick() => {
                    if !self.args.quiet {
                        let c = self.progress();
                        eprintln!(
                            "[{:>5.1}s] rate {:.0}/s  sent {}  acked {}  delivered {}/{}  open {}  errors {}",
                            started.elapsed().as_secs_f64(), rate, c.sent, c.acked,
                            c.delivered, c.expected, c.open,
                            c.send_errors + c.ack_failed + c.disconnects + c.server_errors,
                        );
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(20)) => {
                    let mut still = Vec::new();
                    for i in waiting_children {
                        let Worker::Child(c) = &mut self.workers[i] else { continue };
                        match c.rx.try_recv() {
                            Ok(Msg::Result(r)) => merge(&mut merged, &mut hist, &r),
                            Ok(Msg::Gone) | Err(mpsc::error::TryRecvError::Disconnected) => {
                                merged.counters.send_errors += 1;
                            }
                            _ => still.push(i),
                        }
                    }
                    waiting_children = still;
                }
            }
        }
        if !sampled {
            at_start = sample_proc(&self.args.server_pid, self.ticks);
            scraped_start = metrics::scrape(&self.args.url).await;
        }
        let at_end = sample_proc(&self.args.server_pid, self.ticks);
        let scraped_end = metrics::scrape(&self.args.url).await;
        for h in locals {
            if let Ok(r) = h.await {
                merge(&mut merged, &mut hist, &r);
            }
        }
        merged.hist = hist_pairs(&hist);
        (merged, at_start, at_end, (scraped_start, scraped_end))
    }

    /// Closes the connections and lets the children exit.
    pub async fn close(&mut self) {
        for w in &mut self.workers {
            match w {
                Worker::Local(l) => l.close().await,
                Worker::Child(c) => {
                    let _ = c.stdin.write_all(b"QUIT\n").await;
                    let _ = tokio::time::timeout(Duration::from_secs(5), c.child.wait()).await;
                }
            }
        }
    }
}
