// Browser test of the client page served at `GET /`: a real Chromium (Debian's, driven by
// playwright-core) against the real chat-service binary.
//
//   cd e2e && npm run test:browser
//   CHAT_BIN=/path/to/chat-service CHROMIUM_PATH=/usr/bin/chromium npm run test:browser
//
// Every wait is a condition (locator.waitFor / page.waitForFunction) bounded by a timeout;
// nothing sleeps for a fixed time.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { chromium } from 'playwright-core';

const E2E_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const CHAT_BIN = path.resolve(E2E_DIR, process.env.CHAT_BIN || '../target/debug/chat-service');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ARTIFACTS = path.resolve(E2E_DIR, '../test-artifacts');
const WAIT = 10_000; // default bound of every wait
const TEST_TIMEOUT = 60_000;

// Server configuration must come from this test only.
const SCRUBBED_ENV = [
  'PORT', 'HOST', 'DATA_DIR', 'NODE_ENV', 'STORAGE', 'MONGODB_URI', 'DATABASE_URL', 'REDIS_HOST',
  'REDIS_PORT', 'REDIS_PASSWORD', 'REDIS_URL', 'RABBITMQ_URL', 'RABBITMQ_QUEUE_NEW_MESSAGE',
  'CORS_ORIGIN', 'MAX_CONNECTIONS_PER_USER', 'MAX_MESSAGE_HISTORY', 'MESSAGE_HISTORY_TTL',
  'MAX_MESSAGE_LENGTH', 'MAX_PAYLOAD_BYTES', 'RATE_LIMIT_PER_SEC', 'RATE_LIMIT_BURST',
  'HISTORY_ON_JOIN', 'AUTH_MODE', 'JWT_SECRET', 'JWT_PUBLIC_KEY', 'JWT_ISSUER', 'JWT_AUDIENCE',
  'AUTH_GRPC_URL', 'RUST_LOG', 'METRICS_TOKEN', 'ADMIN_TOKEN',
];

const RUN = randomBytes(3).toString('hex');
let n = 0;
const uid = (prefix) => `${prefix}-${RUN}-${++n}`;

let server; // {child, url, dataDir, stderr}
let browser;
const contexts = new Set();

function startServer() {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'chat-page-'));
  const env = { ...process.env };
  for (const k of SCRUBBED_ENV) delete env[k];
  Object.assign(env, { PORT: '0', HOST: '127.0.0.1', DATA_DIR: dataDir, RUST_LOG: 'warn' });
  const child = spawn(CHAT_BIN, [], { cwd: dataDir, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const s = { child, dataDir, url: null, stderr: '' };
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => { s.stderr = (s.stderr + d).slice(-20_000); });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error('no "listening on" line within 30 s')), 30_000);
    let out = '';
    function fail(err) {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`${err.message}\n--- server stderr ---\n${s.stderr}`));
    }
    child.on('error', fail);
    child.on('exit', (code, sig) => { if (!s.url) fail(new Error(`server exited (${code ?? sig})`)); });
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d) => {
      if (s.url) return;
      out += d;
      const m = /^listening on (http:\/\/\S+)$/m.exec(out);
      if (m) {
        clearTimeout(timer);
        s.url = m[1];
        resolve(s);
      }
    });
  });
}

