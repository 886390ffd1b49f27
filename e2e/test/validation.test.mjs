// SPEC 3: bad input -> error {code: invalid_payload} + failed ack, nothing stored, connection usable.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  MODES, startServer, socketPool, uid, emitAck, waitFor, waitForEntry, received,
  assertFailedAck, expectErrorEvent, join, send, api,
} from './helpers.mjs';

let server;
before(async () => { server = await startServer({ MAX_MESSAGE_LENGTH: '10', RATE_LIMIT_PER_SEC: '0' }); });
after(async () => { await server?.stop(); });

const EMOJI = '\u{1F600}'; // 1 Unicode scalar value, 2 UTF-16 code units, 4 UTF-8 bytes

// [name, event, payload(roomId)] -- every one must be refused with invalid_payload.
// (payload is a function of the valid room the client has joined, so only the tested field is bad)
const BAD = [
  ['join_room: roomId empty', 'join_room', () => ({ roomId: '' })],
  ['join_room: roomId 129 chars', 'join_room', () => ({ roomId: 'r'.repeat(129) })],
  ['join_room: roomId with a space', 'join_room', () => ({ roomId: 'room 1' })],
  ['join_room: roomId with a slash', 'join_room', () => ({ roomId: 'room/1' })],
  ['join_room: roomId with a non-ASCII letter', 'join_room', () => ({ roomId: 'räum' })],
  ['join_room: roomId missing', 'join_room', () => ({})],
  ['join_room: roomId a number', 'join_room', () => ({ roomId: 42 })],
  ['join_room: payload a string', 'join_room', (r) => r],
  ['join_room: payload a number', 'join_room', () => 42],
  ['join_room: payload null', 'join_room', () => null],
  ['join_room: payload an array', 'join_room', (r) => [r]],
  ['join_room: no payload at all', 'join_room', undefined],
  ['leave_room: roomId with a slash', 'leave_room', () => ({ roomId: 'a/b' })],
  ['send_message: roomId empty', 'send_message', () => ({ roomId: '', message: 'bad-room-empty' })],
  ['send_message: roomId 129 chars', 'send_message', () => ({ roomId: 'r'.repeat(129), message: 'bad-long' })],
  ['send_message: roomId with a space', 'send_message', () => ({ roomId: 'a b', message: 'bad-space' })],
  ['send_message: roomId with a slash', 'send_message', () => ({ roomId: 'a/b', message: 'bad-slash' })],
  ['send_message: message empty', 'send_message', (r) => ({ roomId: r, message: '' })],
  ['send_message: message whitespace only', 'send_message', (r) => ({ roomId: r, message: '  \t\n \u00a0 ' })],
  ['send_message: message a number', 'send_message', (r) => ({ roomId: r, message: 12345 })],
  ['send_message: message null', 'send_message', (r) => ({ roomId: r, message: null })],
  ['send_message: message an object', 'send_message', (r) => ({ roomId: r, message: { text: 'bad-obj' } })],
  ['send_message: message an array', 'send_message', (r) => ({ roomId: r, message: ['bad-arr'] })],
  ['send_message: message missing', 'send_message', (r) => ({ roomId: r })],
  ['send_message: message 11 chars > MAX_MESSAGE_LENGTH=10', 'send_message', (r) => ({ roomId: r, message: 'bad-1234567' })],
  ['send_message: message 11 emoji > MAX_MESSAGE_LENGTH=10', 'send_message', (r) => ({ roomId: r, message: EMOJI.repeat(11) })],
  ['send_message: messageType system', 'send_message', (r) => ({ roomId: r, message: 'bad-system', messageType: 'system' })],
  ['send_message: messageType video', 'send_message', (r) => ({ roomId: r, message: 'bad-video', messageType: 'video' })],
  ['send_message: messageType a number', 'send_message', (r) => ({ roomId: r, message: 'bad-type', messageType: 1 })],
  ['send_message: payload a string', 'send_message', () => 'bad-string'],
  ['send_message: payload a number', 'send_message', () => 7],
  ['send_message: payload null', 'send_message', () => null],
  ['typing: isTyping a string', 'typing', (r) => ({ roomId: r, isTyping: 'true' })],
  ['typing: isTyping a number', 'typing', (r) => ({ roomId: r, isTyping: 1 })],
  ['typing: isTyping null', 'typing', (r) => ({ roomId: r, isTyping: null })],
  ['typing: isTyping missing', 'typing', (r) => ({ roomId: r })],
  ['typing: roomId with a space', 'typing', () => ({ roomId: 'a b', isTyping: true })],
  ['typing: payload a string', 'typing', () => 'typing'],
  ['authenticate: payload a string', 'authenticate', () => 'user-1'],
  ['authenticate: payload null', 'authenticate', () => null],
];

