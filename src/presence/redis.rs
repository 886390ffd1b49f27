//! Presence shared by every instance through Redis (SPEC 7), with the seed keys
//! `chat:room:{roomId}:users` (set of member user ids) and `user:presence:{userId}` (hash
//! `status`, `lastSeen`, `socketId`, plus `username`; TTL `PRESENCE_TTL`, refreshed while
//! connected).
//!
//! # Counting that heals
//! A counter per user or room would leak forever when an instance dies with connections
//! open. Instead every live connection has an entry that expires unless refreshed:
//! - `chat:user:{userId}:conns` (`{user:presence:{userId}}:conns` on a Redis Cluster, in the
//!   slot of the presence hash): sorted set, member `<instance>:<conn>`, score = expiry (epoch
//!   ms); its size is the user's connection count across instances (`MAX_CONNECTIONS_PER_USER`).
//! - `chat:room:{roomId}:conns` (`{chat:room:{roomId}:users}:conns` on a cluster): sorted
//!   set, member `<instance>:<conn>:<userId>`; a user is a member of the room while one of its
//!   entries lives. `chat:room:{roomId}:users` is kept in step with it (`SADD` on a user's
//!   first entry, `SREM` when its last entry goes or expires).
//!
//! Every check-and-set is one Lua script (atomic, `redis_scripts.rs`), which first drops
//! expired entries. A heartbeat (`run_heartbeat`, every `ENTRY_TTL / 3`) re-adds this
//! instance's live entries with a fresh expiry and removes its entries that are no longer
//! live, so a dead instance's connections disappear within `ENTRY_TTL`, and after an outage
//! the instance republishes its whole state by itself (the heartbeat retries every second
//! while Redis is unreachable).
//!
//! # Outage
//! This instance's own state is also kept in memory (`MemoryPresence`). When Redis fails, each
//! call answers from that local state (the instance keeps serving its own clients: limits and
//! `room_users` are then per instance) and the heartbeat repairs Redis once it is back.
//!
//! `room_users` lists members in user id order (the shared set has no join order).
//! Membership checks scan the room's entries: O(connections in the room) per join/leave.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use redis::Script;

use super::memory::MemoryPresence;
use super::redis_scripts::{
    CONNECT, DISCONNECT, JOIN, LEAVE, LUA_HELPERS, MEMBER_IDS, MEMBERS, REFRESH,
};
use super::{Presence, PresenceError};
use crate::domain::{ConnId, Member, RoomId, UserId, Username, now_ms};

/// TTL of `user:presence:{userId}` (SPEC 7).
pub const PRESENCE_TTL: Duration = Duration::from_secs(3600);
/// Lifetime of a connection entry without a heartbeat.
pub const ENTRY_TTL: Duration = Duration::from_secs(30);

fn script(body: &str) -> Script {
    Script::new(&format!("{LUA_HELPERS}\n{body}"))
}

fn user_conns(cluster: bool, user: &UserId) -> String {
    let (spec, plain) = (
        format_args!("user:presence:{user}"),
        format_args!("chat:user:{user}:conns"),
    );
    crate::redis_link::colocated(cluster, spec, format_args!(":conns"), plain)
}
fn room_conns(cluster: bool, room: &RoomId) -> String {
    let (spec, plain) = (
        format_args!("chat:room:{room}:users"),
        format_args!("chat:room:{room}:conns"),
    );
    crate::redis_link::colocated(cluster, spec, format_args!(":conns"), plain)
}
/// The seed key of SPEC 7.
pub fn room_users(room: &RoomId) -> String {
    format!("chat:room:{room}:users")
}
/// The seed key of SPEC 7.
pub fn user_presence(user: &UserId) -> String {
    format!("user:presence:{user}")
}

struct Scripts {
    connect: Script,
    disconnect: Script,
    join: Script,
    leave: Script,
    members: Script,
    member_ids: Script,
    refresh: Script,
}

#[derive(Default)]
struct Local {
    /// Live connections of this instance.
    conns: HashMap<ConnId, UserId>,
    /// Live room memberships of this instance.
    rooms: HashMap<RoomId, HashMap<ConnId, Member>>,
    /// Users and rooms changed since the last successful heartbeat (their keys are rewritten
    /// even when this instance has no entry left in them).
    touched_users: HashSet<UserId>,
    touched_rooms: HashSet<RoomId>,
}

pub struct RedisPresence {
    origin: String,
    conn: crate::redis_link::Conn,
    /// On a Redis Cluster (keys named for it, no script across slots).
    cluster: bool,
    scripts: Scripts,
    memory: MemoryPresence,
    local: Mutex<Local>,
    /// False after a failed Redis call, until a heartbeat succeeds.
    healthy: AtomicBool,
}

