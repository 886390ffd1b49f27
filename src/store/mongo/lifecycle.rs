//! The MongoDB store's message lifecycle (SPEC 10) without multi-document transactions:
//! edits, deletes (tombstones), reactions, the change log, read markers.
//!
//! A change is committed by one single-document write of the message (atomic, like an append
//! with its `outbox` field): a compare-and-set on the message's `rev` that sets its new state
//! (`message`, `editedAt`, `deletedAt`), the new `rev` (a number of the `changes` sequence,
//! reserved after the message was read, so a message's `rev` only grows) and `pending`: the
//! change as a record (who, when, the emoji, the count, the outbox entry). Two writers of one
//! message (two instances, two tasks) cannot both win: the loser reads the message again and
//! decides again (its emoji may no longer fit, its add may no longer be effective).
//!
//! What the change implies elsewhere is then derived from `pending`, by steps that may run
//! twice or late without harm: the change-log document (`messageChanges`, keyed by the change's
//! `seq`, carrying the outbox entry of an edit or delete), the reaction document (written only
//! when its `seq` is older than the change's, so a late step never undoes a newer change), the
//! room's `lastMessage` text (guarded by `lastMessage.rev` the same way), a delete's blanking
//! of the message's pending entries; then `pending` is unset. The writer of the change runs
//! them at once; any change of the same message runs them first for the change before it;
//! `open` and every relay poll (`outbox_pending`) run them for whatever a stopped instance
//! left. Reads apply a pending reaction themselves, so they never lag the commit.

use mongodb::bson::{Bson, Document, doc, oid::ObjectId};

use super::documents::{date, flag, integer, message_from_doc, millis, string};
use super::reads::{marker_key, position, reaction_key, with_reaction_state, with_reactions};
use super::writes::reserve;
use super::{MongoStore, all, both, corrupt, db_error, is_duplicate_key};
use crate::domain::{
    ChangeKind, MAX_REACTIONS_PER_MESSAGE, Message, MessageChange, MessageId, ReadMarker,
    RoomEvent, RoomId,
};
use crate::store::rows::read_marker;
use crate::store::{Changed, MarkedRead, OutboxEvent, StoreError, receivers_of};

/// Most compare-and-set rounds a change or a read marker tries before giving up.
const ROUNDS: usize = 100;

/// The message document `id` of `room` (without its `outbox` field).
async fn find(
    s: &MongoStore,
    room: &RoomId,
    id: &MessageId,
) -> Result<Option<Document>, StoreError> {
    let Ok(oid) = ObjectId::parse_str(id.as_str()) else {
        return Ok(None);
    };
    s.messages
        .find_one(doc! {"_id": oid, "roomId": room.as_str()})
        .projection(doc! {"outbox": 0})
        .await
        .map_err(db_error)
}

/// One message of a room in its current state.
pub(super) async fn message(
    s: &MongoStore,
    room: &RoomId,
    id: &MessageId,
) -> Result<Option<Message>, StoreError> {
    match find(s, room, id).await? {
        Some(d) => Ok(with_reactions(s, std::slice::from_ref(&d)).await?.pop()),
        None => Ok(None),
    }
}

/// Applies one change (the store's lifecycle contract).
pub(super) async fn change(s: &MongoStore, c: MessageChange) -> Result<Changed, StoreError> {
    // The changes of one message in this instance take turns (their compare-and-set would
    // only make all but one of them read and try again); other instances' race on the `rev`.
    let _turn = s.change_turn(&c.message_id).lock().await;
    for _ in 0..ROUNDS {
        let doc = find(s, &c.room_id, &c.message_id)
            .await?
            .ok_or(StoreError::NotFound)?;
        if doc.contains_key("pending") {
            // The change before this one is committed; its steps come first.
            complete(s, &doc).await?;
            continue;
        }
        if let Some(changed) = attempt(s, &c, &doc).await? {
            return Ok(changed);
        }
    }
    Err(StoreError::Unavailable(format!(
        "mongodb: message {} is changed by others too often, retry",
        c.message_id
    )))
}

