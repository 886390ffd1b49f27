//! The durable record: messages, rooms and their participants.
//!
//! # Map
//! - `mod.rs`: the port: [`MessageStore`], [`StoreError`], the outbox types and the contract
//!   below.
//! - `embedded/`, `postgres/`, `mongo/`: the backends, one folder each with the same files:
//!   `mod.rs` (the store and its `MessageStore` impl), `schema.rs`, `writes.rs`, `reads.rs`,
//!   `lifecycle.rs` (SPEC 10's writes), `outbox.rs`, `scan.rs` (the operator's scans) (plus `embedded/checkpoint.rs`,
//!   `mongo/documents.rs`).
//! - `batch/`: the group-commit writer all three use (queue, batch loop, close, answers
//!   after the commit, the outbox count, appends sorted against the idempotency keys).
//! - `rows.rs`: SQL rows as messages, rooms and outbox entries (embedded and PostgreSQL).
//! - `sql_reads.rs`: the reads those two share to the letter (history, `after`, the change
//!   log, receipts), one query text each, written into each backend's `reads.rs`.
//! - `redis_cache.rs`: [`redis_cache::RedisCachedStore`], the Redis history cache in front of
//!   any store; `history_items.rs`: what its lists hold (key, item JSON, decode, merge).
//! - `metered.rs`: [`metered::MeteredStore`], the decorator of the durable store that counts
//!   its history reads and errors for the metrics.
//! - `conformance/`: the suite every backend passes.
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
//!
//! # Outbox contract (SPEC 8: notification events, transactional outbox)
//! A store built with the outbox enabled (`OutboxConfig`) writes, for every message it stores,
//! one `OutboxEntry` **in the same transaction** as the message: either both are durable or
//! neither is. The relay (`crate::events::relay`) reads pending entries, publishes them, and
//! only then marks them sent; so an event is never lost, only delayed (at-least-once).
//! - The entry is built from the stored message and the room's participants at append time:
//!   `receiver_ids` = every participant of the room but the sender (private rooms: their
//!   participants; open rooms: the users who ever joined), sorted.
//! - A duplicate append (idempotent `clientMessageId`) writes no second entry.
//! - `seq` is strictly increasing in commit order; `outbox_pending` returns the oldest pending
//!   entries first, so the events of a room leave in the order its messages were stored.
//! - `outbox_mark_sent` removes entries for good (unknown `seq`s are ignored, so a repeated
//!   call is harmless). Until it is called, an entry is returned again by every
//!   `outbox_pending`, including after a restart.
//! - Bound: when `outbox_len()` has reached `OutboxConfig::max_pending`, an append that would
//!   add an entry fails with `StoreError::OutboxFull` and stores nothing (the message is
//!   refused, never stored without its event). Idempotent replays of stored messages still
//!   succeed.
//! - `outbox_signal` is notified after every commit that added entries, so a relay in the same
//!   process wakes up at once; relays also poll, which covers entries written elsewhere.
//! - Several instances: a backend private to one instance (embedded) is relayed by that
//!   instance alone. A backend shared by instances (MongoDB, PostgreSQL) must make
//!   `outbox_pending` a *claim*: entries handed to one relay are not handed to another until a
//!   lease expires (e.g. `UPDATE .. SET claimed_until .. WHERE seq IN (SELECT .. FOR UPDATE
//!   SKIP LOCKED) RETURNING ..`), and a lease outlives a publish batch, so an entry is published
//!   twice only when a relay dies or stalls between publishing and `outbox_mark_sent`.
//! - A store built without the outbox writes no entries; existing entries stay until a relay
//!   sends them.
//! - Changes (SPEC 10): an effective edit writes one `message.edited` entry, an effective
//!   delete one `message.deleted` entry, in the change's transaction (receivers: the room's
//!   participants but the author). A delete also blanks the text of the message's entries
//!   still pending. Reactions and read markers write none.
//!
//! # Lifecycle contract (SPEC 10)
//! - `change` applies one `MessageChange` durably and atomically, checking in the same
//!   transaction: the message exists in that room (`NotFound` otherwise; also for an edit or a
//!   reaction on a deleted message), edits and deletes are the author's (`NotAuthor`), at most
//!   `MAX_REACTIONS_PER_MESSAGE` distinct emoji (`TooManyReactions`). A delete erases the
//!   text (the row keeps a tombstone; the room's `lastMessage` text too when it was this
//!   message). Repeating a delete, an add or a remove changes nothing and answers
//!   `effective: false` with the current state.
//! - Every effective change is recorded in the room's change log with a sequence number
//!   increasing in commit order; the changed message's `rev` is that number.
//! - `changes_since(room, since)`: the logged changes, oldest first, of the room's messages up
//!   to and including `since`, made at or after `since`'s timestamp, as the events the
//!   members got (an edit shows the message's current text; edits of messages deleted since
//!   are left out). `None` when `since` names no message of the room.
//! - Reads (`history`, `after`, `get_message`) return each message's current state:
//!   `edited_at`, `deleted`, `reply_to`, `reactions` (`Reaction::group`, oldest first).
//! - `mark_read` moves the user's marker of the room to the message when it is newer than
//!   the current one (room order), else leaves it (`moved: false`) and returns the current
//!   marker; `NotFound` when the message is not in the room.
//! - `rooms_of` fills `unread_count`: messages of others after the caller's marker (all of
//!   them without one), deleted ones not counted, for every room of the page in one query.
//!
//! # Scan contract (the operator's commands: `migrate`, `export`, `erase`)
//! - `room_ids` pages through every room id the store knows, in byte order of the id: rooms
//!   with a room record and rooms that only have messages (the Node service's MongoDB holds
//!   messages of rooms it never wrote a room document for).
//! - `scan` walks a room's messages in room order, oldest first, each in its current state
//!   (as `history` returns them), a page at a time: the next page starts after the last
//!   message of the previous one. A page may hold fewer than `limit` messages while more
//!   follow; only an empty page ends the walk. `count` counts them, tombstones included.

