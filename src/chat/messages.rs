//! `send_message`: the message is built here (id, timestamp), stored durably through the store
//! port (which also writes its notification event to the outbox), then published to the room;
//! an idempotent replay (`clientMessageId` seen before) returns the stored message and is not
//! delivered again.

use std::time::Instant;

use serde::Serialize;

use super::{ChatError, ChatService, Session};
use crate::domain::{
    ClientMessageId, Message, MessageBody, MessageId, MessageType, RoomEvent, RoomId, now_ms,
};

/// The `send_message` command, built by the transports' DTO conversion.
#[derive(Debug, Clone)]
pub struct SendMessage {
    pub room_id: RoomId,
    pub body: MessageBody,
    pub message_type: MessageType,
    pub client_message_id: Option<ClientMessageId>,
    /// `replyTo`: a message of the same room (checked by `send`).
    pub reply_to: Option<MessageId>,
}

/// The ack of `send_message`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sent {
    pub message_id: MessageId,
    pub timestamp: u64,
}

impl ChatService {
    /// `send_message`: stored durably, then delivered to every member including the sender.
    pub async fn send(&self, s: &mut Session, cmd: SendMessage) -> Result<Sent, ChatError> {
        let me = self.require_member(s, &cmd.room_id)?;
        if !self.rate.allow(&me.user_id) {
            self.metrics
                .rate_limited(crate::metrics::RateLimit::Messages);
            return Err(ChatError::RateLimited);
        }
        if let Some(target) = &cmd.reply_to
            && self
                .store
                .get_message(&cmd.room_id, target)
                .await?
                .is_none()
        {
            return Err(ChatError::NotFound(
                "replyTo names no message of this room".into(),
            ));
        }
        let now = now_ms();
        let mut message = Message::new(
            MessageId::generate(now),
            cmd.room_id,
            me.user_id,
            me.username,
            cmd.body,
            cmd.message_type,
            now,
            cmd.client_message_id,
        );
        message.reply_to = cmd.reply_to;
        let started = Instant::now();
        let appended = self.store.append(message).await;
        // To the end of the durable write where the store reports it, not to when this task
        // runs again (the runtime's delay is in the delivery latency).
        let ended = appended
            .as_ref()
            .ok()
            .and_then(|a| a.committed)
            .unwrap_or_else(Instant::now);
        self.metrics
            .durable_write
            .observe(ended.saturating_duration_since(started));
        let appended = appended?;
        let sent = Sent {
            message_id: appended.message.message_id.clone(),
            timestamp: appended.message.timestamp,
        };
        if appended.duplicate {
            self.metrics.messages_duplicate.inc();
        } else {
            self.metrics.messages_stored.inc();
            self.publish(RoomEvent::Message(appended.message)).await;
        }
        Ok(sent)
    }
}
