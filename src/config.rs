//! One typed configuration tree, read from the environment (the Node service's variable names
//! plus ours), a `.env` file in the working directory, and matching command-line flags (flags
//! win). `chat-service --help` lists every setting with its variable and default; secrets are
//! never printed. A bad value stops start-up with a message naming the variable.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::auth::jwt::JwtConfig;
use crate::chat::ChatConfig;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "chat-service",
    version,
    about = "Real-time chat server (Socket.IO, WebSocket, REST)"
)]
pub struct Cli {
    /// HTTP/WebSocket port (0 picks a free port)
    #[arg(long, env = "PORT", default_value_t = 5004)]
    pub port: u16,
    /// Address to listen on
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,
    /// `production` or `development` (kept for compatibility; logs JSON in production)
    #[arg(long, env = "NODE_ENV", default_value = "development")]
    pub node_env: String,

    /// Storage backend: embedded (a file under DATA_DIR), mongodb or postgres
    #[arg(long, env = "STORAGE")]
    pub storage: Option<String>,
    /// Folder of the embedded store
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
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
    /// Auth Service address (AUTH_MODE=grpc)
    #[arg(long, env = "AUTH_GRPC_URL")]
    pub auth_grpc_url: Option<String>,

    /// Seconds to drain connections and writes on SIGINT/SIGTERM
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 10)]
    pub shutdown_timeout_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageKind {
    Embedded,
    Mongo,
    Postgres,
}

#[derive(Debug, Clone)]
pub enum AuthConfig {
    None,
    Jwt(JwtConfig),
    Grpc { url: String },
}

#[derive(Debug, Clone)]
pub enum CorsConfig {
    Any,
    List(Vec<String>),
}

/// Multi-instance mode (SPEC 7): the shared Redis and its history cache.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]`, from `REDIS_URL` or `REDIS_HOST/PORT/PASSWORD`.
    pub url: String,
    /// Messages kept per room in `chat:history:{roomId}` (`MAX_MESSAGE_HISTORY`).
    pub max_message_history: usize,
    /// TTL of `chat:history:{roomId}` (`MESSAGE_HISTORY_TTL`).
    pub message_history_ttl: Duration,
}

/// The validated configuration the composition root builds from.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub production: bool,
    pub storage: StorageKind,
    pub data_dir: PathBuf,
    pub redis: Option<RedisConfig>,
    pub rabbitmq: Option<String>,
    pub cors: CorsConfig,
    pub max_payload_bytes: u64,
    pub auth: AuthConfig,
    pub chat: ChatConfig,
    pub shutdown_timeout: Duration,
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
        let redis = match (&cli.redis_url, &cli.redis_host) {
            (Some(url), _) => Some(url.clone()),
            (None, Some(host)) if !host.is_empty() => Some(match &cli.redis_password {
                Some(pw) if !pw.is_empty() => format!("redis://:{pw}@{host}:{}", cli.redis_port),
                _ => format!("redis://{host}:{}", cli.redis_port),
            }),
            _ => None,
        };
        if let Some(url) = &redis
            && !url.starts_with("redis://")
        {
            return Err(bad(
                if cli.redis_url.is_some() {
                    "REDIS_URL"
                } else {
                    "REDIS_HOST"
                },
                "must be a redis:// URL (or a host name)",
            ));
        }
        let auth = match cli.auth_mode.as_deref().map(str::trim) {
            None | Some("") | Some("none") => AuthConfig::None,
            Some("jwt") => AuthConfig::Jwt(JwtConfig {
                secret: cli.jwt_secret.clone().filter(|s| !s.is_empty()),
                public_key_pem: cli.jwt_public_key.clone().filter(|s| !s.is_empty()),
                issuer: cli.jwt_issuer.clone(),
                audience: cli.jwt_audience.clone(),
            }),
            Some("grpc") => AuthConfig::Grpc {
                url: cli
                    .auth_grpc_url
                    .clone()
                    .ok_or_else(|| bad("AUTH_GRPC_URL", "required with AUTH_MODE=grpc"))?,
            },
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
                for o in &origins {
                    if !(o.starts_with("http://") || o.starts_with("https://"))
                        || axum::http::HeaderValue::from_str(o).is_err()
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
        if cli.history_on_join > 1000 {
            return Err(bad("HISTORY_ON_JOIN", "must be at most 1000"));
        }
        if cli.max_message_history == 0 {
            return Err(bad("MAX_MESSAGE_HISTORY", "must be at least 1"));
        }
        Ok(Self {
            listen: SocketAddr::new(cli.host, cli.port),
            production: cli.node_env == "production",
            storage,
            data_dir: cli.data_dir,
            redis: redis.map(|url| RedisConfig {
                url,
                max_message_history: cli.max_message_history as usize,
                message_history_ttl: Duration::from_secs(cli.message_history_ttl),
            }),
            rabbitmq: cli.rabbitmq_url.filter(|u| !u.is_empty()),
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
            },
            shutdown_timeout: Duration::from_secs(cli.shutdown_timeout_secs),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        Config::from_args(std::iter::once("chat-service").chain(args.iter().copied()))
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = parse(&["--port", "abc"]).unwrap_err().to_string();
        assert!(e.contains("PORT"), "{e}");
        let e = parse(&["--storage", "oracle"]).unwrap_err().to_string();
        assert!(e.contains("STORAGE"), "{e}");
        let e = parse(&["--auth-mode", "magic"]).unwrap_err().to_string();
        assert!(e.contains("AUTH_MODE"), "{e}");
        let e = parse(&["--cors-origin", "not a url"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("CORS_ORIGIN"), "{e}");
    }

    #[test]
    fn mongodb_uri_alone_selects_mongo() {
        let c = parse(&["--mongodb-uri", "mongodb://x/db"]).unwrap();
        assert_eq!(c.storage, StorageKind::Mongo);
        assert_eq!(parse(&[]).unwrap().storage, StorageKind::Embedded);
    }

    #[test]
    fn redis_url_from_host_port_password() {
        let c = parse(&[
            "--redis-host",
            "r",
            "--redis-port",
            "7000",
            "--redis-password",
            "pw",
        ])
        .unwrap();
        let redis = c.redis.unwrap();
        assert_eq!(redis.url, "redis://:pw@r:7000");
        assert_eq!(redis.max_message_history, 1000);
        assert_eq!(redis.message_history_ttl, Duration::from_secs(604_800));
        assert!(parse(&["--redis-url", "http://x"]).is_err());
    }
}