pub(crate) mod batch;
pub mod conformance;
pub mod embedded;
mod history_items;
pub mod metered;
pub mod mongo;
pub mod postgres;
pub mod redis_cache;
pub(crate) mod rows;
pub(crate) mod sql_reads;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::domain::{
    Message, MessageChange, MessageId, NewRoom, ReadMarker, Room, RoomEvent, RoomId, UserId,
};

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
    /// The notification outbox holds `max_pending` entries: the message was not stored.
    #[error("notification outbox full ({0} events pending)")]
    OutboxFull(u64),
    /// A change or read marker names no message of the room (or a deleted one where that
    /// matters).
    #[error("message not found")]
    NotFound,
    /// Only the author may edit or delete a message.
    #[error("only the author may change this message")]
    NotAuthor,
    /// The message already shows `MAX_REACTIONS_PER_MESSAGE` distinct emoji.
    #[error(
        "a message shows at most {} distinct reactions",
        crate::domain::MAX_REACTIONS_PER_MESSAGE
    )]
    TooManyReactions,
    #[error("storage error: {0}")]
    Internal(String),
}

impl StoreError {
    /// Whether this is one write's refusal (the caller's answer), not a failure of the store.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::RoomExists
                | Self::OutboxFull(_)
                | Self::NotFound
                | Self::NotAuthor
                | Self::TooManyReactions
                | Self::UnknownCursor
        )
    }
}

/// The outcome of a `change`.
#[derive(Debug, Clone)]
pub struct Changed {
    /// The event the room's members get (`Edited`, `Deleted` or `Reaction`).
    pub event: RoomEvent,
    /// The message's state after the change (with `rev`).
    pub message: Message,
    /// False when the change changed nothing (a repeated delete, add or remove).
    pub effective: bool,
}

/// The outcome of a `mark_read`: the user's marker after it, and whether it moved.
#[derive(Debug, Clone)]
pub struct MarkedRead {
    pub marker: ReadMarker,
    pub moved: bool,
}

/// The kind of a notification event (SPEC 8, SPEC 10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxEvent {
    Sent,
    Edited,
    Deleted,
}

impl OutboxEvent {
    /// The event type on the wire and in the outbox rows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "message.sent",
            Self::Edited => "message.edited",
            Self::Deleted => "message.deleted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "message.sent" => Some(Self::Sent),
            "message.edited" => Some(Self::Edited),
            "message.deleted" => Some(Self::Deleted),
            _ => None,
        }
    }
}

/// The outcome of an `append`.
#[derive(Debug, Clone)]
pub struct Appended {
    pub message: Message,
    /// True when an earlier message with the same client message id was returned instead.
    pub duplicate: bool,
    /// When the write that made it durable ended (its commit, or its journal record's
    /// flush), where the store knows it; `chat_durable_write_seconds` ends there, not when the
    /// sender's task runs again. `None`: when the call returned.
    pub committed: Option<std::time::Instant>,
}

/// The outbox settings of a store (see the outbox contract above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxConfig {
    /// Most pending entries; appends beyond it fail with `OutboxFull`.
    pub max_pending: u64,
}

