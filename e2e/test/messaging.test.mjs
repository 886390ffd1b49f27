// send_message, clientMessageId dedupe, typing, leave_room, disconnect, multi-connection membership.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  MODES, startServer, socketPool, uid, emitAck, waitFor, waitForEntry, received, keysOf,
  assertFailedAck, expectErrorEvent, assertMessageShape, join, send, sortUsers, api,
} from './helpers.mjs';

let server;
before(async () => { server = await startServer({ RATE_LIMIT_PER_SEC: '0' }); });
after(async () => { await server?.stop(); });

async function restHistory(roomId, user) {
  const r = await api(server, 'GET', `/api/chat/${roomId}/history?limit=1000`, { user });
  assert.equal(r.status, 200, r.text);
  return r.body.messages;
}

for (const mode of MODES) {
  describe(`messaging [${mode.name}]`, () => {
    const pool = socketPool(() => server.url, mode);
    afterEach(() => pool.finish());

    async function roomOf(n) {
      const roomId = uid('r');
      const users = [];
      for (let i = 0; i < n; i++) {
        const s = await pool.user(uid(`m${i}`), `Member ${i}`);
        await join(s, roomId);
        users.push(s);
      }
      return { roomId, users };
    }

    it('send_message -> new_message to every member including the sender; ack matches', async () => {
      const { roomId, users: [a, b, c] } = await roomOf(3);
      const t0 = Date.now();
      const waits = [a, b, c].map((s) => waitFor(s, 'new_message'));
      const ack = await emitAck(a, 'send_message', { roomId, message: 'Hello everyone! <b>not html</b>' });
      const t1 = Date.now();
      assert.deepEqual(keysOf(ack), ['messageId', 'success', 'timestamp']);
      assert.equal(ack.success, true);
      assert.equal(typeof ack.messageId, 'string');
      assert.ok(Number.isInteger(ack.timestamp));
      assert.ok(ack.timestamp >= t0 - 2000 && ack.timestamp <= t1 + 2000, `timestamp ${ack.timestamp} not near now`);
      const expected = {
        messageId: ack.messageId, roomId, userId: a.userId, username: a.username,
        message: 'Hello everyone! <b>not html</b>', messageType: 'text', timestamp: ack.timestamp,
      };
      for (const m of await Promise.all(waits)) {
        assertMessageShape(m);
        assert.deepEqual(m, expected);
      }
    });

    it('send_message without an ack callback (old clients) is delivered', async () => {
      const { roomId, users: [a, b] } = await roomOf(2);
      a.emit('send_message', { roomId, message: 'fire and forget' });
      const m = await waitFor(b, 'new_message');
      assertMessageShape(m, { roomId, userId: a.userId, message: 'fire and forget', messageType: 'text' });
      assert.equal((await waitFor(a, 'new_message')).messageId, m.messageId);
    });

    it('default MAX_MESSAGE_LENGTH=4000: 4000 emoji (16 kB UTF-8) pass, 4001 are refused', async () => {
      const { roomId, users: [a, b] } = await roomOf(2);
      const big = '\u{1F389}'.repeat(4000);
      const ok = await send(a, roomId, big);
      const m = await waitFor(b, 'new_message', (x) => x.messageId === ok.messageId);
      assert.equal(m.message, big, 'delivered intact');
      assertFailedAck(await emitAck(a, 'send_message', { roomId, message: big + '\u{1F389}' }), 'invalid_payload');
      await expectErrorEvent(a, 'invalid_payload');
      const hist = await restHistory(roomId, b.userId);
      assert.equal(hist.length, 1);
      assert.equal(hist[0].message, big);
    });

    it('messageType image/file is kept; text is the default', async () => {
      const { roomId, users: [a, b] } = await roomOf(2);
      for (const messageType of ['image', 'file', 'text']) {
        const ack = await send(a, roomId, `https://files.example/${messageType}`, { messageType });
        const m = await waitFor(b, 'new_message', (x) => x.messageId === ack.messageId);
        assert.equal(m.messageType, messageType);
      }
      const hist = await restHistory(roomId, a.userId);
      assert.deepEqual(hist.map((m) => m.messageType), ['image', 'file', 'text']);
    });

    it('the same user with two connections: both get the message, once each', async () => {
      const roomId = uid('r');
      const userId = uid('dual');
      const a1 = await pool.user(userId, 'Dual');
      const a2 = await pool.user(userId, 'Dual');
      const b = await pool.user(uid('b'));
      await join(a1, roomId);
      await join(a2, roomId);
      const jb = await join(b, roomId);
      assert.deepEqual(sortUsers(jb.users), sortUsers([
        { userId, username: 'Dual' }, { userId: b.userId, username: b.username },
      ]), 'a user with two connections is listed once');
      const ack = await send(b, roomId, 'to both');
      for (const s of [a1, a2, b]) {
        const m = await waitFor(s, 'new_message');
        assert.equal(m.messageId, ack.messageId);
      }
      const ack2 = await send(a1, roomId, 'from a1');
      for (const s of [a1, a2, b]) {
        const m = await waitFor(s, 'new_message');
        assert.equal(m.messageId, ack2.messageId, 'next message is the second one, no duplicates');
      }
    });

    it('send_message by a non-member -> forbidden, nothing stored', async () => {
      const { roomId, users: [a] } = await roomOf(1);
      const outsider = await pool.user(uid('out'));
      const ack = await emitAck(outsider, 'send_message', { roomId, message: 'intrusion' });
      assertFailedAck(ack, 'forbidden');
      await expectErrorEvent(outsider, 'forbidden');
      // a's next new_message is the sentinel, not the intrusion
      const ok = await send(a, roomId, 'sentinel');
      const m = await waitFor(a, 'new_message');
      assert.equal(m.messageId, ok.messageId);
      assert.deepEqual((await restHistory(roomId, a.userId)).map((x) => x.message), ['sentinel']);
      // the refused connection is still usable
      await join(outsider, roomId);
      await send(outsider, roomId, 'now a member');
    });

    it('repeated clientMessageId returns the original message and is not delivered twice', async () => {
      const { roomId, users: [a, b] } = await roomOf(2);
      const clientMessageId = uid('cmid');
      const first = await send(a, roomId, 'exactly once', { clientMessageId });
      const m1 = await waitFor(b, 'new_message');
      assert.equal(m1.messageId, first.messageId);
      assert.deepEqual(keysOf(m1), ['message', 'messageId', 'messageType', 'roomId', 'timestamp', 'userId', 'username']);

      const retry = await send(a, roomId, 'exactly once', { clientMessageId });
      assert.deepEqual(retry, first, 'retry ack is the original ack');
      const retry2 = await send(a, roomId, 'exactly once', { clientMessageId });
      assert.deepEqual(retry2, first);

      const later = await send(a, roomId, 'later, distinct');
      assert.notEqual(later.messageId, first.messageId);
      const next = await waitFor(b, 'new_message');
      assert.equal(next.messageId, later.messageId, 'the next new_message after the original is the later one');
      assert.equal(next.message, 'later, distinct');
      // the sender itself also got the original once, then the later one
      assert.deepEqual(
        [await waitFor(a, 'new_message'), await waitFor(a, 'new_message')].map((x) => x.messageId),
        [first.messageId, later.messageId],
      );
      assert.deepEqual((await restHistory(roomId, a.userId)).map((x) => x.message), ['exactly once', 'later, distinct']);
    });

    it('clientMessageId is scoped to user and room', async () => {
      const { roomId, users: [a, b] } = await roomOf(2);
      const otherRoom = uid('r');
      await join(a, otherRoom);
      const clientMessageId = uid('cmid');
      const x = await send(a, roomId, 'a in room', { clientMessageId });
      const y = await send(b, roomId, 'b in room', { clientMessageId });
      const z = await send(a, otherRoom, 'a in other room', { clientMessageId });
      assert.equal(new Set([x.messageId, y.messageId, z.messageId]).size, 3);
      assert.deepEqual((await restHistory(roomId, a.userId)).map((m) => m.message), ['a in room', 'b in room']);
      assert.deepEqual((await restHistory(otherRoom, a.userId)).map((m) => m.message), ['a in other room']);
    });

    it('typing -> user_typing to the others, not to the typer; ack {success:true}', async () => {
      const { roomId, users: [a, b, c] } = await roomOf(3);
      const ack = await emitAck(a, 'typing', { roomId, isTyping: true });
      assert.deepEqual(ack, { success: true });
      for (const s of [b, c]) {
        const t = await waitFor(s, 'user_typing');
        assert.deepEqual(keysOf(t), ['isTyping', 'roomId', 'userId', 'username']);
        assert.deepEqual(t, { roomId, userId: a.userId, username: a.username, isTyping: true });
      }
      assert.deepEqual(await emitAck(a, 'typing', { roomId, isTyping: false }), { success: true });
      assert.deepEqual(await waitFor(b, 'user_typing'), { roomId, userId: a.userId, username: a.username, isTyping: false });
      // barrier: b types; a's first user_typing must be b's (a never saw its own)
      assert.deepEqual(await emitAck(b, 'typing', { roomId, isTyping: true }), { success: true });
      const t = await waitFor(a, 'user_typing');
      assert.deepEqual(t, { roomId, userId: b.userId, username: b.username, isTyping: true });
      assert.deepEqual(received(a, 'user_typing').map((e) => e.userId), [b.userId]);
    });

    it('typing by a non-member -> forbidden', async () => {
      const { roomId, users: [a] } = await roomOf(1);
      const outsider = await pool.user(uid('out'));
      assertFailedAck(await emitAck(outsider, 'typing', { roomId, isTyping: true }), 'forbidden');
      await expectErrorEvent(outsider, 'forbidden');
      // barrier for a: its first event after this is the message below, no user_typing
      const ok = await send(a, roomId, 'barrier');
      const entry = await waitForEntry(a, 'new_message', (m) => m.messageId === ok.messageId);
      assert.deepEqual(received(a, 'user_typing', { beforeSeq: entry.seq }), []);
    });

    it('leave_room -> user_left to the others; ack; the leaver no longer gets messages or may send', async () => {
      const { roomId, users: [a, b] } = await roomOf(2);
      const leftEv = waitFor(b, 'user_left');
      const ack = await emitAck(a, 'leave_room', { roomId });
      assert.deepEqual(ack, { success: true, roomId });
      const left = await leftEv;
      assert.deepEqual(keysOf(left), ['roomId', 'userId', 'username']);
      assert.deepEqual(left, { roomId, userId: a.userId, username: a.username });

      await send(b, roomId, 'after a left');
      assertFailedAck(await emitAck(a, 'send_message', { roomId, message: 'not a member' }), 'forbidden');
      await expectErrorEvent(a, 'forbidden');
      assert.deepEqual(received(a, 'new_message'), [], 'a got nothing after leaving');
      const { users } = await join(b, roomId);
      assert.deepEqual(users, [{ userId: b.userId, username: b.username }]);
    });

    it('disconnect -> user_left in every room of the user', async () => {
      const r1 = uid('r');
      const r2 = uid('r');
      const a = await pool.user(uid('a'));
      const b = await pool.user(uid('b'));
      for (const r of [r1, r2]) { await join(a, r); await join(b, r); }
      const w1 = waitFor(b, 'user_left', (e) => e.roomId === r1);
      const w2 = waitFor(b, 'user_left', (e) => e.roomId === r2);
      a.disconnect();
      assert.deepEqual(await w1, { roomId: r1, userId: a.userId, username: a.username });
      assert.deepEqual(await w2, { roomId: r2, userId: a.userId, username: a.username });
      const { users } = await join(b, r1);
      assert.deepEqual(users, [{ userId: b.userId, username: b.username }]);
    });

    it('two connections of one user: user_left only when the last one leaves', async () => {
      const roomId = uid('r');
      const userId = uid('two');
      const a1 = await pool.user(userId, 'Two');
      const a2 = await pool.user(userId, 'Two');
      const b = await pool.user(uid('b'));
      await join(b, roomId);
      await join(a1, roomId);
      await join(a2, roomId);

      // first connection leaves explicitly: no user_left yet
      assert.deepEqual(await emitAck(a1, 'leave_room', { roomId }), { success: true, roomId });
      const m = await send(a2, roomId, 'still here');
      const barrier = await waitForEntry(b, 'new_message', (x) => x.messageId === m.messageId);
      assert.deepEqual(received(b, 'user_left', { beforeSeq: barrier.seq }), [], 'no user_left while a2 is in the room');

      // rejoin with a1 (plus a side room that only a1 is in), then disconnect it:
      // user_left for the side room (proves the disconnect was processed), none for roomId
      const side = uid('side');
      await join(b, side);
      await join(a1, roomId);
      await join(a1, side);
      const sideLeft = waitFor(b, 'user_left', (e) => e.roomId === side);
      a1.disconnect();
      assert.deepEqual(await sideLeft, { roomId: side, userId, username: 'Two' });
      // a2 still works and b sees a2's messages; user_left for roomId only when a2 leaves
      const m2 = await send(a2, roomId, 'still here 2');
      const barrier2 = await waitForEntry(b, 'new_message', (x) => x.messageId === m2.messageId);
      assert.deepEqual(received(b, 'user_left', { beforeSeq: barrier2.seq, predicate: (e) => e.roomId === roomId }), []);
      const leftEv = waitForEntry(b, 'user_left', (e) => e.roomId === roomId);
      assert.deepEqual(await emitAck(a2, 'leave_room', { roomId }), { success: true, roomId });
      const left = await leftEv;
      assert.deepEqual(left.data, { roomId, userId, username: 'Two' });
      assert.equal(received(b, 'user_left', { predicate: (e) => e.roomId === roomId }).length, 1);
    });
  });
}
