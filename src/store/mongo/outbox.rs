//! The MongoDB outbox: each pending `message.sent` event is the `outbox` field of its
//! message's document (written by the writer's `insertMany`, see `writes.rs`); each pending
//! `message.edited` / `message.deleted` event the `outbox` field of its change's
//! `messageChanges` document (`lifecycle.rs`). One `seq` sequence numbers both, and every
//! operation below runs on both collections (the claim merges them by `seq`). The relay's claim is an
//! `updateMany` that stamps `outbox.claimedBy` / `claimedUntil` only on entries still
//! unclaimed, expired or already this store's (re-checked per document by the server), then a
//! find of this store's claims; marking sent unsets the field; `release` hands claims back.

use std::sync::atomic::Ordering;
use std::time::Duration;

use mongodb::Collection;
use mongodb::bson::{Bson, DateTime, Document, doc};

use super::documents::{change_entry_from_doc, date, integer, outbox_entry_from_doc};
use super::{BATCH_TIMEOUT, all, both, bounded, db_error};
use crate::store::batch::OutboxState;
use crate::store::{OutboxEntry, StoreError};

/// How long a relay's claim on outbox entries lasts (longer than a publish batch).
const OUTBOX_LEASE: Duration = Duration::from_secs(60);

/// Pending events, all instances': `message.sent` entries on messages, `message.edited` /
/// `message.deleted` entries on change-log documents.
pub(super) async fn count(
    messages: &Collection<Document>,
    changes: &Collection<Document>,
) -> Result<u64, StoreError> {
    bounded(BATCH_TIMEOUT, "counting the outbox", async {
        let pending = doc! {"outbox.seq": {"$exists": true}};
        let sent = messages
            .count_documents(pending.clone())
            .await
            .map_err(db_error)?;
        let changed = changes.count_documents(pending).await.map_err(db_error)?;
        Ok(sent + changed)
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

/// Claims up to `limit` of the oldest claimable entries for `owner` (of both collections,
/// merged by `seq`) and returns `owner`'s claims, oldest first.
pub(super) async fn claim(
    messages: &Collection<Document>,
    changes: &Collection<Document>,
    owner: &str,
    limit: usize,
) -> Result<Vec<OutboxEntry>, StoreError> {
    let limit = limit.clamp(1, 100_000) as i64;
    bounded(BATCH_TIMEOUT, "claiming outbox entries", async {
        let now = DateTime::now();
        // The oldest claimable of each collection, then the oldest `limit` of both.
        let mut candidates: Vec<(u64, bool, Bson)> = Vec::new();
        for (coll, is_change) in [(messages, false), (changes, true)] {
            let docs: Vec<Document> = all(coll
                .find(claimable(owner, now))
                .sort(doc! {"outbox.seq": 1})
                .limit(limit)
                .projection(doc! {"_id": 1, "outbox.seq": 1}))
            .await?;
            for d in docs {
                let seq = d
                    .get_document("outbox")
                    .ok()
                    .and_then(|o| integer(o, "seq"))
                    .unwrap_or(u64::MAX);
                if let Some(id) = d.get("_id") {
                    candidates.push((seq, is_change, id.clone()));
                }
            }
        }
        candidates.sort_by_key(|c| c.0);
        candidates.truncate(limit as usize);
        let until = date(now.timestamp_millis() as u64 + OUTBOX_LEASE.as_millis() as u64);
        for (coll, is_change) in [(messages, false), (changes, true)] {
            let ids: Vec<Bson> = candidates
                .iter()
                .filter(|c| c.1 == is_change)
                .map(|c| c.2.clone())
                .collect();
            if ids.is_empty() {
                continue;
            }
            let filter = both(claimable(owner, now), doc! {"_id": {"$in": ids}});
            coll.update_many(
                filter,
                doc! {"$set": {"outbox.claimedBy": owner, "outbox.claimedUntil": until}},
            )
            .await
            .map_err(db_error)?;
        }
        let mine = doc! {"outbox.seq": {"$exists": true}, "outbox.claimedBy": owner};
        let sent: Vec<Document> = all(messages
            .find(mine.clone())
            .sort(doc! {"outbox.seq": 1})
            .limit(limit))
        .await?;
        let changed: Vec<Document> =
            all(changes.find(mine).sort(doc! {"outbox.seq": 1}).limit(limit)).await?;
        let mut entries = sent
            .iter()
            .map(outbox_entry_from_doc)
            .chain(changed.iter().map(change_entry_from_doc))
            .collect::<Result<Vec<_>, _>>()?;
        entries.sort_by_key(|e| e.seq);
        entries.truncate(limit as usize);
        Ok(entries)
    })
    .await
}

/// Removes the events `seqs` (unknown ones are ignored) and counts them off `outbox`.
pub(super) async fn mark_sent(
    messages: &Collection<Document>,
    changes: &Collection<Document>,
    outbox: &OutboxState,
    seqs: &[u64],
) -> Result<(), StoreError> {
    if seqs.is_empty() {
        return Ok(());
    }
    let seqs: Vec<i64> = seqs.iter().filter_map(|&s| i64::try_from(s).ok()).collect();
    let removed = bounded(BATCH_TIMEOUT, "marking events sent", async {
        let mut removed = 0;
        for coll in [messages, changes] {
            removed += coll
                .update_many(
                    doc! {"outbox.seq": {"$in": seqs.clone()}},
                    doc! {"$unset": {"outbox": ""}},
                )
                .await
                .map_err(db_error)?
                .modified_count;
        }
        Ok(removed)
    })
    .await?;
    let _ = outbox
        .pending
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
            Some(p.saturating_sub(removed))
        });
    Ok(())
}

/// Hands `owner`'s claims back (they would expire anyway).
pub(super) async fn release(
    messages: &Collection<Document>,
    changes: &Collection<Document>,
    owner: &str,
) {
    let released = bounded(Duration::from_secs(3), "releasing claims", async {
        for coll in [messages, changes] {
            coll.update_many(
                doc! {"outbox.claimedBy": owner},
                doc! {"$unset": {"outbox.claimedBy": "", "outbox.claimedUntil": ""}},
            )
            .await
            .map_err(db_error)?;
        }
        Ok(())
    })
    .await;
    if let Err(e) = released {
        tracing::warn!(error = %e, "mongodb: could not release outbox claims (they expire)");
    }
}
