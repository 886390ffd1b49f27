//! The Redis history cache (SPEC 7): a `MessageStore` decorator in front of the durable store.
//!
//! - `append` writes to the durable store first (the truth, and the ack waits for it), then
//!   appends the message JSON (`new_message` payload) to `chat:history:{roomId}`, keeps the
//!   newest `MAX_MESSAGE_HISTORY` and sets the TTL `MESSAGE_HISTORY_TTL`, in one `MULTI`.
//! - Reads use the cache first: the newest `limit` come from the list alone when it holds at
//!   least `limit` messages; otherwise (and for cursors the list does not hold) the list is
//!   merged with the durable store by `messageId` and ordered by `(timestamp, messageId)`.
//!   So instances with separate durable stores agree on everything inside the cache window,
//!   and a shared durable store answers beyond it.
//! - `after` (`since` resume) answers from the list when it holds the cursor (the list is a
//!   contiguous newest suffix; its newest `RESUME_TAIL` are read first), else from the store.
//! - Outage: a failed cache read falls back to the durable store; a failed cache write marks
//!   the room's list stale (it would have a hole): this instance deletes that list before it
//!   uses it again, and bypasses it until the delete succeeds.
//! - Idempotency across instances: a message with a `clientMessageId` is also recorded under
//!   `chat:idem:{roomId}:{userId}:{clientMessageId}` (TTL `MESSAGE_HISTORY_TTL`; on a Redis
//!   Cluster `{chat:history:{roomId}}:idem:..`, in the list's slot for the `MULTI`), so a retry
//!   that reaches another instance (with its own embedded store) returns the original message.
//!   With a shared durable store its unique index stays the guarantee.
//! - Changes (SPEC 10): `change` writes the durable store first, then, when the change was
//!   effective, replaces the message's item in the list (if the list holds it) with its new
//!   state (`HistoryItem` JSON plus `rev`, the store's revision) in one Lua script that keeps
//!   the higher revision, so two instances racing to update the same item leave the newer
//!   state. A delete also overwrites the message's `chat:idem:..` record with the tombstone:
//!   the text leaves Redis too. A failed update marks the list stale, as a failed append does.
//! - Everything else (rooms, read markers, the change log, ping, close) is the durable
//!   store's.
//! - Logs: Redis going away is logged once at warn, its return once at info; the failed
//!   calls in between only at debug (an outage fails every send's cache write).
//! - While Redis is failing, the cache does not call it, except for one probe a second
//!   (`PROBE_EVERY_MS`): reads go to the durable store and written rooms' lists are marked
//!   stale at once. A silent partition (no reset, every call runs into its 2 s timeout) then
//!   costs one timeout a second, not up to three per send.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::{Appended, Changed, MarkedRead, MessageStore, OutboxEntry, StoreError};
use crate::domain::{
    Message, MessageChange, MessageId, NewRoom, ReadMarker, Room, RoomEvent, RoomId, UserId, now_ms,
};

/// While Redis is failing, how often one call goes through to see whether it is back.
const PROBE_EVERY_MS: u64 = 1000;
/// How many of a list's newest items a `since` resume reads first (`after`).
const RESUME_TAIL: usize = 64;

pub use super::history_items::history_key;
use super::history_items::{REPLACE_ITEM, decode, item_json, merge};
use crate::metrics::HistoryCacheStats;

pub struct RedisCachedStore {
    inner: Arc<dyn MessageStore>,
    /// Reads answered from the list alone (`chat_history_reads_total{source="cache"}`).
    stats: Arc<HistoryCacheStats>,
    conn: crate::redis_link::Conn,
    /// On a Redis Cluster (the idempotency keys named for it).
    cluster: bool,
    max: usize,
    ttl: Duration,
    stale: Mutex<HashSet<RoomId>>,
    /// Whether the last Redis call failed (its state changes are logged once each).
    down: AtomicBool,
    /// While `down`: when (ms since the epoch) the next call may probe Redis.
    probe_at: AtomicU64,
}

impl RedisCachedStore {
    pub fn new(
        inner: Arc<dyn MessageStore>,
        url: &str,
        max: usize,
        ttl: Duration,
    ) -> Result<Self, StoreError> {
        let internal = |e: redis::RedisError| StoreError::Internal(e.to_string());
        let target = crate::redis_link::Target::parse(url).map_err(internal)?;
        Ok(Self {
            inner,
            stats: Arc::default(),
            conn: target.connection().map_err(internal)?,
            cluster: target.is_cluster(),
            max,
            ttl,
            stale: Mutex::new(HashSet::new()),
            down: AtomicBool::new(false),
            probe_at: AtomicU64::new(0),
        })
    }

