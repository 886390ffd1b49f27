//! `ChatError`: why a use case refused, with the stable `code` shared by REST and both socket
//! transports, and the conversions from the ports' errors (logged here, where they become a
//! client-facing refusal).

use crate::auth::AuthError;
use crate::presence::PresenceError;
use crate::store::StoreError;

/// Why a use case refused. Each variant has a stable `code` shared by REST and both sockets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    #[error("Not authenticated")]
    NotAuthenticated,
    #[error("{0}")]
    AuthFailed(String),
    #[error("Token expired, authenticate again")]
    TokenExpired,
    #[error("{0}")]
    InvalidPayload(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("Too many messages, slow down")]
    RateLimited,
    #[error("Too many connections for this user")]
    TooManyConnections,
    #[error("Payload too large")]
    PayloadTooLarge,
    #[error("{0}")]
    Unavailable(String),
    /// The cause is logged where it happened; clients see a generic text.
    #[error("Internal error")]
    Internal,
}

impl ChatError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotAuthenticated => "not_authenticated",
            Self::AuthFailed(_) => "auth_failed",
            Self::TokenExpired => "token_expired",
            Self::InvalidPayload(_) => "invalid_payload",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::RateLimited => "rate_limited",
            Self::TooManyConnections => "too_many_connections",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Unavailable(_) => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// The `error` event payload / REST error body: `{message, code}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"message": self.to_string(), "code": self.code()})
    }

    /// Whether the transport closes the connection after reporting this error.
    pub fn closes_connection(&self) -> bool {
        matches!(self, Self::TooManyConnections)
    }
}

impl From<crate::domain::ValidationError> for ChatError {
    fn from(e: crate::domain::ValidationError) -> Self {
        Self::InvalidPayload(e.0)
    }
}

impl From<StoreError> for ChatError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(cause) => {
                // Per request at debug: the stores' writers log the condition once when it
                // starts and once when it clears (a full disk refuses every send), and
                // `/ready` reports it.
                tracing::debug!(%cause, "storage unavailable");
                Self::Unavailable("Storage is unavailable, try again".into())
            }
            StoreError::UnknownCursor => {
                Self::InvalidPayload("before names no message of this room".into())
            }
            StoreError::RoomExists => Self::InvalidPayload("roomId already exists".into()),
            StoreError::NotFound => Self::NotFound("No such message in this room".into()),
            StoreError::NotAuthor => {
                Self::Forbidden("Only the author may edit or delete a message".into())
            }
            e @ StoreError::TooManyReactions => Self::InvalidPayload(e.to_string()),
            // The store logged the warning (once per refused batch).
            StoreError::OutboxFull(_) => {
                Self::Unavailable("Notification outbox full, try again later".into())
            }
            StoreError::Internal(cause) => {
                tracing::error!(%cause, "storage error");
                Self::Internal
            }
        }
    }
}

impl From<PresenceError> for ChatError {
    fn from(e: PresenceError) -> Self {
        tracing::warn!(cause = %e, "presence unavailable");
        Self::Unavailable("Presence is unavailable, try again".into())
    }
}

/// An authenticator's refusal as the client sees it.
pub(super) fn auth_error(e: AuthError) -> ChatError {
    match e {
        AuthError::Failed(m) => ChatError::AuthFailed(format!("Authentication failed: {m}")),
        AuthError::Expired => ChatError::TokenExpired,
        AuthError::Unavailable(m) => {
            tracing::warn!(cause = %m, "authentication service unavailable");
            ChatError::Unavailable("Authentication service unavailable".into())
        }
        AuthError::Invalid(m) => ChatError::InvalidPayload(m),
    }
}

#[cfg(test)]
mod tests {
    use super::ChatError;

    #[test]
    fn every_code_is_an_outcome_label_of_the_metrics() {
        let all = [
            ChatError::NotAuthenticated,
            ChatError::AuthFailed(String::new()),
            ChatError::TokenExpired,
            ChatError::InvalidPayload(String::new()),
            ChatError::Forbidden(String::new()),
            ChatError::NotFound(String::new()),
            ChatError::RateLimited,
            ChatError::TooManyConnections,
            ChatError::PayloadTooLarge,
            ChatError::Unavailable(String::new()),
            ChatError::Internal,
        ];
        for e in all {
            assert!(
                crate::metrics::OUTCOMES.contains(&e.code()),
                "{} is not in metrics::OUTCOMES",
                e.code()
            );
        }
    }
}
