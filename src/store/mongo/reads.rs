//! MongoDB reads, each bounded by `BATCH_TIMEOUT`: history pages and `after` by the
//! `(timestamp, _id)` order (the Node service's documents sort the same way), rooms.

use mongodb::Collection;
use mongodb::bson::{DateTime, Document, doc, oid::ObjectId};

use super::documents::{date, message_from_doc, millis, room_from_doc};
use super::{BATCH_TIMEOUT, all, both, bounded, db_error, oid};
use crate::domain::{Message, MessageId, Room, RoomId, UserId};
use crate::store::StoreError;

pub(super) async fn history(
    messages: &Collection<Document>,
    room: &RoomId,
    limit: usize,
    before: Option<&MessageId>,
) -> Result<Vec<Message>, StoreError> {
    let mut filter = doc! {"roomId": room.as_str()};
    if let Some(before) = before {
        let (ts, id) = position(messages, room, before)
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
    let mut page =
        find_messages(messages, filter, doc! {"timestamp": -1, "_id": -1}, limit).await?;
    page.reverse();
    Ok(page)
}

pub(super) async fn after(
    messages: &Collection<Document>,
    room: &RoomId,
    after: &MessageId,
    limit: usize,
) -> Result<Option<Vec<Message>>, StoreError> {
    let Some((ts, id)) = position(messages, room, after).await? else {
        return Ok(None);
    };
    let filter = both(
        doc! {"roomId": room.as_str()},
        doc! {"$or": [
            {"timestamp": {"$gt": ts}},
            {"timestamp": ts, "_id": {"$gt": id}},
        ]},
    );
    find_messages(messages, filter, doc! {"timestamp": 1, "_id": 1}, limit)
        .await
        .map(Some)
}

async fn find_messages(
    messages: &Collection<Document>,
    filter: Document,
    sort: Document,
    limit: usize,
) -> Result<Vec<Message>, StoreError> {
    bounded(BATCH_TIMEOUT, "reading messages", async {
        let docs: Vec<Document> = all(messages
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
    messages: &Collection<Document>,
    room: &RoomId,
    id: &MessageId,
) -> Result<Option<(DateTime, ObjectId)>, StoreError> {
    let id = oid(id)?;
    let found = bounded(BATCH_TIMEOUT, "reading a message", async {
        messages
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

pub(super) async fn find_room(
    rooms: &Collection<Document>,
    filter: Document,
) -> Result<Option<Room>, StoreError> {
    let found = bounded(BATCH_TIMEOUT, "reading a room", async {
        rooms.find_one(filter).await.map_err(db_error)
    })
    .await?;
    found.as_ref().map(room_from_doc).transpose()
}

/// The rooms `user` takes part in, most recently active first (1000 at most).
pub(super) async fn rooms_of(
    rooms: &Collection<Document>,
    user: &UserId,
) -> Result<Vec<Room>, StoreError> {
    let docs: Vec<Document> = bounded(BATCH_TIMEOUT, "listing rooms", async {
        all(rooms
            .find(doc! {"participants": user.as_str()})
            .sort(doc! {"updatedAt": -1})
            .limit(1000))
        .await
    })
    .await?;
    let mut found = docs
        .iter()
        .map(room_from_doc)
        .collect::<Result<Vec<_>, _>>()?;
    // Sorted here too: the stand-in may hold `updatedAt` as a string, which sorts apart
    // from dates on the server.
    found.sort_by_key(|r| std::cmp::Reverse(r.updated_at));
    Ok(found)
}
