//! The message lifecycle of SPEC 10: `edit_message`, `delete_message`, `add_reaction` /
//! `remove_reaction`, `mark_read`, and their REST twins. Each is checked here (membership,
//! the per-user write rate), applied durably by the store (which checks the rest atomically:
//! the message exists in the room, author only, not deleted, the emoji bound), then published
//! to the room when it changed something. A repeated delete, add or remove is answered with
//! success and the current state, and nothing is published again.

use serde::Serialize;

use super::{ChatError, ChatService, Session};
use crate::domain::{
    ChangeKind, Emoji, Identity, MessageBody, MessageChange, MessageId, ReadMarker, RoomEvent,
    RoomId, now_ms,
};
use crate::store::Changed;

/// A change a client asks for (`edit_message`, `delete_message`, `add_reaction`,
/// `remove_reaction`).
#[derive(Debug, Clone)]
pub struct ChangeMessage {
    pub room_id: RoomId,
    pub message_id: MessageId,
    pub kind: ChangeKind,
}

impl ChangeMessage {
    pub fn edit(room_id: RoomId, message_id: MessageId, body: MessageBody) -> Self {
        Self {
            room_id,
            message_id,
            kind: ChangeKind::Edit(body),
        }
    }

    pub fn delete(room_id: RoomId, message_id: MessageId) -> Self {
        Self {
            room_id,
            message_id,
            kind: ChangeKind::Delete,
        }
    }

    pub fn react(room_id: RoomId, message_id: MessageId, emoji: Emoji, add: bool) -> Self {
        Self {
            room_id,
            message_id,
            kind: ChangeKind::React { emoji, add },
        }
    }
}

/// The ack of a change: the fields of the event the members got.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeAck {
    pub message_id: MessageId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emoji: Option<Emoji>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

impl From<&Changed> for ChangeAck {
    fn from(c: &Changed) -> Self {
        let mut ack = Self {
            message_id: c.message.message_id.clone(),
            edited_at: None,
            deleted_at: None,
            emoji: None,
            count: None,
        };
        match &c.event {
            RoomEvent::Edited { edited_at, .. } => ack.edited_at = Some(*edited_at),
            RoomEvent::Deleted { deleted_at, .. } => ack.deleted_at = Some(*deleted_at),
            RoomEvent::Reaction { emoji, count, .. } => {
                ack.emoji = Some(emoji.clone());
                ack.count = Some(*count);
            }
            _ => {}
        }
        ack
    }
}

impl ChatService {
    /// A change from a socket: the connection must have joined the room.
    pub async fn change_message(
        &self,
        s: &mut Session,
        cmd: ChangeMessage,
    ) -> Result<ChangeAck, ChatError> {
        let me = self.require_member(s, &cmd.room_id)?;
        self.apply_change(&me, cmd).await
    }

    /// `mark_read` from a socket.
    pub async fn mark_read(
        &self,
        s: &mut Session,
        room_id: RoomId,
        message_id: MessageId,
    ) -> Result<ReadMarker, ChatError> {
        let me = self.require_member(s, &room_id)?;
        self.apply_read(&me, room_id, message_id).await
    }

    /// A change through REST: the caller must be a participant of the room (for an open
    /// room, a user who joined it).
    pub async fn change_message_as(
        &self,
        caller: &Identity,
        cmd: ChangeMessage,
    ) -> Result<ChangeAck, ChatError> {
        self.require_participant(caller, &cmd.room_id).await?;
        self.apply_change(caller, cmd).await
    }

    /// `POST /api/chat/:roomId/read`.
    pub async fn mark_read_as(
        &self,
        caller: &Identity,
        room_id: RoomId,
        message_id: MessageId,
    ) -> Result<ReadMarker, ChatError> {
        self.require_participant(caller, &room_id).await?;
        self.apply_read(caller, room_id, message_id).await
    }

    /// `GET /api/chat/:roomId/receipts`: every participant's read marker.
    pub async fn receipts(
        &self,
        caller: &Identity,
        room_id: &RoomId,
    ) -> Result<Vec<ReadMarker>, ChatError> {
        self.require_participant(caller, room_id).await?;
        Ok(self.store.receipts(room_id).await?)
    }

    async fn require_participant(
        &self,
        caller: &Identity,
        room_id: &RoomId,
    ) -> Result<(), ChatError> {
        let room = self
            .store
            .get_room(room_id)
            .await?
            .ok_or_else(|| ChatError::NotFound(format!("Room {room_id} not found")))?;
        if !room.participants.contains(&caller.user_id) {
            return Err(ChatError::Forbidden(format!(
                "Not a member of room {room_id}"
            )));
        }
        Ok(())
    }

    async fn apply_change(
        &self,
        me: &Identity,
        cmd: ChangeMessage,
    ) -> Result<ChangeAck, ChatError> {
        if !self.rate.allow(&me.user_id) {
            self.metrics
                .rate_limited(crate::metrics::RateLimit::Messages);
            return Err(ChatError::RateLimited);
        }
        let changed = self
            .store
            .change(MessageChange {
                room_id: cmd.room_id,
                message_id: cmd.message_id,
                user_id: me.user_id.clone(),
                at: now_ms(),
                kind: cmd.kind,
            })
            .await?;
        let ack = ChangeAck::from(&changed);
        if changed.effective {
            self.publish(changed.event).await;
        }
        Ok(ack)
    }

    async fn apply_read(
        &self,
        me: &Identity,
        room_id: RoomId,
        message_id: MessageId,
    ) -> Result<ReadMarker, ChatError> {
        let marked = self
            .store
            .mark_read(ReadMarker {
                room_id,
                user_id: me.user_id.clone(),
                message_id,
                read_at: now_ms(),
            })
            .await?;
        if marked.moved {
            self.publish(RoomEvent::Read(marked.marker.clone())).await;
        }
        Ok(marked.marker)
    }
}
