//! The MongoDB outbox: each pending event is the `outbox` field of its message's document
//! (written by the writer's `insertMany`, see `writes.rs`). The relay's claim is an
//! `updateMany` that stamps `outbox.claimedBy` / `claimedUntil` only on entries still
//! unclaimed, expired or already this store's (re-checked per document by the server), then a
//! find of this store's claims; marking sent unsets the field; `release` hands claims back.

use std::sync::atomic::Ordering;
use std::time::Duration;

use mongodb::Collection;
use mongodb::bson::{Bson, DateTime, Document, doc};

use super::documents::{date, outbox_entry_from_doc};
use super::{BATCH_TIMEOUT, all, both, bounded, db_error};
use crate::store::batch::OutboxState;
use crate::store::{OutboxEntry, StoreError};

/// How long a relay's claim on outbox entries lasts (longer than a publish batch).
const OUTBOX_LEASE: Duration = Duration::from_secs(60);

/// Pending events, all instances'.
pub(super) async fn count(messages: &Collection<Document>) -> Result<u64, StoreError> {
    bounded(BATCH_TIMEOUT, "counting the outbox", async {
        messages
            .count_documents(doc! {"outbox.seq": {"$exists": true}})
            .await
            .map_err(db_error)
    })
    .await
}

/// The filter of outbox entries `owner` may claim now.
fn claimable(owner: &str, now: DateTime) -> Document {
    both(
        doc! {"outbox.seq": {"$exists": true}},
        doc! {"$or": [
            {"outbox.claimedUntil": {"$exists": false}},
            {"outbox.claimedUntil": {"$lt": now}},
            {"outbox.claimedBy": owner},
        ]},
    )
}

/// Claims up to `limit` of the oldest claimable entries for `owner` and returns `owner`'s
/// claims, oldest first.
pub(super) async fn claim(
    messages: &Collection<Document>,
    owner: &str,
    limit: usize,
) -> Result<Vec<OutboxEntry>, StoreError> {
    let limit = limit.clamp(1, 100_000) as i64;
    bounded(BATCH_TIMEOUT, "claiming outbox entries", async {
        let now = DateTime::now();
        let candidates: Vec<Document> = all(messages
            .find(claimable(owner, now))
            .sort(doc! {"outbox.seq": 1})
            .limit(limit)
            .projection(doc! {"_id": 1}))
        .await?;
        if !candidates.is_empty() {
            let ids: Vec<Bson> = candidates
                .iter()
                .filter_map(|d| d.get("_id").cloned())
                .collect();
            let until = date(now.timestamp_millis() as u64 + OUTBOX_LEASE.as_millis() as u64);
            let filter = both(claimable(owner, now), doc! {"_id": {"$in": ids}});
            messages
                .update_many(
                    filter,
                    doc! {"$set": {"outbox.claimedBy": owner, "outbox.claimedUntil": until}},
                )
                .await
                .map_err(db_error)?;
        }
        let mine: Vec<Document> = all(messages
            .find(doc! {"outbox.seq": {"$exists": true}, "outbox.claimedBy": owner})
            .sort(doc! {"outbox.seq": 1})
            .limit(limit))
        .await?;
        mine.iter().map(outbox_entry_from_doc).collect()
    })
    .await
}

/// Removes the events `seqs` (unknown ones are ignored) and counts them off `outbox`.
pub(super) async fn mark_sent(
    messages: &Collection<Document>,
    outbox: &OutboxState,
    seqs: &[u64],
) -> Result<(), StoreError> {
    if seqs.is_empty() {
        return Ok(());
    }
    let seqs: Vec<i64> = seqs.iter().filter_map(|&s| i64::try_from(s).ok()).collect();
    let removed = bounded(BATCH_TIMEOUT, "marking events sent", async {
        messages
            .update_many(
                doc! {"outbox.seq": {"$in": seqs}},
                doc! {"$unset": {"outbox": ""}},
            )
            .await
            .map_err(db_error)
    })
    .await?
    .modified_count;
    let _ = outbox
        .pending
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
            Some(p.saturating_sub(removed))
        });
    Ok(())
}

/// Hands `owner`'s claims back (they would expire anyway).
pub(super) async fn release(messages: &Collection<Document>, owner: &str) {
    let released = bounded(Duration::from_secs(3), "releasing claims", async {
        messages
            .update_many(
                doc! {"outbox.claimedBy": owner},
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
