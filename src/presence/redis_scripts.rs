//! The Lua scripts of `presence::redis`: every check-and-set of the shared presence is one
//! script, atomic in Redis. Each touches the keys of one slot only (a Redis Cluster runs a
//! script on one shard), which `presence::redis` names with hash tags on a cluster.

pub const LUA_HELPERS: &str = r#"
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
pub const CONNECT: &str = r#"
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
pub const DISCONNECT: &str = r#"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
local n = redis.call('ZCARD', KEYS[1])
if n == 0 then
  redis.call('HSET', KEYS[2], 'status', 'offline', 'lastSeen', ARGV[2])
end
redis.call('EXPIRE', KEYS[2], ARGV[3])
return n
"#;

/// KEYS: room conns, room users. ARGV: member, userId, now, expiry. Returns 1 when this is the
/// user's first entry in the room. (The username goes into the user's presence hash beside
/// it: another key, in another slot of a cluster.)
pub const JOIN: &str = r#"
prune(KEYS[1], KEYS[2], ARGV[3])
local first = not has_user(KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
expire_with(KEYS[1], KEYS[2])
if first then return 1 else return 0 end
"#;

/// KEYS: room conns, room users. ARGV: member, userId, now. Returns 1 when the user's last
/// entry in the room went.
pub const LEAVE: &str = r#"
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

/// KEYS: room conns, room users. ARGV: now. Returns [userId, username, ...] (one Redis: the
/// presence hashes are read in the script).
pub const MEMBERS: &str = r#"
prune(KEYS[1], KEYS[2], ARGV[1])
local out = {}
for _, uid in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local name = redis.call('HGET', 'user:presence:' .. uid, 'username')
  table.insert(out, uid)
  table.insert(out, name or uid)
end
return out
"#;

/// KEYS: room conns, room users. ARGV: now. Returns the user ids (a cluster: the presence
/// hashes live in other slots, so their usernames are read apart).
pub const MEMBER_IDS: &str = r#"
prune(KEYS[1], KEYS[2], ARGV[1])
return redis.call('SMEMBERS', KEYS[2])
"#;

/// KEYS: a conns set, and its users set unless it is a user's conns. ARGV: now, expiry, this
/// instance's prefix, then the instance's live members of the key. Replaces this instance's
/// entries.
pub const REFRESH: &str = r#"
local users = KEYS[2]
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
