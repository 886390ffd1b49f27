//! Plain WebSocket with JSON frames on `/` and `/ws` (SPEC 1): what `wscat -c ws://host:5004`
//! speaks. Client frames are `{"event": NAME, "data": PAYLOAD, "id"?: ID}`; server frames are
//! `{"event": NAME, "data": PAYLOAD}`, and a frame that carried an `id` is answered by
//! `{"event": "ack", "id": ID, "data": {"success": ...}}`.
//!
//! One task per connection reads frames and handles them one at a time, in arrival order (the
//! same `dispatch` as Socket.IO); a writer task drains a bounded queue, and a connection whose
//! queue is full is a slow consumer and is closed. The server pings every `ping_interval`; a
//! connection silent for `ping_interval + ping_timeout` is closed. A plain `GET /` without
//! `Upgrade` gets the client page.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::chat::conn::{ClientSink, SinkError};
use crate::chat::wire::{self, ServerEvent};
use crate::chat::{ChatError, ChatService, Deadline, Session};
use crate::transport::{ack_body, dispatch, limited_upgrade, sink_error, sleep_until_deadline};

#[derive(Clone)]
pub struct WsConfig {
    pub max_payload_bytes: usize,
    /// Outbound frames queued per connection before it counts as a slow consumer.
    pub max_queued_frames: usize,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// Allowed `Origin`s; `None` allows any (CORS_ORIGIN=*).
    pub allowed_origins: Option<Vec<String>>,
    pub workers: TaskTracker,
    pub shutdown: CancellationToken,
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
    let max = state.cfg.max_payload_bytes;
    limited_upgrade(ws, max).on_upgrade(move |socket| {
        let workers = state.cfg.workers.clone();
        workers.track_future(run(state, socket))
    })
}

enum Out {
    Event(Arc<ServerEvent>),
    Text(String),
    Ping,
    Close,
}

struct WsSink {
    tx: mpsc::Sender<Out>,
    /// Cancelled to end the connection even when its queue is full (slow consumer).
    kill: CancellationToken,
}

impl ClientSink for WsSink {
    fn send(&self, event: &Arc<ServerEvent>) -> Result<(), SinkError> {
        self.tx
            .try_send(Out::Event(event.clone()))
            .map_err(sink_error)
    }

    fn close(&self) {
        self.kill.cancel();
    }
}

async fn run(state: WsState, socket: WebSocket) {
    let (mut write, mut read) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Out>(state.cfg.max_queued_frames);
    let writer_done = CancellationToken::new();
    let writer = tokio::spawn({
        let writer_done = writer_done.clone();
        async move {
            while let Some(out) = rx.recv().await {
                let frame = match out {
                    Out::Event(ev) => Message::Text(ev.ws_frame().clone()),
                    Out::Text(text) => Message::Text(text.into()),
                    Out::Ping => Message::Ping(Default::default()),
                    Out::Close => {
                        let _ = write
                            .send(Message::Close(Some(CloseFrame {
                                code: 1000,
                                reason: Utf8Bytes::from_static("closed by server"),
                            })))
                            .await;
                        break;
                    }
                };
                if write.send(frame).await.is_err() {
                    break;
                }
            }
            writer_done.cancel();
        }
    });
    let kill = CancellationToken::new();
    let sink = Arc::new(WsSink {
        tx: tx.clone(),
        kill: kill.clone(),
    });
    let mut session = Session::new(sink.clone());
    let chat = &state.chat;
    let mut ping = tokio::time::interval(state.cfg.ping_interval);
    ping.reset();
    let silence_limit = state.cfg.ping_interval + state.cfg.ping_timeout;
    let mut last_heard = tokio::time::Instant::now();
    loop {
        let deadline = chat.deadline(&session);
        let frame = tokio::select! {
            biased;
            () = state.cfg.shutdown.cancelled() => break,
            () = writer_done.cancelled() => break,
            () = kill.cancelled() => break,
            () = sleep_until_deadline(deadline) => {
                match chat.deadline_passed(&mut session) {
                    Some(Deadline::Notify(e)) => reply_error(&tx, e),
                    Some(Deadline::Close(e)) => {
                        reply_error(&tx, e);
                        break;
                    }
                    None => {}
                }
                continue;
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= silence_limit {
                    tracing::debug!(conn = %session.conn(), "raw websocket idle, closing");
                    break;
                }
                let _ = tx.try_send(Out::Ping);
                continue;
            }
            frame = read.next() => frame,
        };
        last_heard = tokio::time::Instant::now();
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(_))) => {
                reply_error(
                    &tx,
                    ChatError::InvalidPayload("frames must be JSON text".into()),
                );
                continue;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | None => break,
            Some(Err(e)) => {
                // Oversized frames end here too (the protocol layer refuses them).
                tracing::debug!(conn = %session.conn(), error = %e, "raw websocket read error");
                break;
            }
        };
        let (event, data, id) = match parse_frame(&text) {
            Ok(parts) => parts,
            Err(e) => {
                reply_error(&tx, e);
                continue;
            }
        };
        // Boxed: an idle connection task keeps only its loop state (see socketio/mod.rs).
        let result = Box::pin(dispatch(chat, &mut session, &event, Ok(data))).await;
        if let Err(e) = &result {
            let _ = tx.try_send(Out::Event(Arc::new(ServerEvent::from_value(
                wire::ERROR,
                e.body(),
            ))));
        }
        if let Some(id) = id {
            let _ = tx.try_send(Out::Text(ack_frame(&id, &ack_body(&result))));
        }
        if let Err(e) = &result
            && e.closes_connection()
        {
            break;
        }
    }
    Box::pin(chat.disconnect(&mut session)).await;
    drop(session);
    drop(sink);
    // A close frame when the queue has room; a writer stuck on a client that stopped reading
    // is aborted, which drops the socket.
    let queued = tx.try_send(Out::Close).is_ok();
    drop(tx);
    let mut writer = writer;
    if !queued
        || tokio::time::timeout(Duration::from_secs(5), &mut writer)
            .await
            .is_err()
    {
        writer.abort();
    }
}

/// An `error` event without an ack (an unreadable frame has no id to ack; a deadline none).
fn reply_error(tx: &mpsc::Sender<Out>, e: ChatError) {
    let _ = tx.try_send(Out::Event(Arc::new(ServerEvent::from_value(
        wire::ERROR,
        e.body(),
    ))));
}

/// `{"event":"ack","id":ID,"data":{...}}`, keys in that order for human readers (wscat).
fn ack_frame(id: &Value, body: &Value) -> String {
    format!(r#"{{"event":"ack","id":{id},"data":{body}}}"#)
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
}
