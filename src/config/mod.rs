//! One typed configuration tree, read from the environment (the Node service's variable names
//! plus ours), a `.env` file in the working directory, and matching command-line flags (flags
//! win). `chat-service --help` lists every setting with its variable and default; secrets are
//! never printed. A bad value stops start-up with a message naming the variable.
//!
//! Where it lives: the settings (`Cli`, one flag and variable each) and their checked form
//! (`Config`) here; `redact.rs` masks secrets in URLs and `Debug` output.

mod redact;

pub use redact::redact_url;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::auth::grpc::GrpcAuthConfig;
use crate::auth::jwt::JwtConfig;
use crate::chat::ChatConfig;
use crate::store::embedded::DEFAULT_COMMIT_WINDOW_US;

#[derive(Clone, Parser)]
#[command(
    name = "chat-service",
    version,
    about = "Real-time chat server (Socket.IO, WebSocket, REST)",
    after_help = "Operator commands: chat-service migrate --help, export --help, erase --help"
)]
pub struct Cli {
    /// HTTP/WebSocket port (0 picks a free port)
    #[arg(long, env = "PORT", default_value_t = 5004)]
    pub port: u16,
    /// Address to listen on
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,
    /// `production` or `development` (kept for compatibility)
    #[arg(long, env = "NODE_ENV", default_value = "development")]
    pub node_env: String,
    /// Log lines on stderr: text (human-readable) or json (one JSON object per line)
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: String,