/// One pending notification event, as written beside its message or change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Strictly increasing in commit order (per store).
    pub seq: u64,
    /// `message.sent`, `message.edited` or `message.deleted`.
    pub event: OutboxEvent,
    pub message_id: MessageId,
    pub room_id: RoomId,
    pub sender_id: UserId,
    /// The other participant when the room has exactly two (the sender and this one).
    pub receiver_id: Option<UserId>,
    /// The room's participants but the sender, sorted.
    pub receiver_ids: Vec<UserId>,
    /// The text (`message.sent`, `message.edited`); empty for `message.deleted` and for an
    /// entry whose message was deleted before it left.
    pub message: String,
    /// Epoch milliseconds: the message's timestamp (`message.sent`), `editedAt` or
    /// `deletedAt`.
    pub timestamp: u64,
}

/// An idempotency key: `(roomId, userId, clientMessageId)`.
pub(crate) type Key = (String, String, String);

/// The idempotency key of a message that has a client message id.
pub(crate) fn key_of(m: &Message) -> Option<Key> {
    m.client_message_id.as_ref().map(|c| {
        (
            m.room_id.as_str().to_string(),
            m.user_id.as_str().to_string(),
            c.as_str().to_string(),
        )
    })
}

/// A room id read back by a scan (`room_ids`); one the service could never have written is
/// an error, not silently skipped (a migration would then miss its messages).
pub(crate) fn stored_room_id(id: &str) -> Result<RoomId, StoreError> {
    RoomId::parse(id).map_err(|_| StoreError::Internal(format!("stored room id {id:?} is invalid")))
}

/// The receivers of a message's event (SPEC 8), from the room's participants (sorted) at
/// append time: every participant but the sender, and "the other participant of a 2-person
/// room" (the sender and exactly one other) as the single receiver.
pub fn receivers_of<'a, S: AsRef<str>>(
    participants: &'a [S],
    sender: &str,
) -> (Option<&'a str>, Vec<&'a str>) {
    let others: Vec<&str> = participants
        .iter()
        .map(AsRef::as_ref)
        .filter(|u| *u != sender)
        .collect();
    let single = (participants.len() == 2 && others.len() == 1).then(|| others[0]);
    (single, others)
}

#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Stores a message durably (see the idempotency rule above).
    async fn append(&self, message: Message) -> Result<Appended, StoreError>;

    /// Stores the messages as `append` does each, queued in this order, so a room's messages
    /// keep it (a copy's order; concurrent `append`s have none). Every answer comes after its
    /// commit; the first failure is returned (writes queued after it may have been stored).
    /// The default appends one after the other.
    async fn append_all(&self, messages: Vec<Message>) -> Result<Vec<Appended>, StoreError> {
        let mut out = Vec::with_capacity(messages.len());
        for m in messages {
            out.push(self.append(m).await?);
        }
        Ok(out)
    }

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

    /// One message of a room in its current state; `None` when the room has no such message.
    async fn get_message(
        &self,
        room: &RoomId,
        id: &MessageId,
    ) -> Result<Option<Message>, StoreError>;

    /// Applies a change (see the lifecycle contract above).
    async fn change(&self, change: MessageChange) -> Result<Changed, StoreError>;

    /// The changes a client resuming after `since` missed (see the lifecycle contract), at
    /// most `limit`.
    async fn changes_since(
        &self,
        room: &RoomId,
        since: &MessageId,
        limit: usize,
    ) -> Result<Option<Vec<RoomEvent>>, StoreError>;

    /// Moves a read marker forward (see the lifecycle contract).
    async fn mark_read(&self, marker: ReadMarker) -> Result<MarkedRead, StoreError>;

    /// Every read marker of a room, oldest read first.
    async fn receipts(&self, room: &RoomId) -> Result<Vec<ReadMarker>, StoreError>;

    /// Up to `limit` pending outbox entries, oldest (lowest `seq`) first.
    async fn outbox_pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError>;

    /// Removes the given entries from the outbox (durably, before returning).
    async fn outbox_mark_sent(&self, seqs: &[u64]) -> Result<(), StoreError>;

    /// How many entries are pending.
    async fn outbox_len(&self) -> Result<u64, StoreError>;

    /// Notified after each commit that added outbox entries.
    fn outbox_signal(&self) -> Arc<Notify>;

    /// Cheap reachability check for `/ready`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Finishes in-flight writes; later writes fail with `Unavailable`.
    async fn close(&self);

    /// Up to `limit` room ids after `after` (all from the start with `None`), in id order:
    /// every room with a room record or a message (see the scan contract).
    async fn room_ids(
        &self,
        after: Option<&RoomId>,
        limit: usize,
    ) -> Result<Vec<RoomId>, StoreError>;

    /// Up to `limit` messages of a room after `after` (from the oldest with `None`), oldest
    /// first, in their current state (see the scan contract); `UnknownCursor` when `after`
    /// names no message of the room.
    async fn scan(
        &self,
        room: &RoomId,
        after: Option<&MessageId>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError>;

    /// How many messages a room holds, tombstones included.
    async fn count(&self, room: &RoomId) -> Result<u64, StoreError>;
}
