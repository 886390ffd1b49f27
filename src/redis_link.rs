//! What the Redis adapters (`bus::redis`, `presence::redis`, `store::redis_cache`,
//! `fleet::redis`) share: how they connect. Short timeouts, so that an outage fails calls
//! promptly and never hangs them; lazy, so the service starts while Redis is down; and
//! `TCP_NODELAY`, since Redis traffic is request and answer: with Nagle's algorithm (the
//! driver's default) a multiplexed connection sends one small write per round trip while an
//! earlier one waits for its ACK, so concurrent calls pay extra round trips.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Connect and response timeout of every Redis call.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait between two reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A client for `url` whose connections set `TCP_NODELAY`.
pub fn client(url: &str) -> Result<redis::Client, redis::RedisError> {
    use redis::IntoConnectionInfo;
    let info = url
        .into_connection_info()?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    redis::Client::open(info)
}

/// A `ConnectionManager` with the timeouts above.
pub fn connection_manager(client: &redis::Client) -> Result<ConnectionManager, redis::RedisError> {
    ConnectionManager::new_lazy_with_config(
        client.clone(),
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(MAX_BACKOFF),
    )
}
