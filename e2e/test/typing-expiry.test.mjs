// SPEC 2: a typing state not renewed within 10 s expires as isTyping:false. (Slow: ~10 s, modes run concurrently.)
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { MODES, startServer, socketPool, uid, emitAck, waitFor, join, received } from './helpers.mjs';

let server;
before(async () => { server = await startServer({ RATE_LIMIT_PER_SEC: '0' }); });
after(async () => { await server?.stop(); });

describe('typing expiry', { concurrency: MODES.length }, () => {
  for (const mode of MODES) {
    it(`[${mode.name}] isTyping:true not renewed -> user_typing isTyping:false after ~10 s`, async () => {
      const pool = socketPool(() => server.url, mode);
      try {
        const roomId = uid('typ');
        const a = await pool.user(uid('typer'), 'Typer');
        const b = await pool.user(uid('watcher'));
        await join(a, roomId);
        await join(b, roomId);
        const t0 = Date.now();
        assert.deepEqual(await emitAck(a, 'typing', { roomId, isTyping: true }), { success: true });
        assert.equal((await waitFor(b, 'user_typing')).isTyping, true);
        const expired = await waitFor(b, 'user_typing', () => true, 14000);
        const elapsed = Date.now() - t0;
        assert.deepEqual(expired, { roomId, userId: a.userId, username: 'Typer', isTyping: false });
        assert.ok(elapsed >= 9000, `expired too early: ${elapsed} ms`);
        assert.ok(elapsed <= 12500, `expired too late: ${elapsed} ms`);
        assert.deepEqual(received(a, 'user_typing'), [], 'the typer never gets its own typing events');
      } finally {
        await pool.finish();
      }
    });
  }
});
