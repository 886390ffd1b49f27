//! Rooms and membership: `join_room` (history, the changes a resume missed, `room_users`,
//! `user_joined`), `leave_room`
//! (`user_left` when the user's last connection leaves) and `typing` with its expiry. Joining
//! registers the connection in the local room registry and the presence port; leaving (also on
//! disconnect, from `session.rs`) undoes both.

use std::time::Instant;

use super::wire::{self, ServerEvent};
use super::{ChatError, ChatService, Session};
use crate::domain::{ConnId, Identity, Member, MessageId, RoomEvent, RoomId, history_items};

/// The `join_room` command, built by the transports' DTO conversion.
#[derive(Debug, Clone)]
pub struct JoinRoom {
    pub room_id: RoomId,
    pub since: Option<MessageId>,
}

/// The `typing` command.
#[derive(Debug, Clone)]
pub struct Typing {
    pub room_id: RoomId,
    pub is_typing: bool,
}

impl ChatService {
    /// `join_room`: emits `message_history` and `room_users` to the joiner and `user_joined`
    /// to the others (once per user).
    pub async fn join(&self, s: &mut Session, cmd: JoinRoom) -> Result<RoomId, ChatError> {
        let me = self.require_identity(s)?;
        let room_id = cmd.room_id;
        if !s.rooms.contains(&room_id) {
            if s.rooms.len() >= self.cfg.max_rooms_per_connection {
                return Err(ChatError::Forbidden(format!(
                    "A connection may be in at most {} rooms",
                    self.cfg.max_rooms_per_connection
                )));
            }
            match self.store.get_room(&room_id).await? {
                Some(room) if !room.admits(&me.user_id) => {
                    return Err(ChatError::Forbidden(format!(
                        "Room {room_id} is private to its participants"
                    )));
                }
                Some(room) if room.private => {}
                _ => self.store.add_member(&room_id, &me.user_id).await?,
            }
            // Registered, and the room's subscription live, before history is read, so no
            // message falls between the two; a message sent meanwhile may arrive both live
            // and in the history (same messageId). A joiner that is not the room's first
            // local member still waits for the first one's subscription (issue 15.4: it read
            // history before the subscription was live and missed a message).
            let first = self
                .registry
                .add(&room_id, s.conn, &me.user_id, s.sink.clone());
            if first {
                self.metrics.rooms_local.inc();
            }
            let live = if first {
                self.bus.subscribe(&room_id).await
            } else {
                self.bus.subscribed(&room_id).await
            };
            if let Err(e) = live {
                tracing::warn!(room = %room_id, cause = %e, "bus subscribe failed");
            }
            s.rooms.push(room_id.clone());
            let member = Member {
                user_id: me.user_id.clone(),
                username: me.username.clone(),
            };
            if self.presence.join(&room_id, &member, s.conn).await? {
                self.publish(RoomEvent::Joined {
                    room_id: room_id.clone(),
                    member,
                })
                .await;
            }
        }
        // A resume (`since` found) also replays the changes of the messages the client had
        // (SPEC 10), after the history.
        let mut changes = Vec::new();
        let history = match &cmd.since {
            Some(since) => match self
                .store
                .after(&room_id, since, self.cfg.max_resume)
                .await?
            {
                Some(messages) => {
                    changes = self
                        .store
                        .changes_since(&room_id, since, self.cfg.max_resume)
                        .await?
                        .unwrap_or_default();
                    messages
                }
                None => {
                    self.store
                        .history(&room_id, self.cfg.history_on_join, None)
                        .await?
                }
            },
            None => {
                self.store
                    .history(&room_id, self.cfg.history_on_join, None)
                    .await?
            }
        };
        s.emit(ServerEvent::new(
            wire::MESSAGE_HISTORY,
            &history_items(&history),
        ));
        for change in &changes {
            s.emit(super::rooms::to_client_event(change).0);
        }
        let users = self.presence.members(&room_id).await?;
        s.emit(ServerEvent::new(wire::ROOM_USERS, &users));
        tracing::debug!(room = %room_id, user = %me.user_id, "joined");
        Ok(room_id)
    }

    /// `leave_room`: others get `user_left` when the user's last connection leaves.
    pub async fn leave(&self, s: &mut Session, room_id: RoomId) -> Result<RoomId, ChatError> {
        let me = self.require_identity(s)?;
        if let Some(i) = s.rooms.iter().position(|r| *r == room_id) {
            s.rooms.swap_remove(i);
            self.leave_inner(s.conn, &me, &room_id).await?;
        }
        Ok(room_id)
    }

    /// Takes one connection out of a room (registry, bus subscription, presence, typing).
    pub(super) async fn leave_inner(
        &self,
        conn: ConnId,
        me: &Identity,
        room_id: &RoomId,
    ) -> Result<(), ChatError> {
        if self.registry.remove(room_id, conn) {
            self.metrics.rooms_local.dec();
            if let Err(e) = self.bus.unsubscribe(room_id).await {
                tracing::warn!(room = %room_id, cause = %e, "bus unsubscribe failed");
            }
        }
        if self.presence.leave(room_id, &me.user_id, conn).await? {
            self.typing
                .lock()
                .remove(&(room_id.clone(), me.user_id.clone()));
            self.publish(RoomEvent::Left {
                room_id: room_id.clone(),
                member: Member {
                    user_id: me.user_id.clone(),
                    username: me.username.clone(),
                },
            })
            .await;
        }
        Ok(())
    }

    /// `typing`: others get `user_typing`; a `true` not renewed expires as `false`.
    pub async fn typing(&self, s: &mut Session, cmd: Typing) -> Result<(), ChatError> {
        let me = self.require_member(s, &cmd.room_id)?;
        let member = Member {
            user_id: me.user_id,
            username: me.username,
        };
        {
            let key = (cmd.room_id.clone(), member.user_id.clone());
            let mut typing = self.typing.lock();
            if cmd.is_typing {
                typing.insert(
                    key,
                    (member.clone(), Instant::now() + self.cfg.typing_timeout),
                );
            } else {
                typing.remove(&key);
            }
        }
        self.publish(RoomEvent::Typing {
            room_id: cmd.room_id,
            member,
            is_typing: cmd.is_typing,
        })
        .await;
        Ok(())
    }

    /// Ends typing states that were not renewed in time; run by the composition root until
    /// shutdown.
    pub async fn expire_typing(&self) {
        let now = Instant::now();
        let expired: Vec<(RoomId, Member)> = {
            let mut typing = self.typing.lock();
            let keys: Vec<_> = typing
                .iter()
                .filter(|(_, (_, deadline))| *deadline <= now)
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| typing.remove(&k).map(|(m, _)| (k.0, m)))
                .collect()
        };
        for (room_id, member) in expired {
            self.publish(RoomEvent::Typing {
                room_id,
                member,
                is_typing: false,
            })
            .await;
        }
    }
}
