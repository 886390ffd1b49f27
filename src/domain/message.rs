//! Messages and the events of a room.

use serde::Serialize;

use super::{ClientMessageId, MessageId, RoomId, UserId, Username, ValidationError};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageType {
    Text,
    Image,
    File,
    /// Only the server writes system messages.
    System,
}

impl MessageType {
    /// What a client may send: `text`, `image` or `file`.
    pub fn parse_client(s: &str) -> Result<Self, ValidationError> {
        match s {
            "text" => Ok(Self::Text),
            "image" => Ok(Self::Image),
            "file" => Ok(Self::File),
            _ => Err(ValidationError::new(
                "messageType must be one of text, image, file",
            )),
        }
    }

    /// What a store may hold (includes `system`).
    pub fn parse_stored(s: &str) -> Option<Self> {
        match s {
            "system" => Some(Self::System),
            other => Self::parse_client(other).ok(),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Image => "image",
            Self::File => "file",
            Self::System => "system",
        }
    }
}

/// Message text: not blank (whitespace and zero-width characters only), at most `max_chars` Unicode scalar values, no control characters
/// other than tab, line feed and carriage return. Kept exactly as sent (not trimmed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct MessageBody(String);

impl MessageBody {
    pub fn parse(s: &str, max_chars: usize) -> Result<Self, ValidationError> {
        // Blank means only whitespace and invisible zero-width characters.
        let invisible = |c: char| {
            c.is_whitespace() || matches!(c, '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}')
        };
        if s.chars().all(invisible) {
            return Err(ValidationError::new("message must not be empty"));
        }
        if s.chars().count() > max_chars {
            return Err(ValidationError::new(format!(
                "message must be at most {max_chars} characters"
            )));
        }
        if s.chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        {
            return Err(ValidationError::new(
                "message must not contain control characters",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// A body read back from a store, trusted as written.
    pub fn from_stored(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A stored chat message; serializes as the `new_message` payload of SPEC 2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub message_id: MessageId,
    pub room_id: RoomId,
    pub user_id: UserId,
    pub username: Username,
    pub message: MessageBody,
    pub message_type: MessageType,
    /// Epoch milliseconds.
    pub timestamp: u64,
    #[serde(skip)]
    pub client_message_id: Option<ClientMessageId>,
}

/// A user as other members see it: `{userId, username}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub user_id: UserId,
    pub username: Username,
}

/// Everything that happens in a room and reaches its members, on this instance or through the
/// bus on others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    Message(Message),
    Joined {
        room_id: RoomId,
        member: Member,
    },
    Left {
        room_id: RoomId,
        member: Member,
    },
    Typing {
        room_id: RoomId,
        member: Member,
        is_typing: bool,
    },
}

impl Message {
    /// Reads back a `new_message` payload written by `Serialize` (the Redis history cache and
    /// the bus envelopes carry messages in this form). Every field is parsed again: a value
    /// from outside the process is never trusted as valid.
    pub fn from_json(v: &serde_json::Value) -> Result<Self, ValidationError> {
        let field = |name: &str| {
            v.get(name)
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| ValidationError::new(format!("{name} missing")))
        };
        Ok(Self {
            message_id: MessageId::parse(field("messageId")?)?,
            room_id: RoomId::parse(field("roomId")?)?,
            user_id: UserId::parse(field("userId")?)?,
            username: Username::parse(field("username")?)?,
            message: MessageBody::from_stored(field("message")?.to_owned()),
            message_type: MessageType::parse_stored(field("messageType")?)
                .ok_or_else(|| ValidationError::new("unknown messageType"))?,
            timestamp: v
                .get("timestamp")
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| ValidationError::new("timestamp missing"))?,
            client_message_id: None,
        })
    }
}

impl Member {
    /// Reads back `{userId, username}`.
    pub fn from_json(v: &serde_json::Value) -> Result<Self, ValidationError> {
        let field = |name: &str| {
            v.get(name)
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| ValidationError::new(format!("{name} missing")))
        };
        Ok(Self {
            user_id: UserId::parse(field("userId")?)?,
            username: Username::parse(field("username")?)?,
        })
    }
}

