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
//! Appends are group-committed: a writer task takes every waiting append (up to
//! [`MAX_BATCH`]), reads the batch's rooms, reserves one outbox `seq` range, and stores the
//! messages with one unordered `insertMany`. Each message's notification event is a field of
//! its own document (`outbox: {seq, receiverId, receiverIds}`), so the message and its event are
//! written by one single-document (atomic) write: both or neither, with no multi-document
//! transaction (which standalone servers and the CI stand-in do not offer). A duplicate
//! idempotency key fails only its own document (code 11000) and is answered with the stored
//! message. `rooms.lastMessage` / `updatedAt` are then moved forward (never back). The reply
//! comes after the write concern is met: `w: majority, j: true` unless the URI sets one.
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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{Bson, DateTime, Document, doc, oid::ObjectId};
use mongodb::error::{Error as MongoError, ErrorKind};
use mongodb::options::{
    Acknowledgment, ClientOptions, CollectionOptions, IndexOptions, ReturnDocument, WriteConcern,
};
use mongodb::{Client, Collection, Database, IndexModel};
use tokio::sync::{Notify, mpsc, oneshot};

use super::{
    Appended, Key, MessageStore, OutboxConfig, OutboxEntry, StoreError, key_of, receivers_of,
};
use crate::domain::{
    ClientMessageId, LastMessage, Message, MessageBody, MessageId, MessageType, NewRoom, Room,
    RoomId, RoomType, UserId, Username, now_ms,
};

/// Most appends in one `insertMany`.
pub const MAX_BATCH: usize = 1024;
/// Longest a batch may take before its senders get `Unavailable`.
pub const BATCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a relay's claim on outbox entries lasts (longer than a publish batch).
const OUTBOX_LEASE: Duration = Duration::from_secs(60);
/// How often the writer recounts pending events (others may have relayed some).
const OUTBOX_RECOUNT: Duration = Duration::from_secs(1);
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

enum Write {
    Append(Message, oneshot::Sender<Result<Appended, StoreError>>),
    Close(oneshot::Sender<()>),
}

type Reply = oneshot::Sender<Result<Appended, StoreError>>;

pub struct MongoStore {
    db: Database,
    messages: Collection<Document>,
    rooms: Collection<Document>,
    writes: mpsc::Sender<Write>,
    outbox: Arc<OutboxState>,
    /// This store's name in `outbox.claimedBy`.
    owner: String,
    closed: AtomicBool,
}

struct OutboxState {
    config: Option<OutboxConfig>,
    /// Pending entries as last counted plus this writer's changes since.
    pending: AtomicU64,
    signal: Arc<Notify>,
}

/// What the writer needs.
struct Writer {
    db: Database,
    /// The write concern of the `update` commands (the client's, as a document).
    write_concern: Option<Document>,
    messages: Collection<Document>,
    rooms: Collection<Document>,
    counters: Collection<Document>,
    outbox: Arc<OutboxState>,
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

fn closed_error() -> StoreError {
    StoreError::Unavailable("mongodb store is closed".into())
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

fn date(ms: u64) -> DateTime {
    DateTime::from_millis(ms as i64)
}

/// A date field as epoch milliseconds (the Node service wrote `Date`s; numbers are accepted).
fn millis(doc: &Document, key: &str) -> Option<u64> {
    match doc.get(key)? {
        Bson::DateTime(d) => Some(d.timestamp_millis().max(0) as u64),
        Bson::Int64(n) => Some((*n).max(0) as u64),
        Bson::Int32(n) => Some((*n).max(0) as u64),
        Bson::Double(n) => Some(n.max(0.0) as u64),
        // The nx-27017 stand-in turns a `Date` set by `$set` into "YYYY-MM-DD HH:MM:SS.ffffff"
        // (UTC); read it back rather than lose the field.
        Bson::String(s) => parse_utc(s),
        _ => None,
    }
}

/// "YYYY-MM-DD[ T]HH:MM:SS[.fraction][Z]" (UTC) as epoch milliseconds.
fn parse_utc(s: &str) -> Option<u64> {
    let s = s.trim_end_matches('Z');
    let (date, time) = s.split_once([' ', 'T'])?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    let ms: i64 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || sec > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 24 + h) * 60 + min) * 60_000 + sec * 1000 + ms).ok()
}

/// An integer field, whatever width the server kept it in.
fn integer(doc: &Document, key: &str) -> Option<u64> {
    match doc.get(key)? {
        Bson::Int64(n) => u64::try_from(*n).ok(),
        Bson::Int32(n) => u64::try_from(*n).ok(),
        Bson::Double(n) if *n >= 0.0 && n.fract() == 0.0 => Some(*n as u64),
        _ => None,
    }
}