for (const mode of MODES) {
  describe(`validation [${mode.name}]`, () => {
    const pool = socketPool(() => server.url, mode);
    afterEach(() => pool.finish());

    async function setup() {
      const roomId = uid('v');
      const a = await pool.user(uid('val'), 'Val');
      const b = await pool.user(uid('obs'), 'Obs');
      await join(a, roomId);
      await join(b, roomId);
      return { roomId, a, b };
    }

    async function storedMessages(roomId, user) {
      const r = await api(server, 'GET', `/api/chat/${roomId}/history?limit=1000`, { user });
      assert.equal(r.status, 200, r.text);
      return r.body.messages.map((m) => m.message);
    }

    for (const [name, event, make] of BAD.filter(([, ev]) => ev === 'authenticate')) {
      it(`refuses ${name}`, async () => {
        const s = await pool.connect();
        assertFailedAck(await emitAck(s, event, make('x')), 'invalid_payload');
        await expectErrorEvent(s, 'invalid_payload');
        // still unauthenticated, and still usable
        assertFailedAck(await emitAck(s, 'join_room', { roomId: uid('v') }), 'not_authenticated');
        await expectErrorEvent(s, 'not_authenticated');
        const userId = uid('late');
        assert.deepEqual(await emitAck(s, 'authenticate', { userId, username: 'Late' }), { success: true, userId, username: 'Late' });
        const roomId = uid('v');
        await join(s, roomId);
        await send(s, roomId, 'ok');
      });
    }

    for (const [name, event, make] of BAD.filter(([, ev]) => ev !== 'authenticate')) {
      it(`refuses ${name}`, async () => {
        const { roomId, a, b } = await setup();
        const args = make === undefined ? [] : [make(roomId)];
        const ack = await emitAck(a, event, ...args);
        assertFailedAck(ack, 'invalid_payload');
        await expectErrorEvent(a, 'invalid_payload');

        // connection still usable and still authenticated as before; nothing was stored or broadcast
        const ok = await send(a, roomId, 'valid');
        const entry = await waitForEntry(b, 'new_message', (m) => m.messageId === ok.messageId);
        assert.deepEqual(received(b, 'new_message', { beforeSeq: entry.seq }), [], 'nothing delivered before the valid message');
        assert.deepEqual(received(b, 'user_typing'), [], 'no typing event delivered');
        assert.deepEqual(await storedMessages(roomId, a.userId), ['valid']);
        const m = await waitFor(a, 'new_message');
        assert.equal(m.userId, a.userId, 'identity unchanged');
        assert.equal(m.username, 'Val');
      });
    }

    it('accepts exactly MAX_MESSAGE_LENGTH characters, counted as Unicode scalar values', async () => {
      const { roomId, a, b } = await setup();
      for (const text of ['abcdefghij', EMOJI.repeat(10), 'ééééééééé€']) {
        const ok = await send(a, roomId, text);
        const m = await waitFor(b, 'new_message', (x) => x.messageId === ok.messageId);
        assert.equal(m.message, text);
      }
      assert.deepEqual(await storedMessages(roomId, a.userId), ['abcdefghij', EMOJI.repeat(10), 'ééééééééé€']);
    });

    it('accepts a 128-character roomId using every allowed character class', async () => {
      const a = await pool.user(uid('val'));
      const base = `Az09_-:.@${uid('x')}`;
      const roomId = base + 'y'.repeat(128 - base.length);
      assert.equal(roomId.length, 128);
      await join(a, roomId);
      const ok = await send(a, roomId, 'edge');
      assert.equal((await waitFor(a, 'new_message')).messageId, ok.messageId);
    });

    it('ignores unknown extra fields in an otherwise valid payload', async () => {
      const { roomId, a, b } = await setup();
      const ok = await send(a, roomId, 'extra', { foo: 'bar', nested: { x: 1 } });
      const m = await waitFor(b, 'new_message', (x) => x.messageId === ok.messageId);
      assert.equal(m.message, 'extra');
      assert.equal(m.foo, undefined);
    });

    it('several bad events in a row do not break the connection', async () => {
      const { roomId, a } = await setup();
      for (let i = 0; i < 5; i++) {
        assertFailedAck(await emitAck(a, 'send_message', { roomId, message: '' }), 'invalid_payload');
        assertFailedAck(await emitAck(a, 'join_room', 'nope'), 'invalid_payload');
      }
      for (let i = 0; i < 10; i++) await expectErrorEvent(a, 'invalid_payload');
      await send(a, roomId, 'still fine');
      assert.equal(received(a, 'error').length, 10);
    });
  });
}
