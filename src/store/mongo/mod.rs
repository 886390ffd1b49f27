//! `MongoStore`: the `MessageStore` on MongoDB (`STORAGE=mongodb`, `MONGODB_URI`), with the
//! Node service's collections and field names, so a database it wrote is read as is.
//!
//! # Documents
//! - `messages`: `{_id: ObjectId (= messageId), roomId, userId, username, message, messageType,
//!   timestamp: Date, createdAt: Date}` as the Node service wrote them, plus, when present,
//!   `clientMessageId` (idempotency key) and `outbox` (the pending notification event, see
//!   below). Documents without `username` / `messageType` read as the user id / `text`.
//! - `rooms`: `{roomId, type, participants: [userId], lastMessage: {content, timestamp: Date,
//!   senderId} | null, createdAt: Date, updatedAt: Date}` plus `isPrivate` and, for direct rooms
//!   created here, `directKey` ("a\u{1f}b" of the sorted pair). A room document without
//!   `isPrivate` (written by the Node service, which only created rooms through its REST API with
//!   participants) is private when it has participants (SPEC 4), open otherwise.
//! - `counters`: `{_id: "outbox", seq}`, the outbox sequence.
//!
//! Indexes (created at start-up, idempotent): `messages {roomId, timestamp}` (history),
//! unique `messages {roomId, userId, clientMessageId}` partial on documents that have a
//! `clientMessageId` (the Node service's documents have none), `messages {outbox.seq}` partial
//! on pending events, unique `rooms {roomId}`, `rooms {participants, updatedAt}` (rooms of a
//! user), unique sparse `rooms {directKey}` (one direct room per pair).
//!
//! # Order
//! Messages of a room are ordered by `(timestamp, _id)`: the timestamp the chat gave them, then
//! the ObjectId (seconds, per-process bytes, a counter), which is how the Node service's
//! documents sort too. `before` / `after` cursors compare on that pair.
//!
//! # Writes and the outbox without transactions
//! Appends are group-committed (`store::batch`): the writer takes every waiting append (up to
//! [`MAX_BATCH`]), reads the batch's rooms, reserves one outbox `seq` range, and stores the
//! messages with one unordered `insertMany`. Each message's notification event is a field of
//! its own document (`outbox: {seq, receiverId, receiverIds}`), so the message and its event are
//! written by one single-document (atomic) write: both or neither, with no multi-document
//! transaction (which standalone servers and the CI stand-in do not offer). A duplicate
//! idempotency key fails only its own document (code 11000) and is answered with the stored
//! message. `rooms.lastMessage` / `updatedAt` are then moved forward (never back). The reply
//! comes after the write concern is met: `w: majority, j: true` unless the URI sets one. Room
//! creations, joins and outbox acks are single-document writes of their own, not queued.
//!
//! The relay's claim is an `updateMany` that stamps `outbox.claimedBy` / `claimedUntil` only on
//! entries still unclaimed (or whose lease expired, or already this store's), re-checked per
//! document by the server, so two instances never get the same entry within a lease;
//! `outbox_mark_sent` removes the `outbox` field; `close` hands this store's claims back.
//!
//! # Outage
//! Server selection and connecting are bounded by `MongoConfig::timeout` (default 2 s) and a
//! whole batch by [`BATCH_TIMEOUT`]: an unreachable server gives `StoreError::Unavailable`,
//! never a hang and never an acknowledged unstored message. The driver reconnects by itself.
//!
//! # Map
//! - `mod.rs`: [`MongoConfig`], [`MongoStore`]: connecting, the error mapping and helpers
//!   shared by the files below, and the `MessageStore` impl, which queues appends and hands
//!   the rest to the files below.
//! - `schema.rs`: the indexes, created at start-up.
//! - `writes.rs`: the writer's batch of appends (`insertMany`, rooms, outbox fields), room
//!   creation and members.
//! - `reads.rs`: history, `after`, rooms.
//! - `outbox.rs`: the claim, marking sent, releasing claims, the count.
//! - `documents.rs`: documents as domain values (the Node service's forms and the stand-in's).

mod documents;
mod outbox;
mod reads;
mod schema;
mod writes;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{Document, doc, oid::ObjectId};
use mongodb::error::{Error as MongoError, ErrorKind};
use mongodb::options::{Acknowledgment, ClientOptions, CollectionOptions, WriteConcern};
use mongodb::{Client, Collection, Database};
use tokio::sync::Notify;

