//! Wire payloads of the socket events (both transports) and their conversion into the
//! commands of `chat`. A payload of the wrong shape is `invalid_payload` with a message that
//! names the field.

use serde::Deserialize;
use serde_json::Value;

use crate::auth::Credentials;
use crate::chat::{ChangeMessage, ChatConfig, ChatError, JoinRoom, SendMessage, Typing, wire};
use crate::domain::{ClientMessageId, Emoji, MessageBody, MessageId, MessageType, RoomId};

pub enum Inbound {
    Authenticate(Credentials),
    Join(JoinRoom),
    Leave(RoomId),
    Send(SendMessage),
    Typing(Typing),
    /// `edit_message`, `delete_message`, `add_reaction`, `remove_reaction`.
    Change(ChangeMessage),
    MarkRead(RoomId, MessageId),
}

/// A user id may arrive as a string or a number (old clients send numeric ids).
#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrNumber {
    S(String),
    N(serde_json::Number),
}

impl StringOrNumber {
    fn into_string(self) -> String {
        match self {
            Self::S(s) => s,
            Self::N(n) => n.to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthenticateDto {
    user_id: Option<StringOrNumber>,
    username: Option<String>,
    token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JoinDto {
    room_id: String,
    since: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeaveDto {
    room_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SendDto {
    room_id: String,
    message: String,
    message_type: Option<String>,
    client_message_id: Option<String>,
    reply_to: Option<String>,
}

/// `edit_message`, `delete_message`, `add_reaction`, `remove_reaction`, `mark_read`: the
/// fields each needs (`message` for an edit, `emoji` for a reaction).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageRefDto {
    room_id: String,
    message_id: String,
    message: Option<String>,
    emoji: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypingDto {
    room_id: String,
    is_typing: bool,
}

fn decode<T: for<'de> Deserialize<'de>>(event: &str, data: Value) -> Result<T, ChatError> {
    if !data.is_object() {
        return Err(ChatError::InvalidPayload(format!(
            "{event}: payload must be a JSON object"
        )));
    }
    serde_json::from_value(data).map_err(|e| ChatError::InvalidPayload(format!("{event}: {e}")))
}

/// Parses the payload of a client event.
pub fn parse(event: &str, data: Value, cfg: &ChatConfig) -> Result<Inbound, ChatError> {
    Ok(match event {
        wire::AUTHENTICATE => {
            let d: AuthenticateDto = decode(event, data)?;
            Inbound::Authenticate(Credentials {
                token: d.token,
                user_id: d.user_id.map(StringOrNumber::into_string),
                username: d.username,
            })
        }
        wire::JOIN_ROOM => {
            let d: JoinDto = decode(event, data)?;
            Inbound::Join(JoinRoom {
                room_id: RoomId::parse(&d.room_id)?,
                since: d.since.as_deref().map(MessageId::parse).transpose()?,
            })
        }
        wire::LEAVE_ROOM => {
            let d: LeaveDto = decode(event, data)?;
            Inbound::Leave(RoomId::parse(&d.room_id)?)
        }
        wire::SEND_MESSAGE => {
            let d: SendDto = decode(event, data)?;
            Inbound::Send(SendMessage {
                room_id: RoomId::parse(&d.room_id)?,
                body: MessageBody::parse(&d.message, cfg.max_message_chars)?,
                message_type: match d.message_type.as_deref() {
                    None => MessageType::Text,
                    Some(t) => MessageType::parse_client(t)?,
                },
                client_message_id: d
                    .client_message_id
                    .as_deref()
                    .map(ClientMessageId::parse)
                    .transpose()?,
                reply_to: d
                    .reply_to
                    .as_deref()
                    .map(|r| {
                        MessageId::parse(r).map_err(|_| {
                            ChatError::InvalidPayload("replyTo must be a message id".into())
                        })
                    })
                    .transpose()?,
            })
        }
        wire::EDIT_MESSAGE
        | wire::DELETE_MESSAGE
        | wire::ADD_REACTION
        | wire::REMOVE_REACTION
        | wire::MARK_READ => {
            let d: MessageRefDto = decode(event, data)?;
            let room_id = RoomId::parse(&d.room_id)?;
            let message_id = MessageId::parse(&d.message_id)
                .map_err(|_| ChatError::InvalidPayload("messageId must be a message id".into()))?;
            let required = |field: Option<String>, name: &str| {
                field.ok_or_else(|| {
                    ChatError::InvalidPayload(format!("{event}: missing field `{name}`"))
                })
            };
            match event {
                wire::EDIT_MESSAGE => {
                    let text = required(d.message, "message")?;
                    Inbound::Change(ChangeMessage::edit(
                        room_id,
                        message_id,
                        MessageBody::parse(&text, cfg.max_message_chars)?,
                    ))
                }
                wire::DELETE_MESSAGE => Inbound::Change(ChangeMessage::delete(room_id, message_id)),
                wire::MARK_READ => Inbound::MarkRead(room_id, message_id),
                add => {
                    let emoji = Emoji::parse(&required(d.emoji, "emoji")?)?;
                    Inbound::Change(ChangeMessage::react(
                        room_id,
                        message_id,
                        emoji,
                        add == wire::ADD_REACTION,
                    ))
                }
            }
        }
        wire::TYPING => {
            let d: TypingDto = decode(event, data)?;
            Inbound::Typing(Typing {
                room_id: RoomId::parse(&d.room_id)?,
                is_typing: d.is_typing,
            })
        }
        other => {
            return Err(ChatError::InvalidPayload(format!(
                "unknown event {:?}",
                other.chars().take(64).collect::<String>()
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ID: &str = "65a1b2c3d4e5f60718293a4b";

    fn p(event: &str, data: Value) -> Result<Inbound, ChatError> {
        parse(event, data, &ChatConfig::default())
    }

    #[test]
    fn bad_shapes_are_invalid_payload() {
        for (event, data) in [
            ("join_room", json!("room-1")),
            ("join_room", json!(null)),
            ("join_room", json!({"roomId": 5})),
            ("join_room", json!({"roomId": "a b"})),
            ("send_message", json!({"roomId": "r", "message": ""})),
            ("send_message", json!({"roomId": "r", "message": 12})),
            (
                "send_message",
                json!({"roomId": "r", "message": "hi", "messageType": "system"}),
            ),
            ("typing", json!({"roomId": "r", "isTyping": "yes"})),
            (
                "send_message",
                json!({"roomId": "r", "message": "hi", "replyTo": "nope"}),
            ),
            ("edit_message", json!({"roomId": "r", "messageId": ID})),
            (
                "edit_message",
                json!({"roomId": "r", "messageId": ID, "message": " "}),
            ),
            (
                "edit_message",
                json!({"roomId": "r", "messageId": "x", "message": "hi"}),
            ),
            ("delete_message", json!({"roomId": "r"})),
            ("add_reaction", json!({"roomId": "r", "messageId": ID})),
            (
                "add_reaction",
                json!({"roomId": "r", "messageId": ID, "emoji": "a b"}),
            ),
            (
                "remove_reaction",
                json!({"roomId": "r", "messageId": ID, "emoji": "x".repeat(33)}),
            ),
            ("mark_read", json!({"roomId": "r", "messageId": 5})),
            ("nope", json!({})),
        ] {
            let e = p(event, data.clone())
                .err()
                .unwrap_or_else(|| panic!("{event} {data} passed"));
            assert_eq!(e.code(), "invalid_payload", "{event} {data}");
        }
    }

    #[test]
    fn good_send() {
        let Inbound::Send(s) = p(
            "send_message",
            json!({"roomId": "r", "message": "hi", "clientMessageId": "c1"}),
        )
        .unwrap() else {
            panic!("not a send")
        };
        assert_eq!(s.message_type, MessageType::Text);
        assert_eq!(s.client_message_id.unwrap().as_str(), "c1");
    }
}
