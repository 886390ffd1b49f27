//! The durable record: messages, rooms and their participants.
//!
//! # Contract (every backend)
//! - `append` returns only after the message is durable (committed; fsynced where the backend
//!   offers it). A message is never acknowledged to a client before that.
//! - Idempotency: an `append` whose `(room_id, user_id, client_message_id)` matches a stored
//!   message stores nothing and returns the stored message with `duplicate: true`.
//! - Order: within a room, messages are ordered by append order; `history` and `after` return
//!   them oldest first.
//! - `append` creates an unknown room as an open `group` room and maintains `lastMessage` /
//!   `updatedAt`.
//! - Outage: an unreachable backend returns `StoreError::Unavailable` promptly; it never hangs
//!   and never reports success for an unstored write.

pub mod embedded;
pub mod redis_cache;

use async_trait::async_trait;

use crate::domain::{Message, MessageId, NewRoom, Room, RoomId, UserId};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached or is shutting down.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A cursor (`before`) names no message of the room.
    #[error("unknown message id")]
    UnknownCursor,
    /// `create_room` with a room id that already exists.
    #[error("room already exists")]
    RoomExists,
    #[error("storage error: {0}")]
    Internal(String),
}

/// The outcome of an `append`.
#[derive(Debug, Clone)]
pub struct Appended {
    pub message: Message,
    /// True when an earlier message with the same client message id was returned instead.
    pub duplicate: bool,
}

#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Stores a message durably (see the idempotency rule above).
    async fn append(&self, message: Message) -> Result<Appended, StoreError>;

    /// The `limit` most recent messages of a room strictly before `before` (or the newest),
    /// oldest first. An unknown room gives an empty list; an unknown cursor `UnknownCursor`.
    async fn history(
        &self,
        room: &RoomId,
        limit: usize,
        before: Option<&MessageId>,
    ) -> Result<Vec<Message>, StoreError>;

    /// Up to `limit` messages of a room stored after `after`, oldest first; `None` when
    /// `after` names no message of the room.
    async fn after(
        &self,
        room: &RoomId,
        after: &MessageId,
        limit: usize,
    ) -> Result<Option<Vec<Message>>, StoreError>;

    async fn get_room(&self, room: &RoomId) -> Result<Option<Room>, StoreError>;

    /// Creates a private room. A direct room for a pair that already has one returns that room
    /// and `false`; a taken room id is `RoomExists`.
    async fn create_room(&self, room: NewRoom) -> Result<(Room, bool), StoreError>;

    /// Records that `user` joined an open room, creating the room as an open group if unknown.
    /// Harmless when repeated.
    async fn add_member(&self, room: &RoomId, user: &UserId) -> Result<(), StoreError>;

    /// The rooms `user` takes part in, most recently active first.
    async fn rooms_of(&self, user: &UserId) -> Result<Vec<Room>, StoreError>;

    /// Cheap reachability check for `/ready`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Finishes in-flight writes; later writes fail with `Unavailable`.
    async fn close(&self);
}
