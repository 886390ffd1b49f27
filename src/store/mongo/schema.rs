//! The MongoDB indexes, created at start-up (idempotent): `messages {roomId, timestamp}`
//! (history), unique `messages {roomId, userId, clientMessageId}` partial on documents that
//! have a `clientMessageId` (the Node service's documents have none), `messages {outbox.seq}`
//! partial on pending events, unique `rooms {roomId}`, `rooms {participants, updatedAt}`
//! (rooms of a user), unique sparse `rooms {directKey}` (one direct room per pair); for SPEC 10
//! `messages {pending.seq}` partial on half-applied changes, `messageChanges {roomId, at}`
//! (resume), `{messageId}` (a delete's blanking) and `{outbox.seq}` partial on pending events,
//! `reactions {messageId, seq}`, `readMarkers {roomId, readAt}` (receipts; a user's marker is
//! found by its `_id`). There are no migrations: the documents keep the Node service's schema,
//! our fields are optional (a database written before SPEC 10 reads as never edited, not
//! deleted, no reactions, no markers).

use mongodb::bson::{Document, doc};
use mongodb::error::ErrorKind;
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};

use super::db_error;
use crate::store::StoreError;

/// Creates the indexes of `messages`, `rooms` and the lifecycle's collections.
pub(super) async fn create_indexes(
    messages: &Collection<Document>,
    rooms: &Collection<Document>,
    changes: &Collection<Document>,
    reactions: &Collection<Document>,
    markers: &Collection<Document>,
) -> Result<(), StoreError> {
    ensure_index(
        messages,
        doc! {"pending.seq": 1},
        IndexOptions::builder()
            .partial_filter_expression(doc! {"pending.seq": {"$exists": true}})
            .build(),
    )
    .await?;
    ensure_index(
        changes,
        doc! {"roomId": 1, "at": 1},
        IndexOptions::default(),
    )
    .await?;
    ensure_index(changes, doc! {"messageId": 1}, IndexOptions::default()).await?;
    ensure_index(
        changes,
        doc! {"outbox.seq": 1},
        IndexOptions::builder()
            .partial_filter_expression(doc! {"outbox.seq": {"$exists": true}})
            .build(),
    )
    .await?;
    ensure_index(
        reactions,
        doc! {"messageId": 1, "seq": 1},
        IndexOptions::default(),
    )
    .await?;
    ensure_index(
        markers,
        doc! {"roomId": 1, "readAt": 1},
        IndexOptions::default(),
    )
    .await?;
    ensure_index(
        messages,
        doc! {"roomId": 1, "timestamp": 1},
        IndexOptions::default(),
    )
    .await?;
    ensure_index(
        messages,
        doc! {"roomId": 1, "userId": 1, "clientMessageId": 1},
        IndexOptions::builder()
            .unique(true)
            .partial_filter_expression(doc! {"clientMessageId": {"$type": "string"}})
            .build(),
    )
    .await?;
    ensure_index(
        messages,
        doc! {"outbox.seq": 1},
        IndexOptions::builder()
            .partial_filter_expression(doc! {"outbox.seq": {"$exists": true}})
            .build(),
    )
    .await?;
    ensure_index(
        rooms,
        doc! {"roomId": 1},
        IndexOptions::builder().unique(true).build(),
    )
    .await?;
    ensure_index(
        rooms,
        doc! {"participants": 1, "updatedAt": -1},
        IndexOptions::default(),
    )
    .await?;
    ensure_index(
        rooms,
        doc! {"directKey": 1},
        IndexOptions::builder().unique(true).sparse(true).build(),
    )
    .await
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
