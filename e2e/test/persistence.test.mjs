// Messages survive a restart on the same DATA_DIR (embedded storage).
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  MODES, startServer, socketPool, uid, join, send, api, waitFor,
} from './helpers.mjs';

let server;
before(async () => { server = await startServer({ RATE_LIMIT_PER_SEC: '0' }); });
after(async () => { await server?.stop(); });

for (const mode of MODES) {
  describe(`persistence [${mode.name}]`, () => {
    const pool = socketPool(() => server.url, mode);
    afterEach(() => pool.finish());

    it('history (socket and REST) survives SIGTERM + restart on the same DATA_DIR', async () => {
      const roomId = uid('persist');
      const a = await pool.user(uid('a'), 'Persistent Ann');
      await join(a, roomId);
      const acks = [];
      for (const text of ['before restart 1', 'before restart 2 ✓', 'before restart 3']) acks.push(await send(a, roomId, text));
      const withCmid = await send(a, roomId, 'with client id', { clientMessageId: uid('cmid') });
      acks.push(withCmid);
      const before = await api(server, 'GET', `/api/chat/${roomId}/history`, { user: a.userId });
      assert.equal(before.status, 200);
      await pool.finish();

      const exit = await server.stop();
      assert.ok(exit.code === 0 || exit.signal === 'SIGTERM', `clean shutdown on SIGTERM: ${JSON.stringify(exit)}`);
      await server.restart();
      assert.ok(server.port > 0);

      const rest = await api(server, 'GET', `/api/chat/${roomId}/history`, { user: a.userId });
      assert.equal(rest.status, 200, rest.text);
      assert.deepEqual(rest.body, before.body, 'REST history identical after restart');
      assert.deepEqual(rest.body.messages.map((m) => m.messageId), acks.map((x) => x.messageId));

      const b = await pool.user(uid('b'));
      const { history } = await join(b, roomId);
      assert.deepEqual(history, before.body.messages);
      assert.deepEqual(history.map((m) => m.message),
        ['before restart 1', 'before restart 2 ✓', 'before restart 3', 'with client id']);
      assert.ok(history.every((m) => m.username === 'Persistent Ann' && m.roomId === roomId));

      // new messages go after the old ones; since=<old id> works across the restart
      const a2 = await pool.user(a.userId, 'Persistent Ann');
      await join(a2, roomId);
      const fresh = await send(a2, roomId, 'after restart');
      assert.ok(!acks.some((x) => x.messageId === fresh.messageId), 'no id reuse after restart');
      assert.equal((await waitFor(b, 'new_message')).messageId, fresh.messageId);
      const resumed = await join(b, roomId, { since: acks[3].messageId });
      assert.deepEqual(resumed.history.map((m) => m.message), ['after restart']);
    });

    it('a clientMessageId retried after a restart still returns the original message', async () => {
      const roomId = uid('persist');
      const a = await pool.user(uid('a'), 'Retry');
      await join(a, roomId);
      const clientMessageId = uid('cmid');
      const original = await send(a, roomId, 'sent before the crash', { clientMessageId });
      await pool.finish();
      await server.restart();
      const a2 = await pool.user(a.userId, 'Retry');
      await join(a2, roomId);
      const retry = await send(a2, roomId, 'sent before the crash', { clientMessageId });
      assert.deepEqual(retry, original);
      const rest = await api(server, 'GET', `/api/chat/${roomId}/history`, { user: a.userId });
      assert.deepEqual(rest.body.messages.map((m) => m.messageId), [original.messageId]);
    });
  });
}
