//! Who is calling: turns what a client presents (claimed ids, a token) into an `Identity`.
//!
//! # Contract
//! - With a token-checking mode, the identity comes from the token only, never from the claimed
//!   fields; a missing or bad token is `AuthError::Failed`, an expired one `Expired`.
//! - `Unavailable` when the checker (e.g. a remote Auth Service) cannot be reached: callers
//!   refuse the request, they never fall back to trusting the client.
//! - `expires_at` (epoch seconds) tells the caller when the identity stops being valid.

pub mod grpc;
pub mod jwt;
pub mod none;

use async_trait::async_trait;

use crate::domain::Identity;

/// What a client presented.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub token: Option<String>,
    pub user_id: Option<String>,
    pub username: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Authenticated {
    pub identity: Identity,
    /// Epoch seconds after which the identity is no longer valid.
    pub expires_at: Option<u64>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Failed(String),
    #[error("token expired")]
    Expired,
    #[error("authentication service unavailable: {0}")]
    Unavailable(String),
    /// The claimed fields (mode `none`) break a rule of the domain.
    #[error("{0}")]
    Invalid(String),
}

#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// `none`, `jwt`, `grpc`: shown by `/ready` and the start-up log.
    fn mode(&self) -> &'static str;
    /// Whether a token is needed (REST answers 401 without one).
    fn requires_token(&self) -> bool;
    async fn authenticate(&self, credentials: Credentials) -> Result<Authenticated, AuthError>;
    /// Whether a remote checker is reachable (for `/ready`); local modes are always up.
    async fn ping(&self) -> Result<(), AuthError> {
        Ok(())
    }
}
