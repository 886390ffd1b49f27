// SPEC 7 with real processes: two instances on one Redis behind a real nginx
// (deploy/nginx.conf), used by polling-only, websocket-only and raw-WebSocket clients, plus
// clients connected straight to each instance (nginx's ip_hash puts every local client on the
// same instance, so the direct ones make sure traffic crosses instances).
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  MODES, startCluster, startNginx, socketPool, uid, waitFor, join, send, rawWs, sortUsers, api,
} from './helpers.mjs';

const POLLING = MODES.find((m) => m.name === 'polling');
const WEBSOCKET = MODES.find((m) => m.name === 'websocket');

let cluster;
let nginx;
before(async () => {
  cluster = await startCluster({ RATE_LIMIT_PER_SEC: '0' });
  nginx = await startNginx([cluster.a, cluster.b]);
});
after(async () => {
  await nginx?.stop();
  await cluster?.stop();
});

describe('two instances behind nginx', () => {
  const viaNginxPolling = socketPool(() => nginx.url, POLLING);
  const viaNginxWs = socketPool(() => nginx.url, WEBSOCKET);
  const directA = socketPool(() => cluster.a.url, WEBSOCKET);
  const directB = socketPool(() => cluster.b.url, POLLING);
  const raws = [];
  afterEach(() => {
    for (const p of [viaNginxPolling, viaNginxWs, directA, directB]) p.finish();
    for (const r of raws.splice(0)) r.close();
  });

  it('/health, /ready (redis up) and REST go through nginx', async () => {
    const health = await api({ url: nginx.url }, 'GET', '/health');
    assert.equal(health.status, 200);
    const ready = await api({ url: nginx.url }, 'GET', '/ready');
    assert.equal(ready.status, 200, ready.text);
    assert.equal(ready.body.dependencies.redis.status, 'up');
  });

  it('polling, websocket and raw-WS clients through nginx chat with clients on both instances', async () => {
    const roomId = uid('nginx');
    const p = await viaNginxPolling.user(uid('poll'), 'Polling');
    const w = await viaNginxWs.user(uid('ws'), 'Websocket');
    const a = await directA.user(uid('da'), 'Direct A');
    const b = await directB.user(uid('db'), 'Direct B');
    const sockets = [p, w, a, b];
    for (const s of sockets) await join(s, roomId);
    const raw = await rawWs({ url: nginx.url }, '/ws');
    raws.push(raw);
    const rawUser = uid('raw');
    await raw.request('authenticate', { userId: rawUser, username: 'Raw' });
    const rawHistory = raw.waitFrame((f) => f.event === 'room_users');
    await raw.request('join_room', { roomId });
    const users = (await rawHistory).data;
    assert.deepEqual(
      sortUsers(users).map((u) => u.userId),
      [...sockets.map((s) => s.userId), rawUser].sort(),
    );
    const rawRoot = await rawWs({ url: nginx.url }, '/');
    raws.push(rawRoot);
    await rawRoot.request('authenticate', { userId: uid('root'), username: 'Root' });
    await rawRoot.request('join_room', { roomId });

    const senders = [...sockets.map((s) => ({ name: s.userId, say: (t) => send(s, roomId, t) })),
      { name: rawUser, say: (t) => raw.request('send_message', { roomId, message: t }) }];
    for (const sender of senders) {
      const text = `hello from ${sender.name}`;
      const waits = [
        ...sockets.map((s) => waitFor(s, 'new_message', (m) => m.message === text)),
        raw.waitFrame((f) => f.event === 'new_message' && f.data.message === text),
        rawRoot.waitFrame((f) => f.event === 'new_message' && f.data.message === text),
      ];
      const ack = await sender.say(text);
      assert.equal(ack.success, true, JSON.stringify(ack));
      await Promise.all(waits);
    }
    const history = await api({ url: nginx.url }, 'GET', `/api/chat/${roomId}/history?limit=100`);
    assert.equal(history.status, 200);
    assert.equal(history.body.messages.length, senders.length);
  });
});
