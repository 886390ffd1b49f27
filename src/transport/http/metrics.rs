//! `GET /metrics`: the instance's Prometheus exposition (`crate::metrics`). With
//! `METRICS_TOKEN` set, the request must carry `Authorization: Bearer <METRICS_TOKEN>` (401
//! `auth_failed` otherwise, compared in constant time: `bearer.rs`); without it the endpoint
//! is open, like `/health`.

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

use super::{HttpState, bearer};
use crate::metrics::CONTENT_TYPE;

pub(super) async fn metrics(State(st): State<HttpState>, headers: HeaderMap) -> Response {
    if let Some(token) = &st.metrics_token
        && !bearer::presents(&headers, token)
    {
        return bearer::refused("GET /metrics needs Authorization: Bearer <METRICS_TOKEN>");
    }
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        st.chat.metrics().render(),
    )
        .into_response()
}
