// Browser test of the operator's page (`GET /admin`, issue 18.3): two real chat-service
// instances on the local Redis (TEST_REDIS_URL, default 127.0.0.1:6379), socket.io-client
// clients connected to both, and a real Chromium (Debian's, driven by playwright-core) on the
// page of each.
//
//   cd e2e && npm run test:browser
//   CHAT_BIN=/path/to/chat-service CHROMIUM_PATH=/usr/bin/chromium npm run test:browser
//
// Every wait is a condition (page.waitForFunction, locator.waitFor, a socket event) bounded by
// a timeout; nothing sleeps for a fixed time. The instances report every 2 s, so a figure may
// take a few seconds to change on the page: the bound is WAIT.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { chromium } from 'playwright-core';
import {
  E2E_DIR, MODES, REDIS_URL, assertRedisUp, connect, emitAck, join, startServer, uid, waitForDisconnect,
} from '../test/helpers.mjs';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ARTIFACTS = path.resolve(E2E_DIR, '../test-artifacts');
const WAIT = 20_000;
const TEST_TIMEOUT = 90_000;
const TOKEN = `admin-${randomBytes(16).toString('hex')}`;
const WEBSOCKET = MODES.find((m) => m.name === 'websocket');
const POLLING = MODES.find((m) => m.name === 'polling');

let a;
let b;
let browser;
const sockets = new Set();
const contexts = new Set();

before(async () => {
  await assertRedisUp();
  const env = { REDIS_URL, ADMIN_TOKEN: TOKEN };
  [a, b] = await Promise.all([startServer(env, { cluster: false }), startServer(env, { cluster: false })]);
  a.id = await instanceId(a);
  b.id = await instanceId(b);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  for (const s of sockets) s.disconnect();
  for (const c of contexts) await c.close().catch(() => {});
  await browser?.close();
  await Promise.all([a?.stop(), b?.stop()]);
});

// ------------------------------------------------------------------ helpers

/** The instance id of a server: the `instance_id` label of its /metrics (no METRICS_TOKEN). */
async function instanceId(server) {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const m = /instance_id="([^"]+)"/.exec(text);
  assert.ok(m, 'an instance_id label in /metrics');
  return m[1];
}

/** A socket.io-client user on `server` that has joined `roomId`. */
async function member(server, roomId, mode = WEBSOCKET) {
  const userId = uid('admin-user');
  const s = await connect(server.url, mode, { label: userId });
  sockets.add(s);
  const ack = await emitAck(s, 'authenticate', { userId, username: userId });
  assert.equal(ack?.success, true, JSON.stringify(ack));
  await join(s, roomId);
  return s;
}

/** Opens `server`'s /admin in a fresh browser context and submits `token`. */
async function openAdmin(server, token) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
  contexts.add(context);
  context.setDefaultTimeout(WAIT);
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (/Content.Security.Policy/i.test(m.text())) problems.push(`CSP: ${m.text()}`);
  });
  const requests = [];
  page.on('request', (r) => requests.push(r.url()));
  await page.goto(`${server.url}/admin`);
  await page.getByTestId('token').fill(token);
  const first = page.waitForResponse((r) => new URL(r.url()).pathname === '/admin/api/stats');
  await page.getByTestId('open').click();
  return { context, page, problems, requests, first: await first };
}

async function close(client, server) {
  assert.deepEqual(client.problems, [], 'no script errors or CSP violations');
  const foreign = client.requests.filter((u) => !u.startsWith(`${server.url}/`));
  assert.deepEqual(foreign, [], 'everything comes from the instance itself (no CDN)');
  contexts.delete(client.context);
  await client.context.close();
}

/** Waits until the card of instance `id` shows `text` for figure `name`. */
function waitFigure(page, id, name, text) {
  return page.waitForFunction(([id, name, text]) => {
    const card = [...document.querySelectorAll('[data-testid="instance"]')]
      .find((c) => c.dataset.instanceId === id);
    return card?.querySelector(`[data-testid="figure-${name}"]`)?.textContent === text;
  }, [id, name, text], { timeout: WAIT });
}

/** Waits until the biggest-rooms table lists `roomId` with `members`. */
function waitRoom(page, roomId, members) {
  return page.waitForFunction(([roomId, members]) => {
    const row = [...document.querySelectorAll('#rooms [data-testid="room"]')]
      .find((r) => r.dataset.roomId === roomId);
    return row?.querySelector('[data-testid="room-members"]')?.textContent === members;
  }, [roomId, members], { timeout: WAIT });
}