    /// Storage backend: embedded (a file under DATA_DIR), mongodb or postgres
    #[arg(long, env = "STORAGE")]
    pub storage: Option<String>,
    /// Folder of the embedded store
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Embedded store: most microseconds a small group commit waits for more messages when
    /// they arrive fast enough to share its fsync (0: never wait)
    #[arg(long, env = "EMBEDDED_COMMIT_WINDOW_US", default_value_t = DEFAULT_COMMIT_WINDOW_US)]
    pub embedded_commit_window_us: u64,
    /// MongoDB connection string (selects STORAGE=mongodb when STORAGE is unset)
    #[arg(long, env = "MONGODB_URI", hide_env_values = true)]
    pub mongodb_uri: Option<String>,
    /// PostgreSQL connection string (STORAGE=postgres)
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Redis host (multi-instance mode)
    #[arg(long, env = "REDIS_HOST")]
    pub redis_host: Option<String>,
    /// Redis port
    #[arg(long, env = "REDIS_PORT", default_value_t = 6379)]
    pub redis_port: u16,
    /// Redis password
    #[arg(long, env = "REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,
    /// Redis URL (instead of REDIS_HOST/PORT/PASSWORD)
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Redis Cluster seed nodes, `host:port,host:port,...` (with REDIS_PASSWORD; instead of
    /// REDIS_URL, which may also be `redis+cluster://[:password@]host:port,...`)
    #[arg(long, env = "REDIS_CLUSTER_NODES")]
    pub redis_cluster_nodes: Option<String>,
    /// Messages kept per room in the Redis history cache
    #[arg(long, env = "MAX_MESSAGE_HISTORY", default_value_t = 1000)]
    pub max_message_history: u32,
    /// TTL of the Redis history cache, seconds
    #[arg(long, env = "MESSAGE_HISTORY_TTL", default_value_t = 604_800)]
    pub message_history_ttl: u64,

    /// RabbitMQ URL (publishes message.sent events when set)
    #[arg(long, env = "RABBITMQ_URL", hide_env_values = true)]
    pub rabbitmq_url: Option<String>,
    /// Queue of the message.sent events
    #[arg(
        long,
        env = "RABBITMQ_QUEUE_NEW_MESSAGE",
        default_value = "new_message"
    )]
    pub rabbitmq_queue_new_message: String,
    /// Most message.sent events waiting in the outbox (broker down); beyond it sends are
    /// refused with `unavailable`, never stored without their event
    #[arg(long, env = "OUTBOX_MAX_PENDING", default_value_t = 1_000_000)]
    pub outbox_max_pending: u64,

    /// Allowed browser origins: `*` or a comma-separated list
    #[arg(long, env = "CORS_ORIGIN", default_value = "*")]
    pub cors_origin: String,
    /// Open connections per user, all instances (0 = unlimited)
    #[arg(long, env = "MAX_CONNECTIONS_PER_USER", default_value_t = 5)]
    pub max_connections_per_user: u32,
    /// Longest message, in characters (Unicode scalar values)
    #[arg(long, env = "MAX_MESSAGE_LENGTH", default_value_t = 4000)]
    pub max_message_length: u32,
    /// Largest frame or HTTP body accepted, bytes
    #[arg(long, env = "MAX_PAYLOAD_BYTES", default_value_t = 1_000_000)]
    pub max_payload_bytes: u64,
    /// Sends per second per user (0 disables the limit)
    #[arg(long, env = "RATE_LIMIT_PER_SEC", default_value_t = 20)]
    pub rate_limit_per_sec: u32,
    /// Burst of sends per user above the rate
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 40)]
    pub rate_limit_burst: u32,
    /// Events per second per connection, all events (0 disables the limit)
    #[arg(long, env = "EVENT_RATE_LIMIT_PER_SEC", default_value_t = 100)]
    pub event_rate_limit_per_sec: u32,
    /// Burst of events per connection above the rate
    #[arg(long, env = "EVENT_RATE_LIMIT_BURST", default_value_t = 300)]
    pub event_rate_limit_burst: u32,
    /// Rooms one connection may be in at once
    #[arg(long, env = "MAX_ROOMS_PER_CONNECTION", default_value_t = 100)]
    pub max_rooms_per_connection: u32,
    /// Seconds a connection may stay unauthenticated before it is closed
    #[arg(long, env = "AUTH_TIMEOUT_SECS", default_value_t = 30)]
    pub auth_timeout_secs: u64,
    /// Outbound events queued per connection; a client that falls further behind is a slow
    /// consumer and is disconnected
    #[arg(long, env = "MAX_OUTBOUND_QUEUE", default_value_t = 1024)]
    pub max_outbound_queue: u32,
    /// Milliseconds between the server's heartbeat pings (Socket.IO and raw WebSocket)
    #[arg(long, env = "PING_INTERVAL_MS", default_value_t = 25_000)]
    pub ping_interval_ms: u64,
    /// Milliseconds a client has to answer a ping before it is disconnected
    #[arg(long, env = "PING_TIMEOUT_MS", default_value_t = 20_000)]
    pub ping_timeout_ms: u64,
    /// Messages sent to a client when it joins a room
    #[arg(long, env = "HISTORY_ON_JOIN", default_value_t = 50)]
    pub history_on_join: u32,

    /// Authentication: none (trust the claimed userId), jwt or grpc
    #[arg(long, env = "AUTH_MODE")]
    pub auth_mode: Option<String>,
    /// HS256 secret (AUTH_MODE=jwt)
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// RS256/ES256 public key, PEM (AUTH_MODE=jwt)
    #[arg(
        long,
        env = "JWT_PUBLIC_KEY",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub jwt_public_key: Option<String>,
    /// Required `iss` claim
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Auth Service address, e.g. http://auth:50051 (AUTH_MODE=grpc)
    #[arg(long, env = "AUTH_GRPC_URL")]
    pub auth_grpc_url: Option<String>,
    /// Deadline of one Auth Service call, milliseconds
    #[arg(long, env = "AUTH_GRPC_TIMEOUT_MS", default_value_t = 2000)]
    pub auth_grpc_timeout_ms: u64,
    /// How long a positive Auth Service answer is reused, seconds (never past the token's expiry)
    #[arg(long, env = "AUTH_CACHE_TTL_SECS", default_value_t = 60)]
    pub auth_cache_ttl_secs: u64,

    /// Seconds to drain connections and writes on SIGINT/SIGTERM
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 10)]
    pub shutdown_timeout_secs: u64,

    /// Bearer token GET /metrics requires (unset: the endpoint is open)
    #[arg(long, env = "METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Token of the operator's page at /admin (unset: the page is off, 404)
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageKind {
    Embedded,
    Mongo,
    Postgres,
}

