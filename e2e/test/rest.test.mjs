// REST: /health, /ready, history (+ /chat alias), rooms; AUTH_MODE=none identifies the caller by X-User-Id.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  MODES, startServer, socketPool, uid, emitAck, join, send, api, keysOf, assertMessageShape, assertHistoryItemShape,
  assertFailedAck, expectErrorEvent, connect, waitFor,
} from './helpers.mjs';

let server;
before(async () => { server = await startServer({ AUTH_MODE: 'none', RATE_LIMIT_PER_SEC: '0' }); });
after(async () => { await server?.stop(); });

function assertRestError(r, status, code) {
  assert.equal(r.status, status, `status: ${r.status} ${r.text}`);
  assert.deepEqual(keysOf(r.body), ['error', 'success'], `error body: ${r.text}`);
  assert.equal(r.body.success, false);
  assert.deepEqual(keysOf(r.body.error), ['code', 'message']);
  if (code) assert.equal(r.body.error.code, code, r.text);
  assert.equal(typeof r.body.error.message, 'string');
  assert.ok(r.body.error.message.length > 0);
}

function sameInstant(actual, epochMs) {
  if (typeof actual === 'number') return actual === epochMs;
  return typeof actual === 'string' && Date.parse(actual) === epochMs;
}

const polling = MODES[0];

describe('REST basics', () => {
  it('GET /health -> {"status":"ok","service":"chat-service"}', async () => {
    const r = await api(server, 'GET', '/health');
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type') ?? '', /application\/json/);
    assert.deepEqual(r.body, { status: 'ok', service: 'chat-service' });
  });

  it('GET /ready -> 200 (no dependency configured)', async () => {
    const r = await api(server, 'GET', '/ready');
    assert.equal(r.status, 200, r.text);
  });

  it('serves a machine-readable OpenAPI document of the REST API', async () => {
    let doc;
    for (const p of ['/openapi.json', '/api/openapi.json', '/api-docs/openapi.json', '/api/docs/openapi.json', '/api/chat/openapi.json']) {
      const r = await api(server, 'GET', p);
      if (r.status === 200 && typeof r.body === 'object') { doc = r.body; break; }
    }
    assert.ok(doc, 'an OpenAPI JSON document at one of the usual paths');
    assert.match(String(doc.openapi), /^3\./);
    const paths = Object.keys(doc.paths ?? {});
    assert.ok(paths.some((p) => /history/.test(p)), `history path documented: ${paths}`);
    assert.ok(paths.some((p) => /rooms/.test(p)), `rooms paths documented: ${paths}`);
    assert.ok(paths.includes('/health'), `health documented: ${paths}`);
  });

  it('unknown path -> 404', async () => {
    const r = await api(server, 'GET', '/api/chat/no/such/thing/here');
    assert.equal(r.status, 404);
  });
});

