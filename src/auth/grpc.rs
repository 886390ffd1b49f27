//! `AUTH_MODE=grpc`: every token is checked by the Auth Service (`proto/auth.proto`,
//! `AuthService.ValidateToken`) at `AUTH_GRPC_URL`.
//!
//! - Each call has a deadline (`AUTH_GRPC_TIMEOUT_MS`); a failed call is `Unavailable` (the
//!   client gets `unavailable`), never a fallback to trusting the client.
//! - Positive answers are cached for `AUTH_CACHE_TTL_SECS`, but never past the token's own
//!   expiry (the `expires_at` of the answer, or the `exp` of a JWT payload, the earlier one).
//!   The cache is bounded; negative answers are not cached.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};

use super::{AuthError, Authenticated, Authenticator, Credentials};
use crate::domain::{Identity, UserId, Username, now_ms};

/// The code generated from `proto/auth.proto` (client and server).
pub mod proto {
    tonic::include_proto!("auth.v1");
}

use proto::ValidateTokenRequest;
use proto::auth_service_client::AuthServiceClient;

/// Most cached tokens; beyond, expired entries are dropped, then the whole cache.
const MAX_CACHED: usize = 10_000;

#[derive(Debug, Clone)]
pub struct GrpcAuthConfig {
    pub url: String,
    pub timeout: Duration,
    pub cache_ttl: Duration,
}

pub struct GrpcAuth {
    client: AuthServiceClient<Channel>,
    /// Whether the last call failed to reach the Auth Service: its state changes are logged
    /// once each (warn when it goes, info when it is back), not once per call.
    down: std::sync::atomic::AtomicBool,
    cache_ttl: Duration,
    cache: Mutex<HashMap<String, (Authenticated, Instant)>>,
}

impl GrpcAuth {
    /// Connects lazily: start-up does not need the Auth Service to be up.
    pub fn new(cfg: &GrpcAuthConfig) -> Result<Self, String> {
        let endpoint = Endpoint::from_shared(cfg.url.clone())
            .map_err(|e| format!("AUTH_GRPC_URL is not a valid URL: {e}"))?
            .connect_timeout(cfg.timeout)
            .timeout(cfg.timeout);
        Ok(Self {
            client: AuthServiceClient::new(endpoint.connect_lazy()),
            down: std::sync::atomic::AtomicBool::new(false),
            cache_ttl: cfg.cache_ttl,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Records whether a call reached the Auth Service; logs a change of state once.
    fn reached(&self, ok: Result<(), &tonic::Status>) {
        use std::sync::atomic::Ordering;
        let was_down = self.down.swap(ok.is_err(), Ordering::Relaxed);
        match ok {
            Err(status) if !was_down => {
                tracing::warn!(code = %status.code(), "Auth Service unavailable: token checks fail with `unavailable` until it is back");
            }
            Ok(()) if was_down => tracing::info!("Auth Service reachable again"),
            _ => {}
        }
    }

    fn cached(&self, token: &str) -> Option<Authenticated> {
        let mut cache = self.cache.lock();
        match cache.get(token) {
            Some((auth, until)) if *until > Instant::now() => Some(auth.clone()),
            Some(_) => {
                cache.remove(token);
                None
            }
            None => None,
        }
    }

    fn remember(&self, token: &str, auth: &Authenticated) {
        let mut until = Instant::now() + self.cache_ttl;
        if let Some(exp) = auth.expires_at {
            let left = Duration::from_secs(exp.saturating_sub(now_ms() / 1000));
            until = until.min(Instant::now() + left);
        }
        let mut cache = self.cache.lock();
        if cache.len() >= MAX_CACHED {
            let now = Instant::now();
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(token.to_owned(), (auth.clone(), until));
    }
}

/// The `exp` claim of a JWT's payload, read without checking the signature (the Auth Service
/// checked the token; this only bounds how long its answer is reused).
fn jwt_exp(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_u64()
}

#[async_trait]
impl Authenticator for GrpcAuth {
    fn mode(&self) -> &'static str {
        "grpc"
    }

    fn requires_token(&self) -> bool {
        true
    }

    /// Any answer, even "invalid", means the Auth Service is reachable.
    async fn ping(&self) -> Result<(), AuthError> {
        self.client
            .clone()
            .validate_token(ValidateTokenRequest {
                token: String::new(),
            })
            .await
            .map(|_| ())
            .inspect(|()| self.reached(Ok(())))
            .map_err(|status| {
                self.reached(Err(&status));
                AuthError::Unavailable(format!("Auth Service: {}", status.code()))
            })
    }

    async fn authenticate(&self, c: Credentials) -> Result<Authenticated, AuthError> {
        let token = c
            .token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| AuthError::Failed("a token is required".into()))?;
        if let Some(auth) = self.cached(&token) {
            return Ok(auth);
        }
        let answer = self
            .client
            .clone()
            .validate_token(ValidateTokenRequest {
                token: token.clone(),
            })
            .await
            .inspect(|_| self.reached(Ok(())))
            .map_err(|status| {
                self.reached(Err(&status));
                AuthError::Unavailable(format!("Auth Service: {}", status.code()))
            })?
            .into_inner();
        if !answer.valid {
            return Err(AuthError::Failed("invalid token".into()));
        }
        let user_id = UserId::parse(&answer.user_id)
            .map_err(|_| AuthError::Unavailable("Auth Service returned no valid userId".into()))?;
        let name = if answer.username.is_empty() {
            answer.user_id.as_str()
        } else {
            answer.username.as_str()
        };
        let username = Username::parse(name).map_err(|_| {
            AuthError::Unavailable("Auth Service returned an invalid username".into())
        })?;
        let answered_exp = u64::try_from(answer.expires_at).ok().filter(|e| *e > 0);
        let expires_at = match (answered_exp, jwt_exp(&token)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if expires_at.is_some_and(|exp| exp <= now_ms() / 1000) {
            return Err(AuthError::Expired);
        }
        let auth = Authenticated {
            identity: Identity { user_id, username },
            expires_at,
        };
        self.remember(&token, &auth);
        Ok(auth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_exp_from_a_jwt_payload() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sub":"u","exp":1700000000}"#);
        assert_eq!(jwt_exp(&format!("h.{payload}.s")), Some(1_700_000_000));
        assert_eq!(jwt_exp("opaque-token"), None);
        assert_eq!(jwt_exp("a.!!!.c"), None);
    }
}
