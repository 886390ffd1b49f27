//! `GET /metrics`: the instance's Prometheus exposition (`crate::metrics`). With
//! `METRICS_TOKEN` set, the request must carry `Authorization: Bearer <METRICS_TOKEN>` (401
//! `auth_failed` otherwise, compared in constant time); without it the endpoint is open, like
//! `/health`.

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

use super::{ApiError, HttpState};
use crate::chat::ChatError;
use crate::metrics::CONTENT_TYPE;

pub(super) async fn metrics(State(st): State<HttpState>, headers: HeaderMap) -> Response {
    if let Some(token) = &st.metrics_token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        if !presented.is_some_and(|p| same(p.as_bytes(), token.as_bytes())) {
            let refused = ApiError(ChatError::AuthFailed(
                "GET /metrics needs Authorization: Bearer <METRICS_TOKEN>".into(),
            ));
            let mut response = refused.into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
    }
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        st.chat.metrics().render(),
    )
        .into_response()
}

/// Equality whose time does not depend on where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
