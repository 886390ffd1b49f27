//! What the Redis adapters (`bus::redis`, `presence::redis`, `store::redis_cache`) share: how
//! they connect. Short timeouts, so that an outage fails calls promptly and never hangs them;
//! lazy, so the service starts while Redis is down.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Connect and response timeout of every Redis call.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait between two reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

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
