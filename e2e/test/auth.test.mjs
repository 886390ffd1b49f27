// AUTH_MODE=jwt (HS256): identity from the token only; failures leave the connection unauthenticated.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  MODES, startServer, socketPool, uid, emitAck, waitFor, join, send, api, keysOf,
  assertFailedAck, expectErrorEvent, signJwt, nowSec, openSocket, received, withTimeout,
} from './helpers.mjs';

const SECRET = 'e2e-secret-' + 'x'.repeat(24);
let server;
before(async () => { server = await startServer({ AUTH_MODE: 'jwt', JWT_SECRET: SECRET, RATE_LIMIT_PER_SEC: '0' }); });
after(async () => { await server?.stop(); });

const token = (claims, secret = SECRET, opts) => signJwt({ iat: nowSec(), exp: nowSec() + 600, ...claims }, secret, opts);

async function expectStillUnauthenticated(s) {
  assertFailedAck(await emitAck(s, 'join_room', { roomId: uid('r') }), 'not_authenticated');
  const e = await expectErrorEvent(s, 'not_authenticated');
  assert.equal(e.message, 'Not authenticated');
}

for (const mode of MODES) {
  describe(`jwt auth [${mode.name}]`, () => {
    const pool = socketPool(() => server.url, mode);
    afterEach(() => pool.finish());

    it('valid token: identity comes from the token, not from the claimed fields', async () => {
      const sub = uid('sub');
      const s = await pool.connect();
      const ev = waitFor(s, 'authenticated');
      const ack = await emitAck(s, 'authenticate', { userId: 'someone-else', username: 'Impostor', token: token({ sub, username: 'Real Name' }) });
      assert.deepEqual(ack, { success: true, userId: sub, username: 'Real Name' });
      assert.deepEqual(await ev, { userId: sub, username: 'Real Name' });
      const roomId = uid('r');
      await join(s, roomId);
      const m = await send(s, roomId, 'signed');
      const nm = await waitFor(s, 'new_message');
      assert.equal(nm.messageId, m.messageId);
      assert.equal(nm.userId, sub);
      assert.equal(nm.username, 'Real Name');
    });

    it('alternative claims: userId and name', async () => {
      const id = uid('alt');
      const s = await pool.connect();
      const ack = await emitAck(s, 'authenticate', { token: token({ userId: id, name: 'Alt Name' }) });
      assert.deepEqual(ack, { success: true, userId: id, username: 'Alt Name' });
    });

    const failures = [
      ['a bad signature', () => token({ sub: uid('x'), username: 'x' }, 'wrong-secret'), ['auth_failed']],
      ['an expired token', () => signJwt({ sub: uid('x'), username: 'x', iat: nowSec() - 7200, exp: nowSec() - 3600 }, SECRET), ['auth_failed', 'token_expired']],
      ['no token', () => undefined, ['auth_failed']],
      ['a garbage token', () => 'not.a.jwt', ['auth_failed']],
      ['alg "none"', () => signJwt({ sub: uid('x'), username: 'x', exp: nowSec() + 600 }, SECRET, { alg: 'none' }), ['auth_failed']],
      ['a tampered payload', () => {
        const [h, , sig] = token({ sub: 'victim', username: 'v' }).split('.');
        const p = Buffer.from(JSON.stringify({ sub: 'attacker', username: 'a', exp: nowSec() + 600 })).toString('base64url');
        return `${h}.${p}.${sig}`;
      }, ['auth_failed']],
    ];
    for (const [label, make, codes] of failures) {
      it(`authenticate with ${label} -> ${codes.join(' or ')}, connection stays unauthenticated`, async () => {
        const s = await pool.connect();
        const payload = { userId: uid('claimed'), username: 'Claimed' };
        const t = make();
        if (t !== undefined) payload.token = t;
        const ack = await emitAck(s, 'authenticate', payload);
        assert.equal(ack.success, false, JSON.stringify(ack));
        assert.deepEqual(keysOf(ack.error), ['code', 'message']);
        assert.ok(codes.includes(ack.error.code), `ack code ${ack.error.code}, expected ${codes}`);
        const e = await waitFor(s, 'error');
        assert.deepEqual(keysOf(e), ['code', 'message']);
        assert.ok(codes.includes(e.code), `error code ${e.code}, expected ${codes}`);
        assert.deepEqual(received(s, 'authenticated'), []);
        await expectStillUnauthenticated(s);
        // and a valid token afterwards still works on the same connection
        const sub = uid('sub');
        assert.deepEqual(await emitAck(s, 'authenticate', { token: token({ sub, username: 'Recovered' }) }),
          { success: true, userId: sub, username: 'Recovered' });
      });
    }

    it('handshake auth.token authenticates at connect time (authenticated emitted unprompted)', async () => {
      // repeated: the unprompted event must arrive every time, not just usually
      const missing = [];
      for (let i = 0; i < 10; i++) {
        const id = uid('hs');
        const c = await pool.connect({ autoConnect: false, auth: { token: token({ sub: id, username: 'Handshake' }) } });
        const e = waitFor(c, 'authenticated', () => true, 2000);
        await openSocket(c);
        try {
          assert.deepEqual(await e, { userId: id, username: 'Handshake' });
        } catch (err) {
          missing.push(`attempt ${i}: ${err.message}`);
        }
        c.disconnect();
      }
      assert.deepEqual(missing, [], 'authenticated event after a handshake token');

      const sub = uid('hs');
      const s = await pool.connect({ autoConnect: false, auth: { token: token({ sub, username: 'Handshake' }) } });
      const ev = waitFor(s, 'authenticated'); // listener registered before connecting
      await openSocket(s);
      assert.deepEqual(await ev, { userId: sub, username: 'Handshake' });
      const roomId = uid('r');
      await join(s, roomId); // no authenticate event needed
      const m = await send(s, roomId, 'via handshake');
      assert.equal((await waitFor(s, 'new_message')).messageId, m.messageId);
    });

    it('a handshake with a bad token does not authenticate', async () => {
      const s = await pool.connect({ autoConnect: false, auth: { token: token({ sub: uid('x') }, 'wrong') } });
      const outcome = withTimeout(new Promise((resolve) => {
        s.once('connect', () => resolve('connect'));
        s.once('connect_error', () => resolve('connect_error'));
      }), 5000, 'connect or connect_error');
      s.connect();
      s.__hookUpgrade();
      // either the connection is refused (connect_error) or it is open but unauthenticated
      // (the server may tell it so with an auth_failed error event)
      if (await outcome === 'connect') {
        assertFailedAck(await emitAck(s, 'join_room', { roomId: uid('r') }), 'not_authenticated');
        await waitFor(s, 'error', (e) => e.code === 'not_authenticated');
        assert.deepEqual(received(s, 'error').map((e) => e.code).filter((c) => c !== 'not_authenticated'),
          received(s, 'error').filter((e) => e.code === 'auth_failed').map(() => 'auth_failed'),
          'the only other error is auth_failed');
        assert.deepEqual(received(s, 'authenticated'), []);
      }
    });
  });
}

