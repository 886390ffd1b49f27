//! Who is connected and who is in which room, across every instance.
//!
//! # Contract
//! - `connect` counts a user's open connections (all instances) and admits the connection only
//!   while the count stays within the limit; a refused connection is not counted.
//! - Room membership is per user: `join` reports whether this is the user's first connection
//!   in the room (others then get `user_joined`), `leave` whether it was the last (`user_left`).
//! - `members` lists the users of a room with their names; `member_counts` only counts them
//!   (for the operator's page: it may lag behind by the expiry of a dead instance's entries).

pub mod memory;
pub mod redis;
mod redis_scripts;

use async_trait::async_trait;

use crate::domain::{ConnId, Member, RoomId, UserId};

#[derive(Debug, thiserror::Error)]
#[error("presence unavailable: {0}")]
pub struct PresenceError(pub String);

#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Counts the connection in if the user has fewer than `limit` (0 = unlimited); returns
    /// whether it was admitted. `socket_id`: the id the client sees (Socket.IO's `socket.id`),
    /// which `user:presence:{userId}` shows other services.
    async fn connect(
        &self,
        user: &UserId,
        conn: ConnId,
        socket_id: &str,
        limit: u32,
    ) -> Result<bool, PresenceError>;
    /// Returns how many connections of the user remain.
    async fn disconnect(&self, user: &UserId, conn: ConnId) -> Result<u32, PresenceError>;
    async fn join(
        &self,
        room: &RoomId,
        member: &Member,
        conn: ConnId,
    ) -> Result<bool, PresenceError>;
    async fn leave(
        &self,
        room: &RoomId,
        user: &UserId,
        conn: ConnId,
    ) -> Result<bool, PresenceError>;
    async fn members(&self, room: &RoomId) -> Result<Vec<Member>, PresenceError>;
    /// How many users each room has, in the order of `rooms`.
    async fn member_counts(&self, rooms: &[RoomId]) -> Result<Vec<u64>, PresenceError> {
        let mut counts = Vec::with_capacity(rooms.len());
        for room in rooms {
            counts.push(self.members(room).await?.len() as u64);
        }
        Ok(counts)
    }
}
