//! The client page at `GET /` (a browser request without `Upgrade`): a dependency-free chat
//! client, with the Socket.IO browser client served from this binary (no CDN).
//!
//! Every asset is embedded at compile time. The page runs no inline script and renders user
//! text only through `textContent`; the Content-Security-Policy below enforces the first half
//! (scripts, styles and connections from this origin only) as a second line of defence.

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const APP_CSS: &str = include_str!("page/app.css");
/// `socket.io-client` 4.8.1 `dist/socket.io.min.js`, vendored unmodified (MIT, header kept).
/// Not under `/socket.io/`, which belongs to the Socket.IO server.
const SOCKET_IO_JS: &str = include_str!("page/socket.io.min.js");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn router() -> Router {
    Router::new()
        .route("/app.js", get(app_js))
        .route("/app.css", get(app_css))
        .route("/socket.io.min.js", get(socket_io_js))
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    let headers: [(HeaderName, HeaderValue); 3] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    (headers, body)
}

/// The page itself; `GET /` is shared with the raw WebSocket, which falls back to this.
pub async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        asset("text/html; charset=utf-8", INDEX_HTML),
    )
}

async fn app_js() -> impl IntoResponse {
    asset("application/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> impl IntoResponse {
    asset("text/css; charset=utf-8", APP_CSS)
}

async fn socket_io_js() -> impl IntoResponse {
    asset("application/javascript; charset=utf-8", SOCKET_IO_JS)
}
