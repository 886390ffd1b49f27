//! Wire payloads of the socket events (both transports) and their conversion into the
//! commands of `chat`. A payload of the wrong shape is `invalid_payload` with a message that
//! names the field.

use serde::Deserialize;
use serde_json::Value;

use crate::auth::Credentials;
use crate::chat::{ChatConfig, ChatError, JoinRoom, SendMessage, Typing, wire};
use crate::domain::{ClientMessageId, MessageBody, MessageId, MessageType, RoomId};

pub enum Inbound {
    Authenticate(Credentials),
    Join(JoinRoom),
    Leave(RoomId),
    Send(SendMessage),
    Typing(Typing),
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
            })
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
