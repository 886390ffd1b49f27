//! Presence shared by every instance through Redis (SPEC 7), with the seed keys
//! `chat:room:{roomId}:users` (set of member user ids) and `user:presence:{userId}` (hash
//! `status`, `lastSeen`, `socketId`, plus `username`; TTL `PRESENCE_TTL`, refreshed while
//! connected).
//!
//! # Counting that heals
//! A counter per user or room would leak forever when an instance dies with connections
//! open. Instead every live connection has an entry that expires unless refreshed:
//! - `chat:user:{userId}:conns`: sorted set, member `<instance>:<conn>`, score = expiry (epoch
//!   ms); its size is the user's connection count across instances (`MAX_CONNECTIONS_PER_USER`).
//! - `chat:room:{roomId}:conns`: sorted set, member `<instance>:<conn>:<userId>`; a user is a
//!   member of the room while one of its entries lives. `chat:room:{roomId}:users` is kept in
//!   step with it (`SADD` on a user's first entry, `SREM` when its last entry goes or expires).
//!
//! Every check-and-set is one Lua script (atomic), which first drops expired entries. A
//! heartbeat (`run_heartbeat`, every `ENTRY_TTL / 3`) re-adds this instance's live entries
//! with a fresh expiry and removes its entries that are no longer live, so a dead instance's
//! connections disappear within `ENTRY_TTL`, and after an outage the instance republishes its
//! whole state by itself (the heartbeat retries every second while Redis is unreachable).
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
use redis::aio::ConnectionManager;

use super::memory::MemoryPresence;
use super::{Presence, PresenceError};
use crate::domain::{ConnId, Member, RoomId, UserId, Username, now_ms};

/// TTL of `user:presence:{userId}` (SPEC 7).
pub const PRESENCE_TTL: Duration = Duration::from_secs(3600);
/// Lifetime of a connection entry without a heartbeat.
pub const ENTRY_TTL: Duration = Duration::from_secs(30);

const LUA_HELPERS: &str = r#"
local function uid_of(m) return string.match(m, '^[^:]*:[^:]*:(.*)$') end
local function has_user(key, uid)
  for _, m in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    if uid_of(m) == uid then return true end
  end
  return false
end
local function prune(key, users, now)
  local dead = redis.call('ZRANGEBYSCORE', key, '-inf', now)
  if #dead == 0 then return end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if users then
    for _, m in ipairs(dead) do
      local uid = uid_of(m)
      if uid and not has_user(key, uid) then redis.call('SREM', users, uid) end
    end
  end
end
local function expire_with(key, other)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if #last == 2 then
    redis.call('PEXPIREAT', key, last[2])
    if other then redis.call('PEXPIREAT', other, last[2]) end
  elseif other then
    redis.call('DEL', other)
  end
end
"#;

