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

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::chat::{ChatError, ChatService, Session, wire};
use dto::Inbound;

/// The fields of a success ack: a JSON object's text (`{}` when none).
pub type AckFields = Box<RawValue>;

/// Runs one client event and returns the fields of its success ack; counts it by event and
/// outcome (`chat_events_total`).
pub async fn dispatch(
    chat: &ChatService,
    session: &mut Session,
    event: &str,
    data: Result<Value, String>,
) -> Result<AckFields, ChatError> {
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
) -> Result<AckFields, ChatError> {
    chat.admit_event(session)?;
    if session.identity().is_none()
        && event != wire::AUTHENTICATE
        && wire::CLIENT_EVENTS.contains(&event)
    {
        return Err(ChatError::NotAuthenticated);
    }
    let data = data.map_err(|e| ChatError::InvalidPayload(format!("{event}: {e}")))?;
    Ok(match dto::parse(event, data, chat.config())? {
        Inbound::Authenticate(credentials) => {
            let me = chat.authenticate(session, credentials).await?;
            fields(&json!({"userId": me.user_id, "username": me.username}))
        }
        Inbound::Join(cmd) => {
            let room = chat.join(session, cmd).await?;
            fields(&json!({"roomId": room}))
        }
        Inbound::Leave(room) => {
            let room = chat.leave(session, room).await?;
            fields(&json!({"roomId": room}))
        }
        // `{"messageId", "timestamp"}`, serialized straight from the ack (the hot path).
        Inbound::Send(cmd) => fields(&chat.send(session, cmd).await?),
        Inbound::Typing(cmd) => {
            chat.typing(session, cmd).await?;
            fields(&json!({}))
        }
        Inbound::Change(cmd) => fields(&chat.change_message(session, cmd).await?),
        Inbound::MarkRead(room, message) => {
            let marker = chat.mark_read(session, room, message).await?;
            fields(&json!({"messageId": marker.message_id, "readAt": marker.read_at}))
        }
    })
}

/// An ack's fields as JSON text; `{}` should they not serialize as an object.
fn fields(value: &impl Serialize) -> AckFields {
    wire::raw_json(value)
        .filter(|raw| raw.get().starts_with('{'))
        .unwrap_or_else(|| wire::raw_json(&json!({})).expect("an empty object serializes"))
}

/// The ack of a handled event, as JSON text: `{"success": true, ...fields}` or
/// `{"success": false, "error": {"code", "message"}}`.
pub fn ack_body(result: &Result<AckFields, ChatError>) -> String {
    match result {
        Ok(fields) => {
            // `fields` is an object's compact text (`fields`): its members follow `success`.
            let members = &fields.get()[1..];
            if members == "}" {
                r#"{"success":true}"#.to_string()
            } else {
                wire::concat(&[r#"{"success":true,"#, members])
            }
        }
        Err(e) => json!({"success": false, "error": {"code": e.code(), "message": e.to_string()}})
            .to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::Sent;
    use crate::domain::MessageId;

    #[test]
    fn ack_bodies_put_success_first_and_the_fields_after_it() {
        let id = MessageId::generate(1_700_000_000_000);
        let sent = Sent {
            message_id: id.clone(),
            timestamp: 1_700_000_000_000,
        };
        let body = ack_body(&Ok(fields(&sent)));
        assert_eq!(
            body,
            format!(r#"{{"success":true,"messageId":"{id}","timestamp":1700000000000}}"#)
        );
        let parsed: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed["messageId"], json!(id.to_string()));
        assert_eq!(ack_body(&Ok(fields(&json!({})))), r#"{"success":true}"#);
        // A value that is not an object (never sent; the old tree did the same) adds nothing.
        assert_eq!(ack_body(&Ok(fields(&json!([1, 2])))), r#"{"success":true}"#);
        let refused: Value =
            serde_json::from_str(&ack_body(&Err(ChatError::NotAuthenticated))).unwrap();
        assert_eq!(refused["success"], json!(false));
        assert_eq!(refused["error"]["code"], json!("not_authenticated"));
    }
}
