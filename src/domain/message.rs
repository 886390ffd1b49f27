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

impl RoomEvent {
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
    fn client_may_not_send_system() {
        assert!(MessageType::parse_client("system").is_err());
        assert_eq!(
            MessageType::parse_stored("system"),
            Some(MessageType::System)
        );
    }
}