/// KEYS: user conns, presence hash. ARGV: member, now, expiry, limit, socketId, presence ttl.
/// Returns 1 when admitted.
const CONNECT: &str = r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  local limit = tonumber(ARGV[4])
  if limit > 0 and redis.call('ZCARD', KEYS[1]) >= limit then return 0 end
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
expire_with(KEYS[1], nil)
redis.call('HSET', KEYS[2], 'status', 'online', 'lastSeen', ARGV[2], 'socketId', ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return 1
"#;

/// KEYS: user conns, presence hash. ARGV: member, now, presence ttl. Returns the connections
/// left.
const DISCONNECT: &str = r#"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
local n = redis.call('ZCARD', KEYS[1])
if n == 0 then
  redis.call('HSET', KEYS[2], 'status', 'offline', 'lastSeen', ARGV[2])
end
redis.call('EXPIRE', KEYS[2], ARGV[3])
return n
"#;

/// KEYS: room conns, room users, presence hash. ARGV: member, userId, now, expiry, username,
/// presence ttl. Returns 1 when this is the user's first entry in the room.
const JOIN: &str = r#"
prune(KEYS[1], KEYS[2], ARGV[3])
local first = not has_user(KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
expire_with(KEYS[1], KEYS[2])
redis.call('HSET', KEYS[3], 'username', ARGV[5])
redis.call('EXPIRE', KEYS[3], ARGV[6])
if first then return 1 else return 0 end
"#;

/// KEYS: room conns, room users. ARGV: member, userId, now. Returns 1 when the user's last
/// entry in the room went.
const LEAVE: &str = r#"
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
prune(KEYS[1], KEYS[2], ARGV[3])
local last = 0
if removed == 1 and not has_user(KEYS[1], ARGV[2]) then
  redis.call('SREM', KEYS[2], ARGV[2])
  last = 1
end
expire_with(KEYS[1], KEYS[2])
return last
"#;

/// KEYS: room conns, room users. ARGV: now. Returns [userId, username, ...].
const MEMBERS: &str = r#"
prune(KEYS[1], KEYS[2], ARGV[1])
local out = {}
for _, uid in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local name = redis.call('HGET', 'user:presence:' .. uid, 'username')
  table.insert(out, uid)
  table.insert(out, name or uid)
end
return out
"#;

/// KEYS: a conns set, its users set or "" (user conns). ARGV: now, expiry, this instance's
/// prefix, then the instance's live members of the key. Replaces this instance's entries.
const REFRESH: &str = r#"
local users = KEYS[2] ~= '' and KEYS[2] or nil
local live = {}
for i = 4, #ARGV do live[ARGV[i]] = true end
local prefix = ARGV[3]
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(m, 1, #prefix) == prefix and not live[m] then
    redis.call('ZREM', KEYS[1], m)
    if users then
      local uid = uid_of(m)
      if uid and not has_user(KEYS[1], uid) then redis.call('SREM', users, uid) end
    end
  end
end
for i = 4, #ARGV do
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
  if users then redis.call('SADD', users, uid_of(ARGV[i])) end
end
prune(KEYS[1], users, ARGV[1])
expire_with(KEYS[1], users)
return 1
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{LUA_HELPERS}\n{body}"))
}

fn user_conns(user: &UserId) -> String {
    format!("chat:user:{user}:conns")
}
fn room_conns(room: &RoomId) -> String {
    format!("chat:room:{room}:conns")
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
    conn: ConnectionManager,
    scripts: Scripts,
    memory: MemoryPresence,
    local: Mutex<Local>,
    /// False after a failed Redis call, until a heartbeat succeeds.
    healthy: AtomicBool,
}

impl RedisPresence {
    pub fn new(url: &str, origin: String) -> Result<Self, PresenceError> {
        let client = crate::redis_link::client(url).map_err(|e| PresenceError(e.to_string()))?;
        let conn = crate::redis_link::connection_manager(&client)
            .map_err(|e| PresenceError(e.to_string()))?;
        Ok(Self {
            origin,
            conn,
            scripts: Scripts {
                connect: script(CONNECT),
                disconnect: script(DISCONNECT),
                join: script(JOIN),
                leave: script(LEAVE),
                members: script(MEMBERS),
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
            let mut inv = self.scripts.refresh.key(user_conns(user));
            inv.key("").arg(now).arg(expiry).arg(&prefix).arg(members);
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
            let mut inv = self.scripts.refresh.key(user_conns(user));
            inv.key("").arg(now).arg(expiry).arg(&prefix).arg(&empty);
            let mut c = conn.clone();
            let (key, conns_key) = (user_presence(user), user_conns(user));
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
            let mut inv = self.scripts.refresh.key(room_conns(room));
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
            .key(user_conns(user))
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
            .key(user_conns(user))
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
        let res: redis::RedisResult<i64> = self
            .scripts
            .join
            .key(room_conns(room))
            .key(room_users(room))
            .key(user_presence(&member.user_id))
            .arg(self.room_member(conn, &member.user_id))
            .arg(member.user_id.as_ref())
            .arg(now)
            .arg(Self::expiry(now))
            .arg(member.username.as_ref())
            .arg(PRESENCE_TTL.as_secs())
            .invoke_async(&mut c)
            .await;
        match res {
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
            .key(room_conns(room))
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
        let mut c = self.conn.clone();
        let res: redis::RedisResult<Vec<String>> = self
            .scripts
            .members
            .key(room_conns(room))
            .key(room_users(room))
            .arg(now_ms())
            .invoke_async(&mut c)
            .await;
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
        let mut pipe = redis::pipe();
        for room in rooms {
            pipe.cmd("SCARD").arg(room_users(room));
        }
        let mut c = self.conn.clone();
        match pipe.query_async(&mut c).await {
            Ok(counts) => Ok(counts),
            Err(e) => {
                self.failed("member_counts", &e);
                self.memory.member_counts(rooms).await
            }
        }
    }
}
