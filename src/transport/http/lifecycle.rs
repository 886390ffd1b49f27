//! The REST paths of the message lifecycle (SPEC 10): edit, delete, reactions, the read
//! marker and a room's receipts. The caller must be a participant of the room.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::{ApiError, HttpState, caller, required, room_id};
use crate::chat::{ChangeMessage, ChatError};
use crate::domain::{Emoji, MessageBody, MessageId};

fn message_id(raw: &str) -> Result<MessageId, ApiError> {
    MessageId::parse(raw).map_err(|_| {
        ApiError(ChatError::InvalidPayload(
            "messageId must be a message id".into(),
        ))
    })
}

/// The JSON body of a request, or `invalid_payload` (`payload_too_large` when too big).
fn body(body: Result<Json<Value>, JsonRejection>) -> Result<Value, ApiError> {
    match body {
        Ok(Json(v)) if v.is_object() => Ok(v),
        Ok(_) => Err(ChatError::InvalidPayload("body must be a JSON object".into()).into()),
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(ChatError::PayloadTooLarge.into())
        }
        Err(e) => Err(ChatError::InvalidPayload(format!(
            "body must be a JSON object: {}",
            e.body_text()
        ))
        .into()),
    }
}

fn text_field<'a>(body: &'a Value, name: &str) -> Result<&'a str, ApiError> {
    body.get(name).and_then(Value::as_str).ok_or_else(|| {
        ApiError(ChatError::InvalidPayload(format!(
            "{name} must be a string"
        )))
    })
}

/// The JSON answer of a change: `{success: true, ...the ack's fields}`.
fn answer(fields: Value) -> Json<Value> {
    let mut v = json!({"success": true});
    if let (Some(o), Some(f)) = (v.as_object_mut(), fields.as_object()) {
        o.extend(f.clone());
    }
    Json(v)
}

/// `PATCH /api/chat/:roomId/messages/:messageId {message}`.
pub(super) async fn edit(
    State(st): State<HttpState>,
    Path((raw_room, raw_message)): Path<(String, String)>,
    headers: HeaderMap,
    payload: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let who = required(caller(&st.chat, &headers).await?)?;
    let (room, id) = (room_id(&raw_room)?, message_id(&raw_message)?);
    let payload = body(payload)?;
    let text = MessageBody::parse(
        text_field(&payload, "message")?,
        st.chat.config().max_message_chars,
    )
    .map_err(ChatError::from)?;
    let ack = st
        .chat
        .change_message_as(&who, ChangeMessage::edit(room, id, text))
        .await?;
    Ok(answer(serde_json::to_value(ack).unwrap_or_default()))
}

/// `DELETE /api/chat/:roomId/messages/:messageId`.
pub(super) async fn delete(
    State(st): State<HttpState>,
    Path((raw_room, raw_message)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let who = required(caller(&st.chat, &headers).await?)?;
    let (room, id) = (room_id(&raw_room)?, message_id(&raw_message)?);
    let ack = st
        .chat
        .change_message_as(&who, ChangeMessage::delete(room, id))
        .await?;
    Ok(answer(serde_json::to_value(ack).unwrap_or_default()))
}

async fn react(
    st: HttpState,
    (raw_room, raw_message, raw_emoji): (String, String, String),
    headers: HeaderMap,
    add: bool,
) -> Result<Json<Value>, ApiError> {
    let who = required(caller(&st.chat, &headers).await?)?;
    let (room, id) = (room_id(&raw_room)?, message_id(&raw_message)?);
    let emoji = Emoji::parse(&raw_emoji).map_err(ChatError::from)?;
    let ack = st
        .chat
        .change_message_as(&who, ChangeMessage::react(room, id, emoji, add))
        .await?;
    Ok(answer(serde_json::to_value(ack).unwrap_or_default()))
}

/// `PUT /api/chat/:roomId/messages/:messageId/reactions/:emoji`.
pub(super) async fn add_reaction(
    State(st): State<HttpState>,
    Path(path): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    react(st, path, headers, true).await
}

/// `DELETE /api/chat/:roomId/messages/:messageId/reactions/:emoji`.
pub(super) async fn remove_reaction(
    State(st): State<HttpState>,
    Path(path): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    react(st, path, headers, false).await
}

/// `POST /api/chat/:roomId/read {messageId}`.
pub(super) async fn mark_read(
    State(st): State<HttpState>,
    Path(raw_room): Path<String>,
    headers: HeaderMap,
    payload: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let who = required(caller(&st.chat, &headers).await?)?;
    let room = room_id(&raw_room)?;
    let payload = body(payload)?;
    let id = message_id(text_field(&payload, "messageId")?)?;
    let marker = st.chat.mark_read_as(&who, room, id).await?;
    Ok(answer(
        json!({"messageId": marker.message_id, "readAt": marker.read_at}),
    ))
}

/// `GET /api/chat/:roomId/receipts`.
pub(super) async fn receipts(
    State(st): State<HttpState>,
    Path(raw_room): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let who = required(caller(&st.chat, &headers).await?)?;
    let room = room_id(&raw_room)?;
    let receipts = st.chat.receipts(&who, &room).await?;
    Ok(Json(json!({"success": true, "receipts": receipts})))
}
