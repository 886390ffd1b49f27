//! MongoDB writes. Appends go through the group-commit writer (`store::batch`); a batch is,
//! without a transaction: one `find` of the batch's rooms, one `update` command creating
//! unknown rooms, one `$inc` reserving the outbox seqs, one unordered `insertMany` of the
//! messages with their `outbox` fields, one `update` command moving each room's
//! `lastMessage` / `updatedAt` forward (never back), then the answers. Multi-statement
//! `update` commands rather than the driver's `bulkWrite`, which needs MongoDB 8. Room
//! creation and members are single-document writes of their own (below), not queued.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mongodb::bson::{Bson, Document, doc};
use mongodb::error::{Error as MongoError, ErrorKind};
use mongodb::options::ReturnDocument;
use mongodb::{Collection, Database};

use super::documents::{date, integer, message_from_doc, string};
use super::{
    Append, BATCH_TIMEOUT, DUPLICATE_KEY, MAX_BATCH, all, both, bounded, corrupt, db_error,
    is_duplicate_key, oid, outbox, reads,
};
use crate::domain::{Message, NewRoom, Room, RoomId, RoomType, UserId, now_ms};
use crate::store::batch::{
    ApplyBatch, Failing, OutboxState, Reply, caller_error, warn_outbox_full,
};
use crate::store::{Appended, Key, StoreError, key_of, receivers_of};

/// How often the writer recounts pending events (others may have relayed some).
const OUTBOX_RECOUNT: Duration = Duration::from_secs(1);

/// What the writer needs.
pub(super) struct Writer {
    pub(super) db: Database,
    /// The write concern of the `update` commands (the client's, as a document).
    pub(super) write_concern: Option<Document>,
    pub(super) messages: Collection<Document>,
    pub(super) rooms: Collection<Document>,
    pub(super) counters: Collection<Document>,
    pub(super) changes: Collection<Document>,
    pub(super) outbox: Arc<OutboxState>,
    /// When the outbox was last counted.
    pub(super) counted: Instant,
    /// Whether the last batch failed (logged when it starts and when it clears).
    pub(super) failing: Failing,
}

impl ApplyBatch for Writer {
    type Op = Append;
    const STORE: &'static str = "mongodb";
    const MAX_BATCH: usize = MAX_BATCH;
    const QUEUE: usize = 4 * MAX_BATCH;

    async fn apply(&mut self, appends: Vec<Append>) {
        if self.outbox.config.is_some() && self.counted.elapsed() >= OUTBOX_RECOUNT {
            self.counted = Instant::now();
            if let Ok(n) = outbox::count(&self.messages, &self.changes).await {
                self.outbox.pending.store(n, Ordering::Relaxed);
            }
        }
        self.append_batch(appends).await;
    }
}

impl Writer {
    /// Stores a batch of appends; every sender gets its own answer.
    async fn append_batch(&mut self, appends: Vec<Append>) {
        let (messages, replies): (Vec<Message>, Vec<Reply<Appended>>) = appends.into_iter().unzip();
        let answers = match bounded(BATCH_TIMEOUT, "storing messages", self.store(&messages)).await
        {
            Ok(answers) => {
                self.failing.ok(Self::STORE);
                answers
            }
            Err(e) => {
                self.failing.fail(Self::STORE, &e);
                messages.iter().map(|_| Err(caller_error(&e))).collect()
            }
        };
        for (reply, answer) in replies.into_iter().zip(answers) {
            let _ = reply.send(answer);
        }
    }