describe('REST history', () => {
  let roomId;
  let acks;
  let writer;
  before(async () => {
    roomId = uid('rest');
    writer = uid('w');
    const s = await connect(server.url, polling);
    try {
      assert.equal((await emitAck(s, 'authenticate', { userId: writer, username: 'Writer' })).success, true);
      await join(s, roomId);
      acks = [];
      for (let i = 0; i < 10; i++) acks.push(await send(s, roomId, `m${i}`));
    } finally {
      s.disconnect();
    }
  });
  const texts = (r) => r.body.messages.map((m) => m.message);

  it('default: {success:true, messages} oldest first with full payloads', async () => {
    const r = await api(server, 'GET', `/api/chat/${roomId}/history`, { user: uid('reader') });
    assert.equal(r.status, 200, r.text);
    assert.match(r.headers.get('content-type') ?? '', /application\/json/);
    assert.deepEqual(keysOf(r.body), ['messages', 'success']);
    assert.equal(r.body.success, true);
    assert.deepEqual(texts(r), ['m0', 'm1', 'm2', 'm3', 'm4', 'm5', 'm6', 'm7', 'm8', 'm9']);
    r.body.messages.forEach((m, i) => {
      assertHistoryItemShape(m);
      assert.deepEqual(m, {
        messageId: acks[i].messageId, roomId, userId: writer, username: 'Writer', message: `m${i}`,
        messageType: 'text', timestamp: acks[i].timestamp, reactions: [],
      });
    });
  });

  it('limit returns the most recent `limit`, oldest first', async () => {
    const r = await api(server, 'GET', `/api/chat/${roomId}/history?limit=3`, { user: writer });
    assert.equal(r.status, 200);
    assert.deepEqual(texts(r), ['m7', 'm8', 'm9']);
    const one = await api(server, 'GET', `/api/chat/${roomId}/history?limit=1`, { user: writer });
    assert.deepEqual(texts(one), ['m9']);
    const max = await api(server, 'GET', `/api/chat/${roomId}/history?limit=1000`, { user: writer });
    assert.equal(max.status, 200);
    assert.equal(max.body.messages.length, 10);
  });

  it('before=<messageId> pages backwards', async () => {
    const r = await api(server, 'GET', `/api/chat/${roomId}/history?limit=3&before=${encodeURIComponent(acks[5].messageId)}`, { user: writer });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(texts(r), ['m2', 'm3', 'm4']);
    const r2 = await api(server, 'GET', `/api/chat/${roomId}/history?before=${encodeURIComponent(acks[5].messageId)}`, { user: writer });
    assert.deepEqual(texts(r2), ['m0', 'm1', 'm2', 'm3', 'm4']);
    const r3 = await api(server, 'GET', `/api/chat/${roomId}/history?limit=5&before=${encodeURIComponent(acks[0].messageId)}`, { user: writer });
    assert.deepEqual(texts(r3), []);
    // walking the pages yields every message exactly once
    const seen = [];
    let cursor = '';
    for (let guard = 0; guard < 10; guard++) {
      const page = await api(server, 'GET', `/api/chat/${roomId}/history?limit=4${cursor}`, { user: writer });
      if (page.body.messages.length === 0) break;
      seen.unshift(...texts(page));
      cursor = `&before=${encodeURIComponent(page.body.messages[0].messageId)}`;
    }
    assert.deepEqual(seen, ['m0', 'm1', 'm2', 'm3', 'm4', 'm5', 'm6', 'm7', 'm8', 'm9']);
  });

  it('/chat/:roomId/history (gateway path, no /api) is the same resource', async () => {
    const a = await api(server, 'GET', `/api/chat/${roomId}/history?limit=4`, { user: writer });
    const b = await api(server, 'GET', `/chat/${roomId}/history?limit=4`, { user: writer });
    assert.equal(b.status, 200, b.text);
    assert.deepEqual(b.body, a.body);
  });

  for (const bad of ['0', '1001', 'abc', '-1', '2.5']) {
    it(`limit=${JSON.stringify(bad)} -> 400 invalid_payload`, async () => {
      for (const prefix of ['/api/chat', '/chat']) {
        const r = await api(server, 'GET', `${prefix}/${roomId}/history?limit=${bad}`, { user: writer });
        assertRestError(r, 400, 'invalid_payload');
      }
    });
  }

  for (const [label, rid] of [['129 characters', 'r'.repeat(129)], ['a space', 'a%20b'], ['a non-ASCII letter', 'r%C3%A4um'], ['a quote', 'a%22b']]) {
    it(`roomId with ${label} -> 400 invalid_payload`, async () => {
      assertRestError(await api(server, 'GET', `/api/chat/${rid}/history`, { user: writer }), 400, 'invalid_payload');
    });
  }

  it('unknown room -> 200 with an empty list', async () => {
    const r = await api(server, 'GET', `/api/chat/${uid('nobody-here')}/history`, { user: writer });
    assert.equal(r.status, 200);
    assert.deepEqual(r.body, { success: true, messages: [] });
  });
});

