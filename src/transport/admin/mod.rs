//! The operator's page (issue 18.3). Its routes exist only when `ADMIN_TOKEN` is set; without
//! it `/admin` is a path like any unknown one (404): the page is off.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /admin` | the page: asks for the token once and keeps it in the tab's `sessionStorage` |
//! | `GET /admin/admin.js`, `GET /admin/admin.css` | its script and style, embedded in the binary (no CDN) |
//! | `GET /admin/api/stats` | with `Authorization: Bearer <ADMIN_TOKEN>`: `chat::operator::FleetView` as JSON (this instance and every other one sharing its Redis); 401 `auth_failed` otherwise |
//!
//! The page and its assets hold no figures, so they are served without the token; every figure
//! comes from the API, which takes the token only in a header (a token in the URL would end up
//! in access logs and the browser's history). The page is polled every two seconds, renders
//! everything through `textContent` and SVG attributes, and runs under the Content-Security-
//! Policy below (scripts, styles and requests from this origin only).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::http::bearer;
use crate::chat::operator::Operator;

const INDEX_HTML: &str = include_str!("index.html");
const ADMIN_JS: &str = include_str!("admin.js");
const ADMIN_CSS: &str = include_str!("admin.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

#[derive(Clone)]
struct AdminState {
    operator: Arc<Operator>,
    token: Arc<str>,
}

/// The page's routes; none without a token.
pub fn router(operator: Arc<Operator>, token: Option<&str>) -> Router {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Router::new();
    };
    Router::new()
        .route("/admin", get(index))
        .route("/admin/", get(index))
        .route("/admin/admin.js", get(admin_js))
        .route("/admin/admin.css", get(admin_css))
        .route("/admin/api/stats", get(stats))
        .with_state(AdminState {
            operator,
            token: Arc::from(token),
        })
}

async fn stats(State(st): State<AdminState>, headers: HeaderMap) -> Response {
    if !bearer::presents(&headers, &st.token) {
        return bearer::refused("the operator's page needs Authorization: Bearer <ADMIN_TOKEN>");
    }
    let view = st.operator.view().await;
    ([(header::CACHE_CONTROL, "no-store")], Json(view)).into_response()
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

async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        asset("text/html; charset=utf-8", INDEX_HTML),
    )
}

async fn admin_js() -> impl IntoResponse {
    asset("application/javascript; charset=utf-8", ADMIN_JS)
}

async fn admin_css() -> impl IntoResponse {
    asset("text/css; charset=utf-8", ADMIN_CSS)
}