async function stopServer(s) {
  if (!s) return;
  if (s.child.exitCode === null && s.child.signalCode === null) {
    const exited = new Promise((r) => s.child.once('exit', r));
    s.child.kill('SIGTERM');
    const t = setTimeout(() => s.child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(t);
  }
  rmSync(s.dataDir, { recursive: true, force: true });
}

before(async () => {
  server = await startServer();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  await browser?.close();
  await stopServer(server);
});

// ------------------------------------------------------------------ page helpers

/** Opens the page in a fresh browser context (own cookies/storage/network), connects, joins. */
async function openChat({ userId, username, roomId }) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
  contexts.add(context);
  context.setDefaultTimeout(WAIT);
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (/Content.Security.Policy/i.test(m.text())) problems.push(`CSP: ${m.text()}`);
  });
  // Every join_room the page sends, over long-polling or WebSocket.
  const joins = [];
  const keep = (data) => { if (typeof data === 'string' && data.includes('"join_room"')) joins.push(data); };
  page.on('request', (r) => { if (r.method() === 'POST' && r.url().includes('/socket.io/')) keep(r.postData()); });
  page.on('websocket', (ws) => ws.on('framesent', (f) => keep(f.payload)));
  await page.goto(server.url + '/');
  await page.locator('#userId').fill(userId);
  await page.locator('#username').fill(username);
  await page.locator('#roomId').fill(roomId);
  await page.getByTestId('connect').click();
  await waitOnline(page);
  return { context, page, problems, joins, userId, username };
}

async function close(...clients) {
  for (const c of clients) {
    assert.deepEqual(c.problems, [], `no script errors or CSP violations on ${c.userId}'s page`);
    contexts.delete(c.context);
    await c.context.close();
  }
}

const waitOnline = (page) => page.locator('#status[data-state="online"]').waitFor();

/** The message elements whose text body is exactly `text`. */
const messagesWithText = (page, text) => page.getByTestId('message')
  .filter({ has: page.locator('.body').getByText(text, { exact: true }) });

async function bodies(page) {
  return page.locator('#messages [data-testid="message"] .body').allTextContents();
}

async function send(page, text) {
  const input = page.getByTestId('message-input');
  await input.fill(text);
  await input.press('Enter');
  await messagesWithText(page, text).first().waitFor(); // the sender gets its own new_message
}

/** Waits until the users list holds exactly these user ids. */
async function waitUsers(page, ids) {
  await page.waitForFunction((want) => {
    const got = [...document.querySelectorAll('#users [data-testid="user"]')]
      .map((li) => li.dataset.userId).sort();
    return JSON.stringify(got) === JSON.stringify([...want].sort());
  }, ids);
}

const waitTyping = (page, text) => page.waitForFunction(
  (t) => document.getElementById('typing').textContent === t, text);

// ------------------------------------------------------------------ scenarios

test('two users chat both ways, see each other and the typing indicator', { timeout: TEST_TIMEOUT }, async () => {
  const roomId = uid('room');
  const alice = await openChat({ userId: uid('alice'), username: 'Alice', roomId });
  const bob = await openChat({ userId: uid('bob'), username: 'Bob', roomId });

  await waitUsers(alice.page, [alice.userId, bob.userId]);
  await waitUsers(bob.page, [alice.userId, bob.userId]);

  // Alice types: Bob sees it; sending clears it.
  await alice.page.getByTestId('message-input').pressSequentially('Hi Bob');
  await waitTyping(bob.page, 'Alice is typing…');
  await alice.page.getByTestId('message-input').press('Enter');
  await waitTyping(bob.page, '');
  await messagesWithText(bob.page, 'Hi Bob').waitFor();
  await messagesWithText(alice.page, 'Hi Bob').waitFor();
  assert.equal(await messagesWithText(alice.page, 'Hi Bob').getAttribute('class'), 'msg msg-text mine');

  // Bob answers.
  await send(bob.page, 'Hello Alice! 👋');
  await messagesWithText(alice.page, 'Hello Alice! 👋').waitFor();
  const author = await messagesWithText(alice.page, 'Hello Alice! 👋').locator('.author').textContent();
  assert.equal(author, 'Bob');
  await send(alice.page, 'Shall we test the reconnect next?');
  await messagesWithText(bob.page, 'Shall we test the reconnect next?').waitFor();

  // Bob types and stops: Alice sees the indicator, then it goes away after 2 s of idle.
  await bob.page.getByTestId('message-input').pressSequentially('Sure, one sec');
  await waitTyping(alice.page, 'Bob is typing…');
  mkdirSync(ARTIFACTS, { recursive: true });
  await alice.page.screenshot({ path: path.join(ARTIFACTS, 'chat-page.png') });
  await waitTyping(alice.page, '');

  assert.deepEqual(await bodies(alice.page), await bodies(bob.page), 'same messages, same order');

  // Bob leaves: Alice's list shrinks.
  await close(bob);
  await waitUsers(alice.page, [alice.userId]);
  await close(alice);
});

