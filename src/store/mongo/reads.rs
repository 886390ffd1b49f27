//! MongoDB reads, each bounded by `BATCH_TIMEOUT`: history pages and `after` by the
//! `(timestamp, _id)` order (the Node service's documents sort the same way), with their
//! reactions (one more query per page); rooms, with the caller's unread counts (two more
//! queries per page of rooms: its read markers, then one `find` of every room's unread
//! messages); the change log since a message; read receipts.

use std::collections::HashMap;

use mongodb::Collection;
use mongodb::bson::{Bson, DateTime, Document, doc, oid::ObjectId};

use super::documents::{date, flag, integer, message_from_doc, millis, room_from_doc, string};
use super::{BATCH_TIMEOUT, MongoStore, all, both, bounded, db_error, oid};
use crate::domain::{
    Emoji, Message, MessageId, Reaction, ReadMarker, Room, RoomEvent, RoomId, UserId,
};
use crate::store::StoreError;
use crate::store::rows::{change_event, read_marker};

pub(super) async fn history(
    s: &MongoStore,
    room: &RoomId,
    limit: usize,
    before: Option<&MessageId>,
) -> Result<Vec<Message>, StoreError> {
    let messages = &s.messages;
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
    let mut page = find_messages(s, filter, doc! {"timestamp": -1, "_id": -1}, limit).await?;
    page.reverse();
    Ok(page)
}

pub(super) async fn after(
    s: &MongoStore,
    room: &RoomId,
    after: &MessageId,
    limit: usize,
) -> Result<Option<Vec<Message>>, StoreError> {
    let messages = &s.messages;
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
    find_messages(s, filter, doc! {"timestamp": 1, "_id": 1}, limit)
        .await
        .map(Some)
}

pub(super) async fn find_messages(
    s: &MongoStore,
    filter: Document,
    sort: Document,
    limit: usize,
) -> Result<Vec<Message>, StoreError> {
    bounded(BATCH_TIMEOUT, "reading messages", async {
        let docs: Vec<Document> = all(s
            .messages
            .find(filter)
            .sort(sort)
            .limit(limit.min(i64::MAX as usize) as i64)
            .projection(doc! {"outbox": 0}))
        .await?;
        with_reactions(s, &docs).await
    })
    .await
}

/// The key of a reaction document: `messageId \x1f emoji \x1f userId`.
pub(super) fn reaction_key(message: &str, emoji: &str, user: &str) -> String {
    format!("{message}\u{1f}{emoji}\u{1f}{user}")
}

/// Message documents as messages with their reactions (one query for all of them). A
/// reaction change that a document still holds as `pending` (committed on the message, not
/// yet applied to `reactions`) is applied here as well, so a read never lags a change.
pub(super) async fn with_reactions(
    s: &MongoStore,
    docs: &[Document],
) -> Result<Vec<Message>, StoreError> {
    Ok(with_reaction_state(s, docs).await?.0)
}

/// Every (message, emoji, user) reaction document's state: the `seq` of its last change, and
/// whether it is shown.
pub(super) type Reacted = HashMap<(String, String, String), (u64, bool)>;