    /// Whether to call Redis now: always while it answers; while it is failing, only the one
    /// caller that takes the probe of the current second (the others count a skip).
    fn try_redis(&self) -> bool {
        if !self.down.load(Ordering::Acquire) {
            return true;
        }
        let now = now_ms();
        let at = self.probe_at.load(Ordering::Acquire);
        let probe = now >= at
            && self
                .probe_at
                .compare_exchange(
                    at,
                    now + PROBE_EVERY_MS,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok();
        if !probe {
            self.stats.skipped.inc();
        }
        probe
    }

    /// A Redis call failed: the first failure after a success is logged at warn, the rest
    /// of the outage at debug.
    fn failed(&self, what: &str, room: Option<&RoomId>, e: &redis::RedisError) {
        self.probe_at
            .store(now_ms() + PROBE_EVERY_MS, Ordering::Release);
        if !self.down.swap(true, Ordering::AcqRel) {
            tracing::warn!(cause = %e, op = what, "history cache: Redis unavailable; reads go to the durable store, lists written meanwhile are rebuilt");
        } else {
            tracing::debug!(cause = %e, op = what, room = room.map(|r| r.as_str()), "history cache: Redis call failed");
        }
    }

    /// A Redis call succeeded: logged once after an outage.
    fn reached(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            tracing::info!("history cache: Redis reachable again");
        }
    }

    /// The cache's figures, for the metrics registry.
    pub fn stats(&self) -> Arc<HistoryCacheStats> {
        self.stats.clone()
    }

    /// Whether the room's list may be used; deletes it first when a write to it failed.
    async fn usable(&self, room: &RoomId) -> bool {
        if !self.stale.lock().contains(room) {
            return true;
        }
        let mut c = self.conn.clone();
        match redis::cmd("DEL")
            .arg(history_key(room))
            .query_async::<()>(&mut c)
            .await
        {
            Ok(()) => {
                self.reached();
                self.stale.lock().remove(room);
                true
            }
            Err(e) => {
                self.failed("delete a stale list", Some(room), &e);
                false
            }
        }
    }

    /// The newest `n` cached messages and the list's length.
    async fn newest(&self, room: &RoomId, n: usize) -> Option<(Vec<Message>, usize)> {
        if !self.try_redis() || !self.usable(room).await {
            return None;
        }
        let mut c = self.conn.clone();
        let key = history_key(room);
        let res: redis::RedisResult<(Vec<String>, usize)> = redis::pipe()
            .cmd("LRANGE")
            .arg(&key)
            .arg(-(n as i64))
            .arg(-1)
            .cmd("LLEN")
            .arg(&key)
            .query_async(&mut c)
            .await;
        match res {
            Ok((items, len)) => {
                self.reached();
                Some((decode(items), len))
            }
            Err(e) => {
                self.failed("read", Some(room), &e);
                None
            }
        }
    }

    async fn all(&self, room: &RoomId) -> Option<Vec<Message>> {
        self.newest(room, self.max.max(1)).await.map(|(m, _)| m)
    }

    /// The idempotency record of `m`'s `clientMessageId`.
    fn idem_key(&self, m: &Message, cmid: &str) -> String {
        let (room, user) = (&m.room_id, &m.user_id);
        let (spec, plain) = (
            format_args!("chat:history:{room}"),
            format_args!("chat:idem:{room}:{user}:{cmid}"),
        );
        crate::redis_link::colocated(
            self.cluster,
            spec,
            format_args!(":idem:{user}:{cmid}"),
            plain,
        )
    }

