//! MongoDB documents as domain values: `messages`, `rooms` and outbox fields as the Node
//! service wrote them (missing `username` / `messageType` read as the user id / `text`; a room
//! without `isPrivate` is private when it has participants), and the forms the nx-27017
//! stand-in gives back (a `Date` set by `$set` returns as a string). SPEC 10 adds `replyTo`,
//! `editedAt`, `deletedAt` (a tombstone reads with an empty text) and `rev` to messages, and
//! the outbox entries of edits and deletes, fields of `messageChanges` documents.

use mongodb::bson::{Bson, DateTime, Document};

use super::corrupt;
use crate::domain::{
    ClientMessageId, LastMessage, Message, MessageBody, MessageId, MessageType, Room, RoomId,
    RoomType, UserId, Username,
};
use crate::store::{OutboxEntry, OutboxEvent, StoreError};

pub(super) fn date(ms: u64) -> DateTime {
    DateTime::from_millis(ms as i64)
}

/// A date field as epoch milliseconds (the Node service wrote `Date`s; numbers are accepted).
pub(super) fn millis(doc: &Document, key: &str) -> Option<u64> {
    match doc.get(key)? {
        Bson::DateTime(d) => Some(d.timestamp_millis().max(0) as u64),
        Bson::Int64(n) => Some((*n).max(0) as u64),
        Bson::Int32(n) => Some((*n).max(0) as u64),
        Bson::Double(n) => Some(n.max(0.0) as u64),
        // The nx-27017 stand-in turns a `Date` set by `$set` into "YYYY-MM-DD HH:MM:SS.ffffff"
        // (UTC); read it back rather than lose the field.
        Bson::String(s) => parse_utc(s),
        _ => None,
    }
}

/// "YYYY-MM-DD[ T]HH:MM:SS[.fraction][Z]" (UTC) as epoch milliseconds.
fn parse_utc(s: &str) -> Option<u64> {
    let s = s.trim_end_matches('Z');
    let (date, time) = s.split_once([' ', 'T'])?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    let ms: i64 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || sec > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 24 + h) * 60 + min) * 60_000 + sec * 1000 + ms).ok()
}

/// An integer field, whatever width the server kept it in.
pub(super) fn integer(doc: &Document, key: &str) -> Option<u64> {
    match doc.get(key)? {
        Bson::Int64(n) => u64::try_from(*n).ok(),
        Bson::Int32(n) => u64::try_from(*n).ok(),
        Bson::Double(n) if *n >= 0.0 && n.fract() == 0.0 => Some(*n as u64),
        _ => None,
    }
}

pub(super) fn string<'a>(doc: &'a Document, key: &str) -> Option<&'a str> {
    doc.get_str(key).ok()
}

pub(super) fn message_from_doc(doc: &Document) -> Result<Message, StoreError> {
    let id = doc
        .get_object_id("_id")
        .map_err(|_| corrupt("message _id"))?;
    let user = string(doc, "userId").ok_or_else(|| corrupt("message userId"))?;
    let timestamp = millis(doc, "timestamp")
        .or_else(|| millis(doc, "createdAt"))
        .unwrap_or_else(|| id.timestamp().timestamp_millis().max(0) as u64);
    let deleted = doc.get("deletedAt").is_some_and(|d| *d != Bson::Null);
    Ok(Message {
        message_id: MessageId::parse(&id.to_hex()).map_err(|_| corrupt("message _id"))?,
        room_id: RoomId::parse(string(doc, "roomId").unwrap_or_default())
            .map_err(|_| corrupt("message roomId"))?,
        user_id: UserId::parse(user).map_err(|_| corrupt("message userId"))?,
        username: Username::parse(string(doc, "username").unwrap_or(user))
            .map_err(|_| corrupt("message username"))?,
        // A tombstone has no text, whatever a writer left in the field.
        message: MessageBody::from_stored(if deleted {
            String::new()
        } else {
            string(doc, "message").unwrap_or_default().to_string()
        }),
        message_type: match string(doc, "messageType") {
            None => MessageType::Text,
            Some(t) => MessageType::parse_stored(t).ok_or_else(|| corrupt("messageType"))?,
        },
        timestamp,
        client_message_id: string(doc, "clientMessageId")
            .and_then(|c| ClientMessageId::parse(c).ok()),
        reply_to: string(doc, "replyTo")
            .map(|r| MessageId::parse(r).map_err(|_| corrupt("message replyTo")))
            .transpose()?,
        edited_at: millis(doc, "editedAt"),
        deleted,
        reactions: Vec::new(),
        rev: integer(doc, "rev").unwrap_or(0),
    })
}

/// A flag stored as a boolean or as 0 / 1 (the stand-in keeps a `false` set by `$set` as 0).
pub(super) fn flag(doc: &Document, key: &str) -> Option<bool> {
    match doc.get(key)? {
        Bson::Boolean(b) => Some(*b),
        Bson::Int32(n) => Some(*n != 0),
        Bson::Int64(n) => Some(*n != 0),
        _ => None,
    }
}