/// `with_reactions`, and the state of every reaction of the messages (also of those that
/// history cuts from `user_ids`).
pub(super) async fn with_reaction_state(
    s: &MongoStore,
    docs: &[Document],
) -> Result<(Vec<Message>, Reacted), StoreError> {
    let mut messages = docs
        .iter()
        .map(message_from_doc)
        .collect::<Result<Vec<_>, _>>()?;
    if messages.is_empty() {
        return Ok((messages, Reacted::new()));
    }
    let ids: Vec<&str> = messages.iter().map(|m| m.message_id.as_str()).collect();
    let rows: Vec<Document> = all(s
        .reactions
        .find(doc! {"messageId": {"$in": &ids}})
        .sort(doc! {"seq": 1}))
    .await?;
    let mut state = Reacted::new();
    for r in &rows {
        let (Some(m), Some(e), Some(u)) = (
            string(r, "messageId"),
            string(r, "emoji"),
            string(r, "userId"),
        ) else {
            return Err(super::corrupt("reaction"));
        };
        let seq = integer(r, "seq").unwrap_or(0);
        state.insert(
            (m.to_string(), e.to_string(), u.to_string()),
            (seq, flag(r, "on").unwrap_or(false)),
        );
    }
    for (d, m) in docs.iter().zip(&messages) {
        let Ok(p) = d.get_document("pending") else {
            continue;
        };
        if string(p, "kind") != Some("reaction") {
            continue;
        }
        let (Some(seq), Some(e), Some(u)) =
            (integer(p, "seq"), string(p, "emoji"), string(p, "userId"))
        else {
            return Err(super::corrupt("pending change"));
        };
        let key = (
            m.message_id.as_str().to_string(),
            e.to_string(),
            u.to_string(),
        );
        let entry = state.entry(key).or_insert((0, false));
        if entry.0 < seq {
            *entry = (seq, flag(p, "added").unwrap_or(false));
        }
    }
    let mut shown: Vec<(u64, &(String, String, String))> = state
        .iter()
        .filter(|(_, (_, on))| *on)
        .map(|(k, (seq, _))| (*seq, k))
        .collect();
    shown.sort_by_key(|(seq, _)| *seq);
    let mut pairs: HashMap<&str, Vec<(Emoji, UserId)>> = HashMap::new();
    for (_, (m, e, u)) in shown {
        let emoji = Emoji::parse(e).map_err(|_| super::corrupt("emoji"))?;
        let user = UserId::parse(u).map_err(|_| super::corrupt("reaction user id"))?;
        pairs.entry(m.as_str()).or_default().push((emoji, user));
    }
    for m in &mut messages {
        if let Some(p) = pairs.remove(m.message_id.as_str()) {
            m.reactions = Reaction::group(p);
        }
    }
    drop(pairs);
    Ok((messages, state))
}