    /// Puts a changed message's new state into the room's list (when it holds the message),
    /// and a tombstone into its idempotency record.
    async fn update_item(&self, m: &Message) {
        let room = &m.room_id;
        let json = match item_json(m) {
            Ok(json) => json,
            Err(e) => {
                tracing::warn!(cause = %e, "history cache: cannot encode a changed message");
                self.stale.lock().insert(room.clone());
                return;
            }
        };
        if !self.try_redis() {
            self.stale.lock().insert(room.clone());
            return;
        }
        let mut c = self.conn.clone();
        let mut result: redis::RedisResult<()> = Ok(());
        if m.deleted
            && let Some(cmid) = &m.client_message_id
        {
            let idem = self.idem_key(m, cmid.as_ref());
            result = redis::cmd("SET")
                .arg(idem)
                .arg(&json)
                .arg("XX")
                .arg("KEEPTTL")
                .query_async::<Option<String>>(&mut c)
                .await
                .map(|_| ());
        }
        if result.is_ok() && self.usable(room).await {
            result = redis::Script::new(REPLACE_ITEM)
                .key(history_key(room))
                .arg(format!("\"messageId\":\"{}\"", m.message_id))
                .arg(&json)
                .arg(m.rev)
                .invoke_async::<i64>(&mut c)
                .await
                .map(|_| ());
        }
        match result {
            Ok(()) => self.reached(),
            Err(e) => {
                self.failed("update", Some(room), &e);
                self.stale.lock().insert(room.clone());
            }
        }
    }
}

