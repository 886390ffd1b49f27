//! `AUTH_MODE=none`: trusts the claimed `{userId, username}`, as the Node service did.

use async_trait::async_trait;

use super::{AuthError, Authenticated, Authenticator, Credentials};
use crate::domain::{Identity, UserId, Username};

pub struct NoAuth;

#[async_trait]
impl Authenticator for NoAuth {
    fn mode(&self) -> &'static str {
        "none"
    }

    fn requires_token(&self) -> bool {
        false
    }

    async fn authenticate(&self, c: Credentials) -> Result<Authenticated, AuthError> {
        let user_id = c
            .user_id
            .as_deref()
            .ok_or_else(|| AuthError::Invalid("userId is required".into()))?;
        let user_id = UserId::parse(user_id).map_err(|e| AuthError::Invalid(e.0))?;
        let username = match c.username.as_deref() {
            Some(name) => Username::parse(name).map_err(|e| AuthError::Invalid(e.0))?,
            None => Username::parse(user_id.as_str()).map_err(|e| AuthError::Invalid(e.0))?,
        };
        Ok(Authenticated {
            identity: Identity { user_id, username },
            expires_at: None,
        })
    }
}
