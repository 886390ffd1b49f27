//! `AUTH_MODE=jwt`: HS256 with `JWT_SECRET`, or RS256/ES256 with the PEM public key in
//! `JWT_PUBLIC_KEY`. `exp` is required and enforced (no leeway); `iss`/`aud` when configured.
//! The user id is `sub` (or `userId`), the name `username` (or `name`, else the user id).

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;

use super::{AuthError, Authenticated, Authenticator, Credentials};
use crate::domain::{Identity, UserId, Username};

#[derive(Clone, Default)]
pub struct JwtConfig {
    pub secret: Option<String>,
    pub public_key_pem: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

pub struct JwtAuth {
    key: DecodingKey,
    validation: Validation,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    #[serde(rename = "userId")]
    user_id: Option<String>,
    username: Option<String>,
    name: Option<String>,
    exp: Option<u64>,
}

impl JwtAuth {
    pub fn new(cfg: &JwtConfig) -> Result<Self, String> {
        let (key, algorithms) = match (&cfg.secret, &cfg.public_key_pem) {
            (Some(secret), None) => {
                if secret.is_empty() {
                    return Err("JWT_SECRET must not be empty".into());
                }
                (
                    DecodingKey::from_secret(secret.as_bytes()),
                    vec![Algorithm::HS256],
                )
            }
            (None, Some(pem)) => {
                let pem = pem.replace("\\n", "\n");
                if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
                    (
                        key,
                        vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
                    )
                } else if let Ok(key) = DecodingKey::from_ec_pem(pem.as_bytes()) {
                    (key, vec![Algorithm::ES256, Algorithm::ES384])
                } else {
                    return Err("JWT_PUBLIC_KEY is not an RSA or EC public key in PEM".into());
                }
            }
            (Some(_), Some(_)) => {
                return Err("set only one of JWT_SECRET and JWT_PUBLIC_KEY".into());
            }
            (None, None) => {
                return Err("AUTH_MODE=jwt needs JWT_SECRET or JWT_PUBLIC_KEY".into());
            }
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = 0;
        validation.validate_exp = true;
        // A configured issuer/audience is required, not only checked when present.
        let mut required = vec!["exp"];
        if let Some(iss) = &cfg.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &cfg.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(Self { key, validation })
    }
}

#[async_trait]
impl Authenticator for JwtAuth {
    fn mode(&self) -> &'static str {
        "jwt"
    }

    fn requires_token(&self) -> bool {
        true
    }

    async fn authenticate(&self, c: Credentials) -> Result<Authenticated, AuthError> {
        let token = c
            .token
            .as_deref()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| AuthError::Failed("a token is required".into()))?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Failed("invalid token".into()),
            },
        )?;
        let claims = data.claims;
        let user_id = claims
            .sub
            .or(claims.user_id)
            .ok_or_else(|| AuthError::Failed("token names no user (sub)".into()))?;
        let user_id = UserId::parse(&user_id).map_err(|e| AuthError::Failed(e.0))?;
        let username = claims
            .username
            .or(claims.name)
            .unwrap_or_else(|| user_id.to_string());
        let username = Username::parse(&username).map_err(|e| AuthError::Failed(e.0))?;
        Ok(Authenticated {
            identity: Identity { user_id, username },
            expires_at: claims.exp,
        })
    }
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .field(
                "public_key_pem",
                &self.public_key_pem.as_ref().map(|_| "<pem>"),
            )
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}