#[async_trait]
impl MessageStore for RedisCachedStore {
    async fn append(&self, message: Message) -> Result<Appended, StoreError> {
        let idem =
            (message.client_message_id.as_ref()).map(|c| self.idem_key(&message, c.as_ref()));
        let mut c = self.conn.clone();
        if let Some(key) = &idem
            && self.try_redis()
        {
            match redis::cmd("GET")
                .arg(key)
                .query_async::<Option<String>>(&mut c)
                .await
            {
                Ok(Some(json)) => {
                    self.reached();
                    if let Some(original) = serde_json::from_str(&json)
                        .ok()
                        .and_then(|v: serde_json::Value| Message::from_json(&v).ok())
                    {
                        return Ok(Appended {
                            message: Message {
                                client_message_id: message.client_message_id,
                                ..original
                            },
                            duplicate: true,
                            committed: None,
                        });
                    }
                }
                // A probe that got through: the list write below may go ahead (it would
                // otherwise find this second's probe taken, and skip Redis until the next).
                Ok(None) => self.reached(),
                Err(e) => self.failed("idempotency read", Some(&message.room_id), &e),
            }
        }
        let appended = self.inner.append(message).await?;
        if appended.duplicate {
            return Ok(appended);
        }
        let room = appended.message.room_id.clone();
        let json = serde_json::to_string(&appended.message)
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let key = history_key(&room);
        // One round trip for both writes: the idempotency record and the list (a send pays
        // each round trip to Redis in its ack's latency).
        if !self.try_redis() {
            self.stale.lock().insert(room);
            return Ok(appended);
        }
        // A stale list that could not be deleted: Redis is failing, nothing more is tried.
        if !self.usable(&room).await {
            return Ok(appended);
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        if let Some(idem) = &idem {
            pipe.cmd("SET")
                .arg(idem)
                .arg(&json)
                .arg("NX")
                .arg("EX")
                .arg(self.ttl.as_secs().max(1))
                .ignore();
        }
        pipe.cmd("RPUSH")
            .arg(&key)
            .arg(json)
            .ignore()
            .cmd("LTRIM")
            .arg(&key)
            .arg(-(self.max as i64))
            .arg(-1)
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(self.ttl.as_secs())
            .ignore();
        match pipe.query_async::<()>(&mut c).await {
            Ok(()) => self.reached(),
            Err(e) => {
                self.failed("write", Some(&room), &e);
                self.stale.lock().insert(room);
            }
        }
        Ok(appended)
    }

    async fn history(
        &self,
        room: &RoomId,
        limit: usize,
        before: Option<&MessageId>,
    ) -> Result<Vec<Message>, StoreError> {
        match before {
            None => match self.newest(room, limit).await {
                Some((cached, len)) if len >= limit && cached.len() >= limit => {
                    self.stats.hits.inc();
                    Ok(cached)
                }
                Some((cached, _)) => {
                    let durable = self.inner.history(room, limit, None).await?;
                    Ok(merge(cached, durable, limit))
                }
                None => self.inner.history(room, limit, None).await,
            },
            Some(cursor) => {
                let Some(all) = self.all(room).await else {
                    return self.inner.history(room, limit, before).await;
                };
                let Some(pos) = all.iter().position(|m| &m.message_id == cursor) else {
                    return self.inner.history(room, limit, before).await;
                };
                let cursor_key = (all[pos].timestamp, all[pos].message_id.clone());
                let mut cached = all;
                cached.truncate(pos);
                if cached.len() >= limit {
                    let skip = cached.len() - limit;
                    self.stats.hits.inc();
                    return Ok(cached.split_off(skip));
                }
                let durable = match self.inner.history(room, limit, before).await {
                    Ok(d) => d,
                    // The cursor came from another instance's durable store.
                    Err(StoreError::UnknownCursor) => self
                        .inner
                        .history(room, 1000, None)
                        .await?
                        .into_iter()
                        .filter(|m| {
                            (m.timestamp, m.message_id.as_str())
                                < (cursor_key.0, cursor_key.1.as_str())
                        })
                        .collect(),
                    Err(e) => return Err(e),
                };
                Ok(merge(cached, durable, limit))
            }
        }
    }

    async fn after(
        &self,
        room: &RoomId,
        after: &MessageId,
        limit: usize,
    ) -> Result<Option<Vec<Message>>, StoreError> {
        // The newest items first, the whole list only for an older cursor (whole lists on
        // every resume: the likely stall of BENCHMARKS.md's "Soak: one hour").
        let mut cached = self.newest(room, RESUME_TAIL).await;
        if let Some((tail, len)) = &cached
            && *len > tail.len()
            && !tail.iter().any(|m| &m.message_id == after)
        {
            cached = self.all(room).await.map(|all| (all, 0));
        }
        if let Some((mut tail, _)) = cached
            && let Some(pos) = tail.iter().position(|m| &m.message_id == after)
        {
            let mut rest = tail.split_off(pos + 1);
            rest.truncate(limit);
            self.stats.hits.inc();
            return Ok(Some(rest));
        }
        self.inner.after(room, after, limit).await
    }

    async fn get_room(&self, room: &RoomId) -> Result<Option<Room>, StoreError> {
        self.inner.get_room(room).await
    }

    async fn get_message(
        &self,
        room: &RoomId,
        id: &MessageId,
    ) -> Result<Option<Message>, StoreError> {
        if let Some(m) = self.inner.get_message(room, id).await? {
            return Ok(Some(m));
        }
        // A message another instance stored in a store of its own (embedded).
        Ok(self
            .all(room)
            .await
            .and_then(|all| all.into_iter().find(|m| &m.message_id == id)))
    }

    async fn change(&self, change: MessageChange) -> Result<Changed, StoreError> {
        let changed = self.inner.change(change).await?;
        if changed.effective {
            self.update_item(&changed.message).await;
        }
        Ok(changed)
    }

    async fn changes_since(
        &self,
        room: &RoomId,
        since: &MessageId,
        limit: usize,
    ) -> Result<Option<Vec<RoomEvent>>, StoreError> {
        self.inner.changes_since(room, since, limit).await
    }

    async fn mark_read(&self, marker: ReadMarker) -> Result<MarkedRead, StoreError> {
        self.inner.mark_read(marker).await
    }

    async fn receipts(&self, room: &RoomId) -> Result<Vec<ReadMarker>, StoreError> {
        self.inner.receipts(room).await
    }

    async fn create_room(&self, room: NewRoom) -> Result<(Room, bool), StoreError> {
        self.inner.create_room(room).await
    }

    async fn add_member(&self, room: &RoomId, user: &UserId) -> Result<(), StoreError> {
        self.inner.add_member(room, user).await
    }

    async fn rooms_of(&self, user: &UserId) -> Result<Vec<Room>, StoreError> {
        self.inner.rooms_of(user).await
    }

    // The outbox lives in the durable store, never in the cache.
    async fn outbox_pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.inner.outbox_pending(limit).await
    }

    async fn outbox_mark_sent(&self, seqs: &[u64]) -> Result<(), StoreError> {
        self.inner.outbox_mark_sent(seqs).await
    }

    async fn outbox_len(&self) -> Result<u64, StoreError> {
        self.inner.outbox_len().await
    }

    fn outbox_signal(&self) -> Arc<Notify> {
        self.inner.outbox_signal()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    async fn close(&self) {
        self.inner.close().await;
    }

    async fn room_ids(
        &self,
        after: Option<&RoomId>,
        limit: usize,
    ) -> Result<Vec<RoomId>, StoreError> {
        self.inner.room_ids(after, limit).await
    }

    async fn scan(
        &self,
        room: &RoomId,
        after: Option<&MessageId>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.inner.scan(room, after, limit).await
    }

    async fn count(&self, room: &RoomId) -> Result<u64, StoreError> {
        self.inner.count(room).await
    }
}
