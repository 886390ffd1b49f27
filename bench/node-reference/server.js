// Minimal Socket.IO v4 chat server with the events and payloads of chat-service (SPEC 2):
// the Node.js stack chat-service replaces, reduced to what chat-bench exercises. In memory
// only (no MongoDB): the last 50 messages per room are kept for message_history.
// PORT env (default 5005; 0 picks a free port); prints `listening on http://127.0.0.1:<port>`.
// REDIS_URL env (optional): several instances share room broadcasts through the official
// @socket.io/redis-adapter, for the two-instance benchmark (bench/run.sh s4); history and
// the member lists of room_users stay per instance.
'use strict';

const http = require('http');
const crypto = require('crypto');
const { Server } = require('socket.io');

const HISTORY = 50;
const history = new Map(); // roomId -> [new_message payloads]
const members = new Map(); // roomId -> Map(userId -> connection count)

const server = http.createServer((req, res) => {
  if (req.url === '/health') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ status: 'ok', service: 'chat-service-node-reference' }));
    return;
  }
  res.writeHead(404);
  res.end();
});
const io = new Server(server, { cors: { origin: '*' } });

let counter = crypto.randomInt(0, 0xffffff);
const processRandom = crypto.randomBytes(5).toString('hex');
function objectId() {
  counter = (counter + 1) & 0xffffff;
  const secs = Math.floor(Date.now() / 1000).toString(16).padStart(8, '0');
  return secs + processRandom + counter.toString(16).padStart(6, '0');
}

function fail(socket, ack, code, message) {
  socket.emit('error', { message, code });
  if (typeof ack === 'function') ack({ success: false, error: { code, message } });
}

function validRoom(roomId) {
  return typeof roomId === 'string' && /^[A-Za-z0-9_\-:.@]{1,128}$/.test(roomId);
}

io.on('connection', (socket) => {
  socket.data.rooms = new Set();

  socket.on('authenticate', (data, ack) => {
    if (!data || typeof data.userId !== 'string' || typeof data.username !== 'string') {
      return fail(socket, ack, 'invalid_payload', 'userId and username are required');
    }
    socket.data.user = { userId: data.userId, username: data.username };
    socket.emit('authenticated', socket.data.user);
    if (typeof ack === 'function') ack({ success: true, ...socket.data.user });
  });

  socket.on('join_room', (data, ack) => {
    const user = socket.data.user;
    if (!user) return fail(socket, ack, 'not_authenticated', 'Not authenticated');
    const roomId = data && data.roomId;
    if (!validRoom(roomId)) return fail(socket, ack, 'invalid_payload', 'invalid roomId');
    if (!socket.data.rooms.has(roomId)) {
      socket.data.rooms.add(roomId);
      socket.join(roomId);
      const m = members.get(roomId) || new Map();
      members.set(roomId, m);
      const n = m.get(user.userId) || 0;
      m.set(user.userId, n + 1);
      if (n === 0) socket.to(roomId).emit('user_joined', { roomId, ...user });
    }
    socket.emit('message_history', history.get(roomId) || []);
    const users = [...(members.get(roomId) || new Map()).keys()].map((userId) => ({ userId, username: userId }));
    socket.emit('room_users', users);
    if (typeof ack === 'function') ack({ success: true, roomId });
  });

  function leave(roomId) {
    const user = socket.data.user;
    socket.data.rooms.delete(roomId);
    socket.leave(roomId);
    const m = members.get(roomId);
    if (!m || !user) return;
    const n = (m.get(user.userId) || 1) - 1;
    if (n > 0) {
      m.set(user.userId, n);
      return;
    }
    m.delete(user.userId);
    if (m.size === 0) members.delete(roomId);
    io.to(roomId).emit('user_left', { roomId, ...user });
  }

  socket.on('leave_room', (data, ack) => {
    if (!socket.data.user) return fail(socket, ack, 'not_authenticated', 'Not authenticated');
    const roomId = data && data.roomId;
    if (!validRoom(roomId)) return fail(socket, ack, 'invalid_payload', 'invalid roomId');
    if (socket.data.rooms.has(roomId)) leave(roomId);
    if (typeof ack === 'function') ack({ success: true, roomId });
  });

  socket.on('send_message', (data, ack) => {
    const user = socket.data.user;
    if (!user) return fail(socket, ack, 'not_authenticated', 'Not authenticated');
    const roomId = data && data.roomId;
    if (!validRoom(roomId)) return fail(socket, ack, 'invalid_payload', 'invalid roomId');
    if (!socket.data.rooms.has(roomId)) return fail(socket, ack, 'forbidden', 'not a member of this room');
    const text = data.message;
    if (typeof text !== 'string' || text.trim() === '' || [...text].length > 4000) {
      return fail(socket, ack, 'invalid_payload', 'invalid message');
    }
    const message = {
      messageId: objectId(),
      roomId,
      userId: user.userId,
      username: user.username,
      message: text,
      messageType: data.messageType || 'text',
      timestamp: Date.now(),
    };
    const h = history.get(roomId) || [];
    h.push(message);
    if (h.length > HISTORY) h.shift();
    history.set(roomId, h);
    io.to(roomId).emit('new_message', message);
    if (typeof ack === 'function') ack({ success: true, messageId: message.messageId, timestamp: message.timestamp });
  });

  socket.on('typing', (data, ack) => {
    const user = socket.data.user;
    if (!user) return fail(socket, ack, 'not_authenticated', 'Not authenticated');
    const roomId = data && data.roomId;
    if (!validRoom(roomId) || !socket.data.rooms.has(roomId)) {
      return fail(socket, ack, 'forbidden', 'not a member of this room');
    }
    socket.to(roomId).emit('user_typing', { roomId, ...user, isTyping: !!data.isTyping });
    if (typeof ack === 'function') ack({ success: true });
  });

  socket.on('disconnect', () => {
    for (const roomId of [...socket.data.rooms]) leave(roomId);
  });
});

// With REDIS_URL, the adapter is connected before listening, so the `listening` line (which
// bench/run.sh waits for) means that broadcasts already reach the other instances.
let redisClients = [];
async function start() {
  if (process.env.REDIS_URL) {
    const { createClient } = require('redis');
    const { createAdapter } = require('@socket.io/redis-adapter');
    const pubClient = createClient({ url: process.env.REDIS_URL });
    const subClient = pubClient.duplicate();
    for (const c of [pubClient, subClient]) c.on('error', (e) => console.error('redis:', e.message));
    await Promise.all([pubClient.connect(), subClient.connect()]);
    redisClients = [pubClient, subClient];
    io.adapter(createAdapter(pubClient, subClient));
  }
  server.listen(Number(process.env.PORT ?? 5005), process.env.HOST || '127.0.0.1', () => {
    console.log(`listening on http://127.0.0.1:${server.address().port}`);
  });
}
start().catch((e) => {
  console.error(e);
  process.exit(1);
});

function stop() {
  io.close();
  for (const c of redisClients) c.quit().catch(() => {});
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