/// `(timestamp, _id)` of a message of `room`, if it is one.
pub(super) async fn position(
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

/// The rooms `user` takes part in, most recently active first (1000 at most), each with the
/// caller's unread count: messages of others after its read marker (all of them without
/// one), tombstones not counted. Three queries per page of rooms, whatever its size: the
/// rooms; the caller's markers in them (by `_id`); one `find` of the unread messages of every
/// room of the page (one `$or` branch per room: "after the marker"), projected to `roomId`
/// and counted here.
///
/// Why not fewer, or counted on the server: `$lookup` (markers joined in the server) is not
/// on the stand-in, and its `aggregate` `$match` and `count` compare `Date`s and `ObjectId`s
/// wrongly (a `$match {timestamp: {$gt: d}}` keeps every document, `{_id: {$gt: id}}` none),
/// while its `find` compares them right; so the counting `$group` of one aggregate, which a
/// real MongoDB would run, would count wrong there. The cost of `find`: one small document
/// (`{roomId}`) per unread message crosses the wire.
pub(super) async fn rooms_of(s: &MongoStore, user: &UserId) -> Result<Vec<Room>, StoreError> {
    bounded(BATCH_TIMEOUT, "listing rooms", async {
        let docs: Vec<Document> = all(s
            .rooms
            .find(doc! {"participants": user.as_str()})
            .sort(doc! {"updatedAt": -1})
            .limit(1000))
        .await?;
        let mut found = docs
            .iter()
            .map(room_from_doc)
            .collect::<Result<Vec<_>, _>>()?;
        // Sorted here too: the stand-in may hold `updatedAt` as a string, which sorts apart
        // from dates on the server.
        found.sort_by_key(|r| std::cmp::Reverse(r.updated_at));
        if found.is_empty() {
            return Ok(found);
        }
        let keys: Vec<String> = found.iter().map(|r| marker_key(&r.room_id, user)).collect();
        let markers: Vec<Document> = all(s.markers.find(doc! {"_id": {"$in": &keys}})).await?;
        let marked: HashMap<&str, &Document> = markers
            .iter()
            .filter_map(|d| Some((string(d, "roomId")?, d)))
            .collect();
        let mut rooms = Vec::with_capacity(found.len());
        for r in &found {
            let room = doc! {"roomId": r.room_id.as_str()};
            rooms.push(match marked.get(r.room_id.as_str()) {
                None => room,
                Some(m) => {
                    let ts = date(integer(m, "msgTs").unwrap_or(0));
                    let id = string(m, "messageId")
                        .and_then(|h| ObjectId::parse_str(h).ok())
                        .ok_or_else(|| super::corrupt("read marker"))?;
                    both(
                        room,
                        doc! {"$or": [
                            {"timestamp": {"$gt": ts}},
                            {"timestamp": ts, "_id": {"$gt": id}},
                        ]},
                    )
                }
            });
        }
        let filter = doc! {"$and": [
            {"userId": {"$ne": user.as_str()}},
            {"deletedAt": {"$exists": false}},
            {"$or": rooms},
        ]};
        let unread: Vec<Document> = all(s
            .messages
            .find(filter)
            .projection(doc! {"_id": 0, "roomId": 1}))
        .await?;
        let mut counts: HashMap<&str, u64> = HashMap::new();
        for d in &unread {
            if let Some(r) = string(d, "roomId") {
                *counts.entry(r).or_default() += 1;
            }
        }
        for r in &mut found {
            r.unread_count = Some(counts.get(r.room_id.as_str()).copied().unwrap_or(0));
        }
        Ok(found)
    })
    .await
}

/// The `_id` of `user`'s read marker in `room`.
pub(super) fn marker_key(room: &RoomId, user: &UserId) -> String {
    format!("{room}\u{1f}{user}")
}

/// Every read marker of a room, oldest read first.
pub(super) async fn receipts(s: &MongoStore, room: &RoomId) -> Result<Vec<ReadMarker>, StoreError> {
    let docs: Vec<Document> = all(s
        .markers
        .find(doc! {"roomId": room.as_str()})
        .sort(doc! {"readAt": 1, "userId": 1}))
    .await?;
    let mut markers = docs
        .iter()
        .map(|d| {
            read_marker(
                room,
                string(d, "userId").unwrap_or_default(),
                string(d, "messageId").unwrap_or_default(),
                integer(d, "readAt").unwrap_or(0) as i64,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    markers.sort_by(|a, b| (a.read_at, &a.user_id).cmp(&(b.read_at, &b.user_id)));
    Ok(markers)
}

/// The logged changes of the room's messages up to `since` (in `(timestamp, _id)` order),
/// made at or after its time, oldest first, as the events the members got: one query of the
/// log, one of the edited messages' current text (no `$lookup` on the stand-in). Edits of
/// messages deleted since are marked `gone` by the delete and left out in the query (and
/// checked again against the message, for a delete whose steps are still pending).
pub(super) async fn changes_since(
    s: &MongoStore,
    room: &RoomId,
    since: &MessageId,
    limit: usize,
) -> Result<Option<Vec<RoomEvent>>, StoreError> {
    let Some((ts, _)) = position(&s.messages, room, since).await? else {
        return Ok(None);
    };
    let ts = ts.timestamp_millis();
    let logged: Vec<Document> = all(s
        .changes
        .find(doc! {"$and": [
            {"roomId": room.as_str()},
            {"at": {"$gte": ts}},
            {"gone": {"$exists": false}},
            {"$or": [
                {"msgTs": {"$lt": ts}},
                {"msgTs": ts, "messageId": {"$lte": since.as_str()}},
            ]},
        ]})
        .sort(doc! {"seq": 1})
        .limit(limit.min(i64::MAX as usize) as i64)
        .projection(doc! {"outbox": 0}))
    .await?;
    let edited: Vec<ObjectId> = logged
        .iter()
        .filter(|d| string(d, "kind") == Some("edited"))
        .filter_map(|d| string(d, "messageId").and_then(|h| ObjectId::parse_str(h).ok()))
        .collect();
    let mut current: HashMap<String, (String, bool)> = HashMap::new();
    if !edited.is_empty() {
        let docs: Vec<Document> = all(s
            .messages
            .find(doc! {"_id": {"$in": edited}})
            .projection(doc! {"message": 1, "deletedAt": 1}))
        .await?;
        for d in docs {
            if let Ok(id) = d.get_object_id("_id") {
                let deleted = d.get("deletedAt").is_some_and(|v| *v != Bson::Null);
                let text = string(&d, "message").unwrap_or_default().to_string();
                current.insert(id.to_hex(), (text, deleted));
            }
        }
    }
    let mut events = Vec::with_capacity(logged.len());
    for d in &logged {
        let message_id = string(d, "messageId").unwrap_or_default();
        let (text, deleted) = current.get(message_id).cloned().unwrap_or_default();
        if let Some(e) = change_event(
            room,
            string(d, "kind").unwrap_or_default(),
            message_id,
            string(d, "userId").unwrap_or_default(),
            string(d, "emoji").map(str::to_string),
            flag(d, "added"),
            integer(d, "count").map(|n| n as i64),
            integer(d, "at").unwrap_or(0) as i64,
            text,
            deleted,
        )? {
            events.push(e);
        }
    }
    Ok(Some(events))
}