    /// One answer per message, in order. An `Err` here fails the whole batch.
    async fn store(
        &self,
        messages: &[Message],
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        let mut answers: Vec<Option<Result<Appended, StoreError>>> =
            messages.iter().map(|_| None).collect();
        let participants = self.rooms_of_batch(messages).await?;

        // The outbox bound: replays of stored messages still succeed, new messages beyond the
        // bound are refused (nothing of them is written).
        let mut accepted: Vec<usize> = (0..messages.len()).collect();
        if let Some(cfg) = self.outbox.config {
            let pending = self.outbox.pending.load(Ordering::Relaxed);
            if pending.saturating_add(messages.len() as u64) > cfg.max_pending {
                let stored = self.stored_by_key(messages.iter()).await?;
                let mut room = cfg.max_pending.saturating_sub(pending);
                accepted.clear();
                for (i, m) in messages.iter().enumerate() {
                    if let Some(found) = key_of(m).and_then(|k| stored.get(&k)) {
                        answers[i] = Some(Ok(Appended {
                            message: found.clone(),
                            duplicate: true,
                            committed: None,
                        }));
                    } else if room > 0 {
                        room -= 1;
                        accepted.push(i);
                    } else {
                        answers[i] = Some(Err(StoreError::OutboxFull(pending)));
                    }
                }
                let refused = answers
                    .iter()
                    .filter(|a| matches!(a, Some(Err(StoreError::OutboxFull(_)))))
                    .count();
                if refused > 0 {
                    warn_outbox_full(pending, refused);
                }
            }
        }

        // One seq range for the batch's events (gaps are harmless).
        let first_seq = match (self.outbox.config, accepted.len()) {
            (Some(_), n) if n > 0 => Some(self.reserve_seqs(n as u64).await?),
            _ => None,
        };
        let empty = Vec::new();
        let mut docs = Vec::with_capacity(accepted.len());
        for (k, &i) in accepted.iter().enumerate() {
            let m = &messages[i];
            let mut d = doc! {
                "_id": oid(&m.message_id).map_err(|_| corrupt("message id"))?,
                "roomId": m.room_id.as_str(),
                "userId": m.user_id.as_str(),
                "username": m.username.as_str(),
                "message": m.message.as_str(),
                "messageType": m.message_type.as_str(),
                "timestamp": date(m.timestamp),
                "createdAt": date(m.timestamp),
            };
            if let Some(c) = &m.client_message_id {
                d.insert("clientMessageId", c.as_str());
            }
            if let Some(r) = &m.reply_to {
                d.insert("replyTo", r.as_str());
            }
            if let Some(first) = first_seq {
                let all = participants.get(m.room_id.as_str()).unwrap_or(&empty);
                let (receiver, receivers) = receivers_of(all, m.user_id.as_str());
                d.insert(
                    "outbox",
                    doc! {
                        "seq": (first + k as u64) as i64,
                        "receiverId": receiver.map_or(Bson::Null, |r| Bson::String(r.to_string())),
                        "receiverIds": receivers,
                    },
                );
            }
            docs.push(d);
        }

        // Per document: stored, a duplicate key, or another error of its own.
        let mut failed: HashMap<usize, MongoError> = HashMap::new();
        let mut duplicates = Vec::new();
        if !docs.is_empty() {
            match self.messages.insert_many(docs).ordered(false).await {
                Ok(_) => {}
                Err(e) => match &*e.kind {
                    ErrorKind::InsertMany(ime) if ime.write_concern_error.is_none() => {
                        for we in ime.write_errors.iter().flatten() {
                            let i = accepted[we.index];
                            if we.code == DUPLICATE_KEY && messages[i].client_message_id.is_some() {
                                duplicates.push(i);
                            } else {
                                failed.insert(i, e.clone());
                            }
                        }
                    }
                    _ => return Err(db_error(e)),
                },
            }
        }
        if !duplicates.is_empty() {
            let stored = self
                .stored_by_key(duplicates.iter().map(|&i| &messages[i]))
                .await?;
            for i in duplicates {
                answers[i] = Some(match key_of(&messages[i]).and_then(|k| stored.get(&k)) {
                    Some(found) => Ok(Appended {
                        message: found.clone(),
                        duplicate: true,
                        committed: None,
                    }),
                    None => Err(StoreError::Internal(
                        "mongodb: duplicate key without a stored message".into(),
                    )),
                });
            }
        }
        let mut written = 0u64;
        let mut last: HashMap<&str, &Message> = HashMap::new();
        for &i in &accepted {
            if answers[i].is_some() {
                continue;
            }
            let m = &messages[i];
            if let Some(e) = failed.remove(&i) {
                answers[i] = Some(Err(db_error(e)));
                continue;
            }
            written += 1;
            let entry = last.entry(m.room_id.as_str()).or_insert(m);
            if (m.timestamp, m.message_id.as_str()) >= (entry.timestamp, entry.message_id.as_str())
            {
                *entry = m;
            }
            answers[i] = Some(Ok(Appended {
                message: m.clone(),
                duplicate: false,
                committed: None,
            }));
        }
        if first_seq.is_some() && written > 0 {
            self.outbox.pending.fetch_add(written, Ordering::Relaxed);
            self.outbox.signal.notify_one();
        }
        // The messages are stored: a failed room update only leaves lastMessage behind.
        if let Err(e) = self.touch_rooms(last.into_values()).await {
            tracing::warn!(error = %e, "mongodb: messages stored, rooms' lastMessage not updated");
        }
        Ok(answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(StoreError::Internal("unanswered".into()))))
            .collect())
    }

    /// The participants of the batch's rooms; unknown rooms are created as open groups.
    async fn rooms_of_batch(
        &self,
        messages: &[Message],
    ) -> Result<HashMap<String, Vec<String>>, StoreError> {
        let ids: Vec<&str> = messages
            .iter()
            .map(|m| m.room_id.as_str())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut known = self.participants(&ids).await?;
        let missing: Vec<&str> = ids
            .into_iter()
            .filter(|id| !known.contains_key(*id))
            .collect();
        if !missing.is_empty() {
            let now = date(now_ms());
            let creations = missing
                .iter()
                .map(|id| {
                    doc! {
                        "q": {"roomId": *id},
                        "u": {"$setOnInsert": {
                            "type": "group", "isPrivate": false, "participants": [],
                            "lastMessage": Bson::Null, "createdAt": now, "updatedAt": now,
                        }},
                        "upsert": true,
                    }
                })
                .collect();
            // A duplicate key here means another writer created the room meanwhile: fine.
            self.update_all(creations, true).await?;
            known.extend(self.participants(&missing).await?);
        }
        Ok(known)
    }

    async fn participants(&self, ids: &[&str]) -> Result<HashMap<String, Vec<String>>, StoreError> {
        let docs: Vec<Document> = all(self
            .rooms
            .find(doc! {"roomId": {"$in": ids}})
            .projection(doc! {"roomId": 1, "participants": 1}))
        .await?;
        Ok(docs
            .iter()
            .filter_map(|d| {
                let id = string(d, "roomId")?.to_string();
                let mut users: Vec<String> = d
                    .get_array("participants")
                    .map(|l| {
                        l.iter()
                            .filter_map(|u| u.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                users.sort();
                users.dedup();
                Some((id, users))
            })
            .collect())
    }

    /// The stored messages with the idempotency keys of `messages`.
    async fn stored_by_key<'a>(
        &self,
        messages: impl Iterator<Item = &'a Message>,
    ) -> Result<HashMap<Key, Message>, StoreError> {
        let keys: Vec<Document> = messages
            .filter_map(|m| {
                m.client_message_id.as_ref().map(|c| {
                    doc! {"roomId": m.room_id.as_str(), "userId": m.user_id.as_str(),
                    "clientMessageId": c.as_str()}
                })
            })
            .collect();
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let docs: Vec<Document> = all(self
            .messages
            .find(doc! {"$or": keys})
            .projection(doc! {"outbox": 0}))
        .await?;
        docs.iter()
            .map(message_from_doc)
            .filter_map(|m| match m {
                Ok(m) => key_of(&m).map(|k| Ok((k, m))),
                Err(e) => Some(Err(e)),
            })
            .collect()
    }

    /// Reserves `n` outbox seqs; returns the first.
    async fn reserve_seqs(&self, n: u64) -> Result<u64, StoreError> {
        reserve(&self.counters, "outbox", n).await
    }

    /// Moves each room's `lastMessage` / `updatedAt` forward to its newest message here.
    async fn touch_rooms<'a>(
        &self,
        newest: impl Iterator<Item = &'a Message>,
    ) -> Result<(), StoreError> {
        let updates: Vec<Document> = newest
            .map(|m| {
                let ts = date(m.timestamp);
                doc! {
                    "q": both(
                        doc! {"roomId": m.room_id.as_str()},
                        doc! {"$or": [
                            {"lastMessage": Bson::Null},
                            {"lastMessage.timestamp": {"$lte": ts}},
                        ]},
                    ),
                    "u": {"$set": {
                        "lastMessage": {
                            "content": m.message.as_str(),
                            "timestamp": ts,
                            "senderId": m.user_id.as_str(),
                        },
                        "updatedAt": ts,
                    }},
                }
            })
            .collect();
        self.update_all(updates, false).await
    }

    /// Many update statements (`{q, u, upsert?}`) of `rooms` in one round trip: the `update`
    /// command, which every MongoDB version (and the stand-in) has, unlike the driver's
    /// `bulkWrite` (MongoDB 8+).
    async fn update_all(
        &self,
        updates: Vec<Document>,
        ignore_duplicates: bool,
    ) -> Result<(), StoreError> {
        if updates.is_empty() {
            return Ok(());
        }
        let mut command = doc! {
            "update": self.rooms.name(),
            "updates": updates,
            "ordered": false,
        };
        if let Some(wc) = &self.write_concern {
            command.insert("writeConcern", wc.clone());
        }
        let reply = self.db.run_command(command).await.map_err(db_error)?;
        if let Ok(errors) = reply.get_array("writeErrors") {
            let real = errors.iter().find(|e| {
                let code = e
                    .as_document()
                    .and_then(|d| d.get("code"))
                    .and_then(Bson::as_i32)
                    .unwrap_or(0);
                !(ignore_duplicates && code == DUPLICATE_KEY)
            });
            if let Some(e) = real {
                return Err(StoreError::Internal(format!("mongodb: rooms update: {e}")));
            }
        }
        Ok(())
    }
}

