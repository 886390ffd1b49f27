//! The names of socket events (both transports) and the outbound event value shared by every
//! recipient of a broadcast.

use std::any::Any;
use std::sync::OnceLock;

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

// Client -> server.
pub const AUTHENTICATE: &str = "authenticate";
pub const JOIN_ROOM: &str = "join_room";
pub const LEAVE_ROOM: &str = "leave_room";
pub const SEND_MESSAGE: &str = "send_message";
pub const TYPING: &str = "typing";
pub const EDIT_MESSAGE: &str = "edit_message";
pub const DELETE_MESSAGE: &str = "delete_message";
pub const ADD_REACTION: &str = "add_reaction";
pub const REMOVE_REACTION: &str = "remove_reaction";
pub const MARK_READ: &str = "mark_read";
/// Every event a client may send.
pub const CLIENT_EVENTS: [&str; 10] = [
    AUTHENTICATE,
    JOIN_ROOM,
    LEAVE_ROOM,
    SEND_MESSAGE,
    TYPING,
    EDIT_MESSAGE,
    DELETE_MESSAGE,
    ADD_REACTION,
    REMOVE_REACTION,
    MARK_READ,
];

// Server -> client.
pub const AUTHENTICATED: &str = "authenticated";
pub const NEW_MESSAGE: &str = "new_message";
pub const MESSAGE_HISTORY: &str = "message_history";
pub const ROOM_USERS: &str = "room_users";
pub const USER_JOINED: &str = "user_joined";
pub const USER_LEFT: &str = "user_left";
pub const USER_TYPING: &str = "user_typing";
pub const MESSAGE_EDITED: &str = "message_edited";
pub const MESSAGE_DELETED: &str = "message_deleted";
pub const REACTION_UPDATED: &str = "reaction_updated";
pub const READ_RECEIPT: &str = "read_receipt";
pub const ERROR: &str = "error";

/// How many wire formats may cache an encoding of an event (`ServerEvent::encoded`).
pub const FRAME_SLOTS: usize = 2;

/// One event for one or many clients. Built once per broadcast and shared (`Arc`) by every
/// recipient; its payload is serialized to JSON text once, when it is built, and each
/// transport caches its frame here (`encoded`), so every recipient's frame shares the same
/// bytes. `chat` does not know the formats: the transports own the slots and what they hold.
pub struct ServerEvent {
    pub name: &'static str,
    /// The payload's JSON text (serialized straight from the value: no `Value` tree).
    pub data: Box<RawValue>,
    frames: [OnceLock<Box<dyn Any + Send + Sync>>; FRAME_SLOTS],
}

impl std::fmt::Debug for ServerEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerEvent")
            .field("name", &self.name)
            .field("data", &self.data)
            .finish_non_exhaustive()
    }
}

impl ServerEvent {
    pub fn new(name: &'static str, data: &impl Serialize) -> Self {
        Self {
            name,
            data: raw_json(data).unwrap_or_else(|| RawValue::NULL.to_owned()),
            frames: Default::default(),
        }
    }

    pub fn from_value(name: &'static str, data: Value) -> Self {
        Self::new(name, &data)
    }

    /// The encoding of `slot`'s wire format, made by `encode` the first time it is asked
    /// for. A slot always holds the same type (its transport's frame type).
    pub fn encoded<T: Any + Send + Sync>(
        &self,
        slot: usize,
        encode: impl FnOnce(&Self) -> T,
    ) -> &T {
        self.frames[slot]
            .get_or_init(|| Box::new(encode(self)))
            .downcast_ref::<T>()
            .expect("a frame slot holds one type")
    }
}

/// `value` as compact JSON text, serialized straight into one buffer; `None` when it cannot
/// be (a map with keys that are not strings).
pub fn raw_json(value: &impl Serialize) -> Option<Box<RawValue>> {
    serde_json::value::to_raw_value(value).ok()
}

/// The concatenation of `parts` in one allocation of the exact size (a frame around a
/// payload that is already JSON text).
pub fn concat(parts: &[&str]) -> String {
    let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        out.push_str(part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoding_is_made_once_and_shared() {
        let ev = ServerEvent::from_value(NEW_MESSAGE, serde_json::json!({"a": 1}));
        let mut calls = 0;
        let first = ev.encoded(0, |e| {
            calls += 1;
            format!("{}:{}", e.name, e.data)
        });
        assert_eq!(first, "new_message:{\"a\":1}");
        let again = ev.encoded(0, |_| -> String { unreachable!("encoded once") });
        assert_eq!(first.as_ptr(), again.as_ptr());
        assert_eq!(calls, 1);
    }
}
