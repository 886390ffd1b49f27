//! The binary's operator commands (issue 18.4), beside the server: `chat-service migrate`,
//! `export` and `erase`. Like `app.rs` this is a composition root: it parses the command
//! line, opens the stores (through `app::durable_store` / `app::command_store`), runs the
//! use cases of `crate::migrate` and draws their progress with indicatif.
//!
//! Store URLs (`--from`, `--to`, `--store`):
//! - `embedded:<dir>` (or `sqlite:<dir>`): the embedded store in `<dir>` (`DATA_DIR`);
//! - `postgres://..` / `postgresql://..`: PostgreSQL (`DATABASE_URL`; a schema with
//!   `?options[search_path]=<schema>`);
//! - `mongodb://../<database>` / `mongodb+srv://..`: MongoDB (`MONGODB_URI`), the Node
//!   service's documents as they are.
//!
//! Without `--store`, `export` and `erase` use the server's configuration (`STORAGE`,
//! `DATA_DIR`, `DATABASE_URL`, `MONGODB_URI`, `.env`; with Redis and RabbitMQ as the server
//! has them). Exit codes: 0 done, 1 a count mismatch after `migrate`, 2 an error.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::app::{command_store, durable_store};
use crate::config::Config;
use crate::domain::{RoomId, UserId};
use crate::migrate::{Progress, copy, subject};
use crate::store::MessageStore;

/// The commands' names: `main.rs` runs a command when the first argument is one of them.
pub const COMMANDS: &[&str] = &["migrate", "export", "erase"];

#[derive(Parser)]
#[command(name = "chat-service", about = "chat-service's operator commands")]
struct Tool {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Copy rooms, messages, reactions and read markers from one store to another
    /// (idempotent, resumable), then check the message counts per room
    Migrate {
        /// Source store URL (embedded:<dir>, postgres://.., mongodb://../<db>)
        #[arg(long)]
        from: String,
        /// Target store URL
        #[arg(long)]
        to: String,
    },
    /// Write a room's or a user's messages on stdout, one JSON object per line
    Export {
        #[arg(long, required_unless_present = "user", conflicts_with = "user")]
        room: Option<String>,
        #[arg(long)]
        user: Option<String>,
        /// Store URL (default: the server's configuration)
        #[arg(long)]
        store: Option<String>,
    },
    /// Delete every message of a user as SPEC 10's deletes do (tombstones, text erased)
    Erase {
        #[arg(long)]
        user: String,
        /// Store URL (default: the server's configuration)
        #[arg(long)]
        store: Option<String>,
    },
}

/// The configuration a store URL stands for (other settings from the environment).
fn config_of(url: &str) -> anyhow::Result<Config> {
    let args: [&str; 4] = if let Some(dir) = url
        .strip_prefix("embedded:")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        ["--storage", "embedded", "--data-dir", dir]
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        ["--storage", "postgres", "--database-url", url]
    } else if url.starts_with("mongodb://") || url.starts_with("mongodb+srv://") {
        ["--storage", "mongodb", "--mongodb-uri", url]
    } else {
        let scheme = url.split(':').next().unwrap_or_default();
        anyhow::bail!(
            "unknown store URL scheme {scheme:?} (embedded:<dir>, postgres://.., mongodb://..)"
        );
    };
    Ok(Config::from_args(["chat-service"].into_iter().chain(args))?)
}

/// The store a data-subject command works on.
async fn subject_store(url: Option<&str>) -> anyhow::Result<Arc<dyn MessageStore>> {
    let cfg = match url {
        Some(url) => config_of(url)?,
        // The environment and `.env` only: the process arguments are the command's.
        None => Config::from_args(["chat-service"])
            .map_err(|e| anyhow::anyhow!("{e} (or give --store <URL>)"))?,
    };
    command_store(&cfg).await
}

/// Runs the command of the process arguments; the exit code.
pub async fn run() -> i32 {
    let _ = dotenvy::dotenv();
    let tool = match Tool::try_parse() {
        Ok(t) => t,
        Err(e) => e.exit(),
    };
    match execute(tool.command).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chat-service: {e:#}");
            2
        }
    }
}

async fn execute(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Migrate { from, to } => {
            let source = durable_store(&config_of(&from)?, None)
                .await
                .context("--from")?;
            let target = durable_store(&config_of(&to)?, None)
                .await
                .context("--to")?;
            let progress = Bar::new();
            let result = copy::migrate(&*source, &*target, &progress).await;
            target.close().await;
            source.close().await;
            let report = result?;
            println!(
                "copied {} messages, {} already there, {} changes, {} read markers",
                report.copied, report.skipped, report.changes, report.markers
            );
            print!("{}", report.table());
            let bad = report.mismatches();
            if bad.is_empty() {
                println!("count check: ok ({} rooms)", report.counts.len());
                Ok(0)
            } else {
                println!("count check: {} rooms differ", bad.len());
                Ok(1)
            }
        }
        Command::Export { room, user, store } => {
            let store = subject_store(store.as_deref()).await?;
            let mut out = std::io::stdout().lock();
            let n = match (room, user) {
                (Some(room), _) => {
                    let room = RoomId::parse(&room).map_err(|e| anyhow::anyhow!("--room: {e}"))?;
                    subject::export_room(&*store, &room, &mut out).await?
                }
                (None, Some(user)) => {
                    let user = UserId::parse(&user).map_err(|e| anyhow::anyhow!("--user: {e}"))?;
                    subject::export_user(&*store, &user, &mut out).await?
                }
                (None, None) => anyhow::bail!("--room or --user is required"),
            };
            store.close().await;
            eprintln!("exported {n} messages");
            Ok(0)
        }
        Command::Erase { user, store } => {
            let user = UserId::parse(&user).map_err(|e| anyhow::anyhow!("--user: {e}"))?;
            let store = subject_store(store.as_deref()).await?;
            let n = subject::erase_user(&*store, &user).await;
            store.close().await;
            println!("erased {} messages of {}", n?, user.as_str());
            Ok(0)
        }
    }
}

/// The migration's progress: an indicatif bar on a terminal; otherwise (a pipe, a log) a line
/// `progress <done>/<total>` on stderr at every whole percent.
struct Bar {
    bar: Option<ProgressBar>,
    total: AtomicU64,
    done: AtomicU64,
}

impl Bar {
    fn new() -> Self {
        Self {
            bar: std::io::stderr().is_terminal().then(ProgressBar::hidden),
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
        }
    }
}

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_length(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:40}] {human_pos}/{human_len} messages, eta {eta}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
        }
    }

    fn advance(&self, n: u64) {
        let before = self.done.fetch_add(n, Ordering::Relaxed);
        match &self.bar {
            Some(bar) => bar.inc(n),
            None => {
                let total = self.total.load(Ordering::Relaxed).max(1);
                if (before + n) * 100 / total != before * 100 / total {
                    eprintln!("progress {}/{total}", before + n);
                }
            }
        }
    }

    fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
            // The report starts on a line of its own.
            eprintln!();
        }
    }
}
