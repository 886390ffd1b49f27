//! The `chat-service` binary: configuration, logging, then the app until SIGINT/SIGTERM.

use std::io::Write;

use chat_service::app::{App, shutdown_signal};
use chat_service::config::Config;
use tracing_subscriber::EnvFilter;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = match Config::load() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("chat-service: {e}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let app = match App::build(cfg).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("chat-service: {e:#}");
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