/// Creates a private room (a direct pair's existing room is returned with `false`).
pub(super) async fn create_room(
    rooms: &Collection<Document>,
    room: NewRoom,
) -> Result<(Room, bool), StoreError> {
    let pair = (room.room_type == RoomType::Direct).then(|| {
        let users: Vec<&str> = room.participants.iter().map(UserId::as_str).collect();
        doc! {"type": "direct", "participants": {"$all": users, "$size": 2}}
    });
    if let Some(pair) = &pair
        && let Some(existing) = reads::find_room(rooms, pair.clone()).await?
    {
        return Ok((existing, false));
    }
    let now = now_ms();
    let users: Vec<&str> = room.participants.iter().map(UserId::as_str).collect();
    let mut d = doc! {
        "roomId": room.room_id.as_str(),
        "type": room.room_type.as_str(),
        "participants": users,
        "isPrivate": true,
        "lastMessage": Bson::Null,
        "createdAt": date(now),
        "updatedAt": date(now),
    };
    if pair.is_some() {
        d.insert("directKey", direct_key(&room.participants));
    }
    let inserted = bounded(BATCH_TIMEOUT, "creating a room", async {
        match rooms.insert_one(d).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(db_error(e)),
        }
    })
    .await?;
    if inserted {
        let created = Room {
            room_id: room.room_id,
            room_type: room.room_type,
            participants: room.participants,
            private: true,
            last_message: None,
            created_at: now,
            updated_at: now,
            unread_count: None,
        };
        return Ok((created, true));
    }
    // The id is taken, or another writer created this pair's direct room meanwhile.
    if pair.is_some()
        && let Some(existing) =
            reads::find_room(rooms, doc! {"directKey": direct_key(&room.participants)}).await?
    {
        return Ok((existing, false));
    }
    Err(StoreError::RoomExists)
}

