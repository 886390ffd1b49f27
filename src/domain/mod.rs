//! Pure data and rules: identifiers, messages, rooms and the room events that travel between
//! connections and instances. No IO, no async. Every value here is built by a `parse`
//! constructor, so a value that exists is valid ("parse, don't validate").

mod ids;
mod lifecycle;
mod message;
mod room;

pub use ids::{ClientMessageId, ConnId, MessageId, RoomId, UserId, Username};
pub use lifecycle::{
    ChangeKind, Emoji, HistoryItem, MAX_REACTION_USERS, MAX_REACTIONS_PER_MESSAGE, MessageChange,
    Reaction, ReadMarker, history_items,
};
pub use message::{Member, Message, MessageBody, MessageType, RoomEvent, now_ms};
pub use room::{LastMessage, NewRoom, Room, RoomType};

/// A value from outside that breaks a rule of this module. The text names the field and the
/// rule, and is shown to the client as it stands (it never echoes the offending value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

impl ValidationError {
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

/// Who is acting: the identity a connection or a REST call was authenticated as.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub user_id: UserId,
    pub username: Username,
}

/// True for characters a client may not put into ids or names (C0/C1 controls, DEL).
pub(crate) fn is_forbidden_control(c: char) -> bool {
    c.is_control()
}
