// SPEC 10, the message lifecycle, with the official socket.io-client on every transport:
// replies, edits, deletes, reactions, read receipts and unread counts, and a resume that
// replays what changed. In cluster mode (E2E_CLUSTER=1) the two sockets of a test sit on
// different instances, which share a store (sharedStoreEnv).
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  MODES, CLUSTER, startServer, socketPool, sharedStoreEnv, uid, emitAck, waitFor, join, send, api,
  assertFailedAck, assertHistoryItemShape,
} from './helpers.mjs';

describe('message lifecycle (SPEC 10)', () => {
  let server;
  before(async () => {
    server = await startServer({ RATE_LIMIT_PER_SEC: '0', ...(CLUSTER ? sharedStoreEnv() : {}) });
  });
  after(async () => { await server?.stop(); });

  for (const mode of MODES) {
    describe(`[${mode.name}]`, () => {
      const pool = socketPool(() => server.url, mode);
      afterEach(() => pool.finish());

      it('reply, edit, react, delete and read reach the other member; history shows the state', async () => {
        const roomId = uid('life');
        const a = await pool.user(uid('ann'), 'Ann');
        const b = await pool.user(uid('bob'), 'Bob');
        await join(a, roomId);
        await join(b, roomId);
        const first = await send(a, roomId, 'helo');
        const reply = await send(b, roomId, 'hi Ann', { replyTo: first.messageId });
        const seen = await waitFor(a, 'new_message', (m) => m.messageId === reply.messageId);
        assert.equal(seen.replyTo, first.messageId);

        const edited = waitFor(b, 'message_edited');
        const ack = await emitAck(a, 'edit_message', { roomId, messageId: first.messageId, message: 'hello' });
        assert.equal(ack.success, true, JSON.stringify(ack));
        assert.deepEqual(await edited, {
          roomId, messageId: first.messageId, message: 'hello', editedAt: ack.editedAt, userId: a.userId,
        });
        assertFailedAck(await emitAck(b, 'edit_message', { roomId, messageId: first.messageId, message: 'x' }), 'forbidden');

        const reacted = waitFor(a, 'reaction_updated');
        const r = await emitAck(b, 'add_reaction', { roomId, messageId: reply.messageId, emoji: '👍' });
        assert.equal(r.count, 1, JSON.stringify(r));
        assert.deepEqual(await reacted, {
          roomId, messageId: reply.messageId, emoji: '👍', userId: b.userId, added: true, count: 1,
        });
        assertFailedAck(await emitAck(b, 'add_reaction', { roomId, messageId: reply.messageId, emoji: 'two words' }), 'invalid_payload');

        const deleted = waitFor(b, 'message_deleted');
        const d = await emitAck(a, 'delete_message', { roomId, messageId: first.messageId });
        assert.equal(d.success, true);
        assert.deepEqual(await deleted, { roomId, messageId: first.messageId, deletedAt: d.deletedAt, userId: a.userId });

        const receipt = waitFor(a, 'read_receipt');
        const read = await emitAck(b, 'mark_read', { roomId, messageId: reply.messageId });
        assert.equal(read.success, true);
        assert.deepEqual(await receipt, { roomId, userId: b.userId, messageId: reply.messageId, readAt: read.readAt });

        const rest = await api(server, 'GET', `/api/chat/${roomId}/history?limit=50`);
        assert.equal(rest.status, 200, rest.text);
        const [m1, m2] = rest.body.messages;
        const { deleted: gone, editedAt, ...plain } = m1;
        assertHistoryItemShape(plain);
        assert.equal(gone, true);
        assert.equal(editedAt, ack.editedAt);
        assert.equal(m1.message, '');
        assert.equal(m2.replyTo, first.messageId);
        assert.deepEqual(m2.reactions, [{ emoji: '👍', count: 1, userIds: [b.userId] }]);

        const rooms = await api(server, 'GET', '/api/chat/rooms', { user: a.userId });
        const room = rooms.body.rooms.find((x) => x.roomId === roomId);
        assert.equal(room.unreadCount, 1, JSON.stringify(room));
        const receipts = await api(server, 'GET', `/api/chat/${roomId}/receipts`, { user: a.userId });
        assert.deepEqual(receipts.body, { success: true, receipts: [{ userId: b.userId, messageId: reply.messageId, readAt: read.readAt }] });
      });

      it('a client resuming with since learns the edits, deletes and reactions it missed', async () => {
        const roomId = uid('resume');
        const a = await pool.user(uid('ann'), 'Ann');
        await join(a, roomId);
        const userB = uid('bob');
        let b = await pool.user(userB, 'Bob');
        await join(b, roomId);
        const acks = [];
        for (const text of ['one', 'two', 'three']) acks.push(await send(a, roomId, text));
        const view = [];
        for (const ack of acks) view.push(await waitFor(b, 'new_message', (m) => m.messageId === ack.messageId));
        b.disconnect();

        await emitAck(a, 'edit_message', { roomId, messageId: acks[0].messageId, message: 'uno' });
        await emitAck(a, 'delete_message', { roomId, messageId: acks[1].messageId });
        await emitAck(a, 'add_reaction', { roomId, messageId: acks[2].messageId, emoji: '🔥' });

        b = await pool.user(userB, 'Bob');
        const changes = [];
        for (const name of ['message_edited', 'message_deleted', 'reaction_updated']) {
          b.on(name, (e) => changes.push([name, e]));
        }
        const { history } = await join(b, roomId, { since: acks[2].messageId });
        assert.deepEqual(history, []);
        await waitFor(b, 'reaction_updated');
        assert.deepEqual(changes.map(([n]) => n), ['message_edited', 'message_deleted', 'reaction_updated']);
        for (const [name, e] of changes) {
          const m = view.find((x) => x.messageId === e.messageId);
          if (name === 'message_edited') Object.assign(m, { message: e.message, editedAt: e.editedAt });
          if (name === 'message_deleted') Object.assign(m, { message: '', deleted: true });
          if (name === 'reaction_updated') m.reactions = [{ emoji: e.emoji, count: e.count, userIds: [e.userId] }];
        }
        for (const m of view) m.reactions ??= [];
        const rest = await api(server, 'GET', `/api/chat/${roomId}/history?limit=50`);
        assert.deepEqual(view, rest.body.messages);
      });
    });
  }
});