/// Adds `user` to an open room, creating it as an open group if unknown.
pub(super) async fn add_member(
    rooms: &Collection<Document>,
    room: &RoomId,
    user: &UserId,
) -> Result<(), StoreError> {
    let now = date(now_ms());
    let add = || {
        rooms
            .update_one(
                doc! {"roomId": room.as_str()},
                doc! {
                    "$addToSet": {"participants": user.as_str()},
                    "$setOnInsert": {
                        "type": "group", "isPrivate": false, "lastMessage": Bson::Null,
                        "createdAt": now, "updatedAt": now,
                    },
                },
            )
            .upsert(true)
    };
    bounded(BATCH_TIMEOUT, "adding a member", async {
        match add().await {
            Ok(_) => Ok(()),
            // Two first joins raced on the unique roomId: the room exists now.
            Err(e) if is_duplicate_key(&e) => add().await.map(|_| ()).map_err(db_error),
            Err(e) => Err(db_error(e)),
        }
    })
    .await
}

fn direct_key(participants: &[UserId]) -> String {
    participants
        .iter()
        .map(UserId::as_str)
        .collect::<Vec<_>>()
        .join("\u{1f}")
}

/// Reserves `n` numbers of the sequence `name` (`counters {_id: name, seq}`, the last number
/// handed out); returns the first. Numbers reserved by a write that then did not happen are
/// gaps, which are harmless.
pub(super) async fn reserve(
    counters: &Collection<Document>,
    name: &str,
    n: u64,
) -> Result<u64, StoreError> {
    let counter = counters
        .find_one_and_update(doc! {"_id": name}, doc! {"$inc": {"seq": n as i64}})
        .upsert(true)
        .return_document(ReturnDocument::After)
        .await
        .map_err(db_error)?
        .ok_or_else(|| corrupt("counter"))?;
    let last = integer(&counter, "seq").ok_or_else(|| corrupt("counter"))?;
    Ok(last + 1 - n)
}