/// One round of `change` on `doc` (read without `pending`): `None` when another writer
/// changed the message meanwhile.
async fn attempt(
    s: &MongoStore,
    c: &MessageChange,
    doc: &Document,
) -> Result<Option<Changed>, StoreError> {
    let (current, reacted) = with_reaction_state(s, std::slice::from_ref(doc)).await?;
    let current = current
        .into_iter()
        .next()
        .ok_or_else(|| corrupt("message"))?;
    let oid = doc
        .get_object_id("_id")
        .map_err(|_| corrupt("message _id"))?;
    let author = current.user_id == c.user_id;
    let unchanged = |event| {
        Ok(Some(Changed {
            event,
            message: current.clone(),
            effective: false,
        }))
    };
    let mut set = Document::new();
    let mut record = doc! {
        "userId": c.user_id.as_str(),
        "at": c.at as i64,
    };
    let mut entry: Option<(OutboxEvent, &str)> = None;
    let event = match &c.kind {
        ChangeKind::Edit(text) => {
            if current.deleted {
                return Err(StoreError::NotFound);
            }
            if !author {
                return Err(StoreError::NotAuthor);
            }
            set.insert("message", text.as_str());
            set.insert("editedAt", date(c.at));
            record.insert("kind", "edited");
            entry = Some((OutboxEvent::Edited, text.as_str()));
            RoomEvent::Edited {
                room_id: c.room_id.clone(),
                message_id: c.message_id.clone(),
                message: text.clone(),
                edited_at: c.at,
                user_id: c.user_id.clone(),
            }
        }
        ChangeKind::Delete => {
            if !author {
                return Err(StoreError::NotAuthor);
            }
            if current.deleted {
                return unchanged(RoomEvent::Deleted {
                    room_id: c.room_id.clone(),
                    message_id: c.message_id.clone(),
                    deleted_at: millis(doc, "deletedAt").unwrap_or(0),
                    user_id: c.user_id.clone(),
                });
            }
            set.insert("message", "");
            set.insert("deletedAt", date(c.at));
            record.insert("kind", "deleted");
            entry = Some((OutboxEvent::Deleted, ""));
            RoomEvent::Deleted {
                room_id: c.room_id.clone(),
                message_id: c.message_id.clone(),
                deleted_at: c.at,
                user_id: c.user_id.clone(),
            }
        }
        ChangeKind::React { emoji, add } => {
            if current.deleted {
                return Err(StoreError::NotFound);
            }
            let shown = current.reactions.iter().find(|r| &r.emoji == emoji);
            // Asked of the documents, not of `user_ids` (which history cuts to the newest).
            let key = (
                c.message_id.as_str().to_string(),
                emoji.as_str().to_string(),
                c.user_id.as_str().to_string(),
            );
            let mine = reacted.get(&key).is_some_and(|(_, on)| *on);
            let before = shown.map_or(0, |r| r.count);
            let mut event = RoomEvent::Reaction {
                room_id: c.room_id.clone(),
                message_id: c.message_id.clone(),
                emoji: emoji.clone(),
                user_id: c.user_id.clone(),
                added: *add,
                count: before,
            };
            if mine == *add {
                return unchanged(event);
            }
            if *add && shown.is_none() && current.reactions.len() >= MAX_REACTIONS_PER_MESSAGE {
                return Err(StoreError::TooManyReactions);
            }
            let now = if *add {
                before + 1
            } else {
                before.saturating_sub(1)
            };
            if let RoomEvent::Reaction { count, .. } = &mut event {
                *count = now;
            }
            record.insert("kind", "reaction");
            record.insert("emoji", emoji.as_str());
            record.insert("added", *add);
            record.insert("count", now as i64);
            event
        }
    };
    let mut wrote_entry = false;
    if let (Some(cfg), Some((event, text))) = (s.outbox.config, entry) {
        let pending = s.outbox.pending.load(std::sync::atomic::Ordering::Relaxed);
        if pending >= cfg.max_pending {
            return Err(StoreError::OutboxFull(pending));
        }
        let members = participants(s, &c.room_id).await?;
        let (receiver, receivers) = receivers_of(&members, current.user_id.as_str());
        let seq = reserve(&s.counters, "outbox", 1).await?;
        record.insert(
            "outbox",
            doc! {
                "seq": seq as i64,
                "event": event.as_str(),
                "senderId": current.user_id.as_str(),
                "receiverId": receiver.map_or(Bson::Null, |r| Bson::String(r.to_string())),
                "receiverIds": receivers,
                "message": text,
                "timestamp": c.at as i64,
            },
        );
        wrote_entry = true;
    }
    let seq = reserve(&s.counters, "changes", 1).await?;
    record.insert("seq", seq as i64);
    set.insert("rev", seq as i64);
    set.insert("pending", record);
    let same_rev = match doc.get("rev") {
        Some(rev) => doc! {"rev": rev.clone()},
        None => doc! {"rev": {"$exists": false}},
    };
    let committed = s
        .messages
        .update_one(
            both(doc! {"_id": oid}, same_rev),
            doc! {"$set": set.clone()},
        )
        .await
        .map_err(db_error)?
        .matched_count
        == 1;
    if !committed {
        return Ok(None);
    }
    // The document as the compare-and-set left it.
    let mut now = doc.clone();
    for (k, v) in set {
        now.insert(k, v);
    }
    // Committed: the steps now (a failure leaves them to the next change, `open` or a relay
    // poll; the change stands either way).
    if let Err(e) = complete(s, &now).await {
        tracing::warn!(error = %e, "mongodb: change committed, its steps left for later");
    }
    if wrote_entry {
        s.outbox
            .pending
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        s.outbox.signal.notify_one();
    }
    let mut message = with_reactions(s, std::slice::from_ref(&now))
        .await?
        .pop()
        .ok_or(StoreError::NotFound)?;
    message.rev = seq;
    Ok(Some(Changed {
        event,
        message,
        effective: true,
    }))
}

