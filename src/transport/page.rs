//! The client page at `GET /` (a browser request without `Upgrade`): a dependency-free chat
//! client, with the Socket.IO browser client served from this binary (no CDN).

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;

const PAGE: &str = include_str!("page/index.html");

pub fn router() -> Router {
    Router::new().route("/", get(index))
}

async fn index() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE))
}
