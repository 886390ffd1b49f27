// MAX_CONNECTIONS_PER_USER, RATE_LIMIT_PER_SEC/RATE_LIMIT_BURST, MAX_PAYLOAD_BYTES.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  MODES, startServer, socketPool, uid, emitAck, waitFor, join, send, api, keysOf,
  assertFailedAck, expectErrorEvent, waitForDisconnect, received, withTimeout, DEFAULT_TIMEOUT,
  signJwt, nowSec, openSocket,
} from './helpers.mjs';

const SECRET = 'limits-secret-0123456789abcdef';
let jwtServer;
let connServer;
let rateServer;
let sizeServer;
before(async () => {
  [jwtServer, connServer, rateServer, sizeServer] = await Promise.all([
    startServer({ AUTH_MODE: 'jwt', JWT_SECRET: SECRET, MAX_CONNECTIONS_PER_USER: '1', RATE_LIMIT_PER_SEC: '0' }),
    startServer({ MAX_CONNECTIONS_PER_USER: '2', RATE_LIMIT_PER_SEC: '0' }),
    startServer({ RATE_LIMIT_PER_SEC: '1', RATE_LIMIT_BURST: '3' }),
    startServer({ MAX_PAYLOAD_BYTES: '2000', RATE_LIMIT_PER_SEC: '0' }),
  ]);
});
after(async () => { await Promise.all([jwtServer?.stop(), connServer?.stop(), rateServer?.stop(), sizeServer?.stop()]); });

