//! The local room registry: room -> the connections of this instance in it, whatever their
//! transport. It is the bus handler: every room event, from this instance or another, reaches
//! local members through `on_event`, which encodes the event once and hands the same bytes to
//! every recipient.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;

use super::conn::{ClientSink, SinkError};
use super::wire::{self, ServerEvent};
use crate::bus::BusHandler;
use crate::domain::{ConnId, RoomEvent, RoomId, UserId};
use crate::metrics::Metrics;

struct Entry {
    user: UserId,
    sink: Arc<dyn ClientSink>,
}

pub struct RoomRegistry {
    rooms: RwLock<HashMap<RoomId, HashMap<ConnId, Entry>>>,
    /// Deliveries, bus events received, delivery latency.
    metrics: Arc<Metrics>,
}

impl RoomRegistry {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            rooms: RwLock::default(),
            metrics,
        }
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

    /// The `n` rooms with the most distinct local users, biggest first (ties by room id), as
    /// (room, users, connections); for the operator's page, once per sample, not per message.
    pub fn biggest(&self, n: usize) -> Vec<(RoomId, usize, usize)> {
        let rooms = self.rooms.read();
        let mut users = HashSet::new();
        let mut sizes: Vec<(&RoomId, usize, usize)> = rooms
            .iter()
            .map(|(room, conns)| {
                users.clear();
                users.extend(conns.values().map(|e| &e.user));
                (room, users.len(), conns.len())
            })
            .collect();
        let order = |a: &(&RoomId, usize, usize), b: &(&RoomId, usize, usize)| {
            b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0))
        };
        if sizes.len() > n && n > 0 {
            sizes.select_nth_unstable_by(n - 1, order);
        }
        sizes.truncate(n);
        sizes.sort_unstable_by(order);
        sizes
            .into_iter()
            .map(|(room, users, conns)| (room.clone(), users, conns))
            .collect()
    }

    fn deliver(&self, room: &RoomId, event: &Arc<ServerEvent>, skip_user: Option<&UserId>) {
        let mut slow = Vec::new();
        let mut delivered = 0;
        {
            let rooms = self.rooms.read();
            let Some(conns) = rooms.get(room) else {
                return;
            };
            for entry in conns.values() {
                if skip_user == Some(&entry.user) {
                    continue;
                }
                match entry.sink.send(event) {
                    Ok(()) => delivered += 1,
                    Err(SinkError::Full) => slow.push(entry.sink.clone()),
                    Err(SinkError::Closed) => {}
                }
            }
        }
        // One add per broadcast, not one per recipient.
        self.metrics.deliveries.add(delivered);
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
        RoomEvent::Edited { .. } => lifecycle(wire::MESSAGE_EDITED, event),
        RoomEvent::Deleted { .. } => lifecycle(wire::MESSAGE_DELETED, event),
        RoomEvent::Reaction { .. } => lifecycle(wire::REACTION_UPDATED, event),
        RoomEvent::Read(_) => lifecycle(wire::READ_RECEIPT, event),
    }
}

/// A SPEC 10 event: every member gets it, the one who acted included.
fn lifecycle<'a>(name: &'static str, event: &'a RoomEvent) -> (ServerEvent, Option<&'a UserId>) {
    let payload = event.lifecycle_payload().unwrap_or_default();
    (ServerEvent::from_value(name, payload), None)
}

impl BusHandler for RoomRegistry {
    fn on_event(&self, event: Arc<RoomEvent>) {
        self.metrics.bus_received[super::event_kind(&event)].inc();
        let (client_event, skip) = to_client_event(&event);
        self.deliver(event.room_id(), &Arc::new(client_event), skip);
        if let RoomEvent::Message(m) = &*event {
            // From the message's timestamp (epoch ms, taken before its durable write); across
            // instances this includes the bus and the clocks' difference.
            let now_us = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64);
            let waited = now_us.saturating_sub(m.timestamp.saturating_mul(1000));
            self.metrics
                .delivery_latency
                .observe(Duration::from_micros(waited));
        }
    }
}
