//! The protocol-test server: this crate's Engine.IO/Socket.IO code (`App::build_protocol_test`)
//! with the echo endpoints the official socket.io-protocol and engine.io-protocol test suites
//! expect, at `http://localhost:3000` with `pingInterval` 300 ms, `pingTimeout` 200 ms and
//! `maxPayload` 1 000 000 (README, "Protocol conformance").
//!
//! ```bash
//! cargo run --example protocol_test            # PORT=3001 to listen elsewhere
//! ```

use chat_service::app::App;
use chat_service::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let args = [
        "protocol-test",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--ping-interval-ms",
        "300",
        "--ping-timeout-ms",
        "200",
        "--max-payload-bytes",
        "1000000",
        "--storage",
        "embedded",
        "--data-dir",
        &data.path().display().to_string(),
    ];
    let app = App::build_protocol_test(Config::from_args(args)?).await?;
    println!("protocol-test server on http://{}", app.local_addr());
    app.run_until_stopped(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
