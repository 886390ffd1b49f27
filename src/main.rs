//! The `chat-service` binary: configuration, logging, then the app until SIGINT/SIGTERM; or
//! one of the operator's commands (`migrate`, `export`, `erase`: `chat_service::commands`).

use std::io::Write;

use chat_service::app::{App, shutdown_signal};
use chat_service::config::{Config, LogFormat};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
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
