//! `--workers N`: the parent re-executes this binary N times with `CHAT_BENCH_WORKER` set to
//! `index/count/run_id`; each child holds a `LocalWorker` and they talk over stdin/stdout
//! lines. Child -> parent: `READY {connected, connect_errors, first_connect_error}`,
//! `PROGRESS <Counters>` every second of a phase, `RESULT <PhaseResult>`. Parent -> child:
//! `RUN <phase> <rate> <warmup> <duration> <drain>`, `QUIT`. Both sides live here:
//! `child_main` is the child, `ChildWorker` the parent's handle of one child.

use std::io::Write as _;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::stats::{Counters, PhaseResult};
use crate::worker::LocalWorker;
use crate::{Args, WORKER_ENV};

/// Child process: connect, report READY, then obey RUN/QUIT lines on stdin.
pub async fn child_main(args: Args, spec: String) -> i32 {
    let mut it = spec.splitn(3, '/');
    let (Some(Ok(index)), Some(Ok(count)), Some(run_id)) = (
        it.next().map(str::parse::<usize>),
        it.next().map(str::parse::<usize>),
        it.next(),
    ) else {
        eprintln!("chat-bench worker: bad {WORKER_ENV}={spec}");
        return 2;
    };
    let worker = match LocalWorker::connect(&args, index, count, run_id).await {
        Ok(w) => Arc::new(w),
        Err(e) => {
            eprintln!("chat-bench worker {index}: {e}");
            return 2;
        }
    };
    let ready = json!({
        "connected": worker.conns.len(),
        "connect_errors": worker.connect_errors,
        "first_connect_error": worker.first_connect_error,
    });
    println!("READY {ready}");
    let _ = std::io::stdout().flush();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["RUN", phase, rate, warmup, duration, drain] => {
                let num = |s: &str| s.parse::<f64>().unwrap_or(0.0);
                let w = worker.clone();
                let (phase, rate, warmup, duration, drain) = (
                    phase.parse().unwrap_or(1),
                    num(rate),
                    num(warmup),
                    num(duration),
                    num(drain),
                );
                let run =
                    tokio::spawn(
                        async move { w.run_phase(phase, rate, warmup, duration, drain).await },
                    );
                tokio::pin!(run);
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                let result = loop {
                    tokio::select! {
                        r = &mut run => break r.unwrap_or_default(),
                        _ = tick.tick() => {
                            let c = serde_json::to_string(&worker.stats.snapshot()).unwrap_or_default();
                            println!("PROGRESS {c}");
                            let _ = std::io::stdout().flush();
                        }
                    }
                };
                println!(
                    "RESULT {}",
                    serde_json::to_string(&result).unwrap_or_default()
                );
                let _ = std::io::stdout().flush();
            }
            ["QUIT"] => break,
            _ => {}
        }
    }
    worker.close().await;
    0
}

/// A line from a child, as the parent's reader task passes it on.
pub enum Msg {
    Ready(Value),
    Result(PhaseResult),
    Gone,
}

/// The parent's handle of one child: its stdin for commands, its READY/RESULT lines, and the
/// latest PROGRESS counters.
pub struct ChildWorker {
    pub child: tokio::process::Child,
    pub stdin: tokio::process::ChildStdin,
    pub rx: mpsc::UnboundedReceiver<Msg>,
    pub progress: Arc<Mutex<Counters>>,
}

impl ChildWorker {
    pub fn spawn(index: usize, count: usize, run_id: &str) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
        let mut child = tokio::process::Command::new(exe)
            .args(std::env::args().skip(1))
            .env(WORKER_ENV, format!("{index}/{count}/{run_id}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn worker: {e}"))?;
        let stdin = child.stdin.take().ok_or("worker stdin")?;
        let stdout = child.stdout.take().ok_or("worker stdout")?;
        let (tx, rx) = mpsc::unbounded_channel();
        let progress = Arc::new(Mutex::new(Counters::default()));
        let prog = progress.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let (tag, body) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                match tag {
                    "READY" => {
                        let _ = tx.send(Msg::Ready(
                            serde_json::from_str(body).unwrap_or(Value::Null),
                        ));
                    }
                    "PROGRESS" => {
                        if let Ok(c) = serde_json::from_str(body) {
                            *prog.lock() = c;
                        }
                    }
                    "RESULT" => {
                        let _ =
                            tx.send(Msg::Result(serde_json::from_str(body).unwrap_or_default()));
                    }
                    _ => {}
                }
            }
            let _ = tx.send(Msg::Gone);
        });
        Ok(Self {
            child,
            stdin,
            rx,
            progress,
        })
    }
}
