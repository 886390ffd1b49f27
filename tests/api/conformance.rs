//! The store conformance suite (`chat_service::store::conformance`) against every backend the
//! test machine runs: the embedded store here; PostgreSQL in `postgres.rs`.

use std::sync::Arc;

use async_trait::async_trait;
use chat_service::store::conformance::{self, Backend};
use chat_service::store::embedded::EmbeddedStore;
use chat_service::store::{MessageStore, OutboxConfig, StoreError};

/// An embedded store in its own temporary folder.
struct Embedded(tempfile::TempDir);

#[async_trait]
impl Backend for Embedded {
    async fn open(
        &self,
        outbox: Option<OutboxConfig>,
    ) -> Result<Arc<dyn MessageStore>, StoreError> {
        Ok(Arc::new(
            EmbeddedStore::open_with(self.0.path(), outbox).await?,
        ))
    }

    fn shared(&self) -> bool {
        false
    }
}

#[tokio::test]
async fn embedded_store_passes_the_conformance_suite() {
    conformance::run_all(&Embedded(tempfile::tempdir().expect("temp dir"))).await;
}

/// The writer never checkpoints itself; the checkpointer task must keep the WAL short. One
/// commit per append writes several pages (table, indexes, room), so 2000 sequential appends
/// would leave a WAL of 30 MB or more if nothing copied it back into the database.
#[tokio::test]
async fn embedded_store_keeps_its_wal_short_under_sustained_commits() {
    use chat_service::domain::{
        Message, MessageBody, MessageId, MessageType, RoomId, UserId, Username, now_ms,
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path()).await.expect("open");
    let user = UserId::parse("wal-writer").unwrap();
    for i in 0..2000 {
        let now = now_ms();
        store
            .append(Message {
                message_id: MessageId::generate(now),
                room_id: RoomId::parse(&format!("wal-room-{}", i % 50)).unwrap(),
                user_id: user.clone(),
                username: Username::parse("wal writer").unwrap(),
                message: MessageBody::parse(&format!("message {i}"), 4000).unwrap(),
                message_type: MessageType::Text,
                timestamp: now,
                client_message_id: None,
            })
            .await
            .expect("append");
    }
    let wal = std::fs::metadata(dir.path().join("chat.db-wal"))
        .expect("the WAL exists while the store is open")
        .len();
    assert!(
        wal < 12 * 1024 * 1024,
        "WAL is {wal} bytes after 2000 commits: checkpoints do not keep up"
    );
    assert_eq!(
        store
            .history(&RoomId::parse("wal-room-7").unwrap(), 100, None)
            .await
            .expect("history")
            .len(),
        40
    );
    store.close().await;
}
