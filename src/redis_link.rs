//! What the Redis adapters (`bus::redis`, `presence::redis`, `store::redis_cache`,
//! `fleet::redis`) share: how they connect. Short timeouts, so that an outage fails calls
//! promptly and never hangs them; lazy, so the service starts while Redis is down; and
//! `TCP_NODELAY`, since Redis traffic is request and answer: with Nagle's algorithm (the
//! driver's default) a multiplexed connection sends one small write per round trip while an
//! earlier one waits for its ACK, so concurrent calls pay extra round trips.
//!
//! # One Redis or a Redis Cluster
//! A `redis+cluster://[[user]:password@]host:port,host:port,...` URL (the configuration builds
//! one from `REDIS_CLUSTER_NODES`) selects a Redis Cluster: [`Conn`] is then a cluster
//! connection that routes each command to the shard of its key. The adapters use the same
//! calls on both, with two rules for a cluster (docs/ARCHITECTURE.md, "Redis Cluster"):
//! every script, `MULTI` and pipeline touches keys of one slot only, which the keys of this
//! service's own (never SPEC 7's, which other services read) get from a hash tag naming the
//! SPEC 7 key they go with ([`colocated`]); and the bus uses sharded pub/sub.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// Connect and response timeout of every Redis call.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait between two reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The scheme of a Redis Cluster URL.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// Where the adapters' Redis is.
#[derive(Clone)]
pub enum Target {
    Single(redis::Client),
    /// The seed nodes' URLs (`redis://[userinfo@]host:port`).
    Cluster(Vec<String>),
}

impl Target {
    /// `redis://...` (one Redis) or `redis+cluster://...` (a Redis Cluster).
    pub fn parse(url: &str) -> Result<Self, redis::RedisError> {
        match cluster_nodes(url) {
            Some(nodes) if nodes.is_empty() => Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "a redis+cluster:// URL names no node",
            ))),
            Some(nodes) => {
                // Validates every node's address now, not at the first call.
                for n in &nodes {
                    redis::IntoConnectionInfo::into_connection_info(n.as_str())?;
                }
                Ok(Self::Cluster(nodes))
            }
            None => client(url).map(Self::Single),
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// A lazy connection with the timeouts above: the first call connects.
    pub fn connection(&self) -> Result<Conn, redis::RedisError> {
        Ok(match self {
            Self::Single(client) => Conn::Single(connection_manager(client)?),
            Self::Cluster(nodes) => Conn::Cluster(
                cluster_builder(nodes)
                    .build()?
                    .get_pending_async_connection_with_config(cluster_config()),
            ),
        })
    }
}

/// The seed nodes of a `redis+cluster://` URL, as `redis://` URLs; `None` for any other URL.
pub fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    let rest = url.strip_prefix(CLUSTER_SCHEME)?;
    let rest = rest.trim_end_matches('/');
    let (userinfo, hosts) = match rest.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), rest),
    };
    Some(
        hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| format!("redis://{userinfo}{h}"))
            .collect(),
    )
}

/// A cluster client's builder for `nodes`, with `TCP_NODELAY` and the timeouts above.
pub fn cluster_builder(nodes: &[String]) -> ClusterClientBuilder {
    ClusterClient::builder(nodes.iter().map(String::as_str))
        .tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true))
        .connection_timeout(TIMEOUT)
        .response_timeout(TIMEOUT)
        .retries(1)
        .max_retry_wait(MAX_BACKOFF.as_millis() as u64)
}

/// The per-connection timeouts of a cluster connection.
pub fn cluster_config() -> redis::cluster::ClusterConfig {
    redis::cluster::ClusterConfig::new()
        .set_connection_timeout(TIMEOUT)
        .set_response_timeout(TIMEOUT)
}

/// A key of this service's own that goes with the SPEC 7 key `spec_key`: on a cluster,
/// `{<spec_key>}<suffix>`, whose hash tag puts it in `spec_key`'s slot (a key without braces
/// hashes whole, so the tag's slot is the SPEC key's); on one Redis, `plain`, the name it has
/// always had (so instances of an older version share it during a rolling upgrade). The parts
/// are `format_args!`, so only the name in use is formatted (a send's idempotency key is one).
pub fn colocated(
    cluster: bool,
    spec_key: std::fmt::Arguments<'_>,
    suffix: std::fmt::Arguments<'_>,
    plain: std::fmt::Arguments<'_>,
) -> String {
    if cluster {
        format!("{{{spec_key}}}{suffix}")
    } else {
        plain.to_string()
    }
}

/// A client for `url` whose connections set `TCP_NODELAY`.
fn client(url: &str) -> Result<redis::Client, redis::RedisError> {
    use redis::IntoConnectionInfo;
    let info = url
        .into_connection_info()?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    redis::Client::open(info)
}

/// A `ConnectionManager` with the timeouts above.
fn connection_manager(client: &redis::Client) -> Result<ConnectionManager, redis::RedisError> {
    ConnectionManager::new_lazy_with_config(
        client.clone(),
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(MAX_BACKOFF),
    )
}

/// A connection to one Redis or to a Redis Cluster; cheap to clone (both multiplex).
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_url_names_its_seed_nodes_with_their_credentials() {
        assert_eq!(
            cluster_nodes("redis+cluster://:pw@10.0.0.1:7001,10.0.0.2:7002/"),
            Some(vec![
                "redis://:pw@10.0.0.1:7001".to_string(),
                "redis://:pw@10.0.0.2:7002".to_string()
            ])
        );
        assert_eq!(cluster_nodes("redis://127.0.0.1:6379"), None);
        assert!(
            Target::parse("redis+cluster://127.0.0.1:7001,127.0.0.1:7002")
                .unwrap()
                .is_cluster()
        );
        assert!(Target::parse("redis+cluster://127.0.0.1:notaport").is_err());
    }

    #[test]
    fn a_colocated_key_hashes_to_its_spec_keys_slot_on_a_cluster_only() {
        let k = colocated(
            true,
            format_args!("chat:room:r1:users"),
            format_args!(":conns"),
            format_args!("chat:room:r1:conns"),
        );
        assert_eq!(k, "{chat:room:r1:users}:conns");
        assert_eq!(
            redis::cluster_routing::Slot::for_key(k.as_bytes()),
            redis::cluster_routing::Slot::for_key(b"chat:room:r1:users")
        );
        assert_eq!(
            colocated(
                false,
                format_args!("chat:room:r1:users"),
                format_args!(":conns"),
                format_args!("chat:room:r1:conns"),
            ),
            "chat:room:r1:conns"
        );
    }
}
