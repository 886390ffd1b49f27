//! The local room registry: room -> the connections of this instance in it, whatever their
//! transport. It is the bus handler: every room event, from this instance or another, reaches
//! local members through `on_event`, which encodes the event once and hands the same bytes to
//! every recipient.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use super::conn::{ClientSink, SinkError};
use super::wire::{self, ServerEvent};
use crate::bus::BusHandler;
use crate::domain::{ConnId, RoomEvent, RoomId, UserId};

struct Entry {
    user: UserId,
    sink: Arc<dyn ClientSink>,
}

#[derive(Default)]
pub struct RoomRegistry {
    rooms: RwLock<HashMap<RoomId, HashMap<ConnId, Entry>>>,
}

impl RoomRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a connection to a room; returns true when it is the room's first local connection
    /// (the caller then subscribes the bus).
    pub fn add(
        &self,
        room: &RoomId,
        conn: ConnId,
        user: &UserId,
        sink: Arc<dyn ClientSink>,
    ) -> bool {
        let mut rooms = self.rooms.write();
        let conns = rooms.entry(room.clone()).or_default();
        let first = conns.is_empty();
        conns.insert(
            conn,
            Entry {
                user: user.clone(),
                sink,
            },
        );
        first
    }

    /// Removes a connection; returns true when the room has no local connection left.
    pub fn remove(&self, room: &RoomId, conn: ConnId) -> bool {
        let mut rooms = self.rooms.write();
        let Some(conns) = rooms.get_mut(room) else {
            return false;
        };
        if conns.remove(&conn).is_none() {
            return false;
        }
        if conns.is_empty() {
            rooms.remove(room);
            return true;
        }
        false
    }

    /// Local connections in a room (for tests and metrics).
    pub fn local_connections(&self, room: &RoomId) -> usize {
        self.rooms.read().get(room).map_or(0, HashMap::len)
    }

    fn deliver(&self, room: &RoomId, event: &Arc<ServerEvent>, skip_user: Option<&UserId>) {
        let mut slow = Vec::new();
        {
            let rooms = self.rooms.read();
            let Some(conns) = rooms.get(room) else {
                return;
            };
            for entry in conns.values() {
                if skip_user == Some(&entry.user) {
                    continue;
                }
                if let Err(SinkError::Full) = entry.sink.send(event) {
                    slow.push(entry.sink.clone());
                }
            }
        }
        for sink in slow {
            tracing::warn!(room = %room, "disconnecting a slow consumer (outbound queue full)");
            sink.close();
        }
    }
}

/// The client event for a room event, and the user who must not receive it.
pub(crate) fn to_client_event(event: &RoomEvent) -> (ServerEvent, Option<&UserId>) {
    match event {
        RoomEvent::Message(m) => (ServerEvent::new(wire::NEW_MESSAGE, m), None),
        RoomEvent::Joined { room_id, member } => (
            ServerEvent::from_value(
                wire::USER_JOINED,
                serde_json::json!({"roomId": room_id, "userId": member.user_id, "username": member.username}),
            ),
            Some(&member.user_id),
        ),
        RoomEvent::Left { room_id, member } => (
            ServerEvent::from_value(
                wire::USER_LEFT,
                serde_json::json!({"roomId": room_id, "userId": member.user_id, "username": member.username}),
            ),
            Some(&member.user_id),
        ),
        RoomEvent::Typing {
            room_id,
            member,
            is_typing,
        } => (
            ServerEvent::from_value(
                wire::USER_TYPING,
                serde_json::json!({"roomId": room_id, "userId": member.user_id,
                    "username": member.username, "isTyping": is_typing}),
            ),
            Some(&member.user_id),
        ),
    }
}

impl BusHandler for RoomRegistry {
    fn on_event(&self, event: Arc<RoomEvent>) {
        let (client_event, skip) = to_client_event(&event);
        self.deliver(event.room_id(), &Arc::new(client_event), skip);
    }
}
