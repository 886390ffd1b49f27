//! `chat-bench`: the load generator of issue 8. It opens `--connections` WebSocket connections
//! (Socket.IO over Engine.IO v4, opened on a WebSocket or, with `--upgrade`, on long-polling and
//! then upgraded as browsers do; or the raw JSON-frame protocol), authenticates each as its own
//! user, puts them in rooms of `--room-size`, then sends `send_message` at an aggregate
//! `--rate` for `--warmup` + `--duration` seconds, round-robin over the connections.
//!
//! Every message text is `<phase>:<measured>:<sender>:<seq>:<send_unix_ns>:` padded with `x`
//! to `--message-size`; receivers parse it back and record the end-to-end latency in an HDR
//! histogram. Loss is counted honestly: every message the scheduler *offered* during the
//! measured window (including those that could not be written because the connection was
//! gone or backed up) is expected `room size` times (the sender gets its own `new_message`,
//! SPEC 2), so a dead server shows up as delivery < 100% and a non-zero exit code.
//!
//! `--workers N` re-executes this binary N times (one share of the rooms each, so a message's
//! sender and receivers live in one process); the children talk to the parent over
//! stdin/stdout lines (`READY`, `RUN`, `PROGRESS`, `RESULT`, `QUIT`) and the parent merges
//! their counters and histograms. `--server-pid` samples the server's CPU time (user and
//! kernel) and RSS from `/proc`. `--ramp` raises the rate step by step; a step that fails
//! (delivery < 100% or p99 over `--p99-max-ms`) is run once more at the same rate, and the
//! ramp stops when it fails twice in a row, reporting the highest passing rate.
//!
//! What lives where:
//!
//! | file | what |
//! | --- | --- |
//! | `main.rs` | the CLI (`Args`), the entry: parent, or a worker child when `CHAT_BENCH_WORKER` is set |
//! | `protocol.rs` | protocol clients: Socket.IO over WebSocket, the long-polling handshake and upgrade, raw WebSocket frames; frame recognizers |
//! | `conn.rs` | scenario: one connection's task (sends on command, counts acks, deliveries, latency, errors) |
//! | `worker.rs` | scenario: one process's connections and the send scheduler of a phase |
//! | `child.rs` | scenario: `--workers` child processes and their line protocol, both sides |
//! | `bench.rs` | scenario: the parent: connect every worker, run a phase on all, sample the server, merge |
//! | `churn.rs` | scenario: `--churn`, clients disconnected in waves that resume with `since` (delivery, duplicates, rejoin and replay latency, RSS slope) |
//! | `ramp.rs` | scenario: one fixed-rate phase, or the ramp and its rule (a step fails when it fails twice in a row) |
//! | `stats.rs` | measurement: counters, latency histograms, merging results of several processes |
//! | `metrics.rs` | measurement: the server's `chat_durable_write_seconds` histogram, scraped from `/metrics` at the window's start and end |
//! | `procfs.rs` | measurement: the server's CPU (user, kernel) and RSS from `/proc`, the load average |
//! | `report.rs` | report: the JSON summary of a phase and of a ramp, printing and `--json` |

mod bench;
mod child;
mod churn;
mod conn;
mod metrics;
mod procfs;
mod protocol;
mod ramp;
mod report;
mod stats;
mod worker;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use bench::Bench;
use protocol::Protocol;

/// Environment variable through which the parent tells a child `index/count/run_id`.
const WORKER_ENV: &str = "CHAT_BENCH_WORKER";

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Auth {
    /// `authenticate {userId, username}` (the server runs with AUTH_MODE=none).
    None,
}