describe('REST rooms', () => {
  const a = uid('ra');
  const b = uid('rb');
  const c = uid('rc');
  let direct;

  it('POST /api/chat/rooms {type:"direct"} -> 201, again for the same pair -> 200 with the same room', async () => {
    const r = await api(server, 'POST', '/api/chat/rooms', { user: a, username: 'A', body: { type: 'direct', participants: [a, b] } });
    assert.equal(r.status, 201, r.text);
    assert.equal(r.body.success, true);
    const room = r.body.room;
    assert.ok(room && typeof room === 'object');
    for (const k of ['roomId', 'type', 'participants']) assert.ok(k in room, `room.${k} present: ${r.text}`);
    assert.equal(typeof room.roomId, 'string');
    assert.match(room.roomId, /^[A-Za-z0-9_\-:.@]{1,128}$/, 'the generated roomId is itself a valid roomId');
    assert.equal(room.type, 'direct');
    assert.deepEqual([...room.participants].sort(), [a, b].sort());
    direct = room.roomId;

    const again = await api(server, 'POST', '/api/chat/rooms', { user: a, body: { type: 'direct', participants: [a, b] } });
    assert.equal(again.status, 200, again.text);
    assert.equal(again.body.success, true);
    assert.equal(again.body.room.roomId, direct);

    const reversed = await api(server, 'POST', '/api/chat/rooms', { user: b, body: { type: 'direct', participants: [b, a] } });
    assert.equal(reversed.status, 200, reversed.text);
    assert.equal(reversed.body.room.roomId, direct, 'the pair is unordered');
  });

  it('GET /api/chat/rooms/:roomId -> 200 for a participant, 403 for others, 404 unknown', async () => {
    const r = await api(server, 'GET', `/api/chat/rooms/${direct}`, { user: b });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.body.success, true);
    assert.equal(r.body.room.roomId, direct);
    assert.equal(r.body.room.type, 'direct');
    assertRestError(await api(server, 'GET', `/api/chat/rooms/${direct}`, { user: c }), 403, 'forbidden');
    assertRestError(await api(server, 'GET', `/api/chat/rooms/${uid('unknown')}`, { user: a }), 404, 'not_found');
  });

  it('history of a private room: participants only', async () => {
    assert.equal((await api(server, 'GET', `/api/chat/${direct}/history`, { user: a })).status, 200);
    assertRestError(await api(server, 'GET', `/api/chat/${direct}/history`, { user: c }), 403, 'forbidden');
  });

  it('GET /api/chat/rooms lists the caller\'s rooms, most recent message first, with lastMessage', async () => {
    const group = uid('grp');
    const g = await api(server, 'POST', '/api/chat/rooms', { user: a, body: { type: 'group', participants: [a, c], roomId: group } });
    assert.equal(g.status, 201, g.text);
    assert.equal(g.body.room.roomId, group);
    assert.equal(g.body.room.type, 'group');

    const s = await connect(server.url, polling);
    let m1;
    let m2;
    try {
      await emitAck(s, 'authenticate', { userId: a, username: 'A' });
      await join(s, direct);
      await join(s, group);
      m1 = await send(s, direct, 'hello b');
      m2 = await send(s, group, 'hello group');
    } finally {
      s.disconnect();
    }
    const r = await api(server, 'GET', '/api/chat/rooms', { user: a });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.body.success, true);
    assert.ok(Array.isArray(r.body.rooms), `body.rooms is an array: ${r.text}`);
    const ids = r.body.rooms.map((x) => x.roomId);
    assert.ok(ids.includes(direct) && ids.includes(group), r.text);
    assert.ok(ids.indexOf(group) < ids.indexOf(direct), 'most recent first');
    const d = r.body.rooms.find((x) => x.roomId === direct);
    assert.deepEqual(keysOf(d.lastMessage), ['content', 'senderId', 'timestamp']);
    assert.equal(d.lastMessage.content, 'hello b');
    assert.equal(d.lastMessage.senderId, a);
    assert.ok(sameInstant(d.lastMessage.timestamp, m1.timestamp), `lastMessage.timestamp ${d.lastMessage.timestamp} vs ${m1.timestamp}`);
    const gr = r.body.rooms.find((x) => x.roomId === group);
    assert.equal(gr.lastMessage.content, 'hello group');
    assert.ok(sameInstant(gr.lastMessage.timestamp, m2.timestamp));

    // b sees the direct room but not the group; c sees the group but not the direct room
    const rb = await api(server, 'GET', '/api/chat/rooms', { user: b });
    assert.deepEqual(rb.body.rooms.map((x) => x.roomId), [direct]);
    const rc = await api(server, 'GET', '/api/chat/rooms', { user: c });
    assert.deepEqual(rc.body.rooms.map((x) => x.roomId), [group]);
  });

  it('a room first seen through join_room is an open group room listed for its members', async () => {
    const open = uid('open');
    const u = uid('ru');
    const s = await connect(server.url, polling);
    try {
      await emitAck(s, 'authenticate', { userId: u, username: 'U' });
      await join(s, open);
    } finally {
      s.disconnect();
    }
    const r = await api(server, 'GET', '/api/chat/rooms', { user: u });
    assert.equal(r.status, 200);
    const room = r.body.rooms.find((x) => x.roomId === open);
    assert.ok(room, r.text);
    assert.equal(room.type, 'group');
    const info = await api(server, 'GET', `/api/chat/rooms/${open}`, { user: uid('anyone') });
    assert.equal(info.status, 200, 'an open room is not private');
  });

  it('POST /api/chat/rooms refusals', async () => {
    // caller not among the participants
    const notIn = await api(server, 'POST', '/api/chat/rooms', { user: c, body: { type: 'direct', participants: [a, b] } });
    assert.ok(notIn.status === 403 || notIn.status === 400, `caller not a participant: ${notIn.status} ${notIn.text}`);
    assert.equal(notIn.body.success, false);
    // a direct room has exactly two participants
    assertRestError(await api(server, 'POST', '/api/chat/rooms', { user: a, body: { type: 'direct', participants: [a, b, c] } }), 400, 'invalid_payload');
    assertRestError(await api(server, 'POST', '/api/chat/rooms', { user: a, body: { type: 'direct', participants: [a] } }), 400, 'invalid_payload');
    assertRestError(await api(server, 'POST', '/api/chat/rooms', { user: a, body: { type: 'bogus', participants: [a, b] } }), 400, 'invalid_payload');
    assertRestError(await api(server, 'POST', '/api/chat/rooms', { user: a, body: { type: 'group', participants: [a, b], roomId: 'bad room' } }), 400, 'invalid_payload');
    const notJson = await api(server, 'POST', '/api/chat/rooms', { user: a, body: '{not json' });
    assert.equal(notJson.status, 400);
  });

  it('without X-User-Id the caller is unknown -> 401', async () => {
    assertRestError(await api(server, 'GET', '/api/chat/rooms'), 401);
    assertRestError(await api(server, 'POST', '/api/chat/rooms', { body: { type: 'direct', participants: [a, b] } }), 401);
  });
});

