//! Presence of a single instance, in memory.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{Presence, PresenceError};
use crate::domain::{ConnId, Member, RoomId, UserId};

#[derive(Default)]
struct State {
    conns: HashMap<UserId, HashSet<ConnId>>,
    /// room -> user -> (member as shown, its connections in the room), in join order.
    rooms: HashMap<RoomId, Vec<(Member, HashSet<ConnId>)>>,
}

#[derive(Default)]
pub struct MemoryPresence {
    state: Mutex<State>,
}

impl MemoryPresence {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn connect(
        &self,
        user: &UserId,
        conn: ConnId,
        _socket_id: &str,
        limit: u32,
    ) -> Result<bool, PresenceError> {
        let mut st = self.state.lock();
        let set = st.conns.entry(user.clone()).or_default();
        if set.contains(&conn) {
            return Ok(true);
        }
        if limit != 0 && set.len() >= limit as usize {
            if set.is_empty() {
                st.conns.remove(user);
            }
            return Ok(false);
        }
        set.insert(conn);
        Ok(true)
    }

    async fn disconnect(&self, user: &UserId, conn: ConnId) -> Result<u32, PresenceError> {
        let mut st = self.state.lock();
        let Some(set) = st.conns.get_mut(user) else {
            return Ok(0);
        };
        set.remove(&conn);
        let left = set.len() as u32;
        if left == 0 {
            st.conns.remove(user);
        }
        Ok(left)
    }

    async fn join(
        &self,
        room: &RoomId,
        member: &Member,
        conn: ConnId,
    ) -> Result<bool, PresenceError> {
        let mut st = self.state.lock();
        let users = st.rooms.entry(room.clone()).or_default();
        if let Some((_, conns)) = users.iter_mut().find(|(m, _)| m.user_id == member.user_id) {
            conns.insert(conn);
            return Ok(false);
        }
        users.push((member.clone(), HashSet::from([conn])));
        Ok(true)
    }

    async fn leave(
        &self,
        room: &RoomId,
        user: &UserId,
        conn: ConnId,
    ) -> Result<bool, PresenceError> {
        let mut st = self.state.lock();
        let Some(users) = st.rooms.get_mut(room) else {
            return Ok(false);
        };
        let Some(i) = users.iter().position(|(m, _)| &m.user_id == user) else {
            return Ok(false);
        };
        users[i].1.remove(&conn);
        let last = users[i].1.is_empty();
        if last {
            users.remove(i);
            if users.is_empty() {
                st.rooms.remove(room);
            }
        }
        Ok(last)
    }

    async fn members(&self, room: &RoomId) -> Result<Vec<Member>, PresenceError> {
        let st = self.state.lock();
        Ok(st
            .rooms
            .get(room)
            .map(|users| users.iter().map(|(m, _)| m.clone()).collect())
            .unwrap_or_default())
    }
}
