//! Rooms as the REST API and the stores see them.

use serde::Serialize;

use super::{MessageBody, RoomId, UserId, ValidationError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RoomType {
    Direct,
    Group,
}

impl RoomType {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        match s {
            "direct" => Ok(Self::Direct),
            "group" => Ok(Self::Group),
            _ => Err(ValidationError::new("type must be direct or group")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Group => "group",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastMessage {
    pub content: MessageBody,
    /// Epoch milliseconds.
    pub timestamp: u64,
    pub sender_id: UserId,
}

/// A room. `private` rooms were created with participants and admit only them; open rooms
/// were first seen through `join_room`, and their `participants` are the users who joined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Room {
    pub room_id: RoomId,
    #[serde(rename = "type")]
    pub room_type: RoomType,
    pub participants: Vec<UserId>,
    #[serde(rename = "isPrivate")]
    pub private: bool,
    pub last_message: Option<LastMessage>,
    /// Epoch milliseconds.
    pub created_at: u64,
    pub updated_at: u64,
    /// The caller's unread messages (`GET /api/chat/rooms`, SPEC 10): messages of others after
    /// its read marker, deleted ones not counted. Only `rooms_of` fills it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unread_count: Option<u64>,
}

impl Room {
    pub fn admits(&self, user: &UserId) -> bool {
        !self.private || self.participants.contains(user)
    }
}

/// A room to create through the REST API: always private to its participants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRoom {
    pub room_id: RoomId,
    pub room_type: RoomType,
    /// Sorted, without duplicates.
    pub participants: Vec<UserId>,
}

impl NewRoom {
    /// A `direct` room lists exactly two distinct participants (`["a", "b", "a"]` is refused,
    /// as the OpenAPI document states); a group at least one, a repeated id counting once.
    pub fn new(
        room_id: RoomId,
        room_type: RoomType,
        mut participants: Vec<UserId>,
    ) -> Result<Self, ValidationError> {
        let listed = participants.len();
        participants.sort();
        participants.dedup();
        match room_type {
            RoomType::Direct if listed != 2 || participants.len() != 2 => Err(
                ValidationError::new("a direct room has exactly two distinct participants"),
            ),
            RoomType::Group if participants.is_empty() => Err(ValidationError::new(
                "participants must name at least one user",
            )),
            _ => Ok(Self {
                room_id,
                room_type,
                participants,
            }),
        }
    }

    /// The key that makes a direct room unique per pair of users.
    pub fn pair_key(&self) -> Option<String> {
        (self.room_type == RoomType::Direct)
            .then(|| format!("{}\u{1f}{}", self.participants[0], self.participants[1]))
    }
}