/// A room's participants, sorted.
async fn participants(s: &MongoStore, room: &RoomId) -> Result<Vec<String>, StoreError> {
    let doc = s
        .rooms
        .find_one(doc! {"roomId": room.as_str()})
        .projection(doc! {"participants": 1})
        .await
        .map_err(db_error)?;
    let mut users: Vec<String> = doc
        .as_ref()
        .and_then(|d| d.get_array("participants").ok())
        .map(|l| {
            l.iter()
                .filter_map(|u| u.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    users.sort();
    users.dedup();
    Ok(users)
}

/// The steps of the change `doc` holds as `pending` (see the module docs), then unsets it.
/// Each step may run twice, or after a newer change's, without harm.
async fn complete(s: &MongoStore, doc: &Document) -> Result<(), StoreError> {
    let Ok(p) = doc.get_document("pending") else {
        return Ok(());
    };
    let m = message_from_doc(doc)?;
    let oid = doc
        .get_object_id("_id")
        .map_err(|_| corrupt("message _id"))?;
    let seq = integer(p, "seq").ok_or_else(|| corrupt("pending change"))? as i64;
    let kind = string(p, "kind").ok_or_else(|| corrupt("pending change"))?;
    let id = m.message_id.as_str();

    let mut log = doc! {
        // A string: the stand-in leaves documents with integer ids as they were on some
        // updates (an `$unset` matches them and changes nothing).
        "_id": format!("{seq:020}"),
        "seq": seq,
        "roomId": m.room_id.as_str(),
        "messageId": id,
        "msgTs": m.timestamp as i64,
        "kind": kind,
    };
    for field in ["userId", "at", "emoji", "added", "count", "outbox"] {
        if let Some(v) = p.get(field) {
            log.insert(field, v.clone());
        }
    }
    match s.changes.insert_one(log).await {
        Ok(_) => {}
        Err(e) if is_duplicate_key(&e) => {} // logged by an earlier run of these steps
        Err(e) => return Err(db_error(e)),
    }
    match kind {
        "reaction" => {
            let (Some(emoji), Some(user)) = (string(p, "emoji"), string(p, "userId")) else {
                return Err(corrupt("pending reaction"));
            };
            let on = flag(p, "added").ok_or_else(|| corrupt("pending reaction"))?;
            let written = s
                .reactions
                .update_one(
                    both(
                        doc! {"_id": reaction_key(id, emoji, user)},
                        doc! {"seq": {"$lt": seq}},
                    ),
                    doc! {"$set": {
                        "messageId": id, "emoji": emoji, "userId": user, "seq": seq,
                        "on": i32::from(on), "at": p.get("at").cloned().unwrap_or(Bson::Null),
                    }},
                )
                .upsert(true)
                .await;
            match written {
                Ok(_) => {}
                // The document holds a newer change of this reaction already.
                Err(e) if is_duplicate_key(&e) => {}
                Err(e) => return Err(db_error(e)),
            }
        }
        "edited" => last_message_text(s, &m, m.message.as_str(), seq).await?,
        "deleted" => {
            // The text goes from the entries still pending (the message's own `message.sent`
            // entry reads the blanked document) and from the room's last message.
            s.changes
                .update_many(
                    doc! {"messageId": id, "outbox.seq": {"$exists": true}},
                    doc! {"$set": {"outbox.message": ""}},
                )
                .await
                .map_err(db_error)?;
            last_message_text(s, &m, "", seq).await?;
            // Its edits are no longer replayed (`changes_since` leaves them out).
            s.changes
                .update_many(
                    doc! {"messageId": id, "kind": "edited"},
                    doc! {"$set": {"gone": 1}},
                )
                .await
                .map_err(db_error)?;
        }
        _ => return Err(corrupt("pending change kind")),
    }
    s.messages
        .update_one(
            doc! {"_id": oid, "pending.seq": seq},
            doc! {"$unset": {"pending": ""}},
        )
        .await
        .map_err(db_error)?;
    Ok(())
}

/// The room's `lastMessage` text follows an edit or delete of the message it shows (same
/// timestamp and sender), unless a newer change of it got there first (`lastMessage.rev`).
async fn last_message_text(
    s: &MongoStore,
    m: &Message,
    text: &str,
    seq: i64,
) -> Result<(), StoreError> {
    let room = s
        .rooms
        .find_one(doc! {"roomId": m.room_id.as_str()})
        .projection(doc! {"lastMessage": 1})
        .await
        .map_err(db_error)?;
    let Some(last) = room
        .as_ref()
        .and_then(|r| r.get_document("lastMessage").ok())
    else {
        return Ok(());
    };
    if millis(last, "timestamp") != Some(m.timestamp)
        || string(last, "senderId") != Some(m.user_id.as_str())
    {
        return Ok(());
    }
    // The timestamp as stored (a Date, or the stand-in's string), so that a message appended
    // since, which replaced `lastMessage`, does not match.
    let stored = last.get("timestamp").cloned().unwrap_or(Bson::Null);
    s.rooms
        .update_one(
            both(
                doc! {
                    "roomId": m.room_id.as_str(),
                    "lastMessage.timestamp": stored,
                    "lastMessage.senderId": m.user_id.as_str(),
                },
                doc! {"$or": [
                    {"lastMessage.rev": {"$exists": false}},
                    {"lastMessage.rev": {"$lt": seq}},
                ]},
            ),
            doc! {"$set": {"lastMessage.content": text, "lastMessage.rev": seq}},
        )
        .await
        .map(|_| ())
        .map_err(db_error)
}

/// Runs the steps of changes a stopped writer left pending (at most 100 per call).
pub(super) async fn complete_stale(s: &MongoStore) -> Result<(), StoreError> {
    let docs: Vec<Document> = all(s
        .messages
        .find(doc! {"pending.seq": {"$exists": true}})
        .projection(doc! {"outbox": 0})
        .limit(100))
    .await?;
    for d in &docs {
        complete(s, d).await?;
    }
    Ok(())
}

/// Moves the user's marker forward to `m.message_id` (never backwards, in room order): a
/// conditional update that only matches an older marker, or the insert of a first one.
pub(super) async fn mark_read(s: &MongoStore, m: ReadMarker) -> Result<MarkedRead, StoreError> {
    let room = &m.room_id;
    let Some((ts, _)) = position(&s.messages, room, &m.message_id).await? else {
        return Err(StoreError::NotFound);
    };
    let ts = ts.timestamp_millis();
    let id = m.message_id.as_str();
    let key = marker_key(room, &m.user_id);
    let fields = doc! {
        "roomId": room.as_str(),
        "userId": m.user_id.as_str(),
        "messageId": id,
        "msgTs": ts,
        "readAt": m.read_at as i64,
    };
    for _ in 0..ROUNDS {
        let moved = s
            .markers
            .update_one(
                both(
                    doc! {"_id": &key},
                    doc! {"$or": [
                        {"msgTs": {"$lt": ts}},
                        {"msgTs": ts, "messageId": {"$lt": id}},
                    ]},
                ),
                doc! {"$set": fields.clone()},
            )
            .await
            .map_err(db_error)?
            .matched_count
            == 1;
        if moved {
            return Ok(MarkedRead {
                marker: m.clone(),
                moved: true,
            });
        }
        if let Some(d) = s
            .markers
            .find_one(doc! {"_id": &key})
            .await
            .map_err(db_error)?
        {
            // At or after this message already (markers only move forward).
            return Ok(MarkedRead {
                marker: read_marker(
                    room,
                    string(&d, "userId").unwrap_or_default(),
                    string(&d, "messageId").unwrap_or_default(),
                    integer(&d, "readAt").unwrap_or(0) as i64,
                )?,
                moved: false,
            });
        }
        let mut first = fields.clone();
        first.insert("_id", &key);
        match s.markers.insert_one(first).await {
            Ok(_) => {
                return Ok(MarkedRead {
                    marker: m.clone(),
                    moved: true,
                });
            }
            Err(e) if is_duplicate_key(&e) => continue, // a first marker raced this one
            Err(e) => return Err(db_error(e)),
        }
    }
    Err(StoreError::Unavailable(
        "mongodb: read marker contended, retry".into(),
    ))
}