fn string<'a>(doc: &'a Document, key: &str) -> Option<&'a str> {
    doc.get_str(key).ok()
}

fn message_from_doc(doc: &Document) -> Result<Message, StoreError> {
    let id = doc
        .get_object_id("_id")
        .map_err(|_| corrupt("message _id"))?;
    let user = string(doc, "userId").ok_or_else(|| corrupt("message userId"))?;
    let timestamp = millis(doc, "timestamp")
        .or_else(|| millis(doc, "createdAt"))
        .unwrap_or_else(|| id.timestamp().timestamp_millis().max(0) as u64);
    Ok(Message {
        message_id: MessageId::parse(&id.to_hex()).map_err(|_| corrupt("message _id"))?,
        room_id: RoomId::parse(string(doc, "roomId").unwrap_or_default())
            .map_err(|_| corrupt("message roomId"))?,
        user_id: UserId::parse(user).map_err(|_| corrupt("message userId"))?,
        username: Username::parse(string(doc, "username").unwrap_or(user))
            .map_err(|_| corrupt("message username"))?,
        message: MessageBody::from_stored(string(doc, "message").unwrap_or_default().to_string()),
        message_type: match string(doc, "messageType") {
            None => MessageType::Text,
            Some(t) => MessageType::parse_stored(t).ok_or_else(|| corrupt("messageType"))?,
        },
        timestamp,
        client_message_id: string(doc, "clientMessageId")
            .and_then(|c| ClientMessageId::parse(c).ok()),
    })
}

