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
