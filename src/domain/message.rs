//! Messages and the events of a room.

use serde::Serialize;

use super::lifecycle::{Emoji, Reaction, ReadMarker};
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
    /// The message this one replies to (same room); `new_message` carries it when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
    /// When last edited (epoch ms). History shows it (`HistoryItem`); a new message has none.
    #[serde(skip)]
    pub edited_at: Option<u64>,
    /// A tombstone: the text is erased (`message` is empty).
    #[serde(skip)]
    pub deleted: bool,
    /// The reactions as history shows them.
    #[serde(skip)]
    pub reactions: Vec<Reaction>,
    /// The store's revision of this message's state (its latest change's sequence number, 0
    /// when never changed): the Redis history cache keeps the highest it has seen.
    #[serde(skip)]
    pub rev: u64,
}

impl Message {
    /// A new message as a client sends it (no reply, edit, tombstone or reaction yet).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        message_id: MessageId,
        room_id: RoomId,
        user_id: UserId,
        username: Username,
        message: MessageBody,
        message_type: MessageType,
        timestamp: u64,
        client_message_id: Option<ClientMessageId>,
    ) -> Self {
        Self {
            message_id,
            room_id,
            user_id,
            username,
            message,
            message_type,
            timestamp,
            client_message_id,
            reply_to: None,
            edited_at: None,
            deleted: false,
            reactions: Vec::new(),
            rev: 0,
        }
    }
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
    /// `message_edited` (SPEC 10).
    Edited {
        room_id: RoomId,
        message_id: MessageId,
        message: MessageBody,
        edited_at: u64,
        user_id: UserId,
    },
    /// `message_deleted`.
    Deleted {
        room_id: RoomId,
        message_id: MessageId,
        deleted_at: u64,
        user_id: UserId,
    },
    /// `reaction_updated`: `user_id` added or removed `emoji`, which `count` users now show.
    Reaction {
        room_id: RoomId,
        message_id: MessageId,
        emoji: Emoji,
        user_id: UserId,
        added: bool,
        count: u64,
    },
    /// `read_receipt`.
    Read(ReadMarker),
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
            reply_to: v
                .get("replyTo")
                .and_then(serde_json::Value::as_str)
                .map(MessageId::parse)
                .transpose()?,
            edited_at: v.get("editedAt").and_then(serde_json::Value::as_u64),
            deleted: v
                .get("deleted")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
            reactions: match v.get("reactions").and_then(serde_json::Value::as_array) {
                Some(items) => items
                    .iter()
                    .map(reaction_from_json)
                    .collect::<Result<_, _>>()?,
                None => Vec::new(),
            },
            rev: v
                .get("rev")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
        })
    }
}

