//! The conformance suite of the `MessageStore` contract: one set of properties every backend
//! passes (embedded, PostgreSQL, MongoDB). It lives in the library (not under `tests/`) so that
//! every backend's test, and an operator checking a new database, runs the very same code.
//!
//! A backend is handed to the suite as a [`Backend`]: something that opens a store on the same
//! durable location every time (so restart persistence can be checked). Each run uses room
//! and user ids unique to that run, so a shared database needs no cleanup; only the outbox
//! property drains the outbox it finds (use a dedicated database or schema for it; the
//! lifecycle's outbox property reads and marks sent only the entries of its own messages).
//!
//! Properties: ordering, `limit`/`before` paging and `after`, idempotency (also under
//! concurrent duplicates, and for shared backends between two instances), rooms and
//! participants, the outbox (entries, claim/ack, bound, and for shared backends the claim
//! between two instances), concurrent writers, restart persistence, the message lifecycle
//! (edits, tombstones, replies, reactions, the change log, read markers and unread counts,
//! the entries of edits and deletes, the deleted text gone from the raw data, racing changes),
//! the scans of the operator's commands.
//! Each property panics with its name and what differed.
//!
//! # Map
//! - `mod.rs`: [`Backend`], [`run_all`], the run's ids ([`Run`]) and [`message`].
//! - `messages.rs`: ordering, paging (`limit`, `before`, `after`), idempotency (one instance,
//!   and two instances of a shared backend).
//! - `rooms.rs`: rooms and participants.
//! - `durability.rs`: concurrent writers, restart persistence.
//! - `outbox.rs`: the outbox contract.
//! - `lifecycle.rs`: the lifecycle contract (SPEC 10).
//! - `scan.rs`: the scan contract and `append_all` (the operator's commands).

mod durability;
mod lifecycle;
mod messages;
mod outbox;
mod rooms;
mod scan;

use std::sync::Arc;

use async_trait::async_trait;

use super::{MessageStore, OutboxConfig, StoreError};
use crate::domain::{
    ClientMessageId, Message, MessageBody, MessageId, MessageType, RoomId, UserId, Username, now_ms,
};

pub use durability::{concurrent_writers, restart_persistence};
pub use lifecycle::{
    change_log, changes_read_back, idempotent_repeats, lifecycle, lifecycle_on_old_messages,
    lifecycle_outbox, racing_changes, reaction_users, read_markers_and_unread, refusals,
};
pub use messages::{idempotency, idempotency_across_instances, ordering, paging};
pub use outbox::outbox;
pub use rooms::rooms_and_participants;
pub use scan::scans;

/// Opens stores of one backend for the suite.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Opens a store on this backend's durable location (the same one on every call), with
    /// or without the outbox.
    async fn open(&self, outbox: Option<OutboxConfig>)
    -> Result<Arc<dyn MessageStore>, StoreError>;

    /// Whether several instances may share the location (then the outbox must be a claim).
    fn shared(&self) -> bool;

    /// Whether `text` appears anywhere in the backend's raw durable data: any column of any
    /// row of any table (SQL backends), any string of any document of any collection
    /// (MongoDB), read past the store. A deleted message's text must not (SPEC 10).
    async fn raw_contains(&self, text: &str) -> bool;
}

/// Runs every property against `backend`.
pub async fn run_all(backend: &dyn Backend) {
    let run = Run::new();
    let store = backend.open(None).await.expect("open the store");
    ordering(&*store, &run).await;
    paging(&*store, &run).await;
    idempotency(store.clone(), &run).await;
    rooms_and_participants(&*store, &run).await;
    scans(&*store, &run).await;
    concurrent_writers(store.clone(), &run).await;
    store.close().await;
    idempotency_across_instances(backend, &run).await;
    restart_persistence(backend, &run).await;
    outbox(backend, &run).await;
    lifecycle(backend, &run).await;
}

/// Ids unique to one run of the suite.
pub struct Run {
    prefix: String,
}

impl Default for Run {
    fn default() -> Self {
        Self::new()
    }
}

impl Run {
    pub fn new() -> Self {
        Self {
            prefix: format!("cf{}", MessageId::generate(now_ms())),
        }
    }

    pub fn room(&self, name: &str) -> RoomId {
        RoomId::parse(&format!("{}-{name}", self.prefix)).expect("room id")
    }

    pub fn user(&self, name: &str) -> UserId {
        UserId::parse(&format!("{}-{name}", self.prefix)).expect("user id")
    }
}

/// A new message (fresh id, current time) of `user` in `room`.
pub fn message(room: &RoomId, user: &UserId, text: &str, cmid: Option<&str>) -> Message {
    Message::new(
        MessageId::generate(now_ms()),
        room.clone(),
        user.clone(),
        Username::parse(user.as_str()).expect("username"),
        MessageBody::from_stored(text.to_string()),
        MessageType::Text,
        now_ms(),
        cmid.map(|c| ClientMessageId::parse(c).expect("client message id")),
    )
}

fn texts(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m.message.as_str().to_string())
        .collect()
}

async fn append_texts(store: &dyn MessageStore, room: &RoomId, user: &UserId, n: usize) {
    for i in 0..n {
        store
            .append(message(room, user, &format!("m{i}"), None))
            .await
            .expect("append");
    }
}

fn numbered(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}