/// `LOG_FORMAT`: how `main.rs` writes the log lines on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event (the default).
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`, the event's fields
    /// and the fields of the spans it happened in.
    Json,
}

#[derive(Clone)]
pub enum AuthConfig {
    None,
    Jwt(JwtConfig),
    Grpc(GrpcAuthConfig),
}

#[derive(Debug, Clone)]
pub enum CorsConfig {
    Any,
    List(Vec<String>),
}

/// Multi-instance mode (SPEC 7): the shared Redis and its history cache. `Debug` redacts
/// the password in the URL.
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]`, from `REDIS_URL` or `REDIS_HOST/PORT/PASSWORD`;
    /// or a Redis Cluster's `redis+cluster://[:password@]host:port,...`, from
    /// `REDIS_CLUSTER_NODES` (with `REDIS_PASSWORD`) or `REDIS_URL`.
    pub url: String,
    /// Messages kept per room in `chat:history:{roomId}` (`MAX_MESSAGE_HISTORY`).
    pub max_message_history: usize,
    /// TTL of `chat:history:{roomId}` (`MESSAGE_HISTORY_TTL`).
    pub message_history_ttl: Duration,
}

/// The longest commit window allowed: 10 ms.
const MAX_COMMIT_WINDOW_US: u64 = 10_000;

/// The validated configuration the composition root builds from. Its `Debug` output redacts
/// secrets (passwords in URLs, JWT secrets).
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub production: bool,
    pub log_format: LogFormat,
    pub storage: StorageKind,
    pub data_dir: PathBuf,
    /// `EMBEDDED_COMMIT_WINDOW_US`: the embedded writer's commit window.
    pub commit_window: Duration,
    /// `DATABASE_URL` (`STORAGE=postgres`).
    pub database_url: Option<String>,
    /// `MONGODB_URI` (`STORAGE=mongodb`).
    pub mongodb_uri: Option<String>,
    pub redis: Option<RedisConfig>,
    pub rabbitmq: Option<String>,
    /// `RABBITMQ_QUEUE_NEW_MESSAGE`.
    pub rabbitmq_queue: String,
    /// `OUTBOX_MAX_PENDING`.
    pub outbox_max_pending: u64,
    pub cors: CorsConfig,
    pub max_payload_bytes: u64,
    pub max_outbound_queue: usize,
    /// `PING_INTERVAL_MS`.
    pub ping_interval: Duration,
    /// `PING_TIMEOUT_MS`.
    pub ping_timeout: Duration,
    pub auth: AuthConfig,
    pub chat: ChatConfig,
    pub shutdown_timeout: Duration,
    /// `METRICS_TOKEN`: the bearer token `GET /metrics` requires (`None`: open).
    pub metrics_token: Option<String>,
    /// `ADMIN_TOKEN`: the token of the operator's page (`None`: the page is off).
    pub admin_token: Option<String>,
}