impl RedisPresence {
    pub fn new(url: &str, origin: String) -> Result<Self, PresenceError> {
        let target =
            crate::redis_link::Target::parse(url).map_err(|e| PresenceError(e.to_string()))?;
        let conn = target
            .connection()
            .map_err(|e| PresenceError(e.to_string()))?;
        Ok(Self {
            origin,
            conn,
            cluster: target.is_cluster(),
            scripts: Scripts {
                connect: script(CONNECT),
                disconnect: script(DISCONNECT),
                join: script(JOIN),
                leave: script(LEAVE),
                members: script(MEMBERS),
                member_ids: script(MEMBER_IDS),
                refresh: script(REFRESH),
            },
            memory: MemoryPresence::new(),
            local: Mutex::new(Local::default()),
            healthy: AtomicBool::new(true),
        })
    }

    fn conn_member(&self, conn: ConnId) -> String {
        format!("{}:{}", self.origin, conn.0)
    }

    fn room_member(&self, conn: ConnId, user: &UserId) -> String {
        format!("{}:{}:{user}", self.origin, conn.0)
    }

    fn expiry(now: u64) -> u64 {
        now + ENTRY_TTL.as_millis() as u64
    }

    fn failed(&self, what: &str, e: &redis::RedisError) {
        if self.healthy.swap(false, Ordering::AcqRel) {
            tracing::warn!(cause = %e, op = what, "redis presence unavailable; answering from this instance's state");
        }
    }

    /// Rewrites every entry of this instance in Redis; returns whether Redis took them all.
    pub async fn refresh(&self) -> bool {
        let now = now_ms();
        let expiry = Self::expiry(now);
        let prefix = format!("{}:", self.origin);
        let (users, rooms, touched_users, touched_rooms) = {
            let mut local = self.local.lock();
            let mut users: HashMap<UserId, Vec<String>> = HashMap::new();
            for (conn, user) in &local.conns {
                users
                    .entry(user.clone())
                    .or_default()
                    .push(self.conn_member(*conn));
            }
            let mut rooms: HashMap<RoomId, Vec<String>> = HashMap::new();
            let mut names: HashMap<UserId, Username> = HashMap::new();
            for (room, conns) in &local.rooms {
                let v = rooms.entry(room.clone()).or_default();
                for (conn, m) in conns {
                    v.push(self.room_member(*conn, &m.user_id));
                    names.insert(m.user_id.clone(), m.username.clone());
                }
            }
            let tu = std::mem::take(&mut local.touched_users);
            let tr = std::mem::take(&mut local.touched_rooms);
            let users: Vec<_> = users
                .into_iter()
                .map(|(u, m)| {
                    let name = names.get(&u).cloned();
                    (u, m, name)
                })
                .collect();
            (users, rooms, tu, tr)
        };
        let mut conn = self.conn.clone();
        let mut calls: Vec<Call<'_>> = Vec::new();
        let empty: Vec<String> = Vec::new();
        let live_users: HashSet<&UserId> = users.iter().map(|(u, _, _)| u).collect();
        for (user, members, name) in &users {
            let mut inv = self.scripts.refresh.key(user_conns(self.cluster, user));
            inv.arg(now).arg(expiry).arg(&prefix).arg(members);
            let mut c = conn.clone();
            let key = user_presence(user);
            let name = name.clone();
            calls.push(Box::pin(async move {
                inv.invoke_async::<i64>(&mut c).await?;
                let mut cmd = redis::cmd("HSET");
                cmd.arg(&key)
                    .arg("status")
                    .arg("online")
                    .arg("lastSeen")
                    .arg(now);
                if let Some(name) = name {
                    cmd.arg("username").arg(name.as_ref());
                }
                cmd.query_async::<()>(&mut c).await?;
                redis::cmd("EXPIRE")
                    .arg(&key)
                    .arg(PRESENCE_TTL.as_secs())
                    .query_async::<()>(&mut c)
                    .await
            }) as Call<'_>);
        }
        for user in touched_users.iter().filter(|u| !live_users.contains(u)) {
            let mut inv = self.scripts.refresh.key(user_conns(self.cluster, user));
            inv.arg(now).arg(expiry).arg(&prefix).arg(&empty);
            let mut c = conn.clone();
            let (key, conns_key) = (user_presence(user), user_conns(self.cluster, user));
            calls.push(Box::pin(async move {
                inv.invoke_async::<i64>(&mut c).await?;
                let left: i64 = redis::cmd("ZCARD")
                    .arg(&conns_key)
                    .query_async(&mut c)
                    .await?;
                if left == 0 {
                    redis::cmd("HSET")
                        .arg(&key)
                        .arg("status")
                        .arg("offline")
                        .arg("lastSeen")
                        .arg(now)
                        .query_async::<()>(&mut c)
                        .await?;
                }
                Ok(())
            }));
        }
        let room_ids: HashSet<&RoomId> = rooms.keys().chain(touched_rooms.iter()).collect();
        for room in room_ids {
            let members = rooms.get(room).unwrap_or(&empty);
            let mut inv = self.scripts.refresh.key(room_conns(self.cluster, room));
            inv.key(room_users(room))
                .arg(now)
                .arg(expiry)
                .arg(&prefix)
                .arg(members);
            let mut c = conn.clone();
            calls.push(Box::pin(async move {
                inv.invoke_async::<i64>(&mut c).await.map(|_| ())
            }));
        }
        let results = futures::future::join_all(calls).await;
        let ok = results.iter().all(Result::is_ok);
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            self.failed("refresh", &e);
            // Rewrite them again next time.
            let mut local = self.local.lock();
            local.touched_users.extend(touched_users);
            local.touched_rooms.extend(touched_rooms);
        } else {
            // Probe that Redis is there even when this instance has nothing to refresh.
            let ping = redis::cmd("PING").query_async::<String>(&mut conn).await;
            if let Err(e) = ping {
                self.failed("refresh", &e);
                return false;
            }
            if !self.healthy.swap(true, Ordering::AcqRel) {
                tracing::info!("redis presence: back, this instance's state republished");
            }
        }
        ok
    }

