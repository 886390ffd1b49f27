// authenticate, "Not authenticated", join_room (history, room_users, user_joined), transport upgrade.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  MODES, startServer, socketPool, uid, emitAck, waitFor, waitForEntry, received, keysOf,
  assertFailedAck, expectErrorEvent, assertUpgraded, join, send, sortUsers,
} from './helpers.mjs';

let server;
before(async () => { server = await startServer({ RATE_LIMIT_PER_SEC: '0' }); });
after(async () => { await server?.stop(); });

for (const mode of MODES) {
  describe(`session [${mode.name}]`, () => {
    const pool = socketPool(() => server.url, mode);
    afterEach(() => pool.finish());

    if (mode.name === 'upgrade') {
      it('upgrades from polling to websocket and keeps working', async () => {
        const s = await pool.connect();
        assert.equal(s.io.engine.transport.name === 'polling' || s.io.engine.transport.name === 'websocket', true);
        await assertUpgraded(s);
        const userId = uid('u');
        const ack = await emitAck(s, 'authenticate', { userId, username: 'after-upgrade' });
        assert.deepEqual(ack, { success: true, userId, username: 'after-upgrade' });
      });
    } else {
      it(`stays on ${mode.transports[0]}`, async () => {
        const s = await pool.connect();
        assert.equal(s.io.engine.transport.name, mode.transports[0]);
        const userId = uid('u');
        await emitAck(s, 'authenticate', { userId, username: 'x' });
        assert.equal(s.io.engine.transport.name, mode.transports[0]);
      });
    }

    it('authenticate -> authenticated event + ack', async () => {
      const s = await pool.connect();
      const userId = uid('u');
      const username = 'Jöhn Doe ✓';
      const ev = waitFor(s, 'authenticated');
      const ack = await emitAck(s, 'authenticate', { userId, username });
      assert.deepEqual(keysOf(ack), ['success', 'userId', 'username']);
      assert.deepEqual(ack, { success: true, userId, username });
      const e = await ev;
      assert.deepEqual(keysOf(e), ['userId', 'username']);
      assert.deepEqual(e, { userId, username });
    });

    it('authenticate without an ack callback still emits authenticated (old clients)', async () => {
      const s = await pool.connect();
      const userId = uid('u');
      s.emit('authenticate', { userId, username: 'legacy' });
      assert.deepEqual(await waitFor(s, 'authenticated'), { userId, username: 'legacy' });
    });

    it('events before authenticate get not_authenticated, connection stays usable', async () => {
      const s = await pool.connect();
      const roomId = uid('r');
      const attempts = [
        ['join_room', { roomId }],
        ['send_message', { roomId, message: 'hi' }],
        ['typing', { roomId, isTyping: true }],
        ['leave_room', { roomId }],
      ];
      for (const [event, payload] of attempts) {
        const ack = await emitAck(s, event, payload);
        assertFailedAck(ack, 'not_authenticated');
        const e = await expectErrorEvent(s, 'not_authenticated');
        assert.deepEqual(e, { message: 'Not authenticated', code: 'not_authenticated' }, `error event for ${event}`);
      }
      // an ack-less emit (old client) gets the error event too
      s.emit('join_room', { roomId });
      assert.deepEqual(await waitFor(s, 'error'), { message: 'Not authenticated', code: 'not_authenticated' });
      assert.equal(s.connected, true);

      const userId = uid('u');
      const ack = await emitAck(s, 'authenticate', { userId, username: 'late' });
      assert.deepEqual(ack, { success: true, userId, username: 'late' });
      const { history, users } = await join(s, roomId);
      assert.deepEqual(history, [], 'nothing was stored by the refused send');
      assert.deepEqual(users, [{ userId, username: 'late' }]);
    });

    it('join_room -> message_history + room_users to the joiner, user_joined to the others', async () => {
      const roomId = uid('r');
      const a = await pool.user(uid('alice'), 'Alice');
      const b = await pool.user(uid('bob'), 'Bob');

      const ja = await join(a, roomId);
      assert.ok(Array.isArray(ja.history));
      assert.deepEqual(ja.history, []);
      assert.deepEqual(ja.users, [{ userId: a.userId, username: 'Alice' }]);

      const sent = await send(a, roomId, 'first');

      const joinedEv = waitFor(a, 'user_joined');
      const jb = await join(b, roomId);
      const joined = await joinedEv;
      assert.deepEqual(keysOf(joined), ['roomId', 'userId', 'username']);
      assert.deepEqual(joined, { roomId, userId: b.userId, username: 'Bob' });

      assert.equal(jb.history.length, 1);
      assert.deepEqual(jb.history[0], {
        messageId: sent.messageId, roomId, userId: a.userId, username: 'Alice', message: 'first',
        messageType: 'text', timestamp: sent.timestamp, reactions: [],
      });
      assert.ok(Array.isArray(jb.users));
      for (const u of jb.users) assert.deepEqual(keysOf(u), ['userId', 'username']);
      assert.deepEqual(sortUsers(jb.users), sortUsers([
        { userId: a.userId, username: 'Alice' }, { userId: b.userId, username: 'Bob' },
      ]));
      // the joiner does not get its own user_joined
      assert.deepEqual(received(b, 'user_joined'), []);
    });

    it('joining twice is harmless: no second user_joined, no duplicate in room_users', async () => {
      const roomId = uid('r');
      const a = await pool.user(uid('a'));
      const b = await pool.user(uid('b'));
      const c = await pool.user(uid('c'));
      await join(a, roomId);
      await join(b, roomId);
      await waitFor(a, 'user_joined', (e) => e.userId === b.userId);

      const again = await join(b, roomId); // same connection, second time
      assert.deepEqual(sortUsers(again.users), sortUsers([
        { userId: a.userId, username: a.username }, { userId: b.userId, username: b.username },
      ]));

      // barrier: c joins; a's next user_joined must be c's, not a second one for b.
      const cj = waitForEntry(a, 'user_joined', (e) => e.userId === c.userId);
      await join(c, roomId);
      const entry = await cj;
      assert.deepEqual(received(a, 'user_joined', { beforeSeq: entry.seq }).map((e) => e.userId), [b.userId]);

      // b is still a member exactly once: one message is delivered once
      const m = await send(b, roomId, 'once');
      const got = await waitFor(c, 'new_message', (x) => x.messageId === m.messageId);
      assert.equal(got.message, 'once');
      const barrierMsg = await send(a, roomId, 'barrier');
      await waitFor(b, 'new_message', (x) => x.messageId === barrierMsg.messageId);
      assert.equal(received(b, 'new_message', { predicate: (x) => x.messageId === m.messageId }).length, 1);
    });
  });
}