// ------------------------------------------------------------------ scenarios

test('the page of either instance shows both instances, live', { timeout: TEST_TIMEOUT }, async () => {
  const roomId = uid('admin-room');
  await member(a, roomId);
  await member(a, roomId, POLLING);
  await member(b, roomId);
  await member(b, roomId);
  const leaving = await member(b, roomId);

  const onA = await openAdmin(a, TOKEN);
  assert.equal(onA.first.status(), 200);
  await waitFigure(onA.page, a.id, 'connections', '2');
  await waitFigure(onA.page, b.id, 'connections', '3');
  await waitFigure(onA.page, a.id, 'users', '2');
  await waitFigure(onA.page, b.id, 'users', '3');
  await waitFigure(onA.page, b.id, 'rooms', '1');
  await waitRoom(onA.page, roomId, '5');
  // This instance comes first and says so; every card shows its dependencies.
  const first = onA.page.locator('[data-testid="instance"]').first();
  assert.equal(await first.getAttribute('data-instance-id'), a.id);
  assert.match(await first.textContent(), /this instance/);
  assert.match(await first.locator('[data-testid="figure-connections"] + .detail').textContent(),
    /socketio 1 · polling 1 · raw 0/);
  const card = onA.page.locator(`[data-testid="instance"][data-instance-id="${b.id}"]`);
  assert.deepEqual(
    await card.locator('[data-testid="dependency"]').evaluateAll((els) => els.map((e) => e.dataset.name)),
    ['store', 'redis'],
  );
  assert.match(await card.getByTestId('outbox').textContent(), /no broker/);
  assert.ok(await card.locator('svg.spark polyline').count() >= 5, 'a chart per figure');
  assert.equal(await onA.page.getByTestId('answered-by').textContent(), a.id);

  // The other instance's page shows the same fleet from its side.
  const onB = await openAdmin(b, TOKEN);
  await waitFigure(onB.page, a.id, 'connections', '2');
  await waitFigure(onB.page, b.id, 'connections', '3');
  assert.equal(await onB.page.locator('[data-testid="instance"]').first().getAttribute('data-instance-id'), b.id);

  // Live: a client of B leaves; both pages follow without a reload.
  leaving.disconnect();
  await waitForDisconnect(leaving);
  for (const { page } of [onA, onB]) {
    await waitFigure(page, b.id, 'connections', '2');
    await waitRoom(page, roomId, '4');
  }
  mkdirSync(ARTIFACTS, { recursive: true });
  await onA.page.screenshot({ path: path.join(ARTIFACTS, 'admin-page.png'), fullPage: true });
  await close(onA, a);
  await close(onB, b);
});

test('a wrong token gets 401 and the page asks again', { timeout: TEST_TIMEOUT }, async () => {
  const client = await openAdmin(a, `wrong-${TOKEN}`);
  assert.equal(client.first.status(), 401);
  const body = await client.first.json();
  assert.equal(body.success, false);
  assert.equal(body.error.code, 'auth_failed');
  const error = client.page.getByTestId('login-error');
  await error.waitFor();
  assert.match(await error.textContent(), /^401 Unauthorized \(auth_failed\)/);
  assert.equal(await client.page.getByTestId('status').getAttribute('data-state'), 'refused');
  assert.equal(await client.page.getByTestId('dashboard').isHidden(), true, 'no figures shown');
  assert.equal(await client.page.evaluate(() => sessionStorage.length), 0, 'the wrong token is forgotten');

  // The right token opens it, in the same tab.
  await client.page.getByTestId('token').fill(TOKEN);
  await client.page.getByTestId('open').click();
  await client.page.locator(`[data-testid="instance"][data-instance-id="${a.id}"]`).waitFor();
  assert.equal(await error.isHidden(), true);
  await close(client, a);

  // Without the page: the API itself refuses a missing or wrong token.
  for (const headers of [{}, { Authorization: 'Bearer nope' }]) {
    const res = await fetch(`${a.url}/admin/api/stats`, { headers });
    assert.equal(res.status, 401);
    assert.equal((await res.json()).error.code, 'auth_failed');
  }
});
