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
    // Off the async workers: the process figures read /proc, and counting the open files
    // lists /proc/self/fd (milliseconds with 10,000 connections), which would stall every
    // connection served by the worker that runs the scrape.
    let metrics = st.chat.metrics().clone();
    match tokio::task::spawn_blocking(move || metrics.render()).await {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "GET /metrics: rendering failed");
            axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
