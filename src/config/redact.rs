//! What the configuration shows of itself: URLs with their passwords masked, and `Debug`
//! output that names every secret setting without its value (for `--help` and logs).

use std::fmt;

use super::{AuthConfig, Cli, Config, RedisConfig};

/// `scheme://user:password@host` -> `scheme://user:***@host`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".into();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

fn redacted(v: &Option<String>) -> Option<&'static str> {
    v.as_ref().map(|_| "***")
}

impl fmt::Debug for Cli {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cli")
            .field("port", &self.port)
            .field("host", &self.host)
            .field("storage", &self.storage)
            .field("data_dir", &self.data_dir)
            .field("mongodb_uri", &self.mongodb_uri.as_deref().map(redact_url))
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url),
            )
            .field("redis_host", &self.redis_host)
            .field("redis_port", &self.redis_port)
            .field("redis_password", &redacted(&self.redis_password))
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("redis_cluster_nodes", &self.redis_cluster_nodes)
            .field(
                "rabbitmq_url",
                &self.rabbitmq_url.as_deref().map(redact_url),
            )
            .field("auth_mode", &self.auth_mode)
            .field("jwt_secret", &redacted(&self.jwt_secret))
            .field(
                "jwt_public_key",
                &self.jwt_public_key.as_ref().map(|_| "<pem>"),
            )
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("auth_grpc_url", &self.auth_grpc_url)
            .field("metrics_token", &redacted(&self.metrics_token))
            .field("admin_token", &redacted(&self.admin_token))
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Jwt(jwt) => f.debug_tuple("Jwt").field(jwt).finish(),
            Self::Grpc(grpc) => f.debug_tuple("Grpc").field(grpc).finish(),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("log_format", &self.log_format)
            .field("storage", &self.storage)
            .field("data_dir", &self.data_dir)
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url),
            )
            .field("mongodb_uri", &self.mongodb_uri.as_deref().map(redact_url))
            .field("redis", &self.redis)
            .field("rabbitmq", &self.rabbitmq.as_deref().map(redact_url))
            .field("cors", &self.cors)
            .field("auth", &self.auth)
            .field("chat", &self.chat)
            .field("metrics_token", &redacted(&self.metrics_token))
            .field("admin_token", &redacted(&self.admin_token))
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("max_message_history", &self.max_message_history)
            .field("message_history_ttl", &self.message_history_ttl)
            .finish()
    }
}
