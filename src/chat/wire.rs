//! The names of socket events (both transports) and the outbound event value shared by every
//! recipient of a broadcast.

use std::sync::OnceLock;

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
/// recipient; a transport that needs its own encoding caches it here, so it is done once.
#[derive(Debug)]
pub struct ServerEvent {
    pub name: &'static str,
    pub data: Value,
    ws_frame: OnceLock<String>,
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
        }
    }

    /// The raw-WebSocket frame `{"event": name, "data": data}`, encoded once.
    pub fn ws_frame(&self) -> &str {
        // Event names are fixed ASCII identifiers (the constants above): no escaping needed.
        self.ws_frame
            .get_or_init(|| format!(r#"{{"event":"{}","data":{}}}"#, self.name, self.data))
    }
}