fn reaction_from_json(v: &serde_json::Value) -> Result<Reaction, ValidationError> {
    Ok(Reaction {
        emoji: Emoji::parse(
            v.get("emoji")
                .and_then(serde_json::Value::as_str)
                .unwrap_or(""),
        )?,
        count: v
            .get("count")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| ValidationError::new("reaction count missing"))?,
        user_ids: v
            .get("userIds")
            .and_then(serde_json::Value::as_array)
            .map(|ids| {
                ids.iter()
                    .map(|u| UserId::parse(u.as_str().unwrap_or("")))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default(),
    })
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
            other => {
                let mut v = other.lifecycle_payload().unwrap_or_default();
                let kind = match other {
                    Self::Edited { .. } => "edited",
                    Self::Deleted { .. } => "deleted",
                    Self::Reaction { .. } => "reaction",
                    _ => "read",
                };
                if let Some(o) = v.as_object_mut() {
                    o.insert("type".into(), kind.into());
                }
                v
            }
        }
    }

    /// The client payload of a lifecycle event (SPEC 10): `message_edited`,
    /// `message_deleted`, `reaction_updated`, `read_receipt`. `None` for the other kinds.
    pub fn lifecycle_payload(&self) -> Option<serde_json::Value> {
        use serde_json::json;
        Some(match self {
            Self::Edited {
                room_id,
                message_id,
                message,
                edited_at,
                user_id,
            } => json!({"roomId": room_id, "messageId": message_id, "message": message,
                "editedAt": edited_at, "userId": user_id}),
            Self::Deleted {
                room_id,
                message_id,
                deleted_at,
                user_id,
            } => json!({"roomId": room_id, "messageId": message_id, "deletedAt": deleted_at,
                "userId": user_id}),
            Self::Reaction {
                room_id,
                message_id,
                emoji,
                user_id,
                added,
                count,
            } => json!({"roomId": room_id, "messageId": message_id, "emoji": emoji,
                "userId": user_id, "added": added, "count": count}),
            Self::Read(r) => json!({"roomId": r.room_id, "userId": r.user_id,
                "messageId": r.message_id, "readAt": r.read_at}),
            _ => return None,
        })
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
            Some(kind @ ("edited" | "deleted" | "reaction" | "read")) => {
                let s = |name: &str| {
                    v.get(name)
                        .and_then(serde_json::Value::as_str)
                        .ok_or_else(|| ValidationError::new(format!("{name} missing")))
                };
                let n = |name: &str| {
                    v.get(name)
                        .and_then(serde_json::Value::as_u64)
                        .ok_or_else(|| ValidationError::new(format!("{name} missing")))
                };
                let message_id = MessageId::parse(s("messageId")?)?;
                let user_id = UserId::parse(s("userId")?)?;
                Ok(match kind {
                    "edited" => Self::Edited {
                        room_id: room()?,
                        message_id,
                        message: MessageBody::from_stored(s("message")?.to_owned()),
                        edited_at: n("editedAt")?,
                        user_id,
                    },
                    "deleted" => Self::Deleted {
                        room_id: room()?,
                        message_id,
                        deleted_at: n("deletedAt")?,
                        user_id,
                    },
                    "reaction" => Self::Reaction {
                        room_id: room()?,
                        message_id,
                        emoji: Emoji::parse(s("emoji")?)?,
                        user_id,
                        added: v
                            .get("added")
                            .and_then(serde_json::Value::as_bool)
                            .ok_or_else(|| ValidationError::new("added missing"))?,
                        count: n("count")?,
                    },
                    _ => Self::Read(ReadMarker {
                        room_id: room()?,
                        user_id,
                        message_id,
                        read_at: n("readAt")?,
                    }),
                })
            }
            _ => Err(ValidationError::new("unknown room event type")),
        }
    }

    pub fn room_id(&self) -> &RoomId {
        match self {
            Self::Message(m) => &m.room_id,
            Self::Joined { room_id, .. }
            | Self::Left { room_id, .. }
            | Self::Typing { room_id, .. }
            | Self::Edited { room_id, .. }
            | Self::Deleted { room_id, .. }
            | Self::Reaction { room_id, .. } => room_id,
            Self::Read(r) => &r.room_id,
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
                reply_to: Some(MessageId::generate(1_600_000_000_000)),
                ..Message::new(
                    MessageId::generate(1_700_000_000_000),
                    room_id.clone(),
                    member.user_id.clone(),
                    member.username.clone(),
                    MessageBody::parse("hi \u{1f600}", 100).unwrap(),
                    MessageType::Image,
                    1_700_000_000_000,
                    None,
                )
            }),
            RoomEvent::Edited {
                room_id: room_id.clone(),
                message_id: MessageId::generate(1),
                message: MessageBody::parse("fixed", 100).unwrap(),
                edited_at: 5,
                user_id: member.user_id.clone(),
            },
            RoomEvent::Deleted {
                room_id: room_id.clone(),
                message_id: MessageId::generate(1),
                deleted_at: 6,
                user_id: member.user_id.clone(),
            },
            RoomEvent::Reaction {
                room_id: room_id.clone(),
                message_id: MessageId::generate(1),
                emoji: Emoji::parse("👍").unwrap(),
                user_id: member.user_id.clone(),
                added: false,
                count: 3,
            },
            RoomEvent::Read(ReadMarker {
                room_id: room_id.clone(),
                user_id: member.user_id.clone(),
                message_id: MessageId::generate(1),
                read_at: 7,
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