test('user text is rendered as text, never as HTML', { timeout: TEST_TIMEOUT }, async () => {
  const roomId = uid('room');
  const payload = '<img src=x onerror="window.__xss=1">';
  // A hostile display name too: it shows in the users list and as the author.
  const mallory = await openChat({ userId: uid('mallory'), username: '<b>Mallory</b>', roomId });
  const victim = await openChat({ userId: uid('victim'), username: 'Victim', roomId });
  await waitUsers(victim.page, [mallory.userId, victim.userId]);

  await send(mallory.page, payload);
  for (const { page } of [mallory, victim]) {
    const msg = messagesWithText(page, payload);
    await msg.waitFor();
    assert.equal(await msg.locator('.body').textContent(), payload);
    assert.equal(await msg.locator('.author').textContent(), '<b>Mallory</b>');
    assert.equal(await page.locator('#messages img').count(), 0, 'no <img> in the message list');
    assert.equal(await page.locator('#messages b, #users b').count(), 0, 'no <b> from the name');
    assert.equal(await page.evaluate(() => window.__xss), undefined);
  }
  assert.ok(await victim.page.locator('#users [data-testid="user"] .name', { hasText: '<b>Mallory</b>' }).count());
  await close(mallory, victim);
});

test('a page that went offline resumes without gaps or duplicates', { timeout: TEST_TIMEOUT }, async () => {
  const roomId = uid('room');
  const carol = await openChat({ userId: uid('carol'), username: 'Carol', roomId });
  const dave = await openChat({ userId: uid('dave'), username: 'Dave', roomId });
  await waitUsers(carol.page, [carol.userId, dave.userId]);
  await send(dave.page, 'before the outage');
  await messagesWithText(carol.page, 'before the outage').waitFor(); // Carol's lastMessageId
  const lastSeen = await messagesWithText(carol.page, 'before the outage').getAttribute('data-message-id');
  assert.equal(carol.joins.length, 1);
  assert.doesNotMatch(carol.joins[0], /"since"/, 'a first join asks for the recent history');

  // Chromium's offline emulation does NOT break an already open WebSocket (checked with
  // Chromium 156: the socket stays open and would only die on a missed ping, 45 s later). It
  // does set navigator.onLine = false and fire the window `offline` event, on which the page
  // (and engine.io-client itself, for hosts other than "localhost") closes its transport at
  // once. While offline the reconnection attempts (long-polling first, the default
  // transports) fail with ERR_INTERNET_DISCONNECTED, so nothing can arrive; back online the
  // page reconnects within its reconnection delay (<= 2 s), authenticates and joins with
  // `since: lastMessageId`. Both steps are awaited as conditions, never as sleeps.
  await carol.context.setOffline(true);
  await carol.page.locator('#status[data-state="reconnecting"]').waitFor();
  assert.equal(await carol.page.getByTestId('message-input').isDisabled(), true);

  const missed = ['missed one', 'missed two', 'missed three'];
  for (const text of missed) await send(dave.page, text);
  for (const text of missed) {
    assert.equal(await messagesWithText(carol.page, text).count(), 0, 'not delivered while offline');
  }

  await carol.context.setOffline(false);
  await waitOnline(carol.page);
  assert.equal(carol.joins.length, 2, 'one re-join after the reconnect');
  assert.match(carol.joins[1], new RegExp(`"since":"${lastSeen}"`), 'the re-join resumes from the last message seen');
  for (const text of missed) await messagesWithText(carol.page, text).first().waitFor();
  // The resume is complete once the join is acknowledged and its history rendered, which is
  // before the status turns online; count now.
  for (const text of missed) {
    assert.equal(await messagesWithText(carol.page, text).count(), 1, `"${text}" exactly once`);
  }
  assert.deepEqual(await bodies(carol.page), ['before the outage', ...missed]);
  assert.deepEqual(await bodies(carol.page), await bodies(dave.page));

  // Live traffic flows again, both ways.
  await send(carol.page, 'back online');
  await messagesWithText(dave.page, 'back online').waitFor();
  await send(dave.page, 'welcome back');
  await messagesWithText(carol.page, 'welcome back').waitFor();
  assert.equal(await carol.page.getByTestId('message').count(), 6);
  const ids = await carol.page.locator('#messages [data-testid="message"]')
    .evaluateAll((els) => els.map((e) => e.dataset.messageId));
  assert.equal(new Set(ids).size, ids.length, 'no duplicate messageId in the list');
  await close(carol, dave);
});