fn room_from_doc(doc: &Document) -> Result<Room, StoreError> {
    let mut participants = match doc.get_array("participants") {
        Ok(list) => list
            .iter()
            .map(|p| match p {
                Bson::String(s) => UserId::parse(s).map_err(|_| corrupt("room participant")),
                _ => Err(corrupt("room participant")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Err(_) => Vec::new(),
    };
    participants.sort();
    participants.dedup();
    let last_message = match doc.get_document("lastMessage") {
        Ok(last) => match (
            string(last, "content"),
            millis(last, "timestamp"),
            string(last, "senderId"),
        ) {
            (Some(content), Some(timestamp), Some(sender)) => Some(LastMessage {
                content: MessageBody::from_stored(content.to_string()),
                timestamp,
                sender_id: UserId::parse(sender).map_err(|_| corrupt("lastMessage senderId"))?,
            }),
            _ => None,
        },
        Err(_) => None,
    };
    let created_at = millis(doc, "createdAt").unwrap_or(0);
    Ok(Room {
        room_id: RoomId::parse(string(doc, "roomId").unwrap_or_default())
            .map_err(|_| corrupt("roomId"))?,
        room_type: RoomType::parse(string(doc, "type").unwrap_or("group"))
            .map_err(|_| corrupt("room type"))?,
        private: doc
            .get_bool("isPrivate")
            .unwrap_or(!participants.is_empty()),
        participants,
        last_message,
        created_at,
        updated_at: millis(doc, "updatedAt").unwrap_or(created_at),
    })
}

fn outbox_entry_from_doc(doc: &Document) -> Result<OutboxEntry, StoreError> {
    let message = message_from_doc(doc)?;
    let outbox = doc
        .get_document("outbox")
        .map_err(|_| corrupt("outbox entry"))?;
    let user = |s: &str| UserId::parse(s).map_err(|_| corrupt("outbox user id"));
    Ok(OutboxEntry {
        seq: integer(outbox, "seq").ok_or_else(|| corrupt("outbox seq"))?,
        message_id: message.message_id,
        room_id: message.room_id,
        sender_id: message.user_id,
        receiver_id: string(outbox, "receiverId").map(user).transpose()?,
        receiver_ids: outbox
            .get_array("receiverIds")
            .map_err(|_| corrupt("outbox receivers"))?
            .iter()
            .map(|r| {
                r.as_str()
                    .ok_or_else(|| corrupt("outbox receivers"))
                    .and_then(user)
            })
            .collect::<Result<_, _>>()?,
        message: message.message.as_str().to_string(),
        timestamp: message.timestamp,
    })
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

fn direct_key(participants: &[UserId]) -> String {
    participants
        .iter()
        .map(UserId::as_str)
        .collect::<Vec<_>>()
        .join("\u{1f}")
}

/// Creates an index; an index with the same keys that already exists under another name or
/// with other options (e.g. made by the Node service) is kept, with a warning.
async fn ensure_index(
    coll: &Collection<Document>,
    keys: Document,
    options: IndexOptions,
) -> Result<(), StoreError> {
    let model = IndexModel::builder()
        .keys(keys.clone())
        .options(options)
        .build();
    match coll.create_index(model).await {
        Ok(_) => Ok(()),
        Err(e) => match &*e.kind {
            // IndexOptionsConflict, IndexKeySpecsConflict
            ErrorKind::Command(c) if c.code == 85 || c.code == 86 => {
                tracing::warn!(collection = coll.name(), ?keys, error = %e, "mongodb: keeping an existing index with other options");
                Ok(())
            }
            _ => Err(db_error(e)),
        },
    }
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

        bounded(cfg.timeout * 5, "creating indexes", async {
            ensure_index(
                &messages,
                doc! {"roomId": 1, "timestamp": 1},
                IndexOptions::default(),
            )
            .await?;
            ensure_index(
                &messages,
                doc! {"roomId": 1, "userId": 1, "clientMessageId": 1},
                IndexOptions::builder()
                    .unique(true)
                    .partial_filter_expression(doc! {"clientMessageId": {"$type": "string"}})
                    .build(),
            )
            .await?;
            ensure_index(
                &messages,
                doc! {"outbox.seq": 1},
                IndexOptions::builder()
                    .partial_filter_expression(doc! {"outbox.seq": {"$exists": true}})
                    .build(),
            )
            .await?;
            ensure_index(
                &rooms,
                doc! {"roomId": 1},
                IndexOptions::builder().unique(true).build(),
            )
            .await?;
            ensure_index(
                &rooms,
                doc! {"participants": 1, "updatedAt": -1},
                IndexOptions::default(),
            )
            .await?;
            ensure_index(
                &rooms,
                doc! {"directKey": 1},
                IndexOptions::builder().unique(true).sparse(true).build(),
            )
            .await
        })
        .await?;

        let outbox = Arc::new(OutboxState {
            config: cfg.outbox,
            pending: AtomicU64::new(0),
            signal: Arc::new(Notify::new()),
        });
        let writer = Writer {
            db: db.clone(),
            write_concern,
            messages: messages.clone(),
            rooms: rooms.clone(),
            counters,
            outbox: outbox.clone(),
        };
        if outbox.config.is_some() {
            let n = writer.count_pending().await?;
            outbox.pending.store(n, Ordering::Relaxed);
        }
        let (writes, rx) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(writer.run(rx));
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
            Err(closed_error())
        } else {
            Ok(())
        }
    }

    async fn find_messages(
        &self,
        filter: Document,
        sort: Document,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        bounded(BATCH_TIMEOUT, "reading messages", async {
            let docs: Vec<Document> = all(self
                .messages
                .find(filter)
                .sort(sort)
                .limit(limit.min(i64::MAX as usize) as i64)
                .projection(doc! {"outbox": 0}))
            .await?;
            docs.iter().map(message_from_doc).collect()
        })
        .await
    }

    /// `(timestamp, _id)` of a message of `room`, if it is one.
    async fn position(
        &self,
        room: &RoomId,
        id: &MessageId,
    ) -> Result<Option<(DateTime, ObjectId)>, StoreError> {
        let id = oid(id)?;
        let found = bounded(BATCH_TIMEOUT, "reading a message", async {
            self.messages
                .find_one(doc! {"_id": id, "roomId": room.as_str()})
                .projection(doc! {"timestamp": 1, "createdAt": 1})
                .await
                .map_err(db_error)
        })
        .await?;
        Ok(found.map(|d| {
            let ms = millis(&d, "timestamp")
                .or_else(|| millis(&d, "createdAt"))
                .unwrap_or_else(|| id.timestamp().timestamp_millis().max(0) as u64);
            (date(ms), id)
        }))
    }

    async fn find_room(&self, filter: Document) -> Result<Option<Room>, StoreError> {
        let found = bounded(BATCH_TIMEOUT, "reading a room", async {
            self.rooms.find_one(filter).await.map_err(db_error)
        })
        .await?;
        found.as_ref().map(room_from_doc).transpose()
    }

    /// The filter of outbox entries this store may claim now.
    fn claimable(&self, now: DateTime) -> Document {
        both(
            doc! {"outbox.seq": {"$exists": true}},
            doc! {"$or": [
                {"outbox.claimedUntil": {"$exists": false}},
                {"outbox.claimedUntil": {"$lt": now}},
                {"outbox.claimedBy": &self.owner},
            ]},
        )
    }
}

impl Writer {
    async fn count_pending(&self) -> Result<u64, StoreError> {
        bounded(BATCH_TIMEOUT, "counting the outbox", async {
            self.messages
                .count_documents(doc! {"outbox.seq": {"$exists": true}})
                .await
                .map_err(db_error)
        })
        .await
    }

    async fn run(self, mut rx: mpsc::Receiver<Write>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut counted = Instant::now();
        while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let mut close = None;
            let mut appends = Vec::with_capacity(batch.len());
            for w in batch.drain(..) {
                match w {
                    Write::Close(done) => close = Some(done),
                    Write::Append(m, reply) => appends.push((m, reply)),
                }
            }
            if !appends.is_empty() {
                if self.outbox.config.is_some() && counted.elapsed() >= OUTBOX_RECOUNT {
                    counted = Instant::now();
                    if let Ok(n) = self.count_pending().await {
                        self.outbox.pending.store(n, Ordering::Relaxed);
                    }
                }
                self.append_batch(appends).await;
            }
            if let Some(done) = close {
                rx.close();
                while let Ok(w) = rx.try_recv() {
                    match w {
                        Write::Close(d) => drop(d.send(())),
                        Write::Append(_, reply) => drop(reply.send(Err(closed_error()))),
                    }
                }
                let _ = done.send(());
                return;
            }
        }
    }

    /// Stores a batch of appends; every sender gets its own answer.
    async fn append_batch(&self, appends: Vec<(Message, Reply)>) {
        let (messages, replies): (Vec<Message>, Vec<Reply>) = appends.into_iter().unzip();
        let answers = match bounded(BATCH_TIMEOUT, "storing messages", self.store(&messages)).await
        {
            Ok(answers) => answers,
            Err(e) => {
                tracing::error!(error = %e, "mongodb store batch failed");
                let again = || match &e {
                    StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
                    other => StoreError::Internal(other.to_string()),
                };
                messages.iter().map(|_| Err(again())).collect()
            }
        };
        for (reply, answer) in replies.into_iter().zip(answers) {
            let _ = reply.send(answer);
        }
    }

    /// One answer per message, in order. An `Err` here fails the whole batch.
    async fn store(
        &self,
        messages: &[Message],
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        let mut answers: Vec<Option<Result<Appended, StoreError>>> =
            messages.iter().map(|_| None).collect();
        let participants = self.rooms_of_batch(messages).await?;

        // The outbox bound: replays of stored messages still succeed, new messages beyond the
        // bound are refused (nothing of them is written).
        let mut accepted: Vec<usize> = (0..messages.len()).collect();
        if let Some(cfg) = self.outbox.config {
            let pending = self.outbox.pending.load(Ordering::Relaxed);
            if pending.saturating_add(messages.len() as u64) > cfg.max_pending {
                let stored = self.stored_by_key(messages.iter()).await?;
                let mut room = cfg.max_pending.saturating_sub(pending);
                accepted.clear();
                for (i, m) in messages.iter().enumerate() {
                    if let Some(found) = key_of(m).and_then(|k| stored.get(&k)) {
                        answers[i] = Some(Ok(Appended {
                            message: found.clone(),
                            duplicate: true,
                        }));
                    } else if room > 0 {
                        room -= 1;
                        accepted.push(i);
                    } else {
                        answers[i] = Some(Err(StoreError::OutboxFull(pending)));
                    }
                }
                let refused = answers
                    .iter()
                    .filter(|a| matches!(a, Some(Err(StoreError::OutboxFull(_)))))
                    .count();
                if refused > 0 {
                    tracing::warn!(
                        pending,
                        refused,
                        "notification outbox full: refusing new messages until the relay catches up (OUTBOX_MAX_PENDING)"
                    );
                }
            }
        }

        // One seq range for the batch's events (gaps are harmless).
        let first_seq = match (self.outbox.config, accepted.len()) {
            (Some(_), n) if n > 0 => Some(self.reserve_seqs(n as u64).await?),
            _ => None,
        };
        let empty = Vec::new();
        let mut docs = Vec::with_capacity(accepted.len());
        for (k, &i) in accepted.iter().enumerate() {
            let m = &messages[i];
            let mut d = doc! {
                "_id": oid(&m.message_id).map_err(|_| corrupt("message id"))?,
                "roomId": m.room_id.as_str(),
                "userId": m.user_id.as_str(),
                "username": m.username.as_str(),
                "message": m.message.as_str(),
                "messageType": m.message_type.as_str(),
                "timestamp": date(m.timestamp),
                "createdAt": date(m.timestamp),
            };
            if let Some(c) = &m.client_message_id {
                d.insert("clientMessageId", c.as_str());
            }
            if let Some(first) = first_seq {
                let all = participants.get(m.room_id.as_str()).unwrap_or(&empty);
                let (receiver, receivers) = receivers_of(all, m.user_id.as_str());
                d.insert(
                    "outbox",
                    doc! {
                        "seq": (first + k as u64) as i64,
                        "receiverId": receiver.map_or(Bson::Null, |r| Bson::String(r.to_string())),
                        "receiverIds": receivers,
                    },
                );
            }
            docs.push(d);
        }

        // Per document: stored, a duplicate key, or another error of its own.
        let mut failed: HashMap<usize, MongoError> = HashMap::new();
        let mut duplicates = Vec::new();
        if !docs.is_empty() {
            match self.messages.insert_many(docs).ordered(false).await {
                Ok(_) => {}
                Err(e) => match &*e.kind {
                    ErrorKind::InsertMany(ime) if ime.write_concern_error.is_none() => {
                        for we in ime.write_errors.iter().flatten() {
                            let i = accepted[we.index];
                            if we.code == DUPLICATE_KEY && messages[i].client_message_id.is_some() {
                                duplicates.push(i);
                            } else {
                                failed.insert(i, e.clone());
                            }
                        }
                    }
                    _ => return Err(db_error(e)),
                },
            }
        }
        if !duplicates.is_empty() {
            let stored = self
                .stored_by_key(duplicates.iter().map(|&i| &messages[i]))
                .await?;
            for i in duplicates {
                answers[i] = Some(match key_of(&messages[i]).and_then(|k| stored.get(&k)) {
                    Some(found) => Ok(Appended {
                        message: found.clone(),
                        duplicate: true,
                    }),
                    None => Err(StoreError::Internal(
                        "mongodb: duplicate key without a stored message".into(),
                    )),
                });
            }
        }
        let mut written = 0u64;
        let mut last: HashMap<&str, &Message> = HashMap::new();
        for &i in &accepted {
            if answers[i].is_some() {
                continue;
            }
            let m = &messages[i];
            if let Some(e) = failed.remove(&i) {
                answers[i] = Some(Err(db_error(e)));
                continue;
            }
            written += 1;
            let entry = last.entry(m.room_id.as_str()).or_insert(m);
            if (m.timestamp, m.message_id.as_str()) >= (entry.timestamp, entry.message_id.as_str())
            {
                *entry = m;
            }
            answers[i] = Some(Ok(Appended {
                message: m.clone(),
                duplicate: false,
            }));
        }
        if first_seq.is_some() && written > 0 {
            self.outbox.pending.fetch_add(written, Ordering::Relaxed);
            self.outbox.signal.notify_one();
        }
        // The messages are stored: a failed room update only leaves lastMessage behind.
        if let Err(e) = self.touch_rooms(last.into_values()).await {
            tracing::warn!(error = %e, "mongodb: messages stored, rooms' lastMessage not updated");
        }
        Ok(answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(StoreError::Internal("unanswered".into()))))
            .collect())
    }

    /// The participants of the batch's rooms; unknown rooms are created as open groups.
    async fn rooms_of_batch(
        &self,
        messages: &[Message],
    ) -> Result<HashMap<String, Vec<String>>, StoreError> {
        let ids: Vec<&str> = messages
            .iter()
            .map(|m| m.room_id.as_str())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut known = self.participants(&ids).await?;
        let missing: Vec<&str> = ids
            .into_iter()
            .filter(|id| !known.contains_key(*id))
            .collect();
        if !missing.is_empty() {
            let now = date(now_ms());
            let creations = missing
                .iter()
                .map(|id| {
                    doc! {
                        "q": {"roomId": *id},
                        "u": {"$setOnInsert": {
                            "type": "group", "isPrivate": false, "participants": [],
                            "lastMessage": Bson::Null, "createdAt": now, "updatedAt": now,
                        }},
                        "upsert": true,
                    }
                })
                .collect();
            // A duplicate key here means another writer created the room meanwhile: fine.
            self.update_all(creations, true).await?;
            known.extend(self.participants(&missing).await?);
        }
        Ok(known)
    }

    async fn participants(&self, ids: &[&str]) -> Result<HashMap<String, Vec<String>>, StoreError> {
        let docs: Vec<Document> = all(self
            .rooms
            .find(doc! {"roomId": {"$in": ids}})
            .projection(doc! {"roomId": 1, "participants": 1}))
        .await?;
        Ok(docs
            .iter()
            .filter_map(|d| {
                let id = string(d, "roomId")?.to_string();
                let mut users: Vec<String> = d
                    .get_array("participants")
                    .map(|l| {
                        l.iter()
                            .filter_map(|u| u.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                users.sort();
                users.dedup();
                Some((id, users))
            })
            .collect())
    }

    /// The stored messages with the idempotency keys of `messages`.
    async fn stored_by_key<'a>(
        &self,
        messages: impl Iterator<Item = &'a Message>,
    ) -> Result<HashMap<Key, Message>, StoreError> {
        let keys: Vec<Document> = messages
            .filter_map(|m| {
                m.client_message_id.as_ref().map(|c| {
                    doc! {"roomId": m.room_id.as_str(), "userId": m.user_id.as_str(),
                    "clientMessageId": c.as_str()}
                })
            })
            .collect();
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let docs: Vec<Document> = all(self
            .messages
            .find(doc! {"$or": keys})
            .projection(doc! {"outbox": 0}))
        .await?;
        docs.iter()
            .map(message_from_doc)
            .filter_map(|m| match m {
                Ok(m) => key_of(&m).map(|k| Ok((k, m))),
                Err(e) => Some(Err(e)),
            })
            .collect()
    }

    /// Reserves `n` outbox seqs; returns the first.
    async fn reserve_seqs(&self, n: u64) -> Result<u64, StoreError> {
        let counter = self
            .counters
            .find_one_and_update(doc! {"_id": "outbox"}, doc! {"$inc": {"seq": n as i64}})
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await
            .map_err(db_error)?
            .ok_or_else(|| corrupt("outbox counter"))?;
        let last = integer(&counter, "seq").ok_or_else(|| corrupt("outbox counter"))?;
        Ok(last + 1 - n)
    }

    /// Moves each room's `lastMessage` / `updatedAt` forward to its newest message here.
    async fn touch_rooms<'a>(
        &self,
        newest: impl Iterator<Item = &'a Message>,
    ) -> Result<(), StoreError> {
        let updates: Vec<Document> = newest
            .map(|m| {
                let ts = date(m.timestamp);
                doc! {
                    "q": both(
                        doc! {"roomId": m.room_id.as_str()},
                        doc! {"$or": [
                            {"lastMessage": Bson::Null},
                            {"lastMessage.timestamp": {"$lte": ts}},
                        ]},
                    ),
                    "u": {"$set": {
                        "lastMessage": {
                            "content": m.message.as_str(),
                            "timestamp": ts,
                            "senderId": m.user_id.as_str(),
                        },
                        "updatedAt": ts,
                    }},
                }
            })
            .collect();
        self.update_all(updates, false).await
    }

    /// Many update statements (`{q, u, upsert?}`) of `rooms` in one round trip: the `update`
    /// command, which every MongoDB version (and the stand-in) has, unlike the driver's
    /// `bulkWrite` (MongoDB 8+).
    async fn update_all(
        &self,
        updates: Vec<Document>,
        ignore_duplicates: bool,
    ) -> Result<(), StoreError> {
        if updates.is_empty() {
            return Ok(());
        }
        let mut command = doc! {
            "update": self.rooms.name(),
            "updates": updates,
            "ordered": false,
        };
        if let Some(wc) = &self.write_concern {
            command.insert("writeConcern", wc.clone());
        }
        let reply = self.db.run_command(command).await.map_err(db_error)?;
        if let Ok(errors) = reply.get_array("writeErrors") {
            let real = errors.iter().find(|e| {
                let code = e
                    .as_document()
                    .and_then(|d| d.get("code"))
                    .and_then(Bson::as_i32)
                    .unwrap_or(0);
                !(ignore_duplicates && code == DUPLICATE_KEY)
            });
            if let Some(e) = real {
                return Err(StoreError::Internal(format!("mongodb: rooms update: {e}")));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl MessageStore for MongoStore {
    async fn append(&self, message: Message) -> Result<Appended, StoreError> {
        self.check_open()?;
        let (tx, rx) = oneshot::channel();
        self.writes
            .send(Write::Append(message, tx))
            .await
            .map_err(|_| closed_error())?;
        rx.await.map_err(|_| closed_error())?
    }

    async fn history(
        &self,
        room: &RoomId,
        limit: usize,
        before: Option<&MessageId>,
    ) -> Result<Vec<Message>, StoreError> {
        let mut filter = doc! {"roomId": room.as_str()};
        if let Some(before) = before {
            let (ts, id) = self
                .position(room, before)
                .await?
                .ok_or(StoreError::UnknownCursor)?;
            filter = both(
                filter,
                doc! {"$or": [
                    {"timestamp": {"$lt": ts}},
                    {"timestamp": ts, "_id": {"$lt": id}},
                ]},
            );
        }
        let mut page = self
            .find_messages(filter, doc! {"timestamp": -1, "_id": -1}, limit)
            .await?;
        page.reverse();
        Ok(page)
    }

    async fn after(
        &self,
        room: &RoomId,
        after: &MessageId,
        limit: usize,
    ) -> Result<Option<Vec<Message>>, StoreError> {
        let Some((ts, id)) = self.position(room, after).await? else {
            return Ok(None);
        };
        let filter = both(
            doc! {"roomId": room.as_str()},
            doc! {"$or": [
                {"timestamp": {"$gt": ts}},
                {"timestamp": ts, "_id": {"$gt": id}},
            ]},
        );
        self.find_messages(filter, doc! {"timestamp": 1, "_id": 1}, limit)
            .await
            .map(Some)
    }

    async fn get_room(&self, room: &RoomId) -> Result<Option<Room>, StoreError> {
        self.find_room(doc! {"roomId": room.as_str()}).await
    }

    async fn create_room(&self, room: NewRoom) -> Result<(Room, bool), StoreError> {
        self.check_open()?;
        let pair = (room.room_type == RoomType::Direct).then(|| {
            let users: Vec<&str> = room.participants.iter().map(UserId::as_str).collect();
            doc! {"type": "direct", "participants": {"$all": users, "$size": 2}}
        });
        if let Some(pair) = &pair
            && let Some(existing) = self.find_room(pair.clone()).await?
        {
            return Ok((existing, false));
        }
        let now = now_ms();
        let users: Vec<&str> = room.participants.iter().map(UserId::as_str).collect();
        let mut d = doc! {
            "roomId": room.room_id.as_str(),
            "type": room.room_type.as_str(),
            "participants": users,
            "isPrivate": true,
            "lastMessage": Bson::Null,
            "createdAt": date(now),
            "updatedAt": date(now),
        };
        if pair.is_some() {
            d.insert("directKey", direct_key(&room.participants));
        }
        let inserted = bounded(BATCH_TIMEOUT, "creating a room", async {
            match self.rooms.insert_one(d).await {
                Ok(_) => Ok(true),
                Err(e) if is_duplicate_key(&e) => Ok(false),
                Err(e) => Err(db_error(e)),
            }
        })
        .await?;
        if inserted {
            let created = Room {
                room_id: room.room_id,
                room_type: room.room_type,
                participants: room.participants,
                private: true,
                last_message: None,
                created_at: now,
                updated_at: now,
            };
            return Ok((created, true));
        }
        // The id is taken, or another writer created this pair's direct room meanwhile.
        if pair.is_some()
            && let Some(existing) = self
                .find_room(doc! {"directKey": direct_key(&room.participants)})
                .await?
        {
            return Ok((existing, false));
        }
        Err(StoreError::RoomExists)
    }

    async fn add_member(&self, room: &RoomId, user: &UserId) -> Result<(), StoreError> {
        self.check_open()?;
        let now = date(now_ms());
        let add = || {
            self.rooms
                .update_one(
                    doc! {"roomId": room.as_str()},
                    doc! {
                        "$addToSet": {"participants": user.as_str()},
                        "$setOnInsert": {
                            "type": "group", "isPrivate": false, "lastMessage": Bson::Null,
                            "createdAt": now, "updatedAt": now,
                        },
                    },
                )
                .upsert(true)
        };
        bounded(BATCH_TIMEOUT, "adding a member", async {
            match add().await {
                Ok(_) => Ok(()),
                // Two first joins raced on the unique roomId: the room exists now.
                Err(e) if is_duplicate_key(&e) => add().await.map(|_| ()).map_err(db_error),
                Err(e) => Err(db_error(e)),
            }
        })
        .await
    }

    async fn rooms_of(&self, user: &UserId) -> Result<Vec<Room>, StoreError> {
        let docs: Vec<Document> = bounded(BATCH_TIMEOUT, "listing rooms", async {
            all(self
                .rooms
                .find(doc! {"participants": user.as_str()})
                .sort(doc! {"updatedAt": -1})
                .limit(1000))
            .await
        })
        .await?;
        let mut rooms = docs
            .iter()
            .map(room_from_doc)
            .collect::<Result<Vec<_>, _>>()?;
        // Sorted here too: the stand-in may hold `updatedAt` as a string, which sorts apart
        // from dates on the server.
        rooms.sort_by_key(|r| std::cmp::Reverse(r.updated_at));
        Ok(rooms)
    }

    async fn outbox_pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.check_open()?;
        let limit = limit.clamp(1, 100_000) as i64;
        bounded(BATCH_TIMEOUT, "claiming outbox entries", async {
            let now = DateTime::now();
            let candidates: Vec<Document> = all(self
                .messages
                .find(self.claimable(now))
                .sort(doc! {"outbox.seq": 1})
                .limit(limit)
                .projection(doc! {"_id": 1})
            )
            .await?;
            if !candidates.is_empty() {
                let ids: Vec<Bson> = candidates
                    .iter()
                    .filter_map(|d| d.get("_id").cloned())
                    .collect();
                let until = date(now.timestamp_millis() as u64 + OUTBOX_LEASE.as_millis() as u64);
                let filter = both(self.claimable(now), doc! {"_id": {"$in": ids}});
                self.messages
                    .update_many(
                        filter,
                        doc! {"$set": {"outbox.claimedBy": &self.owner, "outbox.claimedUntil": until}},
                    )
                    .await
                    .map_err(db_error)?;
            }
            let mine: Vec<Document> = all(self
                .messages
                .find(doc! {"outbox.seq": {"$exists": true}, "outbox.claimedBy": &self.owner})
                .sort(doc! {"outbox.seq": 1})
                .limit(limit)
            )
            .await?;
            mine.iter().map(outbox_entry_from_doc).collect()
        })
        .await
    }

    async fn outbox_mark_sent(&self, seqs: &[u64]) -> Result<(), StoreError> {
        self.check_open()?;
        if seqs.is_empty() {
            return Ok(());
        }
        let seqs: Vec<i64> = seqs.iter().filter_map(|&s| i64::try_from(s).ok()).collect();
        let removed = bounded(BATCH_TIMEOUT, "marking events sent", async {
            self.messages
                .update_many(
                    doc! {"outbox.seq": {"$in": seqs}},
                    doc! {"$unset": {"outbox": ""}},
                )
                .await
                .map_err(db_error)
        })
        .await?
        .modified_count;
        let _ = self
            .outbox
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                Some(p.saturating_sub(removed))
            });
        Ok(())
    }

    async fn outbox_len(&self) -> Result<u64, StoreError> {
        bounded(BATCH_TIMEOUT, "counting the outbox", async {
            self.messages
                .count_documents(doc! {"outbox.seq": {"$exists": true}})
                .await
                .map_err(db_error)
        })
        .await
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
        let (tx, rx) = oneshot::channel();
        if self.writes.send(Write::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
        // Hand this store's claims back, so a restarted instance resends them at once.
        let released = bounded(Duration::from_secs(3), "releasing claims", async {
            self.messages
                .update_many(
                    doc! {"outbox.claimedBy": &self.owner},
                    doc! {"$unset": {"outbox.claimedBy": "", "outbox.claimedUntil": ""}},
                )
                .await
                .map_err(db_error)
        })
        .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "mongodb: could not release outbox claims (they expire)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_dates_of_the_stand_in_read_as_utc_millis() {
        assert_eq!(parse_utc("1970-01-01 00:00:00"), Some(0));
        assert_eq!(
            parse_utc("2026-11-25 14:40:13.066000"),
            Some(1_795_617_613_066)
        );
        assert_eq!(parse_utc("2000-02-29T23:59:59.5Z"), Some(951_868_799_500));
        assert_eq!(parse_utc("2026-13-01 00:00:00"), None);
        assert_eq!(parse_utc("yesterday"), None);
    }

    #[test]
    fn node_room_documents_without_is_private_are_private_when_they_have_participants() {
        let with = doc! {"roomId": "r1", "type": "direct", "participants": ["b", "a"]};
        let room = room_from_doc(&with).expect("room");
        assert!(room.private);
        assert_eq!(
            room.participants,
            ["a", "b"].map(|u| UserId::parse(u).unwrap())
        );
        let without = doc! {"roomId": "r2", "type": "group"};
        assert!(!room_from_doc(&without).expect("room").private);
        let open =
            doc! {"roomId": "r3", "type": "group", "participants": ["a"], "isPrivate": false};
        assert!(!room_from_doc(&open).expect("room").private);
    }
}
