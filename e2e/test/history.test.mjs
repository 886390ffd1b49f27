// message_history on join: oldest first, HISTORY_ON_JOIN, `since` resume.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  MODES, startServer, socketPool, uid, emitAck, waitFor, join, send, assertMessageShape, assertHistoryItemShape,
} from './helpers.mjs';

describe('history', () => {
  let server;
  let small; // HISTORY_ON_JOIN=5
  before(async () => {
    [server, small] = await Promise.all([
      startServer({ RATE_LIMIT_PER_SEC: '0' }),
      startServer({ RATE_LIMIT_PER_SEC: '0', HISTORY_ON_JOIN: '5' }),
    ]);
  });
  after(async () => { await Promise.all([server?.stop(), small?.stop()]); });

  for (const mode of MODES) {
    describe(`[${mode.name}]`, () => {
      const pool = socketPool(() => server.url, mode);
      const smallPool = socketPool(() => small.url, mode);
      afterEach(async () => { await pool.finish(); await smallPool.finish(); });

      async function fill(p, roomId, n) {
        const a = await p.user(uid('writer'), 'Writer');
        await join(a, roomId);
        const acks = [];
        for (let i = 0; i < n; i++) acks.push(await send(a, roomId, `h${i}`, i % 3 === 1 ? { messageType: 'image' } : {}));
        return { a, acks };
      }

      it('a later joiner gets all earlier messages oldest first, with full payloads', async () => {
        const roomId = uid('hist');
        const { a, acks } = await fill(pool, roomId, 8);
        const b = await pool.user(uid('reader'));
        const { history } = await join(b, roomId);
        assert.equal(history.length, 8);
        history.forEach((m, i) => {
          assertHistoryItemShape(m);
          assert.deepEqual(m, {
            messageId: acks[i].messageId, roomId, userId: a.userId, username: 'Writer', message: `h${i}`,
            messageType: i % 3 === 1 ? 'image' : 'text', timestamp: acks[i].timestamp, reactions: [],
          });
        });
        // joining again (same connection) gets the history again, unchanged
        const again = await join(b, roomId);
        assert.deepEqual(again.history, history);
      });

      it('HISTORY_ON_JOIN=5 sends only the last 5, oldest first', async () => {
        const roomId = uid('hist');
        const { acks } = await fill(smallPool, roomId, 8);
        const b = await smallPool.user(uid('reader'));
        const { history } = await join(b, roomId);
        assert.deepEqual(history.map((m) => m.message), ['h3', 'h4', 'h5', 'h6', 'h7']);
        assert.deepEqual(history.map((m) => m.messageId), acks.slice(3).map((x) => x.messageId));
      });

      it('join_room {since} returns exactly the messages after that id (gap-free resume)', async () => {
        const roomId = uid('hist');
        const { a, acks } = await fill(pool, roomId, 7);
        const b = await pool.user(uid('reader'));
        const r1 = await join(b, roomId, { since: acks[2].messageId });
        assert.deepEqual(r1.history.map((m) => m.messageId), acks.slice(3).map((x) => x.messageId));
        assert.deepEqual(r1.history.map((m) => m.message), ['h3', 'h4', 'h5', 'h6']);

        // since the newest -> nothing
        const r2 = await join(b, roomId, { since: acks[6].messageId });
        assert.deepEqual(r2.history, []);

        // since the oldest -> everything after it
        const r3 = await join(b, roomId, { since: acks[0].messageId });
        assert.deepEqual(r3.history.map((m) => m.message), ['h1', 'h2', 'h3', 'h4', 'h5', 'h6']);

        // messages sent while "offline" are picked up on resume; nothing twice
        const c = await pool.user(uid('reader2'));
        const first = await join(c, roomId);
        const lastSeen = first.history.at(-1).messageId;
        c.disconnect();
        const more = [await send(a, roomId, 'gap1'), await send(a, roomId, 'gap2')];
        const c2 = await pool.user(c.userId, c.username);
        const resumed = await join(c2, roomId, { since: lastSeen });
        assert.deepEqual(resumed.history.map((m) => m.messageId), more.map((x) => x.messageId));
      });

      it('since is not limited by HISTORY_ON_JOIN', async () => {
        const roomId = uid('hist');
        const { acks } = await fill(smallPool, roomId, 9);
        const b = await smallPool.user(uid('reader'));
        const { history } = await join(b, roomId, { since: acks[0].messageId });
        // gap-free resume: everything after the cursor (8 messages), even though HISTORY_ON_JOIN=5
        assert.deepEqual(history.map((m) => m.message), ['h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'h7', 'h8']);
      });

      it('history is per room', async () => {
        const r1 = uid('hist');
        const r2 = uid('hist');
        const { a } = await fill(pool, r1, 2);
        await join(a, r2);
        await send(a, r2, 'other room');
        const b = await pool.user(uid('reader'));
        assert.deepEqual((await join(b, r2)).history.map((m) => m.message), ['other room']);
        assert.deepEqual((await join(b, r1)).history.map((m) => m.message), ['h0', 'h1']);
      });

      it('since with a malformed value is refused as invalid_payload', async () => {
        const b = await pool.user(uid('reader'));
        const ack = await emitAck(b, 'join_room', { roomId: uid('hist'), since: { not: 'an id' } });
        assert.equal(ack.success, false);
        assert.equal(ack.error.code, 'invalid_payload');
        assert.equal((await waitFor(b, 'error')).code, 'invalid_payload');
      });
    });
  }
});
