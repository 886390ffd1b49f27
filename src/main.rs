//! The `chat-service` binary: configuration, logging, then the app until SIGINT/SIGTERM; or
//! one of the operator's commands (`migrate`, `export`, `erase`: `chat_service::commands`).

use std::io::Write;

use chat_service::app::{App, shutdown_signal};
use chat_service::config::{Config, LogFormat};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve())
}

/// glibc's malloc gives each thread that allocates a heap ("arena") of its own, up to 8 per
/// core, and memory freed in one arena is not reused by the others. With the runtime's workers,
/// its blocking pool and the stores' threads, the heap then grows slowly for hours: the
/// one-hour churn soak measured +1.3 %/h of RSS with the default against -0.1 %/h with two
/// arenas, and 17 MB less (BENCHMARKS.md, "Soak: one hour, again"). So two arenas, unless the
/// operator sets `MALLOC_ARENA_MAX`. glibc reads it when malloc starts, before `main`, and the
/// house forbids `unsafe` (`mallopt`), so the binary runs itself again with it set: the same
/// process (exec keeps the pid, the arguments and the open files), before any thread exists.
/// Should the exec fail, it goes on with glibc's default.
#[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc")))]
fn limit_malloc_arenas() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("MALLOC_ARENA_MAX", "2")
        .exec();
    eprintln!("chat-service: could not run itself with MALLOC_ARENA_MAX=2 ({err}); going on");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc"))))]
fn limit_malloc_arenas() {}

async fn serve() -> anyhow::Result<()> {
    // `chat-service migrate|export|erase ..`: an operator's command, not the server.
    if let Some(first) = std::env::args().nth(1)
        && chat_service::commands::COMMANDS.contains(&first.as_str())
    {
        chat_service::telemetry::init(LogFormat::Text);
        std::process::exit(chat_service::commands::run().await);
    }
    let cfg = match Config::load() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("chat-service: {e}");
            std::process::exit(2);
        }
    };
    let log_format = cfg.log_format;
    chat_service::telemetry::init(log_format);
    let app = match App::build(cfg).await {
        Ok(app) => app,
        Err(e) => {
            match log_format {
                LogFormat::Text => eprintln!("chat-service: {e:#}"),
                // Every stderr line stays a JSON object.
                LogFormat::Json => tracing::error!(error = format!("{e:#}"), "start-up failed"),
            }
            std::process::exit(2);
        }
    };
    let addr = app.local_addr();
    tracing::info!(%addr, "chat-service listening");
    // One machine-readable line on stdout, for scripts and tests that start the binary.
    let mut out = std::io::stdout();
    let _ = writeln!(out, "listening on http://{addr}");
    let _ = out.flush();
    app.run_until_stopped(shutdown_signal()).await
}