use super::batch::{OutboxState, Reply, Writes};
use super::{Appended, MessageStore, OutboxConfig, OutboxEntry, StoreError};
use crate::domain::{
    Message, MessageChange, MessageId, NewRoom, ReadMarker, Room, RoomEvent, RoomId, UserId,
};
use crate::store::{Changed, MarkedRead};

/// Most appends in one `insertMany`.
pub const MAX_BATCH: usize = 1024;
/// Longest a batch may take before its senders get `Unavailable`.
pub const BATCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The database when the URI names none (the Node service's `chat_db`).
pub const DEFAULT_DATABASE: &str = "chat_db";
/// MongoDB's duplicate key error.
const DUPLICATE_KEY: i32 = 11000;

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct MongoConfig {
    /// `mongodb://host:port/database?options` (`MONGODB_URI`).
    pub uri: String,
    /// A database to use instead of the URI's (tests use a fresh one per run).
    pub database: Option<String>,
    /// Whether appends also write outbox entries (see the outbox contract in `store`).
    pub outbox: Option<OutboxConfig>,
    /// Bound of server selection and connecting: how fast requests fail while the server is
    /// unreachable.
    pub timeout: Duration,
}

impl MongoConfig {
    pub fn new(uri: impl Into<String>) -> Self {
        Self {
            uri: uri.into(),
            database: None,
            outbox: None,
            timeout: Duration::from_secs(2),
        }
    }
}

/// What the writer queues: an append and its caller's channel.
type Append = (Message, Reply<Appended>);

pub struct MongoStore {
    db: Database,
    messages: Collection<Document>,
    rooms: Collection<Document>,
    writes: Writes<Append>,
    outbox: Arc<OutboxState>,
    /// This store's name in `outbox.claimedBy`.
    owner: String,
    closed: AtomicBool,
}

/// Connection-level failures are `Unavailable` (the caller may retry); the rest `Internal`.
fn db_error(e: MongoError) -> StoreError {
    let unavailable = matches!(
        *e.kind,
        ErrorKind::Io(_)
            | ErrorKind::ServerSelection { .. }
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::DnsResolve { .. }
            | ErrorKind::Shutdown
    ) || e.contains_label("RetryableWriteError")
        || e.contains_label("TransientTransactionError");
    if unavailable {
        StoreError::Unavailable(format!("mongodb: {e}"))
    } else {
        StoreError::Internal(format!("mongodb: {e}"))
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Internal(format!("mongodb: stored {what} is invalid"))
}

fn is_duplicate_key(e: &MongoError) -> bool {
    match &*e.kind {
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        _ => false,
    }
}

/// Bounds a database call by `limit`.
async fn bounded<T>(
    limit: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, f).await.unwrap_or_else(|_| {
        Err(StoreError::Unavailable(format!(
            "mongodb: {what} timed out"
        )))
    })
}

/// `{$and: [a, b]}`. Conditions are always combined this way rather than as sibling fields of
/// one filter: the nx-27017 stand-in ignores a field that sits beside an `$or` (real MongoDB
/// reads both forms alike).
fn both(a: Document, b: Document) -> Document {
    doc! {"$and": [a, b]}
}

fn oid(id: &MessageId) -> Result<ObjectId, StoreError> {
    ObjectId::parse_str(id.as_str()).map_err(|_| StoreError::UnknownCursor)
}

/// Every document a `find` returns.
async fn all(
    find: impl std::future::IntoFuture<Output = mongodb::error::Result<mongodb::Cursor<Document>>>,
) -> Result<Vec<Document>, StoreError> {
    find.await
        .map_err(db_error)?
        .try_collect()
        .await
        .map_err(db_error)
}

impl MongoStore {
    /// Connects, creates the indexes and starts the writer.
    pub async fn open(cfg: MongoConfig) -> Result<Self, StoreError> {
        let mut options = ClientOptions::parse(&cfg.uri)
            .await
            .map_err(|e| StoreError::Unavailable(format!("MONGODB_URI: {e}")))?;
        options.server_selection_timeout = Some(cfg.timeout);
        options.connect_timeout = Some(cfg.timeout);
        options
            .app_name
            .get_or_insert_with(|| "chat-service".into());
        if options.write_concern.is_none() {
            let mut wc = WriteConcern::default();
            wc.w = Some(Acknowledgment::Majority);
            wc.journal = Some(true);
            options.write_concern = Some(wc);
        }
        let name = cfg
            .database
            .clone()
            .or_else(|| options.default_database.clone())
            .unwrap_or_else(|| DEFAULT_DATABASE.to_string());
        let write_concern = options
            .write_concern
            .as_ref()
            .and_then(|wc| mongodb::bson::to_document(wc).ok());
        let client = Client::with_options(options).map_err(db_error)?;
        let db = client.database(&name);
        let coll =
            |n: &str| db.collection_with_options::<Document>(n, CollectionOptions::default());
        let (messages, rooms, counters) = (coll("messages"), coll("rooms"), coll("counters"));
        bounded(
            cfg.timeout * 5,
            "creating indexes",
            schema::create_indexes(&messages, &rooms),
        )
        .await?;

        let pending = match cfg.outbox {
            Some(_) => outbox::count(&messages).await?,
            None => 0,
        };
        let outbox = OutboxState::new(cfg.outbox, pending);
        let writes = Writes::start(writes::Writer {
            db: db.clone(),
            write_concern,
            messages: messages.clone(),
            rooms: rooms.clone(),
            counters,
            outbox: outbox.clone(),
            counted: std::time::Instant::now(),
        });
        Ok(Self {
            db,
            messages,
            rooms,
            writes,
            outbox,
            owner: format!("{}-{}", std::process::id(), ObjectId::new().to_hex()),
            closed: AtomicBool::new(false),
        })
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            Err(self.writes.closed())
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl MessageStore for MongoStore {
    async fn append(&self, message: Message) -> Result<Appended, StoreError> {
        self.check_open()?;
        self.writes.submit(|tx| (message, tx)).await
    }

    async fn history(
        &self,
        room: &RoomId,
        limit: usize,
        before: Option<&MessageId>,
    ) -> Result<Vec<Message>, StoreError> {
        reads::history(&self.messages, room, limit, before).await
    }

    async fn after(
        &self,
        room: &RoomId,
        after: &MessageId,
        limit: usize,
    ) -> Result<Option<Vec<Message>>, StoreError> {
        reads::after(&self.messages, room, after, limit).await
    }

    async fn get_room(&self, room: &RoomId) -> Result<Option<Room>, StoreError> {
        reads::find_room(&self.rooms, doc! {"roomId": room.as_str()}).await
    }

    async fn create_room(&self, room: NewRoom) -> Result<(Room, bool), StoreError> {
        self.check_open()?;
        writes::create_room(&self.rooms, room).await
    }

    async fn add_member(&self, room: &RoomId, user: &UserId) -> Result<(), StoreError> {
        self.check_open()?;
        writes::add_member(&self.rooms, room, user).await
    }

    async fn rooms_of(&self, user: &UserId) -> Result<Vec<Room>, StoreError> {
        reads::rooms_of(&self.rooms, user).await
    }

    async fn get_message(
        &self,
        _room: &RoomId,
        _id: &MessageId,
    ) -> Result<Option<Message>, StoreError> {
        Err(StoreError::Internal(
            "lifecycle: not yet on this store".into(),
        ))
    }

    async fn change(&self, _change: MessageChange) -> Result<Changed, StoreError> {
        Err(StoreError::Internal(
            "lifecycle: not yet on this store".into(),
        ))
    }

    async fn changes_since(
        &self,
        _room: &RoomId,
        _since: &MessageId,
        _limit: usize,
    ) -> Result<Option<Vec<RoomEvent>>, StoreError> {
        Err(StoreError::Internal(
            "lifecycle: not yet on this store".into(),
        ))
    }

    async fn mark_read(&self, _marker: ReadMarker) -> Result<MarkedRead, StoreError> {
        Err(StoreError::Internal(
            "lifecycle: not yet on this store".into(),
        ))
    }

    async fn receipts(&self, _room: &RoomId) -> Result<Vec<ReadMarker>, StoreError> {
        Err(StoreError::Internal(
            "lifecycle: not yet on this store".into(),
        ))
    }

    async fn outbox_pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.check_open()?;
        outbox::claim(&self.messages, &self.owner, limit).await
    }

    async fn outbox_mark_sent(&self, seqs: &[u64]) -> Result<(), StoreError> {
        self.check_open()?;
        outbox::mark_sent(&self.messages, &self.outbox, seqs).await
    }

    async fn outbox_len(&self) -> Result<u64, StoreError> {
        outbox::count(&self.messages).await
    }

    fn outbox_signal(&self) -> Arc<Notify> {
        self.outbox.signal.clone()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.check_open()?;
        bounded(Duration::from_secs(3), "ping", async {
            self.db
                .run_command(doc! {"ping": 1})
                .await
                .map(|_| ())
                .map_err(|e| StoreError::Unavailable(format!("mongodb: {e}")))
        })
        .await
    }

    async fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.writes.close().await;
        // Hand this store's claims back, so a restarted instance resends them at once.
        outbox::release(&self.messages, &self.owner).await;
    }
}
