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
//! - `counters`: `{_id: "outbox", seq}`, the outbox sequence; `{_id: "changes", seq}`, the
//!   change-log sequence (each message's `rev`).
//! - SPEC 10 adds to `messages`: `replyTo` (a messageId), `editedAt` / `deletedAt` (Dates; a
//!   deleted message keeps its document with `message: ""`), `rev` (its latest change's
//!   number) and, for a moment, `pending` (see "Lifecycle" below); and the collections
//!   `reactions` (`{_id: "messageId\x1femoji\x1fuserId", messageId, emoji, userId, seq, on,
//!   at}`: kept with `on: 0` when removed, so that a late step can tell it is older),
//!   `readMarkers` (`{_id: "roomId\x1fuserId", roomId, userId, messageId, msgTs, readAt}`)
//!   and `messageChanges`, the rooms' change log (`{_id, seq, roomId, messageId, msgTs, kind,
//!   userId, at, emoji?, added?, count?, outbox?, gone?}`: `msgTs` places the message in its
//!   room for a resume, `gone` marks the edits of a message deleted since). Existing fields
//!   are untouched: a database written before reads as never edited, not deleted, without
//!   reactions or markers.
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
//! # Lifecycle (SPEC 10) without transactions
//! A change (edit, delete, reaction) is committed by one compare-and-set of the message
//! document on its `rev` that writes the new state and the change itself as `pending`; the
//! change-log document (with the `message.edited` / `message.deleted` outbox entry), the
//! reaction document, the room's `lastMessage` text and a delete's blanking of the message's
//! pending entries are derived from `pending` by steps that may run twice or late without
//! harm (details: `lifecycle.rs`). So a change and its outbox entry are durable together,
//! as an append and its `outbox` field are, and two instances changing one message never
//! both win (their changes take turns within one instance). Until its steps ran (at once,
//! normally), a delete's text may still sit in an edit's pending entry, and a resume may not
//! see the change yet; reads apply a pending reaction themselves. A `message.sent` entry
//! still pending reads the message's current text (an edit before the relay sent it shows
//! in it; a delete blanks it). Read markers move forward by a conditional update (or the
//! insert of a first one). `rooms_of` counts unread messages in three queries per page
//! (`reads.rs` tells why not fewer on the stand-in).
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
//! - `reads.rs`: history, `after` (with reactions), rooms (with unread counts), the change
//!   log since a message, read receipts.
//! - `lifecycle.rs`: changes (the compare-and-set and its steps), one message, read markers.
//! - `scan.rs`: the operator's scans (every room id, a room's first messages, counts).
//! - `outbox.rs`: the claim, marking sent, releasing claims, the count.
//! - `documents.rs`: documents as domain values (the Node service's forms and the stand-in's).

mod documents;
mod lifecycle;
mod outbox;
mod reads;
mod scan;
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
    /// `counters`: the outbox and change-log sequences.
    counters: Collection<Document>,
    /// `messageChanges`: each room's change log (and the outbox entries of edits and deletes).
    changes: Collection<Document>,
    /// `reactions`: one document per (message, emoji, user), kept when removed.
    reactions: Collection<Document>,
    /// `readMarkers`: one document per (room, user).
    markers: Collection<Document>,
    writes: Writes<Append>,
    outbox: Arc<OutboxState>,
    /// This store's name in `outbox.claimedBy`.
    owner: String,
    closed: AtomicBool,
    /// Turns of the changes of one message (by a hash of its id) within this instance.
    turns: Vec<tokio::sync::Mutex<()>>,
}

