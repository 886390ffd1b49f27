//! Notification events for the systems around the chat (SPEC 8): every stored message produces
//! a `message.sent` event on RabbitMQ for the Notification Service; every edit a
//! `message.edited` and every delete a `message.deleted` event (SPEC 10), through the same
//! outbox and queue, in the same envelope (`event_body`).
//!
//! # Contract
//! - Transactional outbox: the event is written by the store in the same transaction as its
//!   message (`store` module docs, "Outbox contract"); `relay::OutboxRelay` publishes pending
//!   entries through an `EventPublisher` and marks them sent only after the publisher returned
//!   `Ok`, i.e. after the broker confirmed every entry of the batch.
//! - Delivery is at-least-once: an entry confirmed by the broker but not yet marked sent (the
//!   process dies, the confirm is lost with the connection, the store refuses the mark) is
//!   published again. Consumers dedupe on `data.messageId` (also the AMQP `message_id`
//!   property). Nothing else publishes twice: one relay per store (embedded), or atomic claims
//!   (shared stores).
//! - Order: entries leave in outbox order (`seq`), one batch at a time, each batch published in
//!   order on one channel, so the events of a room arrive in the order its messages were
//!   stored. A retried batch is published again from its first entry: a duplicate may repeat
//!   an earlier event, but the first copies keep the order.
//! - Outage: `publish_batch` fails (never hangs beyond its timeout); the relay backs off
//!   (100 ms doubling to 5 s) and retries the same entries; chat goes on, the outbox grows on
//!   disk up to `OUTBOX_MAX_PENDING`, after which sends are refused (`unavailable`) rather than
//!   stored without their event. `ping` reports the broker down for `/ready` meanwhile.

pub mod amqp;
pub mod relay;

use async_trait::async_trait;
use serde::Serialize;

use crate::store::{OutboxEntry, OutboxEvent};

#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// The broker cannot be reached, or the connection broke before every confirm arrived.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker refused (nacked) a message of the batch.
    #[error("broker refused the event: {0}")]
    Rejected(String),
}

/// Where `message.sent` events go.
#[async_trait]
pub trait EventPublisher: Send + Sync + 'static {
    /// Publishes every entry, in order, and returns only after the broker confirmed each one;
    /// any failure (connection, nack, timeout) fails the whole batch, which the caller retries.
    async fn publish_batch(&self, entries: &[OutboxEntry]) -> Result<(), PublishError>;

    /// (Re)connects if needed; the relay calls it while idle so `ping` recovers without
    /// traffic.
    async fn connect(&self) -> Result<(), PublishError>;

    /// Whether the broker link is up, without doing IO (cheap: for `/ready`).
    async fn ping(&self) -> Result<(), PublishError>;

    /// Closes the link (at shutdown).
    async fn close(&self);
}

/// The `message.sent` event, exactly as the Node service published it (SPEC 8).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageSent<'a> {
    pub event_type: &'static str,
    /// ISO-8601 (UTC, milliseconds, like JavaScript's `toISOString`).
    pub timestamp: String,
    pub data: MessageSentData<'a>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageSentData<'a> {
    pub message_id: &'a str,
    pub room_id: &'a str,
    pub sender_id: &'a str,
    pub receiver_id: Option<&'a str>,
    pub receiver_ids: Vec<&'a str>,
    pub message: &'a str,
    /// Epoch milliseconds, equal to the `new_message` timestamp.
    pub timestamp: u64,
}

impl<'a> MessageSent<'a> {
    pub const EVENT_TYPE: &'static str = "message.sent";