/// The outbox entry of an edit or delete: the `outbox` field of its `messageChanges`
/// document (`{seq, event, senderId, receiverId, receiverIds, message, timestamp}`).
pub(super) fn change_entry_from_doc(doc: &Document) -> Result<OutboxEntry, StoreError> {
    let outbox = doc
        .get_document("outbox")
        .map_err(|_| corrupt("change outbox entry"))?;
    let user = |s: &str| UserId::parse(s).map_err(|_| corrupt("outbox user id"));
    Ok(OutboxEntry {
        seq: integer(outbox, "seq").ok_or_else(|| corrupt("outbox seq"))?,
        event: string(outbox, "event")
            .and_then(OutboxEvent::parse)
            .ok_or_else(|| corrupt("outbox event"))?,
        message_id: MessageId::parse(string(doc, "messageId").unwrap_or_default())
            .map_err(|_| corrupt("change messageId"))?,
        room_id: RoomId::parse(string(doc, "roomId").unwrap_or_default())
            .map_err(|_| corrupt("change roomId"))?,
        sender_id: user(string(outbox, "senderId").unwrap_or_default())?,
        receiver_id: string(outbox, "receiverId").map(user).transpose()?,
        receiver_ids: receivers(outbox)?,
        message: string(outbox, "message").unwrap_or_default().to_string(),
        timestamp: integer(outbox, "timestamp").ok_or_else(|| corrupt("outbox timestamp"))?,
    })
}

fn receivers(outbox: &Document) -> Result<Vec<UserId>, StoreError> {
    outbox
        .get_array("receiverIds")
        .map_err(|_| corrupt("outbox receivers"))?
        .iter()
        .map(|r| {
            r.as_str()
                .and_then(|s| UserId::parse(s).ok())
                .ok_or_else(|| corrupt("outbox receivers"))
        })
        .collect()
}

pub(super) fn room_from_doc(doc: &Document) -> Result<Room, StoreError> {
    let mut participants = match doc.get_array("participants") {
        Ok(list) => list
            .iter()
            .map(|p| match p {
                Bson::String(s) => UserId::parse(s).map_err(|_| corrupt("room participant")),
                _ => Err(corrupt("room participant")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Err(_) => Vec::new(),
    };
    participants.sort();
    participants.dedup();
    let last_message = match doc.get_document("lastMessage") {
        Ok(last) => match (
            string(last, "content"),
            millis(last, "timestamp"),
            string(last, "senderId"),
        ) {
            (Some(content), Some(timestamp), Some(sender)) => Some(LastMessage {
                content: MessageBody::from_stored(content.to_string()),
                timestamp,
                sender_id: UserId::parse(sender).map_err(|_| corrupt("lastMessage senderId"))?,
            }),
            _ => None,
        },
        Err(_) => None,
    };
    let created_at = millis(doc, "createdAt").unwrap_or(0);
    Ok(Room {
        room_id: RoomId::parse(string(doc, "roomId").unwrap_or_default())
            .map_err(|_| corrupt("roomId"))?,
        room_type: RoomType::parse(string(doc, "type").unwrap_or("group"))
            .map_err(|_| corrupt("room type"))?,
        private: doc
            .get_bool("isPrivate")
            .unwrap_or(!participants.is_empty()),
        participants,
        last_message,
        created_at,
        updated_at: millis(doc, "updatedAt").unwrap_or(created_at),
        unread_count: None,
    })
}

pub(super) fn outbox_entry_from_doc(doc: &Document) -> Result<OutboxEntry, StoreError> {
    let message = message_from_doc(doc)?;
    let outbox = doc
        .get_document("outbox")
        .map_err(|_| corrupt("outbox entry"))?;
    let user = |s: &str| UserId::parse(s).map_err(|_| corrupt("outbox user id"));
    Ok(OutboxEntry {
        event: OutboxEvent::Sent,
        seq: integer(outbox, "seq").ok_or_else(|| corrupt("outbox seq"))?,
        message_id: message.message_id,
        room_id: message.room_id,
        sender_id: message.user_id,
        receiver_id: string(outbox, "receiverId").map(user).transpose()?,
        receiver_ids: receivers(outbox)?,
        message: message.message.as_str().to_string(),
        timestamp: message.timestamp,
    })
}

#[cfg(test)]
mod tests {
    use mongodb::bson::doc;

    use super::*;

    #[test]
    fn string_dates_of_the_stand_in_read_as_utc_millis() {
        assert_eq!(parse_utc("1970-01-01 00:00:00"), Some(0));
        assert_eq!(
            parse_utc("2026-11-25 14:40:13.066000"),
            Some(1_795_617_613_066)
        );
        assert_eq!(parse_utc("2000-02-29T23:59:59.5Z"), Some(951_868_799_500));
        assert_eq!(parse_utc("2026-13-01 00:00:00"), None);
        assert_eq!(parse_utc("yesterday"), None);
    }

    #[test]
    fn node_room_documents_without_is_private_are_private_when_they_have_participants() {
        let with = doc! {"roomId": "r1", "type": "direct", "participants": ["b", "a"]};
        let room = room_from_doc(&with).expect("room");
        assert!(room.private);
        assert_eq!(
            room.participants,
            ["a", "b"].map(|u| UserId::parse(u).unwrap())
        );
        let without = doc! {"roomId": "r2", "type": "group"};
        assert!(!room_from_doc(&without).expect("room").private);
        let open =
            doc! {"roomId": "r3", "type": "group", "participants": ["a"], "isPrivate": false};
        assert!(!room_from_doc(&open).expect("room").private);
    }
}
