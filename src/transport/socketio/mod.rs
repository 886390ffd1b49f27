//! Socket.IO v4 (Engine.IO v4, protocol v5) on `/socket.io/`, served by our own code:
//! `conn.rs` is a session (one task per connection, whichever transport carries it),
//! `polling.rs` is HTTP long-polling and the upgrade to WebSocket. This file routes the
//! requests: a WebSocket without `sid` opens a session on it, one with a polling session's
//! `sid` upgrades that session, a polling GET without `sid` is a handshake, with `sid` a poll,
//! a POST with `sid` brings packets. Errors are engine.io's: HTTP 400 with
//! `{"code","message"}` (0 transport unknown, 1 session ID unknown, 2 bad handshake method,
//! 3 bad request, 5 unsupported protocol version).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Credentials;
use crate::chat::ChatService;

mod conn;
mod polling;

/// Events a connection may have waiting; past this a client is flooding and further events
/// are refused with `rate_limited` until the queue drains.
const MAX_PENDING_EVENTS: usize = 256;

pub struct SocketIoConfig {
    pub max_payload_bytes: usize,
    /// Outbound frames queued per connection before it counts as a slow consumer.
    pub max_queued_frames: usize,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// How long a client may take to send its namespace CONNECT.
    pub connect_timeout: Duration,
    /// Tracks the connection tasks, so shutdown can wait for their in-flight events.
    pub workers: TaskTracker,
    /// Cancelled at shutdown: each connection finishes the events it already received
    /// (acking them while the connection is still open), leaves its rooms and closes.
    pub shutdown: CancellationToken,
}

#[derive(Clone)]
pub struct SocketIoState {
    chat: Arc<ChatService>,
    cfg: Arc<SocketIoConfig>,
    sessions: polling::Sessions,
}

/// The `/socket.io/` routes.
pub fn router(chat: Arc<ChatService>, cfg: SocketIoConfig) -> Router {
    let state = SocketIoState {
        chat,
        cfg: Arc::new(cfg),
        sessions: Default::default(),
    };
    Router::new()
        .route("/socket.io/", any(serve))
        .route("/socket.io", any(serve))
        .with_state(state)
}

/// The Engine.IO query parameters that matter here.
#[derive(Default, Debug, PartialEq, Eq)]
struct EngineQuery<'a> {
    eio: Option<&'a str>,
    transport: Option<&'a str>,
    sid: Option<&'a str>,
}

impl<'a> EngineQuery<'a> {
    fn parse(query: Option<&'a str>) -> Self {
        let mut q = Self::default();
        for pair in query.unwrap_or("").split('&') {
            match pair.split_once('=').unwrap_or((pair, "")) {
                ("EIO", v) => q.eio = Some(v),
                ("transport", v) => q.transport = Some(v),
                // Our ids are URL-safe: nothing to decode.
                ("sid", v) => q.sid = Some(v),
                _ => {}
            }
        }
        q
    }
}

/// engine.io's error answer.
fn engine_error(code: u8, message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({"code": code, "message": message}).to_string(),
    )
        .into_response()
}

async fn serve(State(state): State<SocketIoState>, req: Request) -> Response {
    let uri = req.uri().clone();
    let q = EngineQuery::parse(uri.query());
    if q.eio != Some("4") {
        return engine_error(5, "Unsupported protocol version");
    }
    let session = |sid: &str| state.sessions.lock().get(sid).cloned();
    match q.transport {
        Some("websocket") => {
            let (mut parts, _body) = req.into_parts();
            if parts.method != Method::GET {
                return engine_error(3, "Bad request");
            }
            let ws = match axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, &())
                .await
            {
                Ok(ws) => ws,
                Err(_) => return engine_error(3, "Bad request"),
            };
            match q.sid {
                None => conn::accept_websocket(state, ws),
                Some(sid) => match session(sid) {
                    Some(s) => polling::upgrade(&state, s, ws),
                    None => engine_error(1, "Session ID unknown"),
                },
            }
        }
        Some("polling") => {
            let Some(sid) = q.sid else {
                return match *req.method() {
                    Method::GET => polling::handshake(&state),
                    _ => engine_error(2, "Bad handshake method"),
                };
            };
            let Some(s) = session(sid) else {
                return engine_error(1, "Session ID unknown");
            };
            match *req.method() {
                Method::GET => polling::poll(s).await,
                Method::POST => {
                    // The body limit (`DefaultBodyLimit`, MAX_PAYLOAD_BYTES) answers 413.
                    let body = Bytes::from_request(req, &())
                        .await
                        .map_err(IntoResponse::into_response);
                    polling::post(s, body).await
                }
                _ => engine_error(3, "Bad request"),
            }
        }
        _ => engine_error(0, "Transport unknown"),
    }
}

/// The handshake `auth` object authenticates when it carries a `token` (or, with
/// `AUTH_MODE=none`, a `userId`).
fn handshake_credentials(auth: &Value) -> Option<Credentials> {
    let text = |k: &str| match auth.get(k)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let credentials = Credentials {
        token: text("token"),
        user_id: text("userId"),
        username: text("username"),
    };
    (credentials.token.is_some() || credentials.user_id.is_some()).then_some(credentials)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_query() {
        assert_eq!(
            EngineQuery::parse(Some("EIO=4&transport=polling&t=x&sid=abc")),
            EngineQuery {
                eio: Some("4"),
                transport: Some("polling"),
                sid: Some("abc"),
            }
        );
        assert_eq!(EngineQuery::parse(None), EngineQuery::default());
        assert_eq!(EngineQuery::parse(Some("EIO")).eio, Some(""));
    }
}
