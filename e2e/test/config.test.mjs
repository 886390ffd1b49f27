// SPEC 9: configuration from environment, command-line flags and a .env file; bad values stop start-up.
import { describe, it, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  MODES, startServer, runExpectingExit, socketPool, uid, emitAck, join, send, assertFailedAck, expectErrorEvent,
} from './helpers.mjs';

describe('bad configuration stops start-up with a message naming the variable', () => {
  const cases = [
    ['PORT', { PORT: 'not-a-port' }],
    ['MAX_MESSAGE_LENGTH', { MAX_MESSAGE_LENGTH: 'abc' }],
    ['MAX_CONNECTIONS_PER_USER', { MAX_CONNECTIONS_PER_USER: '-1' }],
    ['RATE_LIMIT_PER_SEC', { RATE_LIMIT_PER_SEC: 'fast' }],
    ['HISTORY_ON_JOIN', { HISTORY_ON_JOIN: 'lots' }],
    ['AUTH_MODE', { AUTH_MODE: 'bogus' }],
    ['JWT_SECRET', { AUTH_MODE: 'jwt' }], // jwt without a secret or key
  ];
  for (const [name, env] of cases) {
    it(`${Object.entries(env).map(([k, v]) => `${k}=${v}`).join(' ')} -> exits non-zero mentioning ${name}`, async () => {
      const r = await runExpectingExit(env);
      assert.notEqual(r.code, 0, `exit code ${r.code}`);
      assert.match(r.stdout + r.stderr, new RegExp(name), `output names ${name}:\n${r.stderr}`);
    });
  }
});

for (const mode of MODES) {
  describe(`configuration sources [${mode.name}]`, () => {
    let flagServer;
    let dotenvServer;
    const pools = [];
    afterEach(async () => { for (const p of pools) await p.finish(); });
    after(async () => { await Promise.all([flagServer?.stop(), dotenvServer?.stop()]); });

    it('command-line flags: --max-message-length 5', async () => {
      flagServer = await startServer({ RATE_LIMIT_PER_SEC: '0' }, { args: ['--max-message-length', '5'] });
      const pool = socketPool(() => flagServer.url, mode);
      pools.push(pool);
      const a = await pool.user(uid('flag'));
      const roomId = uid('cfg');
      await join(a, roomId);
      await send(a, roomId, '12345');
      assertFailedAck(await emitAck(a, 'send_message', { roomId, message: '123456' }), 'invalid_payload');
      await expectErrorEvent(a, 'invalid_payload');
    });

    it('a .env file in the working directory: HISTORY_ON_JOIN=2', async () => {
      dotenvServer = await startServer({ RATE_LIMIT_PER_SEC: '0' }, { dotenv: 'HISTORY_ON_JOIN=2\n' });
      const pool = socketPool(() => dotenvServer.url, mode);
      pools.push(pool);
      const a = await pool.user(uid('dot'));
      const roomId = uid('cfg');
      await join(a, roomId);
      for (const t of ['one', 'two', 'three']) await send(a, roomId, t);
      const b = await pool.user(uid('dot'));
      const { history } = await join(b, roomId);
      assert.deepEqual(history.map((m) => m.message), ['two', 'three']);
    });
  });
}