describe('jwt auth over REST', () => {
  it('REST history: 401 without Bearer or with a bad one, 200 with a valid one', async () => {
    const roomId = uid('r');
    const no = await api(server, 'GET', `/api/chat/${roomId}/history`);
    assert.equal(no.status, 401);
    assert.equal(no.body.success, false);
    assert.ok(['auth_failed', 'not_authenticated'].includes(no.body.error.code), no.text);
    const spoof = await api(server, 'GET', `/api/chat/${roomId}/history`, { user: 'x-user-id-is-ignored' });
    assert.equal(spoof.status, 401, 'X-User-Id is not trusted in jwt mode');
    const bad = await api(server, 'GET', `/api/chat/${roomId}/history`, { token: token({ sub: 'x' }, 'wrong') });
    assert.equal(bad.status, 401);
    const expired = await api(server, 'GET', `/api/chat/${roomId}/history`, {
      token: signJwt({ sub: 'x', exp: nowSec() - 3600 }, SECRET),
    });
    assert.equal(expired.status, 401);
    const ok = await api(server, 'GET', `/api/chat/${roomId}/history`, { token: token({ sub: uid('s'), username: 'S' }) });
    assert.equal(ok.status, 200, ok.text);
    assert.deepEqual(ok.body, { success: true, messages: [] });
    const alias = await api(server, 'GET', `/chat/${roomId}/history`);
    assert.equal(alias.status, 401);
  });

  it('REST rooms use the token identity', async () => {
    const me = uid('me');
    const other = uid('other');
    const noAuth = await api(server, 'GET', '/api/chat/rooms');
    assert.equal(noAuth.status, 401);
    const r = await api(server, 'POST', '/api/chat/rooms', { token: token({ sub: me, username: 'Me' }), body: { type: 'direct', participants: [me, other] } });
    assert.equal(r.status, 201, r.text);
    const list = await api(server, 'GET', '/api/chat/rooms', { token: token({ sub: me, username: 'Me' }) });
    assert.equal(list.status, 200);
    assert.deepEqual(list.body.rooms.map((x) => x.roomId), [r.body.room.roomId]);
  });
});

describe('jwt issuer and audience', () => {
  let strict;
  before(async () => {
    strict = await startServer({ AUTH_MODE: 'jwt', JWT_SECRET: SECRET, JWT_ISSUER: 'https://auth.example', JWT_AUDIENCE: 'chat' });
  });
  after(async () => { await strict?.stop(); });

  for (const mode of MODES) {
    it(`[${mode.name}] iss and aud are enforced when configured`, async () => {
      const pool = socketPool(() => strict.url, mode);
      try {
        const sub = uid('iss');
        const cases = [
          [{ iss: 'https://auth.example', aud: 'chat' }, true],
          [{ iss: 'https://auth.example', aud: ['other', 'chat'] }, true],
          [{ aud: 'chat' }, false],
          [{ iss: 'https://evil.example', aud: 'chat' }, false],
          [{ iss: 'https://auth.example' }, false],
          [{ iss: 'https://auth.example', aud: 'other' }, false],
        ];
        const wrong = [];
        for (const [claims, ok] of cases) {
          const s = await pool.connect();
          const ack = await emitAck(s, 'authenticate', { token: token({ sub, username: 'I', ...claims }) });
          if (ack.success !== ok) wrong.push(`${JSON.stringify(claims)} -> ${JSON.stringify(ack)} (expected ${ok ? 'accepted' : 'refused'})`);
          else if (ok) assert.deepEqual(ack, { success: true, userId: sub, username: 'I' }, JSON.stringify(claims));
          else {
            assertFailedAck(ack, 'auth_failed');
            await expectErrorEvent(s, 'auth_failed');
          }
        }
        assert.deepEqual(wrong, [], `JWT_ISSUER=https://auth.example JWT_AUDIENCE=chat:\n${wrong.join('\n')}`);
      } finally {
        await pool.finish();
      }
    });
  }
});