test('a user joining later gets the history, oldest first', { timeout: TEST_TIMEOUT }, async () => {
  const roomId = uid('room');
  const erin = await openChat({ userId: uid('erin'), username: 'Erin', roomId });
  const early = ['first!', 'second', 'third <script>alert(1)</script>'];
  for (const text of early) await send(erin.page, text);

  const frank = await openChat({ userId: uid('frank'), username: 'Frank', roomId });
  await messagesWithText(frank.page, early[2]).waitFor();
  assert.deepEqual(await bodies(frank.page), early);
  await waitUsers(frank.page, [erin.userId, frank.userId]);
  await waitUsers(erin.page, [erin.userId, frank.userId]);
  const authors = await frank.page.locator('#messages [data-testid="message"] .author').allTextContents();
  assert.deepEqual(authors, ['Erin', 'Erin', 'Erin']);
  await close(erin, frank);
});

test('refused events are shown once, with their code, and the page stays usable', { timeout: TEST_TIMEOUT }, async () => {
  const roomId = uid('room');
  const gina = await openChat({ userId: uid('gina'), username: 'Gina', roomId });
  const tooLong = 'x'.repeat(4001); // MAX_MESSAGE_LENGTH defaults to 4000
  const input = gina.page.getByTestId('message-input');
  await input.fill(tooLong);
  await input.press('Enter');
  const error = gina.page.locator('#errors [data-testid="error"][data-code="invalid_payload"]');
  await error.waitFor();
  assert.equal(await input.inputValue(), tooLong, 'the refused text is given back');
  // The server answers a refused event with a failed ack AND an `error` event; once a later
  // message has come back, both have arrived (one connection, in order): one line shown.
  await send(gina.page, 'still works');
  assert.equal(await gina.page.getByTestId('error').count(), 1);
  assert.equal(await gina.page.getByTestId('message').count(), 1);
  await close(gina);
});

// ------------------------------------------------------------------ message lifecycle (SPEC 10)

/** The message element with this id. */
const byId = (page, id) => page.locator(`#messages [data-testid="message"][data-message-id="${id}"]`);
const reaction = (msg, emoji) => msg.locator(`[data-testid="reaction"][data-emoji="${emoji}"]`);

/** Waits until an element's attribute has a value. */
const waitAttr = (locator, name, value) => locator.and(locator.page().locator(`[${name}="${value}"]`)).waitFor();

async function switchRoom(c, roomId) {
  await c.page.getByTestId('connect').click(); // Disconnect
  await c.page.locator('#roomId').fill(roomId);
  await c.page.getByTestId('connect').click();
  await waitOnline(c.page);
}

