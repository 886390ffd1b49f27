// Plain WebSocket JSON-frame transport on "/" and "/ws" (what wscat speaks), and its interop with Socket.IO.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  MODES, startServer, socketPool, uid, waitFor, join, send, keysOf, rawWs, rawRequest, assertMessageShape,
} from './helpers.mjs';

let server;
before(async () => { server = await startServer({ RATE_LIMIT_PER_SEC: '0' }); });
after(async () => { await server?.stop(); });

function assertFailed(ackData, code) {
  assert.deepEqual(keysOf(ackData), ['error', 'success'], JSON.stringify(ackData));
  assert.equal(ackData.success, false);
  assert.equal(ackData.error.code, code);
  assert.equal(typeof ackData.error.message, 'string');
}

describe('client page', () => {
  it('GET / without Upgrade serves the HTML client', async () => {
    const r = await rawRequest(server, 'GET', '/', { Accept: 'text/html' });
    assert.equal(r.status, 200);
    assert.match(r.headers['content-type'] ?? '', /text\/html/);
    assert.match(r.body, /<html|<!doctype html/i);
  });
});

for (const wsPath of ['/', '/ws']) {
  describe(`raw websocket on ${wsPath}`, () => {
    const open = [];
    const connectRaw = async () => { const c = await rawWs(server, wsPath); open.push(c); return c; };
    afterEach(async () => { await Promise.all(open.splice(0).map((c) => c.close())); });

    it('not authenticated -> error frame + failed ack; then authenticate, join, send', async () => {
      const c = await connectRaw();
      const roomId = uid('raw');
      assertFailed(await c.request('join_room', { roomId }), 'not_authenticated');
      assert.deepEqual(await c.waitFor('error'), { message: 'Not authenticated', code: 'not_authenticated' });

      const userId = uid('raw');
      const authEv = c.waitFor('authenticated');
      assert.deepEqual(await c.request('authenticate', { userId, username: 'Raw' }), { success: true, userId, username: 'Raw' });
      assert.deepEqual(await authEv, { userId, username: 'Raw' });

      const hist = c.waitFor('message_history');
      const users = c.waitFor('room_users');
      assert.deepEqual(await c.request('join_room', { roomId }), { success: true, roomId });
      assert.deepEqual(await hist, []);
      assert.deepEqual(await users, [{ userId, username: 'Raw' }]);

      const ack = await c.request('send_message', { roomId, message: 'over raw ws' });
      assert.deepEqual(keysOf(ack), ['messageId', 'success', 'timestamp']);
      const m = await c.waitFor('new_message');
      assertMessageShape(m, { messageId: ack.messageId, timestamp: ack.timestamp, roomId, userId, username: 'Raw', message: 'over raw ws', messageType: 'text' });
    });

    it('a frame without id gets no ack frame; bad JSON gets invalid_payload and the socket stays usable', async () => {
      const c = await connectRaw();
      const userId = uid('raw');
      c.send('authenticate', { userId, username: 'NoAck' });
      await c.waitFor('authenticated');
      c.sendRaw('{this is not json');
      const e = await c.waitFor('error');
      assert.equal(e.code, 'invalid_payload');
      const roomId = uid('raw');
      assert.deepEqual(await c.request('join_room', { roomId }), { success: true, roomId });
      const acks = c.log.filter((x) => x.frame.event === 'ack').map((x) => x.frame.id);
      assert.deepEqual(acks, [1], 'only the frame with an id was acked');
    });
  });
}

for (const mode of MODES) {
  describe(`raw websocket <-> socket.io [${mode.name}]`, () => {
    const pool = socketPool(() => server.url, mode);
    const open = [];
    afterEach(async () => {
      await pool.finish();
      await Promise.all(open.splice(0).map((c) => c.close()));
    });

    it('a raw client and a Socket.IO client in the same room see each other', async () => {
      const roomId = uid('mix');
      const sio = await pool.user(uid('sio'), 'SIO');
      await join(sio, roomId);

      const raw = await rawWs(server, '/');
      open.push(raw);
      const rawId = uid('raw');
      await raw.request('authenticate', { userId: rawId, username: 'RAW' });
      const joined = waitFor(sio, 'user_joined');
      const users = raw.waitFor('room_users');
      await raw.request('join_room', { roomId });
      assert.deepEqual(await joined, { roomId, userId: rawId, username: 'RAW' });
      assert.equal((await users).length, 2);

      const a1 = await raw.request('send_message', { roomId, message: 'from raw' });
      assert.equal((await waitFor(sio, 'new_message')).messageId, a1.messageId);
      const a2 = await send(sio, roomId, 'from socket.io');
      assert.deepEqual((await raw.waitFor('new_message', (m) => m.messageId === a2.messageId)).message, 'from socket.io');

      assert.deepEqual(await raw.request('typing', { roomId, isTyping: true }), { success: true });
      assert.deepEqual(await waitFor(sio, 'user_typing'), { roomId, userId: rawId, username: 'RAW', isTyping: true });

      const left = waitFor(sio, 'user_left');
      await raw.close();
      assert.deepEqual(await left, { roomId, userId: rawId, username: 'RAW' });
    });
  });
}
