//! The bearer tokens of the operator's endpoints (`METRICS_TOKEN` for `GET /metrics`,
//! `ADMIN_TOKEN` for the operator's page): the check, in constant time, and the 401 answer.

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::chat::ChatError;

/// Whether the request carries `Authorization: Bearer <token>`.
pub(crate) fn presents(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .is_some_and(|(_, presented)| same(presented.trim().as_bytes(), token.as_bytes()))
}

/// 401 `auth_failed` (SPEC 2's error body) with `WWW-Authenticate: Bearer`.
pub(crate) fn refused(message: &str) -> Response {
    let mut response = ApiError(ChatError::AuthFailed(message.into())).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Equality whose time does not depend on where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