/// How many turns `MongoStore::change_turn` spreads messages over.
const TURNS: usize = 64;

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
        let (changes, reactions, markers) = (
            coll("messageChanges"),
            coll("reactions"),
            coll("readMarkers"),
        );
        bounded(
            cfg.timeout * 5,
            "creating indexes",
            schema::create_indexes(&messages, &rooms, &changes, &reactions, &markers),
        )
        .await?;

        let pending = match cfg.outbox {
            Some(_) => outbox::count(&messages, &changes).await?,
            None => 0,
        };
        let outbox = OutboxState::new(cfg.outbox, pending);
        let writes = Writes::start(writes::Writer {
            db: db.clone(),
            write_concern,
            messages: messages.clone(),
            rooms: rooms.clone(),
            counters: counters.clone(),
            changes: changes.clone(),
            outbox: outbox.clone(),
            counted: std::time::Instant::now(),
            failing: Default::default(),
        });
        let store = Self {
            db,
            messages,
            rooms,
            counters,
            changes,
            reactions,
            markers,
            writes,
            outbox,
            owner: format!("{}-{}", std::process::id(), ObjectId::new().to_hex()),
            closed: AtomicBool::new(false),
            turns: (0..TURNS).map(|_| tokio::sync::Mutex::new(())).collect(),
        };
        // Changes a stopped instance left half-applied (see "Lifecycle" above).
        bounded(
            cfg.timeout * 5,
            "completing pending changes",
            lifecycle::complete_stale(&store),
        )
        .await?;
        Ok(store)
    }

    /// The lock that the changes of message `id` take turns on in this instance.
    fn change_turn(&self, id: &MessageId) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.as_str().hash(&mut h);
        &self.turns[(h.finish() as usize) % TURNS]
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

    async fn append_all(&self, messages: Vec<Message>) -> Result<Vec<Appended>, StoreError> {
        self.check_open()?;
        self.writes
            .submit_all(messages.into_iter().map(|m| move |tx| (m, tx)))
            .await
    }

    async fn history(
        &self,
        room: &RoomId,
        limit: usize,
        before: Option<&MessageId>,
    ) -> Result<Vec<Message>, StoreError> {
        reads::history(self, room, limit, before).await
    }

    async fn after(
        &self,
        room: &RoomId,
        after: &MessageId,
        limit: usize,
    ) -> Result<Option<Vec<Message>>, StoreError> {
        reads::after(self, room, after, limit).await
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
        reads::rooms_of(self, user).await
    }

    async fn get_message(
        &self,
        room: &RoomId,
        id: &MessageId,
    ) -> Result<Option<Message>, StoreError> {
        bounded(
            BATCH_TIMEOUT,
            "reading a message",
            lifecycle::message(self, room, id),
        )
        .await
    }

    async fn change(&self, change: MessageChange) -> Result<Changed, StoreError> {
        self.check_open()?;
        bounded(
            BATCH_TIMEOUT,
            "changing a message",
            lifecycle::change(self, change),
        )
        .await
    }

    async fn changes_since(
        &self,
        room: &RoomId,
        since: &MessageId,
        limit: usize,
    ) -> Result<Option<Vec<RoomEvent>>, StoreError> {
        bounded(
            BATCH_TIMEOUT,
            "reading the change log",
            reads::changes_since(self, room, since, limit),
        )
        .await
    }

    async fn mark_read(&self, marker: ReadMarker) -> Result<MarkedRead, StoreError> {
        self.check_open()?;
        bounded(
            BATCH_TIMEOUT,
            "moving a read marker",
            lifecycle::mark_read(self, marker),
        )
        .await
    }

    async fn receipts(&self, room: &RoomId) -> Result<Vec<ReadMarker>, StoreError> {
        bounded(
            BATCH_TIMEOUT,
            "reading receipts",
            reads::receipts(self, room),
        )
        .await
    }

    async fn outbox_pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.check_open()?;
        // Changes an instance left half-applied: their outbox entries are written now.
        bounded(
            BATCH_TIMEOUT,
            "completing pending changes",
            lifecycle::complete_stale(self),
        )
        .await?;
        outbox::claim(&self.messages, &self.changes, &self.owner, limit).await
    }

    async fn outbox_mark_sent(&self, seqs: &[u64]) -> Result<(), StoreError> {
        self.check_open()?;
        outbox::mark_sent(&self.messages, &self.changes, &self.outbox, seqs).await
    }

    async fn outbox_len(&self) -> Result<u64, StoreError> {
        outbox::count(&self.messages, &self.changes).await
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
        outbox::release(&self.messages, &self.changes, &self.owner).await;
    }

    async fn room_ids(
        &self,
        after: Option<&RoomId>,
        limit: usize,
    ) -> Result<Vec<RoomId>, StoreError> {
        scan::room_ids(self, after, limit).await
    }

    async fn scan(
        &self,
        room: &RoomId,
        after: Option<&MessageId>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        scan::scan(self, room, after, limit).await
    }

    async fn count(&self, room: &RoomId) -> Result<u64, StoreError> {
        scan::count(self, room).await
    }
}
