//! `MeteredStore`: a `MessageStore` decorator that counts, for `GET /metrics`, the history
//! reads that reach the durable store (`chat_history_reads_total{source="store"}`; those the
//! Redis list answers alone are counted by `redis_cache.rs`) and the failed operations by kind
//! (`chat_store_errors_total`). The composition root puts it directly around the durable
//! backend, so every backend is counted the same way; it adds one atomic add per read and
//! nothing to a successful write.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{Appended, Changed, MarkedRead, MessageStore, OutboxEntry, StoreError};
use crate::domain::{
    Message, MessageChange, MessageId, NewRoom, ReadMarker, Room, RoomEvent, RoomId, UserId,
};
use crate::metrics::StoreStats;

pub struct MeteredStore {
    inner: Arc<dyn MessageStore>,
    stats: Arc<StoreStats>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn MessageStore>) -> Self {
        Self {
            inner,
            stats: Arc::default(),
        }
    }

    /// The store's figures, for the metrics registry.
    pub fn stats(&self) -> Arc<StoreStats> {
        self.stats.clone()
    }

    /// Counts a failure of the store itself (not a refusal of the request: an unknown cursor
    /// or a taken room id).
    fn counted<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &result {
            let kind = match e {
                StoreError::Unavailable(_) => Some(0),
                StoreError::Internal(_) => Some(1),
                StoreError::OutboxFull(_) => Some(2),
                StoreError::UnknownCursor
                | StoreError::RoomExists
                | StoreError::NotFound
                | StoreError::NotAuthor
                | StoreError::TooManyReactions => None,
            };
            if let Some(kind) = kind {
                self.stats.errors[kind].inc();
            }
        }
        result
    }
}

#[async_trait]
impl MessageStore for MeteredStore {
    async fn append(&self, message: Message) -> Result<Appended, StoreError> {
        let r = self.inner.append(message).await;
        self.counted(r)
    }

    async fn history(
        &self,
        room: &RoomId,
        limit: usize,
        before: Option<&MessageId>,
    ) -> Result<Vec<Message>, StoreError> {
        self.stats.history_reads.inc();
        let r = self.inner.history(room, limit, before).await;
        self.counted(r)
    }

    async fn after(
        &self,
        room: &RoomId,
        after: &MessageId,
        limit: usize,
    ) -> Result<Option<Vec<Message>>, StoreError> {
        self.stats.history_reads.inc();
        let r = self.inner.after(room, after, limit).await;
        self.counted(r)
    }

    async fn get_room(&self, room: &RoomId) -> Result<Option<Room>, StoreError> {
        let r = self.inner.get_room(room).await;
        self.counted(r)
    }

    async fn create_room(&self, room: NewRoom) -> Result<(Room, bool), StoreError> {
        let r = self.inner.create_room(room).await;
        self.counted(r)
    }

    async fn add_member(&self, room: &RoomId, user: &UserId) -> Result<(), StoreError> {
        let r = self.inner.add_member(room, user).await;
        self.counted(r)
    }

    async fn rooms_of(&self, user: &UserId) -> Result<Vec<Room>, StoreError> {
        let r = self.inner.rooms_of(user).await;
        self.counted(r)
    }

    async fn get_message(
        &self,
        room: &RoomId,
        id: &MessageId,
    ) -> Result<Option<Message>, StoreError> {
        let r = self.inner.get_message(room, id).await;
        self.counted(r)
    }

    async fn change(&self, change: MessageChange) -> Result<Changed, StoreError> {
        let r = self.inner.change(change).await;
        self.counted(r)
    }

    async fn changes_since(
        &self,
        room: &RoomId,
        since: &MessageId,
        limit: usize,
    ) -> Result<Option<Vec<RoomEvent>>, StoreError> {
        let r = self.inner.changes_since(room, since, limit).await;
        self.counted(r)
    }

    async fn mark_read(&self, marker: ReadMarker) -> Result<MarkedRead, StoreError> {
        let r = self.inner.mark_read(marker).await;
        self.counted(r)
    }

    async fn receipts(&self, room: &RoomId) -> Result<Vec<ReadMarker>, StoreError> {
        let r = self.inner.receipts(room).await;
        self.counted(r)
    }

    async fn outbox_pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let r = self.inner.outbox_pending(limit).await;
        self.counted(r)
    }

    async fn outbox_mark_sent(&self, seqs: &[u64]) -> Result<(), StoreError> {
        let r = self.inner.outbox_mark_sent(seqs).await;
        self.counted(r)
    }

    async fn outbox_len(&self) -> Result<u64, StoreError> {
        let r = self.inner.outbox_len().await;
        self.counted(r)
    }

    fn outbox_signal(&self) -> Arc<Notify> {
        self.inner.outbox_signal()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // `/ready` reports the store's reachability itself; a failed ping is no operation.
        self.inner.ping().await
    }

    async fn close(&self) {
        self.inner.close().await;
    }

    async fn append_all(&self, messages: Vec<Message>) -> Result<Vec<Appended>, StoreError> {
        self.inner.append_all(messages).await
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
