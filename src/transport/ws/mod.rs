//! Plain WebSocket with JSON frames on `/` and `/ws` (SPEC 1): what `wscat -c ws://host:5004`
//! speaks. Client frames are `{"event": NAME, "data": PAYLOAD, "id"?: ID}`; server frames are
//! `{"event": NAME, "data": PAYLOAD}`, and a frame that carried an `id` is answered by
//! `{"event": "ack", "id": ID, "data": {"success": ...}}`.
//!
//! A connection is a session of the session engine (`transport::session`: one task, the
//! bounded outbox, events one at a time in arrival order through the same `dispatch` as
//! Socket.IO, slow consumers cut off, graceful shutdown) carried by a WebSocket; this file is
//! the protocol (`RawCodec`) and the routes. The server sends a WebSocket ping every
//! `ping_interval`; a client that sends nothing (no frame, no pong) within `ping_timeout`
//! after it is closed. A plain `GET /` without `Upgrade` gets the client page.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Utf8Bytes, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;

use crate::chat::wire::{ServerEvent, concat};
use crate::chat::{ChatError, ChatService};
use crate::transport::session::{
    self, Codec, Conn, Out, RAW_FRAME, SessionConfig, SessionSink, Step,
};
use crate::transport::websocket::{WsCarrier, limited_upgrade};

#[derive(Clone)]
pub struct WsConfig {
    /// The session engine's settings.
    pub session: Arc<SessionConfig>,
    /// Allowed `Origin`s; `None` allows any (CORS_ORIGIN=*).
    pub allowed_origins: Option<Vec<String>>,
}

#[derive(Clone)]
struct WsState {
    chat: Arc<ChatService>,
    cfg: WsConfig,
}

/// `/` (upgrade, else `fallback`, the client page) and `/ws`.
pub fn router<H, T>(chat: Arc<ChatService>, cfg: WsConfig, fallback: H) -> Router
where
    H: axum::handler::Handler<T, ()> + Clone + Send + Sync + 'static,
    T: 'static,
{
    let state = WsState { chat, cfg };
    let root_state = state.clone();
    Router::new()
        .route("/ws", get(upgrade).with_state(state))
        .route(
            "/",
            get(
                move |ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
                      headers: HeaderMap,
                      req: axum::extract::Request| async move {
                    match ws {
                        Ok(ws) => start(root_state, ws, &headers),
                        Err(_) => fallback.call(req, ()).await,
                    }
                },
            ),
        )
}

async fn upgrade(
    State(state): State<WsState>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match ws {
        Ok(ws) => start(state, ws, &headers),
        Err(e) => e.into_response(),
    }
}

fn start(state: WsState, ws: WebSocketUpgrade, headers: &HeaderMap) -> Response {
    if let (Some(allowed), Some(origin)) = (
        &state.cfg.allowed_origins,
        headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()),
    ) && !allowed.iter().any(|a| a == origin.trim_end_matches('/'))
    {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    let cfg = state.cfg.session.clone();
    limited_upgrade(ws, cfg.max_payload_bytes).on_upgrade(move |socket| {
        let sink = SessionSink::new(cfg.max_queued_frames);
        let workers = cfg.workers.clone();
        workers.track_future(session::run(
            state.chat,
            cfg,
            sink,
            RawCodec,
            WsCarrier(socket),
        ))
    })
}

/// The raw protocol: JSON text frames. Every frame from the client (and every WebSocket ping
/// or pong) answers the heartbeat, which is a WebSocket ping.
pub struct RawCodec;

impl Codec for RawCodec {
    fn on_text(&mut self, text: &str, conn: &mut Conn<Self>) -> Step {
        match parse_frame(text) {
            Ok((event, data, id)) => conn.event(event, Ok(data), id, text.len()),
            // An unreadable frame has no id to ack.
            Err(e) => conn.emit_error(&e),
        }
        Step::Pong
    }

    fn on_binary(&mut self, _data: axum::body::Bytes, conn: &mut Conn<Self>) -> Step {
        conn.emit_error(&ChatError::InvalidPayload(
            "frames must be JSON text".into(),
        ));
        Step::Pong
    }

    fn on_control(&mut self) -> Step {
        Step::Pong
    }

    fn ping() -> Out {
        Out::Ping
    }

    fn event_frame(event: &ServerEvent) -> Utf8Bytes {
        event
            .encoded(RAW_FRAME, |e| {
                Utf8Bytes::from(concat(&[
                    r#"{"event":""#,
                    e.name,
                    r#"","data":"#,
                    e.data.get(),
                    "}",
                ]))
            })
            .clone()
    }

    fn ack_frame(id: &Value, body: &str) -> Utf8Bytes {
        ack_frame(id, body).into()
    }

    /// The close frame says it.
    fn disconnect_frame() -> Option<Utf8Bytes> {
        None
    }

    const CLOSE_REASON: &'static str = "closed by server";
    const WS_TRANSPORT: crate::metrics::Transport = crate::metrics::Transport::Raw;
}

/// `{"event":"ack","id":ID,"data":{...}}`, keys in that order for human readers (wscat).
fn ack_frame(id: &Value, body: &str) -> String {
    concat(&[
        r#"{"event":"ack","id":"#,
        &id.to_string(),
        r#","data":"#,
        body,
        "}",
    ])
}

/// `{"event": NAME, "data": PAYLOAD, "id"?: ID}`; `data` may be omitted (null).
pub fn parse_frame(text: &str) -> Result<(String, Value, Option<Value>), ChatError> {
    let value: Value = serde_json::from_str(text).map_err(|_| {
        ChatError::InvalidPayload("frame must be JSON: {\"event\": ..., \"data\": ...}".into())
    })?;
    let Value::Object(mut frame) = value else {
        return Err(ChatError::InvalidPayload(
            "frame must be a JSON object with \"event\" and \"data\"".into(),
        ));
    };
    let event = match frame.remove("event") {
        Some(Value::String(e)) => e,
        _ => {
            return Err(ChatError::InvalidPayload(
                "frame needs a string \"event\"".into(),
            ));
        }
    };
    let id = frame
        .remove("id")
        .filter(|id| id.is_string() || id.is_number());
    Ok((event, frame.remove("data").unwrap_or(Value::Null), id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn frames() {
        let (e, d, id) =
            parse_frame(r#"{"event":"join_room","data":{"roomId":"r"},"id":7}"#).unwrap();
        assert_eq!(
            (e.as_str(), d, id),
            ("join_room", json!({"roomId": "r"}), Some(json!(7)))
        );
        assert!(parse_frame("not json").is_err());
        assert!(parse_frame("[1,2]").is_err());
        assert!(parse_frame(r#"{"data":{}}"#).is_err());
        assert!(parse_frame(r#"{"event":5}"#).is_err());
    }

    #[test]
    fn event_and_ack_frames_are_json_objects() {
        use crate::chat::wire;
        let ev = ServerEvent::new(wire::NEW_MESSAGE, &json!({"text": "a \"quoted\" line\n"}));
        let frame: Value = serde_json::from_str(&RawCodec::event_frame(&ev)).unwrap();
        assert_eq!(
            frame,
            json!({"event": "new_message", "data": {"text": "a \"quoted\" line\n"}})
        );
        let ack = ack_frame(&json!("id-1"), r#"{"success":true}"#);
        assert_eq!(
            ack,
            r#"{"event":"ack","id":"id-1","data":{"success":true}}"#
        );
        assert_eq!(
            ack_frame(&json!(7), r#"{"success":true}"#),
            r#"{"event":"ack","id":7,"data":{"success":true}}"#
        );
    }
}
