// SPEC 1: events of one connection are processed in arrival order, whatever the transport.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  MODES, startServer, socketPool, uid, waitFor, join, api, DEFAULT_TIMEOUT, withTimeout,
} from './helpers.mjs';

const N = 50;
let server;
before(async () => { server = await startServer({ RATE_LIMIT_PER_SEC: '0' }); });
after(async () => { await server?.stop(); });

function collect(socket, event, n, predicate = () => true) {
  const out = [];
  return withTimeout(new Promise((resolve) => {
    const check = () => { if (out.length === n) resolve(out); };
    socket.on(event, (d) => { if (predicate(d)) { out.push(d); check(); } });
  }), DEFAULT_TIMEOUT * 2, `${n} x ${event}`);
}

for (const mode of MODES) {
  describe(`ordering [${mode.name}]`, () => {
    const pool = socketPool(() => server.url, mode);
    afterEach(() => pool.finish());

    it(`authenticate, join_room and ${N} send_message emitted back-to-back are processed in order`, async () => {
      const roomId = uid('ord');
      const observer = await pool.user(uid('obs'), 'Observer');
      await join(observer, roomId);

      const s = await pool.connect({ label: 'burst' });
      const userId = uid('burst');
      const mine = collect(s, 'new_message', N);
      const theirs = collect(observer, 'new_message', N);
      const history = waitFor(s, 'message_history');

      const t = s.timeout(DEFAULT_TIMEOUT * 2);
      const acks = [];
      acks.push(t.emitWithAck('authenticate', { userId, username: 'Burst' }));
      acks.push(s.timeout(DEFAULT_TIMEOUT * 2).emitWithAck('join_room', { roomId }));
      for (let i = 0; i < N; i++) {
        acks.push(s.timeout(DEFAULT_TIMEOUT * 2).emitWithAck('send_message', { roomId, message: `msg ${i}` }));
      }
      const [authAck, joinAck, ...sendAcks] = await Promise.all(acks);
      assert.deepEqual(authAck, { success: true, userId, username: 'Burst' });
      assert.deepEqual(joinAck, { success: true, roomId });
      assert.deepEqual(await history, []);
      for (const [i, a] of sendAcks.entries()) assert.equal(a.success, true, `send ${i}: ${JSON.stringify(a)}`);

      const expected = Array.from({ length: N }, (_, i) => `msg ${i}`);
      assert.deepEqual((await mine).map((m) => m.message), expected, 'sender sees emission order');
      assert.deepEqual((await theirs).map((m) => m.message), expected, 'other member sees emission order');
      assert.deepEqual((await mine).map((m) => m.messageId), sendAcks.map((a) => a.messageId));
      assert.equal(new Set(sendAcks.map((a) => a.messageId)).size, N, 'distinct ids');
      const ts = sendAcks.map((a) => a.timestamp);
      for (let i = 1; i < N; i++) assert.ok(ts[i] >= ts[i - 1], 'timestamps non-decreasing');

      const r = await api(server, 'GET', `/api/chat/${roomId}/history?limit=1000`, { user: userId });
      assert.equal(r.status, 200);
      assert.deepEqual(r.body.messages.map((m) => m.message), expected, 'stored in order');
    });

    it('emits queued before the connection is even established are processed in order', async () => {
      const roomId = uid('ord');
      const s = await pool.connect({ autoConnect: false, label: 'early' });
      const userId = uid('early');
      const mine = collect(s, 'new_message', 5);
      const acks = [
        s.timeout(DEFAULT_TIMEOUT).emitWithAck('authenticate', { userId, username: 'Early' }),
        s.timeout(DEFAULT_TIMEOUT).emitWithAck('join_room', { roomId }),
        ...Array.from({ length: 5 }, (_, i) => s.timeout(DEFAULT_TIMEOUT).emitWithAck('send_message', { roomId, message: `e${i}` })),
      ];
      s.connect();
      s.__hookUpgrade();
      const results = await Promise.all(acks);
      assert.ok(results.every((a) => a.success === true), JSON.stringify(results));
      assert.deepEqual((await mine).map((m) => m.message), ['e0', 'e1', 'e2', 'e3', 'e4']);
    });
  });
}