for (const mode of MODES) {
  describe(`private rooms over sockets [${mode.name}]`, () => {
    const pool = socketPool(() => server.url, mode);
    afterEach(() => pool.finish());

    it('a non-participant may not join a private room (forbidden); participants may', async () => {
      const p1 = uid('p1');
      const p2 = uid('p2');
      const r = await api(server, 'POST', '/api/chat/rooms', { user: p1, body: { type: 'direct', participants: [p1, p2] } });
      assert.equal(r.status, 201, r.text);
      const roomId = r.body.room.roomId;

      const outsider = await pool.user(uid('outsider'));
      const ack = await emitAck(outsider, 'join_room', { roomId });
      assertFailedAck(ack, 'forbidden');
      await expectErrorEvent(outsider, 'forbidden');
      assertFailedAck(await emitAck(outsider, 'send_message', { roomId, message: 'let me in' }), 'forbidden');
      await expectErrorEvent(outsider, 'forbidden');

      const s1 = await pool.user(p1);
      const s2 = await pool.user(p2);
      await join(s1, roomId);
      await join(s2, roomId);
      const m = await send(s1, roomId, 'private hello');
      const got = await waitFor(s2, 'new_message');
      assert.equal(got.messageId, m.messageId);
      const hist = await api(server, 'GET', `/api/chat/${roomId}/history`, { user: p2 });
      assert.deepEqual(hist.body.messages.map((x) => x.message), ['private hello']);
    });
  });
}