    /// The event of an outbox entry. The top-level timestamp is the message's own time (not
    /// the publish time), so a re-published event is byte-for-byte the same as the first copy.
    pub fn from_entry(e: &'a OutboxEntry) -> Self {
        Self {
            event_type: Self::EVENT_TYPE,
            timestamp: iso8601_ms(e.timestamp),
            data: MessageSentData {
                message_id: e.message_id.as_str(),
                room_id: e.room_id.as_str(),
                sender_id: e.sender_id.as_str(),
                receiver_id: e.receiver_id.as_ref().map(|u| u.as_str()),
                receiver_ids: e.receiver_ids.iter().map(|u| u.as_str()).collect(),
                message: &e.message,
                timestamp: e.timestamp,
            },
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an event always serializes")
    }
}

/// The JSON body of an outbox entry's event: `message.sent` exactly as the Node service
/// published it; `message.edited` and `message.deleted` in the same envelope, `data` the socket
/// event's payload (`message_edited`, `message_deleted`) plus `receiverIds`.
pub fn event_body(e: &OutboxEntry) -> Vec<u8> {
    let data = match e.event {
        OutboxEvent::Sent => return MessageSent::from_entry(e).to_json(),
        OutboxEvent::Edited => serde_json::json!({
            "roomId": e.room_id, "messageId": e.message_id, "message": e.message,
            "editedAt": e.timestamp, "userId": e.sender_id, "receiverIds": e.receiver_ids,
        }),
        OutboxEvent::Deleted => serde_json::json!({
            "roomId": e.room_id, "messageId": e.message_id, "deletedAt": e.timestamp,
            "userId": e.sender_id, "receiverIds": e.receiver_ids,
        }),
    };
    serde_json::to_vec(&serde_json::json!({
        "eventType": e.event.as_str(),
        "timestamp": iso8601_ms(e.timestamp),
        "data": data,
    }))
    .expect("an event always serializes")
}

/// The AMQP `message_id` of an entry's event, what consumers dedupe on: the message id for
/// `message.sent` (as before), `<messageId>:edited:<editedAt>` and `<messageId>:deleted` for
/// the others, so that an edit is never taken for a copy of the message's `message.sent`.
pub fn event_id(e: &OutboxEntry) -> String {
    match e.event {
        OutboxEvent::Sent => e.message_id.to_string(),
        OutboxEvent::Edited => format!("{}:edited:{}", e.message_id, e.timestamp),
        OutboxEvent::Deleted => format!("{}:deleted", e.message_id),
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for epoch milliseconds (UTC).
pub fn iso8601_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MessageId, RoomId, UserId};

    #[test]
    fn iso8601_matches_javascript() {
        assert_eq!(iso8601_ms(0), "1970-01-01T00:00:00.000Z");
        // new Date(1700000000123).toISOString()
        assert_eq!(iso8601_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        // new Date(951782400000).toISOString(): a leap day
        assert_eq!(iso8601_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn event_json_is_exactly_spec_8() {
        let entry = OutboxEntry {
            seq: 1,
            event: OutboxEvent::Sent,
            message_id: MessageId::parse("65a1b2c3d4e5f60718293a4b").unwrap(),
            room_id: RoomId::parse("r1").unwrap(),
            sender_id: UserId::parse("a").unwrap(),
            receiver_id: Some(UserId::parse("b").unwrap()),
            receiver_ids: vec![UserId::parse("b").unwrap()],
            message: "hi".into(),
            timestamp: 1_700_000_000_123,
        };
        let v: serde_json::Value =
            serde_json::from_slice(&MessageSent::from_entry(&entry).to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"eventType": "message.sent", "timestamp": "2023-11-14T22:13:20.123Z",
                "data": {"messageId": "65a1b2c3d4e5f60718293a4b", "roomId": "r1", "senderId": "a",
                    "receiverId": "b", "receiverIds": ["b"], "message": "hi",
                    "timestamp": 1_700_000_000_123u64}})
        );
        assert_eq!(
            event_body(&entry),
            MessageSent::from_entry(&entry).to_json()
        );
        assert_eq!(event_id(&entry), "65a1b2c3d4e5f60718293a4b");
        let edited = OutboxEntry {
            event: OutboxEvent::Edited,
            ..entry.clone()
        };
        let v: serde_json::Value = serde_json::from_slice(&event_body(&edited)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"eventType": "message.edited", "timestamp": "2023-11-14T22:13:20.123Z",
                "data": {"roomId": "r1", "messageId": "65a1b2c3d4e5f60718293a4b", "message": "hi",
                    "editedAt": 1_700_000_000_123u64, "userId": "a", "receiverIds": ["b"]}})
        );
        let deleted = OutboxEntry {
            event: OutboxEvent::Deleted,
            message: String::new(),
            ..entry
        };
        let v: serde_json::Value = serde_json::from_slice(&event_body(&deleted)).unwrap();
        assert_eq!(v["eventType"], "message.deleted");
        assert_eq!(v["data"]["deletedAt"], 1_700_000_000_123u64);
        assert!(v["data"].get("message").is_none());
        assert_eq!(event_id(&deleted), "65a1b2c3d4e5f60718293a4b:deleted");
    }
}