for (const mode of MODES) {
  describe(`limits [${mode.name}]`, () => {
    const jwtPool = socketPool(() => jwtServer.url, mode);
    const connPool = socketPool(() => connServer.url, mode);
    const ratePool = socketPool(() => rateServer.url, mode);
    const sizePool = socketPool(() => sizeServer.url, mode);
    afterEach(async () => { await jwtPool.finish(); await connPool.finish(); await ratePool.finish(); await sizePool.finish(); });

    it('MAX_CONNECTIONS_PER_USER=2: the third connection gets too_many_connections and is disconnected', async () => {
      const userId = uid('many');
      const roomId = uid('r');
      const side = uid('side');
      const watcher = await connPool.user(uid('watch'));
      await join(watcher, side);
      const c1 = await connPool.user(userId, 'Many');
      const c2 = await connPool.user(userId, 'Many');
      await join(c1, side);

      const c3 = await connPool.connect({ label: 'third' });
      const gone = waitForDisconnect(c3);
      const ackP = emitAck(c3, 'authenticate', { userId, username: 'Many' }).catch((e) => ({ rejected: e.message }));
      await expectErrorEvent(c3, 'too_many_connections');
      const { reason } = await gone;
      assert.equal(reason, 'io server disconnect');
      const ack = await ackP;
      if (!ack.rejected) assertFailedAck(ack, 'too_many_connections'); // an ack, if it came, is a failed one
      assert.deepEqual(received(c3, 'authenticated'), []);

      // the first two still work
      await join(c2, roomId);
      await send(c2, roomId, 'still connected');

      // one of the first two leaves; the disconnect is visible to the watcher (user_left in `side`)
      const left = waitFor(watcher, 'user_left', (e) => e.userId === userId);
      c1.disconnect();
      await left;
      const c4 = await connPool.user(userId, 'Many'); // asserts success
      await join(c4, roomId);
      await send(c4, roomId, 'fourth is welcome');

      // and the limit still holds: c2 + c4 are two
      const c5 = await connPool.connect({ label: 'fifth' });
      const gone5 = waitForDisconnect(c5);
      c5.emit('authenticate', { userId, username: 'Many' });
      await expectErrorEvent(c5, 'too_many_connections');
      assert.equal((await gone5).reason, 'io server disconnect');

      // other users are not affected
      await connPool.user(uid('someone-else'));
    });

    it('the connection limit also applies to a handshake auth.token (AUTH_MODE=jwt, MAX_CONNECTIONS_PER_USER=1)', async () => {
      const sub = uid('hs');
      const tok = signJwt({ sub, username: 'HS', exp: nowSec() + 600 }, SECRET);
      const first = await jwtPool.connect({ autoConnect: false, auth: { token: tok } });
      const firstAuth = waitFor(first, 'authenticated');
      await openSocket(first);
      assert.deepEqual(await firstAuth, { userId: sub, username: 'HS' });

      // several attempts, each must be refused with a visible reason (a race would show up here)
      for (let attempt = 0; attempt < 5; attempt++) {
        const second = await jwtPool.connect({ autoConnect: false, auth: { token: tok } });
        const outcome = withTimeout(new Promise((resolve) => {
          second.once('connect_error', (e) => resolve({ refused: e.message }));
          second.once('disconnect', (reason) => resolve({ reason }));
        }), DEFAULT_TIMEOUT, 'the second connection to be refused or closed');
        second.connect();
        second.__hookUpgrade();
        const o = await outcome;
        if (!o.refused) {
          assert.equal(o.reason, 'io server disconnect');
          assert.deepEqual(received(second, 'error').map((e) => e.code), ['too_many_connections'],
            `attempt ${attempt}: closed by the server without a too_many_connections error event`);
        }
        assert.deepEqual(received(second, 'authenticated'), []);
      }
      // the first one is unaffected
      const roomId = uid('r');
      await join(first, roomId);
      await send(first, roomId, 'still here');
    });

    it('RATE_LIMIT_PER_SEC=1 RATE_LIMIT_BURST=3: the 4th rapid send is rate_limited', async () => {
      const roomId = uid('rate');
      const a = await ratePool.user(uid('fast'));
      const b = await ratePool.user(uid('obs'));
      await join(a, roomId);
      await join(b, roomId);
      const acks = await Promise.all([0, 1, 2, 3].map((i) => emitAck(a, 'send_message', { roomId, message: `r${i}` })));
      for (const ack of acks.slice(0, 3)) assert.equal(ack.success, true, JSON.stringify(ack));
      assertFailedAck(acks[3], 'rate_limited');
      await expectErrorEvent(a, 'rate_limited');
      // the refused message was not stored
      const r = await api(rateServer, 'GET', `/api/chat/${roomId}/history`, { user: b.userId });
      assert.deepEqual(r.body.messages.map((m) => m.message), ['r0', 'r1', 'r2']);
      // other users have their own budget
      const ok = await send(b, roomId, 'b is not limited');
      assert.equal(ok.success, true);
      // the connection is still usable (typing is not a send)
      assert.deepEqual(await emitAck(a, 'typing', { roomId, isTyping: true }), { success: true });
    });

    it('MAX_PAYLOAD_BYTES=2000: a 10 kB message is refused and the service is unaffected', async () => {
      const roomId = uid('big');
      const a = await sizePool.user(uid('big'));
      await join(a, roomId);
      const small = 'x'.repeat(1000);
      await send(a, roomId, small); // well below the limit

      const refused = withTimeout(new Promise((resolve) => {
        a.on('error', (e) => { if (e?.code === 'payload_too_large') resolve('error'); });
        a.once('disconnect', () => resolve('closed'));
      }), DEFAULT_TIMEOUT, 'payload_too_large error or close');
      const ackP = emitAck(a, 'send_message', { roomId, message: 'y'.repeat(10000) }).catch((e) => ({ rejected: e.message }));
      const how = await refused;
      const ack = await ackP;
      if (how === 'error' && !ack.rejected) assertFailedAck(ack, 'payload_too_large');
      else assert.notEqual(ack.success, true, `the big message must not be acknowledged: ${JSON.stringify(ack)}`);

      // a new connection is served and nothing big was stored
      const b = await sizePool.user(uid('after'));
      const { history } = await join(b, roomId);
      assert.deepEqual(history.map((m) => m.message), [small]);
      const ok = await send(b, roomId, 'service still fine');
      assert.equal(ok.success, true);
      // an HTTP body above the limit is refused as well
      const bigBody = await api(sizeServer, 'POST', '/api/chat/rooms', {
        user: b.userId, body: { type: 'group', participants: [b.userId, 'x'.repeat(10000)] },
      });
      assert.equal(bigBody.status, 413, `oversized REST body: ${bigBody.status} ${bigBody.text}`);
      const health = await api(sizeServer, 'GET', '/health');
      assert.equal(health.status, 200);
      assert.equal(sizeServer.proc.exitCode, null, 'server still running');
    });
  });
}