/// Load generator for chat-service (and any server speaking its events).
#[derive(Parser, Clone, Debug)]
#[command(name = "chat-bench", version)]
struct Args {
    /// Server base URL (http:// or ws://; only host and port are used). A comma list spreads
    /// the connections round robin over several instances (so a room has members on each).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:5004")]
    url: Vec<String>,
    #[arg(long, value_enum, default_value_t = Protocol::Socketio)]
    protocol: Protocol,
    /// Socket.IO only: open each session on HTTP long-polling and upgrade it to WebSocket, as
    /// socket.io-client does by default in browsers (the handshake GET, then the WebSocket
    /// with the session's `sid`: `2probe`, `3probe`, `5`).
    #[arg(long)]
    upgrade: bool,
    /// Connections in total (over all workers).
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Members per room (the last room may be smaller).
    #[arg(long, default_value_t = 2)]
    room_size: usize,
    /// Aggregate send rate, messages per second (0 = idle: connect, join and hold).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Measured seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of sending before the measurement starts (not counted).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds to wait for outstanding acks and deliveries after sending stops.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// Length of each message text, in bytes (at least the header `phase:m:sender:seq:ns:`).
    #[arg(long, default_value_t = 64)]
    message_size: usize,
    /// Local source addresses, round robin: `127.0.0.1-127.0.0.8` or a comma list.
    #[arg(long)]
    source_ips: Option<String>,
    /// Worker processes (each holds a share of the rooms; use when the open-file limit binds).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Server process(es) to sample (/proc/<pid>/stat utime and stime, /proc/<pid>/status
    /// VmRSS); a comma list sums CPU and RSS over the processes.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Write the JSON summary to this file (it is always printed on stdout too).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Raise the rate step by step (x --ramp-factor) until a step fails twice in a row
    /// (delivery < 100% or p99 > --p99-max-ms; a failing step is run once more at its rate).
    #[arg(long)]
    ramp: bool,
    #[arg(long, default_value_t = 1.5)]
    ramp_factor: f64,
    #[arg(long, default_value_t = 12)]
    ramp_steps: usize,
    /// p99 bound of a passing ramp step, in milliseconds.
    #[arg(long, default_value_t = 20.0)]
    p99_max_ms: f64,
    #[arg(long, value_enum, default_value_t = Auth::None)]
    auth: Auth,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Seconds one connection (TCP + WebSocket + authenticate + join) may take.
    #[arg(long, default_value_t = 30.0)]
    connect_timeout: f64,
    /// A free-form label copied into the summary (e.g. the server's name).
    #[arg(long)]
    label: Option<String>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
    /// Churn mode (issue 19.4; see `churn.rs`): rooms get `--churn-room-rate` messages a second
    /// each while waves disconnect clients, which resume with `since`; `--rate`, `--warmup`,
    /// `--ramp`, `--workers` and `--protocol` do not apply.
    #[arg(long)]
    churn: bool,
    /// Churn: messages per second in each room.
    #[arg(long, default_value_t = 1.0)]
    churn_room_rate: f64,
    /// Churn: seconds between two waves of disconnections.
    #[arg(long, default_value_t = 10.0)]
    churn_every: f64,
    /// Churn: share of the connected clients each wave disconnects (for 1-5 s).
    #[arg(long, default_value_t = 0.1)]
    churn_fraction: f64,
    /// Churn: seconds between two samples of the servers' RSS and CPU.
    #[arg(long, default_value_t = 5.0)]
    churn_sample: f64,
}

/// The parent: connect, run the phase or the ramp, close, report. Exit code 0 when it passed,
/// 1 when not, 2 when the run could not be done.
async fn parent_main(args: Args) -> i32 {
    if args.churn {
        let (summary, passed) = churn::run(&args).await;
        if !report::write(&args, &summary) {
            return 2;
        }
        return if passed { 0 } else { 1 };
    }
    let mut bench = match Bench::connect(args.clone()).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("chat-bench: {e}");
            return 2;
        }
    };
    let (summary, passed) = if args.ramp {
        ramp::ramp(&mut bench).await
    } else {
        ramp::fixed(&mut bench).await
    };
    bench.close().await;
    if !report::write(&args, &summary) {
        return 2;
    }
    if passed { 0 } else { 1 }
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(async move {
        match std::env::var(WORKER_ENV) {
            Ok(spec) => child::child_main(args, spec).await,
            Err(_) => parent_main(args).await,
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    std::process::exit(code);
}
