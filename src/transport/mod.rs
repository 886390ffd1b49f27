//! The wire: Socket.IO (`socketio/`), plain WebSocket JSON frames (`ws/`) and REST
//! (`http/`). Each turns frames into the commands of `chat` and results back into frames;
//! no rule of the chat lives here. `dispatch` is the one place where a client event of either
//! socket protocol becomes a `ChatService` call and its ack.
//!
//! Map of this folder:
//! - `session/`: the session engine, one task per socket connection whatever its protocol
//!   (outbox, ordering, heartbeats, backpressure, slow consumers, shutdown);
//! - `websocket.rs`: the WebSocket carrier of a session (both protocols);
//! - `socketio/`: the Engine.IO/Socket.IO codec, the long-polling carrier and the routes;
//! - `ws/`: the raw JSON-frame codec and its routes (`/`, `/ws`);
//! - `dto.rs`: socket event payloads -> chat commands; `http/`: REST, errors, OpenAPI;
//!   `page.rs`: the client page; `admin/`: the operator's page (`/admin`, with `ADMIN_TOKEN`).

pub mod admin;
pub mod dto;
pub mod http;
pub mod page;
pub mod session;
pub mod socketio;
pub mod websocket;
pub mod ws;

use serde_json::{Value, json};

use crate::chat::{ChatError, ChatService, Session, wire};
use dto::Inbound;

/// Runs one client event and returns the fields of its success ack; counts it by event and
/// outcome (`chat_events_total`).
pub async fn dispatch(
    chat: &ChatService,
    session: &mut Session,
    event: &str,
    data: Result<Value, String>,
) -> Result<Value, ChatError> {
    let result = run_event(chat, session, event, data).await;
    if let Err(e) = &result {
        // Every refusal at debug, with the connection's ids (the event name only when it is
        // one of ours: a client may send any name).
        let known = wire::CLIENT_EVENTS.iter().find(|e| **e == event);
        tracing::debug!(
            conn = %session.socket_id(),
            user = session.identity().map_or("", |i| i.user_id.as_str()),
            event = known.copied().unwrap_or("other"),
            code = e.code(),
            "event refused"
        );
    }
    chat.metrics()
        .event(event, result.as_ref().err().map(ChatError::code));
    result
}

async fn run_event(
    chat: &ChatService,
    session: &mut Session,
    event: &str,
    data: Result<Value, String>,
) -> Result<Value, ChatError> {
    chat.admit_event(session)?;
    if session.identity().is_none()
        && event != wire::AUTHENTICATE
        && wire::CLIENT_EVENTS.contains(&event)
    {
        return Err(ChatError::NotAuthenticated);
    }
    let data = data.map_err(|e| ChatError::InvalidPayload(format!("{event}: {e}")))?;
    match dto::parse(event, data, chat.config())? {
        Inbound::Authenticate(credentials) => {
            let me = chat.authenticate(session, credentials).await?;
            Ok(json!({"userId": me.user_id, "username": me.username}))
        }
        Inbound::Join(cmd) => {
            let room = chat.join(session, cmd).await?;
            Ok(json!({"roomId": room}))
        }
        Inbound::Leave(room) => {
            let room = chat.leave(session, room).await?;
            Ok(json!({"roomId": room}))
        }
        Inbound::Send(cmd) => {
            let sent = chat.send(session, cmd).await?;
            Ok(json!({"messageId": sent.message_id, "timestamp": sent.timestamp}))
        }
        Inbound::Typing(cmd) => {
            chat.typing(session, cmd).await?;
            Ok(json!({}))
        }
        Inbound::Change(cmd) => {
            let ack = chat.change_message(session, cmd).await?;
            Ok(serde_json::to_value(ack).unwrap_or_default())
        }
        Inbound::MarkRead(room, message) => {
            let marker = chat.mark_read(session, room, message).await?;
            Ok(json!({"messageId": marker.message_id, "readAt": marker.read_at}))
        }
    }
}

/// The ack of a handled event: `{"success": true, ...fields}` or
/// `{"success": false, "error": {"code", "message"}}`.
pub fn ack_body(result: &Result<Value, ChatError>) -> Value {
    match result {
        Ok(fields) => {
            let mut body = json!({"success": true});
            if let (Some(b), Some(f)) = (body.as_object_mut(), fields.as_object()) {
                b.extend(f.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            body
        }
        Err(e) => json!({"success": false, "error": {"code": e.code(), "message": e.to_string()}}),
    }
}

/// Sleeps until the session's next deadline (auth timeout, token expiry); never resolves when
/// there is none.
pub async fn sleep_until_deadline(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