    /// Refreshes this instance's entries every `ENTRY_TTL / 3`, and every second while Redis
    /// is failing (so the state is republished within a second of its return); runs until
    /// the task is aborted.
    pub async fn run_heartbeat(self: Arc<Self>) {
        let mut last_ok: Option<tokio::time::Instant> = None;
        loop {
            let due = last_ok.is_none_or(|t| t.elapsed() >= ENTRY_TTL / 3);
            if (due || !self.healthy.load(Ordering::Acquire)) && self.refresh().await {
                last_ok = Some(tokio::time::Instant::now());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// `members` on a cluster: the ids from the room's script, then each user's name from its
    /// presence hash (one call per user, concurrent), as `[userId, username, ...]`.
    async fn cluster_members(&self, room: &RoomId) -> redis::RedisResult<Vec<String>> {
        let mut c = self.conn.clone();
        let mut inv = self.scripts.member_ids.key(room_conns(true, room));
        inv.key(room_users(room)).arg(now_ms());
        let ids: Vec<String> = inv.invoke_async(&mut c).await?;
        let names = futures::future::join_all(ids.iter().map(|uid| {
            let mut c = self.conn.clone();
            async move {
                redis::cmd("HGET")
                    .arg(format!("user:presence:{uid}"))
                    .arg("username")
                    .query_async::<Option<String>>(&mut c)
                    .await
            }
        }))
        .await;
        let mut out = Vec::with_capacity(ids.len() * 2);
        for (uid, name) in ids.into_iter().zip(names) {
            let name = name?.unwrap_or_else(|| uid.clone());
            out.push(uid);
            out.push(name);
        }
        Ok(out)
    }

    fn touch_user(&self, user: &UserId) {
        self.local.lock().touched_users.insert(user.clone());
    }

    fn touch_room(&self, room: &RoomId) {
        self.local.lock().touched_rooms.insert(room.clone());
    }
}

type Call<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = redis::RedisResult<()>> + Send + 'a>>;

#[async_trait]
impl Presence for RedisPresence {
    async fn connect(
        &self,
        user: &UserId,
        conn: ConnId,
        socket_id: &str,
        limit: u32,
    ) -> Result<bool, PresenceError> {
        let now = now_ms();
        let mut c = self.conn.clone();
        let res: redis::RedisResult<i64> = self
            .scripts
            .connect
            .key(user_conns(self.cluster, user))
            .key(user_presence(user))
            .arg(self.conn_member(conn))
            .arg(now)
            .arg(Self::expiry(now))
            .arg(limit)
            .arg(socket_id)
            .arg(PRESENCE_TTL.as_secs())
            .invoke_async(&mut c)
            .await;
        let admitted = match res {
            Ok(n) => n == 1,
            Err(e) => {
                self.failed("connect", &e);
                self.touch_user(user);
                // Admitted by the local count; the heartbeat publishes it once Redis is back.
                self.memory.connect(user, conn, socket_id, limit).await?
            }
        };
        if admitted {
            self.memory.connect(user, conn, socket_id, 0).await?;
            self.local.lock().conns.insert(conn, user.clone());
        }
        Ok(admitted)
    }

    async fn disconnect(&self, user: &UserId, conn: ConnId) -> Result<u32, PresenceError> {
        let local_left = self.memory.disconnect(user, conn).await?;
        self.local.lock().conns.remove(&conn);
        let now = now_ms();
        let mut c = self.conn.clone();
        let res: redis::RedisResult<u32> = self
            .scripts
            .disconnect
            .key(user_conns(self.cluster, user))
            .key(user_presence(user))
            .arg(self.conn_member(conn))
            .arg(now)
            .arg(PRESENCE_TTL.as_secs())
            .invoke_async(&mut c)
            .await;
        match res {
            Ok(n) => Ok(n),
            Err(e) => {
                self.failed("disconnect", &e);
                self.touch_user(user);
                Ok(local_left)
            }
        }
    }

    async fn join(
        &self,
        room: &RoomId,
        member: &Member,
        conn: ConnId,
    ) -> Result<bool, PresenceError> {
        let local_first = self.memory.join(room, member, conn).await?;
        self.local
            .lock()
            .rooms
            .entry(room.clone())
            .or_default()
            .insert(conn, member.clone());
        let now = now_ms();
        let mut c = self.conn.clone();
        let mut inv = self.scripts.join.key(room_conns(self.cluster, room));
        inv.key(room_users(room))
            .arg(self.room_member(conn, &member.user_id))
            .arg(member.user_id.as_ref())
            .arg(now)
            .arg(Self::expiry(now));
        let mut name = redis::pipe();
        let key = user_presence(&member.user_id);
        name.hset(&key, "username", member.username.as_ref())
            .ignore();
        name.expire(&key, PRESENCE_TTL.as_secs() as i64).ignore();
        let mut c2 = c.clone();
        let (res, named) = futures::join!(
            inv.invoke_async::<i64>(&mut c),
            name.query_async::<()>(&mut c2)
        );
        match named.and(res) {
            Ok(n) => Ok(n == 1),
            Err(e) => {
                self.failed("join", &e);
                self.touch_room(room);
                Ok(local_first)
            }
        }
    }

    async fn leave(
        &self,
        room: &RoomId,
        user: &UserId,
        conn: ConnId,
    ) -> Result<bool, PresenceError> {
        let local_last = self.memory.leave(room, user, conn).await?;
        {
            let mut local = self.local.lock();
            if let Some(conns) = local.rooms.get_mut(room) {
                conns.remove(&conn);
                if conns.is_empty() {
                    local.rooms.remove(room);
                }
            }
        }
        let mut c = self.conn.clone();
        let res: redis::RedisResult<i64> = self
            .scripts
            .leave
            .key(room_conns(self.cluster, room))
            .key(room_users(room))
            .arg(self.room_member(conn, user))
            .arg(user.as_ref())
            .arg(now_ms())
            .invoke_async(&mut c)
            .await;
        match res {
            Ok(n) => Ok(n == 1),
            Err(e) => {
                self.failed("leave", &e);
                self.touch_room(room);
                Ok(local_last)
            }
        }
    }

    async fn members(&self, room: &RoomId) -> Result<Vec<Member>, PresenceError> {
        let res = if self.cluster {
            self.cluster_members(room).await
        } else {
            let mut c = self.conn.clone();
            let mut inv = self.scripts.members.key(room_conns(false, room));
            inv.key(room_users(room)).arg(now_ms());
            inv.invoke_async::<Vec<String>>(&mut c).await
        };
        match res {
            Ok(flat) => {
                let mut members: Vec<Member> = flat
                    .chunks(2)
                    .filter_map(|pair| {
                        Some(Member {
                            user_id: UserId::parse(&pair[0]).ok()?,
                            username: Username::parse(pair.get(1)?).ok()?,
                        })
                    })
                    .collect();
                members.sort_by(|a, b| a.user_id.cmp(&b.user_id));
                Ok(members)
            }
            Err(e) => {
                self.failed("members", &e);
                self.memory.members(room).await
            }
        }
    }

    /// `SCARD chat:room:{roomId}:users` of each room, in one pipeline (not pruned: a dead
    /// instance's users count until their entries expire).
    async fn member_counts(&self, rooms: &[RoomId]) -> Result<Vec<u64>, PresenceError> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let res = if self.cluster {
            // The rooms' sets are in many slots: one call each, concurrent on the connection.
            futures::future::join_all(rooms.iter().map(|room| {
                let mut c = self.conn.clone();
                async move {
                    redis::cmd("SCARD")
                        .arg(room_users(room))
                        .query_async::<u64>(&mut c)
                        .await
                }
            }))
            .await
            .into_iter()
            .collect()
        } else {
            let mut pipe = redis::pipe();
            for room in rooms {
                pipe.cmd("SCARD").arg(room_users(room));
            }
            pipe.query_async(&mut self.conn.clone()).await
        };
        match res {
            Ok(counts) => Ok(counts),
            Err(e) => {
                self.failed("member_counts", &e);
                self.memory.member_counts(rooms).await
            }
        }
    }
}
