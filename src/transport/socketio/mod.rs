//! Socket.IO v4 (Engine.IO v4, protocol v5) on `/socket.io/`, served by our own code on the
//! session engine (`transport::session`): `codec.rs` is the protocol (Engine.IO framing and
//! Socket.IO packets), `polling.rs` the HTTP long-polling carrier and the upgrade to
//! WebSocket; a session opened directly on a WebSocket runs on `transport::websocket`'s
//! carrier. This file routes the requests: a WebSocket without `sid` opens a session on it, one with a polling session's
//! `sid` upgrades that session, a polling GET without `sid` is a handshake, with `sid` a poll,
//! a POST with `sid` brings packets. Errors are engine.io's: HTTP 400 with
//! `{"code","message"}` (0 transport unknown, 1 session ID unknown, 2 bad handshake method,
//! 3 bad request, 5 unsupported protocol version).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::Value;

use crate::auth::Credentials;
use crate::chat::ChatService;
use crate::transport::session::{self, Codec, Out, SessionConfig, SessionSink};
use crate::transport::websocket::{WsCarrier, limited_upgrade};
pub use codec::Mode;
use codec::SioCodec;
use polling::Entry;

mod codec;
mod polling;
pub mod protocol_test;

pub struct SocketIoConfig {
    /// The session engine's settings (`connect_timeout` bounds the namespace CONNECT).
    pub session: Arc<SessionConfig>,
}

/// The routes of one Engine.IO endpoint; `codec` is the protocol of its sessions (cloned for
/// each one).
#[derive(Clone)]
pub struct SocketIoState<C> {
    chat: Arc<ChatService>,
    cfg: Arc<SocketIoConfig>,
    sessions: polling::Sessions,
    codec: C,
}

/// The `/socket.io/` routes of the chat.
pub fn router(chat: Arc<ChatService>, cfg: SocketIoConfig) -> Router {
    engine_router("/socket.io", chat, Arc::new(cfg), SioCodec::default())
}

/// An Engine.IO endpoint at `path` whose sessions speak `codec`.
fn engine_router<C: Codec + Clone + Sync>(
    path: &str,
    chat: Arc<ChatService>,
    cfg: Arc<SocketIoConfig>,
    codec: C,
) -> Router {
    let state = SocketIoState {
        chat,
        cfg,
        sessions: Default::default(),
        codec,
    };
    Router::new()
        .route(&format!("{path}/"), any(serve::<C>))
        .route(path, any(serve::<C>))
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

async fn serve<C: Codec + Clone + Sync>(
    State(state): State<SocketIoState<C>>,
    req: Request,
) -> Response {
    let uri = req.uri().clone();
    let q = EngineQuery::parse(uri.query());
    if q.eio != Some("4") {
        return engine_error(5, "Unsupported protocol version");
    }
    let entry = |sid: &str| state.sessions.lock().get(sid).cloned();
    match q.transport {
        Some("websocket") => {
            let (mut parts, _body) = req.into_parts();
            if parts.method != Method::GET {
                return engine_error(3, "Bad request");
            }
            let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
                Ok(ws) => ws,
                Err(_) => return engine_error(3, "Bad request"),
            };
            match q.sid {
                None => accept_websocket(state, ws),
                Some(sid) => match entry(sid) {
                    Some(Entry::Polling(s)) => polling::upgrade(&state, sid, s, ws),
                    // Already on its WebSocket: this one is accepted and closed.
                    Some(Entry::Upgraded) => accept_and_close(ws),
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
            let s = match entry(sid) {
                Some(Entry::Polling(s)) => s,
                Some(Entry::Upgraded) => return engine_error(3, "Bad request"),
                None => return engine_error(1, "Session ID unknown"),
            };
            match *req.method() {
                Method::GET => polling::poll::<C>(s).await,
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

/// A WebSocket that has no session to join (its `sid` is already upgraded or upgrading): the
/// handshake completes and the server closes it at once, as engine.io does.
fn accept_and_close(ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(|mut socket| async move {
        let _ = socket.send(Message::Close(None)).await;
    })
}

/// A session opened directly on a WebSocket: the open packet is its first frame.
fn accept_websocket<C: Codec + Clone + Sync>(
    state: SocketIoState<C>,
    ws: WebSocketUpgrade,
) -> Response {
    let cfg = state.cfg.session.clone();
    limited_upgrade(ws, cfg.max_payload_bytes).on_upgrade(move |socket| {
        let sink = SessionSink::new(cfg.max_queued_frames);
        let open = codec::open_packet(&crate::transport::session::random_id(), false, &cfg);
        // The outbox is empty: this cannot be refused.
        let _ = sink.push(Out::Frame(open.into()));
        // `run` is the task's whole future (no wrapper holding the socket beside it): an idle
        // connection is mostly this task.
        let workers = cfg.workers.clone();
        workers.track_future(session::run(
            state.chat,
            cfg,
            sink,
            state.codec,
            WsCarrier(socket),
        ))
    })
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