test('edits, deletes, replies, reactions and read receipts show on the other page', { timeout: TEST_TIMEOUT }, async () => {
  const roomId = uid('room');
  const alice = await openChat({ userId: uid('alice'), username: 'Alice', roomId });
  const bob = await openChat({ userId: uid('bob'), username: 'Bob', roomId });
  await waitUsers(alice.page, [alice.userId, bob.userId]);
  await waitUsers(bob.page, [alice.userId, bob.userId]);

  await send(alice.page, 'first draft');
  const id = await messagesWithText(alice.page, 'first draft').getAttribute('data-message-id');
  await messagesWithText(bob.page, 'first draft').waitFor();
  // Edit and delete only on one's own messages; reply and reactions on every message.
  assert.equal(await byId(bob.page, id).getByTestId('edit').count(), 0);
  assert.equal(await byId(bob.page, id).getByTestId('delete').count(), 0);
  assert.equal(await byId(bob.page, id).getByTestId('reply').count(), 1);
  assert.equal(await byId(alice.page, id).getByTestId('edit').count(), 1);

  // Alice edits (the composer holds the old text); Bob sees the new text, marked edited.
  const edited = 'final <i>text</i>';
  await byId(alice.page, id).getByTestId('edit').click();
  const input = alice.page.getByTestId('message-input');
  assert.equal(await input.inputValue(), 'first draft');
  await alice.page.getByTestId('compose').waitFor();
  await input.fill(edited);
  await input.press('Enter');
  await byId(bob.page, id).locator('.body').getByText(edited, { exact: true }).waitFor();
  await byId(bob.page, id).getByTestId('edited').waitFor();
  await byId(alice.page, id).getByTestId('edited').waitFor();
  assert.equal(await input.inputValue(), '', 'the composer is empty after the edit');
  assert.equal(await alice.page.getByTestId('compose').isHidden(), true);
  assert.equal(await bob.page.locator('#messages i').count(), 0, 'the edited text is not HTML');
  assert.equal(await bob.page.getByTestId('message').count(), 1, 'an edit is not a new message');

  // Bob replies: Alice sees the quote of her message.
  await byId(bob.page, id).getByTestId('reply').click();
  await bob.page.getByTestId('compose').getByText('Replying to Alice', { exact: false }).waitFor();
  await send(bob.page, 'a reply');
  const reply = messagesWithText(alice.page, 'a reply');
  await reply.waitFor();
  assert.equal(await reply.getByTestId('quote').locator('.quote-author').textContent(), 'Alice');
  assert.equal(await reply.getByTestId('quote').locator('.quote-text').textContent(), edited);
  assert.equal(await bob.page.getByTestId('compose').isHidden(), true, 'the reply is sent, the bar gone');

  // Reactions: a click adds, a click on one's own reaction removes it.
  await byId(bob.page, id).locator('[data-testid="quick-react"][data-emoji="👍"]').click();
  await reaction(byId(alice.page, id), '👍').getByText('👍 1').waitFor();
  assert.equal(await reaction(byId(alice.page, id), '👍').getAttribute('aria-pressed'), 'false');
  await waitAttr(reaction(byId(bob.page, id), '👍'), 'aria-pressed', 'true');
  await reaction(byId(alice.page, id), '👍').click(); // Alice joins in
  await reaction(byId(bob.page, id), '👍').getByText('👍 2').waitFor();
  await reaction(byId(bob.page, id), '👍').click(); // Bob takes his back
  await reaction(byId(alice.page, id), '👍').getByText('👍 1').waitFor();
  await waitAttr(reaction(byId(alice.page, id), '👍'), 'aria-pressed', 'true');
  await reaction(byId(bob.page, id), '👍').getByText('👍 1').waitFor();
  assert.equal(await reaction(byId(bob.page, id), '👍').getAttribute('aria-pressed'), 'false');
  await reaction(byId(alice.page, id), '👍').click(); // and Alice hers: the chip goes
  await reaction(byId(bob.page, id), '👍').waitFor({ state: 'detached' });

  // Read receipts: each page marks the newest message read on receipt (it is visible). Bob
  // sees that Alice read his reply, under that message only.
  const replyId = await reply.getAttribute('data-message-id');
  const bobsReceipts = bob.page.getByTestId('receipts');
  await byId(bob.page, replyId).getByTestId('receipts').getByText('read by Alice', { exact: true }).waitFor();
  assert.equal(await bobsReceipts.count(), 1);
  await send(bob.page, 'and another');
  const anotherId = await messagesWithText(bob.page, 'and another').getAttribute('data-message-id');
  await byId(bob.page, anotherId).getByTestId('receipts').getByText('read by Alice').waitFor();
  await byId(bob.page, replyId).getByTestId('receipts').waitFor({ state: 'detached' });
  assert.equal(await bobsReceipts.count(), 1, 'one line per reader: under the newest it read');

  // Alice deletes her message: a tombstone on Bob's page, and the reply quotes the tombstone.
  alice.page.once('dialog', (d) => d.accept());
  await byId(alice.page, id).getByTestId('delete').click();
  await byId(bob.page, id).locator('.body.tombstone').getByText('message deleted', { exact: true }).waitFor();
  await messagesWithText(bob.page, 'a reply').getByTestId('quote').getByText('message deleted').waitFor();
  assert.equal(await byId(bob.page, id).getByText(edited).count(), 0, 'the text is gone');
  assert.equal(await byId(bob.page, id).getByTestId('reply').count(), 0, 'no actions on a tombstone');
  await byId(alice.page, id).locator('.body.tombstone').waitFor();

  // A page that joins now gets the same state from the history.
  const carol = await openChat({ userId: uid('carol'), username: 'Carol', roomId });
  await messagesWithText(carol.page, 'and another').waitFor();
  await byId(carol.page, id).locator('.body.tombstone').waitFor();
  await messagesWithText(carol.page, 'a reply').getByTestId('quote').getByText('message deleted').waitFor();
  await byId(carol.page, anotherId).getByTestId('receipts').getByText('read by Alice').waitFor();
  await close(alice, bob, carol);
});