impl RoomEvent {
    /// The event as JSON for travelling between instances:
    /// `{"type":"message","message":{...}}`, `{"type":"joined"|"left","roomId","member"}`,
    /// `{"type":"typing","roomId","member","isTyping"}`.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Self::Message(m) => json!({"type": "message", "message": m}),
            Self::Joined { room_id, member } => {
                json!({"type": "joined", "roomId": room_id, "member": member})
            }
            Self::Left { room_id, member } => {
                json!({"type": "left", "roomId": room_id, "member": member})
            }
            Self::Typing {
                room_id,
                member,
                is_typing,
            } => {
                json!({"type": "typing", "roomId": room_id, "member": member, "isTyping": is_typing})
            }
        }
    }

    /// The inverse of `to_json`.
    pub fn from_json(v: &serde_json::Value) -> Result<Self, ValidationError> {
        let room = || {
            v.get("roomId")
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| ValidationError::new("roomId missing"))
                .and_then(RoomId::parse)
        };
        let member = || Member::from_json(v.get("member").unwrap_or(&serde_json::Value::Null));
        match v.get("type").and_then(serde_json::Value::as_str) {
            Some("message") => Ok(Self::Message(Message::from_json(
                v.get("message").unwrap_or(&serde_json::Value::Null),
            )?)),
            Some("joined") => Ok(Self::Joined {
                room_id: room()?,
                member: member()?,
            }),
            Some("left") => Ok(Self::Left {
                room_id: room()?,
                member: member()?,
            }),
            Some("typing") => Ok(Self::Typing {
                room_id: room()?,
                member: member()?,
                is_typing: v
                    .get("isTyping")
                    .and_then(serde_json::Value::as_bool)
                    .ok_or_else(|| ValidationError::new("isTyping missing"))?,
            }),
            _ => Err(ValidationError::new("unknown room event type")),
        }
    }

    pub fn room_id(&self) -> &RoomId {
        match self {
            Self::Message(m) => &m.room_id,
            Self::Joined { room_id, .. }
            | Self::Left { room_id, .. }
            | Self::Typing { room_id, .. } => room_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_counts_scalar_values_not_bytes() {
        assert!(MessageBody::parse(&"😀".repeat(10), 10).is_ok());
        assert!(MessageBody::parse(&"😀".repeat(11), 10).is_err());
        assert!(MessageBody::parse("   \n ", 10).is_err());
        assert!(MessageBody::parse("\u{200B}\u{FEFF}", 10).is_err());
        assert!(MessageBody::parse("a\u{7}b", 10).is_err());
        assert!(MessageBody::parse("line1\nline2", 20).is_ok());
    }

    #[test]
    fn room_events_round_trip_through_json() {
        let member = Member {
            user_id: UserId::parse("u:1").unwrap(),
            username: Username::parse("Ann").unwrap(),
        };
        let room_id = RoomId::parse("r1").unwrap();
        let events = [
            RoomEvent::Message(Message {
                message_id: MessageId::generate(1_700_000_000_000),
                room_id: room_id.clone(),
                user_id: member.user_id.clone(),
                username: member.username.clone(),
                message: MessageBody::parse("hi \u{1f600}", 100).unwrap(),
                message_type: MessageType::Image,
                timestamp: 1_700_000_000_000,
                client_message_id: None,
            }),
            RoomEvent::Joined {
                room_id: room_id.clone(),
                member: member.clone(),
            },
            RoomEvent::Left {
                room_id: room_id.clone(),
                member: member.clone(),
            },
            RoomEvent::Typing {
                room_id,
                member,
                is_typing: true,
            },
        ];
        for e in events {
            assert_eq!(RoomEvent::from_json(&e.to_json()).unwrap(), e);
        }
        assert!(RoomEvent::from_json(&serde_json::json!({"type": "nope"})).is_err());
    }

    #[test]
    fn client_may_not_send_system() {
        assert!(MessageType::parse_client("system").is_err());
        assert_eq!(
            MessageType::parse_stored("system"),
            Some(MessageType::System)
        );
    }
}