/// A setting that cannot be used; the text names the variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Reads `.env` (if any), the environment and the process arguments.
    pub fn load() -> Result<Self, ConfigError> {
        let _ = dotenvy::dotenv();
        let cli = Cli::try_parse().map_err(|e| {
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) {
                e.exit()
            }
            ConfigError(e.to_string())
        })?;
        Self::from_cli(cli)
    }

    /// Builds from explicit arguments (environment variables still apply); used by tests.
    pub fn from_args<I, T>(args: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = Cli::try_parse_from(args).map_err(|e| ConfigError(e.to_string()))?;
        Self::from_cli(cli)
    }

    pub fn from_cli(cli: Cli) -> Result<Self, ConfigError> {
        let bad = |var: &str, why: &str| ConfigError(format!("{var}: {why}"));
        let log_format = match cli.log_format.trim() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(bad(
                    "LOG_FORMAT",
                    &format!("unknown format {other:?} (text, json)"),
                ));
            }
        };
        let storage = match cli.storage.as_deref().map(str::trim) {
            None | Some("") if cli.mongodb_uri.is_some() => StorageKind::Mongo,
            None | Some("") | Some("embedded") => StorageKind::Embedded,
            Some("mongodb") | Some("mongo") => StorageKind::Mongo,
            Some("postgres") | Some("postgresql") => StorageKind::Postgres,
            Some(other) => {
                return Err(bad(
                    "STORAGE",
                    &format!("unknown backend {other:?} (embedded, mongodb, postgres)"),
                ));
            }
        };
        if storage == StorageKind::Mongo && cli.mongodb_uri.is_none() {
            return Err(bad("MONGODB_URI", "required with STORAGE=mongodb"));
        }
        if storage == StorageKind::Postgres && cli.database_url.is_none() {
            return Err(bad("DATABASE_URL", "required with STORAGE=postgres"));
        }
        let cluster_nodes = cli.redis_cluster_nodes.as_deref().map(str::trim);
        let redis = match (&cli.redis_url, &cli.redis_host) {
            _ if cluster_nodes.is_some_and(|n| !n.is_empty()) => {
                let nodes = cluster_nodes.unwrap_or_default();
                Some(match &cli.redis_password {
                    Some(pw) if !pw.is_empty() => format!("redis+cluster://:{pw}@{nodes}"),
                    _ => format!("redis+cluster://{nodes}"),
                })
            }
            (Some(url), _) => Some(url.clone()),
            (None, Some(host)) if !host.is_empty() => Some(match &cli.redis_password {
                Some(pw) if !pw.is_empty() => format!("redis://:{pw}@{host}:{}", cli.redis_port),
                _ => format!("redis://{host}:{}", cli.redis_port),
            }),
            _ => None,
        };
        if let Some(url) = &redis {
            let var = match (&cli.redis_cluster_nodes, &cli.redis_url) {
                (Some(n), _) if !n.trim().is_empty() => "REDIS_CLUSTER_NODES",
                (_, Some(_)) => "REDIS_URL",
                _ => "REDIS_HOST",
            };
            if !url.starts_with("redis://") && !url.starts_with(crate::redis_link::CLUSTER_SCHEME) {
                return Err(bad(
                    var,
                    "must be a redis:// or redis+cluster:// URL (or a host name)",
                ));
            }
            if let Err(e) = crate::redis_link::Target::parse(url) {
                return Err(bad(var, &format!("is not a valid Redis address: {e}")));
            }
        }
        let auth = match cli.auth_mode.as_deref().map(str::trim) {
            None | Some("") | Some("none") => AuthConfig::None,
            Some("jwt") => AuthConfig::Jwt(JwtConfig {
                secret: cli.jwt_secret.clone().filter(|s| !s.is_empty()),
                public_key_pem: cli.jwt_public_key.clone().filter(|s| !s.is_empty()),
                issuer: cli.jwt_issuer.clone(),
                audience: cli.jwt_audience.clone(),
            }),
            Some("grpc") => AuthConfig::Grpc(GrpcAuthConfig {
                url: cli
                    .auth_grpc_url
                    .clone()
                    .ok_or_else(|| bad("AUTH_GRPC_URL", "required with AUTH_MODE=grpc"))?,
                timeout: Duration::from_millis(cli.auth_grpc_timeout_ms.max(1)),
                cache_ttl: Duration::from_secs(cli.auth_cache_ttl_secs),
            }),
            Some(other) => {
                return Err(bad(
                    "AUTH_MODE",
                    &format!("unknown mode {other:?} (none, jwt, grpc)"),
                ));
            }
        };
        let cors = match cli.cors_origin.trim() {
            "*" | "" => CorsConfig::Any,
            list => {
                let origins: Vec<String> = list
                    .split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_string())
                    .filter(|o| !o.is_empty())
                    .collect();
                // An origin must be a valid header value: visible ASCII, space or tab.
                for o in &origins {
                    if !(o.starts_with("http://") || o.starts_with("https://"))
                        || !o.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
                    {
                        return Err(bad(
                            "CORS_ORIGIN",
                            &format!("{o:?} is not an origin like https://app.example.com"),
                        ));
                    }
                }
                CorsConfig::List(origins)
            }
        };
        if cli.max_message_length == 0 {
            return Err(bad("MAX_MESSAGE_LENGTH", "must be at least 1"));
        }
        if cli.max_payload_bytes < 1024 {
            return Err(bad("MAX_PAYLOAD_BYTES", "must be at least 1024"));
        }
        if cli.max_rooms_per_connection == 0 {
            return Err(bad("MAX_ROOMS_PER_CONNECTION", "must be at least 1"));
        }
        if cli.auth_timeout_secs == 0 {
            return Err(bad("AUTH_TIMEOUT_SECS", "must be at least 1"));
        }
        if cli.ping_interval_ms < 100 {
            return Err(bad("PING_INTERVAL_MS", "must be at least 100"));
        }
        if cli.ping_timeout_ms < 100 {
            return Err(bad("PING_TIMEOUT_MS", "must be at least 100"));
        }
        if cli.max_outbound_queue < 8 {
            return Err(bad("MAX_OUTBOUND_QUEUE", "must be at least 8"));
        }
        if cli.history_on_join > 1000 {
            return Err(bad("HISTORY_ON_JOIN", "must be at most 1000"));
        }
        if cli.outbox_max_pending == 0 {
            return Err(bad("OUTBOX_MAX_PENDING", "must be at least 1"));
        }
        if cli.rabbitmq_queue_new_message.trim().is_empty()
            || cli.rabbitmq_queue_new_message.len() > 255
        {
            return Err(bad(
                "RABBITMQ_QUEUE_NEW_MESSAGE",
                "must be a queue name of 1 to 255 bytes",
            ));
        }
        if cli.max_message_history == 0 {
            return Err(bad("MAX_MESSAGE_HISTORY", "must be at least 1"));
        }
        if cli.embedded_commit_window_us > MAX_COMMIT_WINDOW_US {
            return Err(bad(
                "EMBEDDED_COMMIT_WINDOW_US",
                &format!("must be 0 to {MAX_COMMIT_WINDOW_US} microseconds"),
            ));
        }
        Ok(Self {
            listen: SocketAddr::new(cli.host, cli.port),
            production: cli.node_env == "production",
            log_format,
            storage,
            data_dir: cli.data_dir,
            commit_window: Duration::from_micros(cli.embedded_commit_window_us),
            database_url: cli.database_url,
            mongodb_uri: cli.mongodb_uri,
            redis: redis.map(|url| RedisConfig {
                url,
                max_message_history: cli.max_message_history as usize,
                message_history_ttl: Duration::from_secs(cli.message_history_ttl),
            }),
            rabbitmq: cli.rabbitmq_url.filter(|u| !u.is_empty()),
            rabbitmq_queue: cli.rabbitmq_queue_new_message,
            outbox_max_pending: cli.outbox_max_pending,
            cors,
            max_payload_bytes: cli.max_payload_bytes,
            auth,
            chat: ChatConfig {
                max_message_chars: cli.max_message_length as usize,
                history_on_join: cli.history_on_join as usize,
                max_resume: 1000,
                max_connections_per_user: cli.max_connections_per_user,
                rate_limit_per_sec: cli.rate_limit_per_sec,
                rate_limit_burst: cli.rate_limit_burst,
                typing_timeout: Duration::from_secs(10),
                event_rate_per_sec: cli.event_rate_limit_per_sec,
                event_rate_burst: cli.event_rate_limit_burst,
                max_rooms_per_connection: cli.max_rooms_per_connection as usize,
                auth_timeout: Duration::from_secs(cli.auth_timeout_secs),
            },
            max_outbound_queue: cli.max_outbound_queue as usize,
            ping_interval: Duration::from_millis(cli.ping_interval_ms),
            ping_timeout: Duration::from_millis(cli.ping_timeout_ms),
            shutdown_timeout: Duration::from_secs(cli.shutdown_timeout_secs),
            metrics_token: cli.metrics_token.clone().filter(|t| !t.is_empty()),
            admin_token: cli.admin_token.clone().filter(|t| !t.is_empty()),
        })
    }
}

#[cfg(test)]
mod tests;
