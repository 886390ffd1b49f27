//! The names of socket events (both transports) and the outbound event value shared by every
//! recipient of a broadcast.

use std::sync::OnceLock;

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use serde_json::Value;

// Client -> server.
pub const AUTHENTICATE: &str = "authenticate";
pub const JOIN_ROOM: &str = "join_room";
pub const LEAVE_ROOM: &str = "leave_room";
pub const SEND_MESSAGE: &str = "send_message";
pub const TYPING: &str = "typing";
/// Every event a client may send.
pub const CLIENT_EVENTS: [&str; 5] = [AUTHENTICATE, JOIN_ROOM, LEAVE_ROOM, SEND_MESSAGE, TYPING];

// Server -> client.
pub const AUTHENTICATED: &str = "authenticated";
pub const NEW_MESSAGE: &str = "new_message";
pub const MESSAGE_HISTORY: &str = "message_history";
pub const ROOM_USERS: &str = "room_users";
pub const USER_JOINED: &str = "user_joined";
pub const USER_LEFT: &str = "user_left";
pub const USER_TYPING: &str = "user_typing";
pub const ERROR: &str = "error";

/// One event for one or many clients. Built once per broadcast and shared (`Arc`) by every
/// recipient; each WebSocket encoding is cached here, so a broadcast is serialized once per
/// transport and every recipient's frame shares the same bytes (a reference count, no copy).
#[derive(Debug)]
pub struct ServerEvent {
    pub name: &'static str,
    pub data: Value,
    ws_frame: OnceLock<Utf8Bytes>,
    sio_frame: OnceLock<Utf8Bytes>,
}

impl ServerEvent {
    pub fn new(name: &'static str, data: &impl Serialize) -> Self {
        Self::from_value(name, serde_json::to_value(data).unwrap_or(Value::Null))
    }

    pub fn from_value(name: &'static str, data: Value) -> Self {
        Self {
            name,
            data,
            ws_frame: OnceLock::new(),
            sio_frame: OnceLock::new(),
        }
    }

    // Event names are fixed ASCII identifiers (the constants above): no escaping needed.

    /// The raw-WebSocket frame `{"event": name, "data": data}`, encoded once.
    pub fn ws_frame(&self) -> &Utf8Bytes {
        self.ws_frame
            .get_or_init(|| format!(r#"{{"event":"{}","data":{}}}"#, self.name, self.data).into())
    }

    /// The Socket.IO event packet in its Engine.IO message, `42["name",data]`, encoded once.
    pub fn sio_frame(&self) -> &Utf8Bytes {
        self.sio_frame
            .get_or_init(|| format!(r#"42["{}",{}]"#, self.name, self.data).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_encoded_once_and_shared() {
        let ev = ServerEvent::from_value(NEW_MESSAGE, serde_json::json!({"a": "\"x\"", "b": 1}));
        assert_eq!(
            ev.sio_frame().as_str(),
            r#"42["new_message",{"a":"\"x\"","b":1}]"#
        );
        assert_eq!(
            ev.ws_frame().as_str(),
            r#"{"event":"new_message","data":{"a":"\"x\"","b":1}}"#
        );
        // The same bytes for every recipient: the second call returns the cached buffer.
        assert_eq!(ev.sio_frame().as_ptr(), ev.sio_frame().clone().as_ptr());
    }
}