test('the rooms list shows unread counts, and reading a room clears its count', { timeout: TEST_TIMEOUT }, async () => {
  const main = uid('main');
  const side = uid('side');
  // Alice takes part in `side`, then leaves for `main`; Bob writes in `side` meanwhile.
  const alice = await openChat({ userId: uid('alice'), username: 'Alice', roomId: side });
  const bob = await openChat({ userId: uid('bob'), username: 'Bob', roomId: side });
  await alice.page.locator(`#rooms [data-room-id="${side}"] [aria-current="true"]`).waitFor();
  await switchRoom(alice, main);
  await send(bob.page, 'are you there?');
  await send(bob.page, 'ping');

  const sideRoom = alice.page.locator(`#rooms [data-room-id="${side}"]`);
  // The list is refreshed on events; a window that gets the focus reloads it too.
  await alice.page.evaluate(() => window.dispatchEvent(new Event('focus')));
  await sideRoom.getByTestId('unread').getByText('2', { exact: true }).waitFor();
  await alice.page.locator(`#rooms [data-room-id="${main}"] [aria-current="true"]`).waitFor();
  assert.equal(await alice.page.locator(`#rooms [data-room-id="${main}"]`).getByTestId('unread').count(), 0);

  // Deleting one of them brings the count down (deleted messages are not unread).
  const pingId = await messagesWithText(bob.page, 'ping').getAttribute('data-message-id');
  bob.page.once('dialog', (d) => d.accept());
  await byId(bob.page, pingId).getByTestId('delete').click();
  await byId(bob.page, pingId).locator('.body.tombstone').waitFor();
  await alice.page.evaluate(() => window.dispatchEvent(new Event('focus')));
  await sideRoom.getByTestId('unread').getByText('1', { exact: true }).waitFor();

  // Alice opens `side` from the list: she reads it, the count goes, Bob sees the receipt.
  await sideRoom.locator('button').click();
  await waitOnline(alice.page);
  await messagesWithText(alice.page, 'are you there?').waitFor();
  await sideRoom.locator('[aria-current="true"]').waitFor();
  await waitAttr(sideRoom, 'data-unread', '0');
  // Her marker is the newest message of the room, the tombstone.
  await byId(bob.page, pingId).getByTestId('receipts').getByText('read by Alice').waitFor();
  await close(alice, bob);
});
