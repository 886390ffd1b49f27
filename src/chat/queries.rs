//! The REST use cases: a room's history, one room, creating a private room, and the caller's
//! rooms. A private room is readable only by its participants; the caller is an `Identity`
//! from `ChatService::identify` (or none: anonymous callers read open rooms only).

use super::{ChatError, ChatService};
use crate::domain::{
    Identity, Message, MessageId, NewRoom, Room, RoomId, RoomType, UserId, now_ms,
};

impl ChatService {
    async fn readable_room(
        &self,
        caller: Option<&Identity>,
        room_id: &RoomId,
    ) -> Result<Option<Room>, ChatError> {
        let room = self.store.get_room(room_id).await?;
        if let Some(room) = &room
            && room.private
            && !caller.is_some_and(|c| room.participants.contains(&c.user_id))
        {
            return Err(ChatError::Forbidden(format!(
                "Room {room_id} is private to its participants"
            )));
        }
        Ok(room)
    }

    /// The `limit` most recent messages before `before`, oldest first.
    pub async fn history(
        &self,
        caller: Option<&Identity>,
        room_id: &RoomId,
        limit: usize,
        before: Option<&MessageId>,
    ) -> Result<Vec<Message>, ChatError> {
        self.readable_room(caller, room_id).await?;
        Ok(self.store.history(room_id, limit, before).await?)
    }

    pub async fn room(
        &self,
        caller: Option<&Identity>,
        room_id: &RoomId,
    ) -> Result<Room, ChatError> {
        self.readable_room(caller, room_id)
            .await?
            .ok_or_else(|| ChatError::NotFound(format!("Room {room_id} not found")))
    }

    /// Creates a private room; returns the room and whether it was created (false: the
    /// existing direct room of the pair).
    pub async fn create_room(
        &self,
        caller: &Identity,
        room_type: RoomType,
        participants: Vec<UserId>,
        room_id: Option<RoomId>,
    ) -> Result<(Room, bool), ChatError> {
        if !participants.contains(&caller.user_id) {
            return Err(ChatError::Forbidden(
                "The caller must be among the participants".into(),
            ));
        }
        let room_id = match room_id {
            Some(id) => id,
            None => RoomId::parse(&format!(
                "{}-{}",
                room_type.as_str(),
                MessageId::generate(now_ms())
            ))?,
        };
        let new_room = NewRoom::new(room_id, room_type, participants)?;
        Ok(self.store.create_room(new_room).await?)
    }

    pub async fn rooms_of(&self, caller: &Identity) -> Result<Vec<Room>, ChatError> {
        Ok(self.store.rooms_of(&caller.user_id).await?)
    }
}
