// Shared helpers for the chat-service end-to-end tests.
//
// Nothing in here sleeps to wait for something: every wait is driven by an
// event (process output, socket event, ack) and bounded by a timeout.

import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createHmac, randomBytes } from 'node:crypto';
import http from 'node:http';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const E2E_DIR = path.resolve(HERE, '..');
export const CHAT_BIN = process.env.CHAT_BIN
  ? path.resolve(E2E_DIR, process.env.CHAT_BIN)
  : path.resolve(E2E_DIR, '../target/debug/chat-service');

export const DEFAULT_TIMEOUT = 5000;
const START_TIMEOUT = 30000;
const STOP_TIMEOUT = 15000;

// E2E_CLUSTER=1: every startServer() also starts a peer instance on the shared Redis
// (TEST_REDIS_URL, default the local one), and socketPool() alternates its sockets between the
// two, so the whole suite runs across two instances (SPEC 7).
export const CLUSTER = process.env.E2E_CLUSTER === '1';
const PEERS = new Map();

// E2E_STORAGE=postgres|mongodb: every server whose test does not pick a store itself runs on
// that backend (PostgreSQL: POSTGRES_TEST_URL, default the local `test` database; MongoDB: a
// database of its own on MONGODB_TEST_URI, default the local server or stand-in), so the same
// tests show the acceptance behaviour on each backend (issue 6). A cluster peer and a restart
// keep the same database. Default: the embedded store.
export const STORAGE = process.env.E2E_STORAGE || 'embedded';

function mongoUriWithDb(base, db) {
  const [rest, query] = base.split('?');
  const hostsEnd = rest.indexOf('/', rest.indexOf('://') + 3);
  const hosts = hostsEnd === -1 ? rest : rest.slice(0, hostsEnd);
  return `${hosts}/${db}${query ? `?${query}` : ''}`;
}

const pgSchemas = new Set();
process.on('exit', () => {
  if (pgSchemas.size === 0) return;
  const url = process.env.POSTGRES_TEST_URL || 'postgres://postgres@127.0.0.1:5432/test';
  const drops = [...pgSchemas].map((s) => `DROP SCHEMA IF EXISTS "${s}" CASCADE;`).join(' ');
  try { execFileSync('psql', [url, '-qc', drops], { stdio: 'ignore' }); } catch { /* best effort */ }
});

function withStorage(env) {
  if (STORAGE === 'embedded' || 'STORAGE' in env || 'MONGODB_URI' in env || 'DATABASE_URL' in env) return env;
  if (STORAGE === 'postgres') {
    // A schema of its own (made with psql, dropped at exit), so fixed ids such as the README's
    // room-123 start empty on every run.
    const url = process.env.POSTGRES_TEST_URL || 'postgres://postgres@127.0.0.1:5432/test';
    const schema = uid('e2e').replace(/-/g, '_');
    execFileSync('psql', [url, '-qc', `CREATE SCHEMA "${schema}"`]);
    pgSchemas.add(schema);
    const sep = url.includes('?') ? '&' : '?';
    return { STORAGE: 'postgres', DATABASE_URL: `${url}${sep}options=-c%20search_path%3D${schema}`, ...env };
  }
  if (STORAGE === 'mongodb') {
    const base = process.env.MONGODB_TEST_URI || 'mongodb://127.0.0.1:27017';
    return { STORAGE: 'mongodb', MONGODB_URI: mongoUriWithDb(base, uid('e2e').replace(/-/g, '_')), ...env };
  }
  throw new Error(`E2E_STORAGE=${STORAGE}: expected embedded, postgres or mongodb`);
}

/**
 * The environment of a store every instance shares: the E2E_STORAGE one, or PostgreSQL when
 * the suite runs on the embedded store. The message lifecycle (SPEC 10) changes messages in
 * the store that holds them, so across two instances it needs a shared store (an embedded
 * store is private to its instance; docs/ARCHITECTURE.md).
 */
export function sharedStoreEnv() {
  const saved = STORAGE;
  if (saved !== 'embedded') return withStorage({});
  const url = process.env.POSTGRES_TEST_URL || 'postgres://postgres@127.0.0.1:5432/test';
  const schema = uid('e2e').replace(/-/g, '_');
  execFileSync('psql', [url, '-qc', `CREATE SCHEMA "${schema}"`]);
  pgSchemas.add(schema);
  const sep = url.includes('?') ? '&' : '?';
  return { STORAGE: 'postgres', DATABASE_URL: `${url}${sep}options=-c%20search_path%3D${schema}` };
}

// The three ways a socket.io-client can talk to the server.
export const MODES = [
  { name: 'polling', transports: ['polling'] },
  { name: 'websocket', transports: ['websocket'] },
  { name: 'upgrade', transports: ['polling', 'websocket'] },
];

// Configuration that must not leak from the developer's / CI's environment
// into the server under test (each test decides its own configuration).
const SCRUBBED_ENV = [
  'PORT', 'HOST', 'DATA_DIR', 'NODE_ENV', 'STORAGE', 'MONGODB_URI', 'DATABASE_URL',
  'REDIS_HOST', 'REDIS_PORT', 'REDIS_PASSWORD', 'REDIS_URL', 'RABBITMQ_URL',
  'RABBITMQ_QUEUE_NEW_MESSAGE', 'CORS_ORIGIN', 'MAX_CONNECTIONS_PER_USER', 'MAX_MESSAGE_HISTORY',
  'MESSAGE_HISTORY_TTL', 'MAX_MESSAGE_LENGTH', 'MAX_PAYLOAD_BYTES', 'RATE_LIMIT_PER_SEC',
  'RATE_LIMIT_BURST', 'HISTORY_ON_JOIN', 'AUTH_MODE', 'JWT_SECRET', 'JWT_PUBLIC_KEY',
  'JWT_ISSUER', 'JWT_AUDIENCE', 'AUTH_GRPC_URL', 'RUST_LOG', 'SHUTDOWN_TIMEOUT_SECS',
  'METRICS_TOKEN', 'ADMIN_TOKEN',
];

// ---------------------------------------------------------------------------
// ids

let counter = 0;
const RUN = randomBytes(3).toString('hex');
/** A unique id made only of characters valid in a roomId / userId. */
export function uid(prefix = 'id') {
  counter += 1;
  return `${prefix}-${RUN}-${process.pid}-${counter}`;
}

// ---------------------------------------------------------------------------
// server process

const liveChildren = new Set();
const dataDirs = new Set();
process.on('exit', () => {
  for (const child of liveChildren) {
    try { child.kill('SIGKILL'); } catch { /* already gone */ }
  }
  for (const dir of dataDirs) {
    try { rmSync(dir, { recursive: true, force: true }); } catch { /* ignore */ }
  }
});

function childEnvFor(env, dataDir) {
  const childEnv = { ...process.env };
  for (const k of SCRUBBED_ENV) delete childEnv[k];
  return {
    ...childEnv,
    PORT: '0',
    HOST: '127.0.0.1',
    DATA_DIR: dataDir,
    RUST_LOG: 'warn',
    ...env,
  };
}

function launch(env, dataDir, args = []) {
  return new Promise((resolve, reject) => {
    const childEnv = childEnvFor(env, dataDir);
    // cwd = the data dir, so that no stray .env file is picked up.
    const proc = spawn(CHAT_BIN, args, { env: childEnv, cwd: dataDir, stdio: ['ignore', 'pipe', 'pipe'] });
    liveChildren.add(proc);
    let stdout = '';
    let stderr = '';
    let settled = false;
    const exited = new Promise((res) => {
      proc.once('exit', (code, signal) => {
        liveChildren.delete(proc);
        res({ code, signal });
      });
    });
    const fail = (msg) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      try { proc.kill('SIGKILL'); } catch { /* ignore */ }
      reject(new Error(`${msg}\n--- stdout ---\n${stdout}\n--- stderr (tail) ---\n${stderr.slice(-4000)}`));
    };
    const timer = setTimeout(() => fail(`server did not print "listening on" within ${START_TIMEOUT} ms`), START_TIMEOUT);
    proc.stdout.setEncoding('utf8');
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (d) => {
      stderr += d;
      if (stderr.length > 200000) stderr = stderr.slice(-100000);
    });
    proc.stdout.on('data', (d) => {
      stdout += d;
      if (settled) return;
      const m = /^listening on http:\/\/127\.0\.0\.1:(\d+)\r?$/m.exec(stdout);
      if (m) {
        settled = true;
        clearTimeout(timer);
        const port = Number(m[1]);
        resolve({ proc, port, exited, stderr: () => stderr, stdout: () => stdout });
      }
    });
    proc.once('error', (e) => fail(`could not spawn ${CHAT_BIN}: ${e.message}`));
    exited.then(({ code, signal }) => fail(`server exited before it was ready (code ${code}, signal ${signal})`));
  });
}

/**
 * Start the chat-service binary on a random port with a fresh DATA_DIR.
 * Resolves with {url, port, dataDir, proc, env, stop(), restart(), stderr()}.
 * restart() keeps DATA_DIR (and env); the port may change, url/port/proc are updated in place.
 */
export async function startServer(env = {}, { args = [], dotenv, cluster = CLUSTER } = {}) {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'chat-e2e-'));
  dataDirs.add(dataDir);
  env = withStorage(env);
  if (dotenv !== undefined) writeFileSync(path.join(dataDir, '.env'), dotenv);
  if (cluster) {
    await assertRedisUp();
    env = { REDIS_URL, ...env };
  }
  const server = { dataDir, env: { ...env }, args };
  // Cluster mode: a second instance on the same Redis; socketPool() spreads sockets over both.
  const peer = cluster ? await startServer(env, { args, dotenv, cluster: false }) : undefined;
  server.peer = peer;
  let current;
  const attach = (c) => {
    current = c;
    if (server.url) PEERS.delete(server.url);
    server.proc = c.proc;
    server.port = c.port;
    server.url = `http://127.0.0.1:${c.port}`;
    if (peer) PEERS.set(server.url, peer);
  };
  attach(await launch(server.env, dataDir, server.args));
  server.stderr = () => current.stderr();
  const stopSelf = async () => {
    const c = current;
    if (c.proc.exitCode !== null || c.proc.signalCode !== null) return c.exited;
    c.proc.kill('SIGTERM');
    let timer;
    const timeout = new Promise((_, rej) => {
      timer = setTimeout(() => rej(new Error(`server did not exit within ${STOP_TIMEOUT} ms of SIGTERM`)), STOP_TIMEOUT);
    });
    try {
      return await Promise.race([c.exited, timeout]);
    } catch (e) {
      c.proc.kill('SIGKILL');
      await c.exited;
      throw e;
    } finally {
      clearTimeout(timer);
    }
  };
  server.stop = async () => {
    await peer?.stop();
    return stopSelf();
  };
  // Restarts this instance only (its peer keeps running, as in a rolling restart).
  server.restart = async () => {
    await stopSelf();
    attach(await launch(server.env, dataDir, server.args));
    // A peer stopped by server.stop() comes back too.
    if (peer && (peer.proc.exitCode !== null || peer.proc.signalCode !== null)) await peer.restart();
    return server;
  };
  return server;
}

/**
 * Run the binary with a configuration that must NOT start: resolves {code, signal, stdout, stderr}
 * once it exits (rejects if it prints "listening on" or does not exit within `timeout`).
 */
export function runExpectingExit(env = {}, { args = [], timeout = 15000 } = {}) {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'chat-e2e-'));
  dataDirs.add(dataDir);
  return new Promise((resolve, reject) => {
    const proc = spawn(CHAT_BIN, args, { env: childEnvFor(env, dataDir), cwd: dataDir, stdio: ['ignore', 'pipe', 'pipe'] });
    liveChildren.add(proc);
    let stdout = '';
    let stderr = '';
    proc.stdout.setEncoding('utf8');
    proc.stderr.setEncoding('utf8');
    proc.stdout.on('data', (d) => {
      stdout += d;
      if (/listening on/.test(stdout)) { proc.kill('SIGKILL'); reject(new Error(`server started although it should have refused: ${stdout}`)); }
    });
    proc.stderr.on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error(`server did not exit within ${timeout} ms`)); }, timeout);
    proc.once('error', (e) => { clearTimeout(timer); reject(e); });
    proc.once('close', (code, signal) => { // 'close': after the process exited AND its pipes drained
      liveChildren.delete(proc);
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

// ---------------------------------------------------------------------------
// generic waiting

export function withTimeout(promise, ms, what) {
  let timer;
  const t = new Promise((_, rej) => {
    timer = setTimeout(() => rej(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

// ---------------------------------------------------------------------------
// socket.io clients

/**
 * Every server->client event of a socket is recorded in socket.__log, from the
 * moment the socket is created, as {seq, event, data, args, consumed}.
 * waitFor() consumes the first not yet consumed matching entry (waiting for it
 * if it has not arrived yet), so two successive waitFor(s, 'new_message') calls
 * yield two successive messages, and nothing that arrived early is lost.
 */
function instrument(socket) {
  socket.__log = [];
  socket.__waiters = [];
  socket.__seq = 0;
  socket.onAny((event, ...args) => {
    const entry = { seq: ++socket.__seq, event, data: args[0], args, consumed: false };
    socket.__log.push(entry);
    for (const w of [...socket.__waiters]) {
      if (!entry.consumed && w.event === event && w.predicate(entry.data, entry)) {
        entry.consumed = true;
        socket.__waiters.splice(socket.__waiters.indexOf(w), 1);
        w.resolve(entry);
      }
    }
  });
  socket.__disconnected = new Promise((res) => socket.once('disconnect', (reason, details) => res({ reason, details })));
  socket.__disconnected.catch(() => {});
  return socket;
}

/** Like waitFor, but resolves with the whole log entry ({seq, event, data, args}). */
export function waitForEntry(socket, event, predicate = () => true, timeout = DEFAULT_TIMEOUT) {
  const found = socket.__log.find((e) => !e.consumed && e.event === event && predicate(e.data, e));
  if (found) {
    found.consumed = true;
    return Promise.resolve(found);
  }
  let waiter;
  const p = new Promise((resolve) => {
    waiter = { event, predicate, resolve };
    socket.__waiters.push(waiter);
  });
  const r = withTimeout(p, timeout, `event "${event}"${predicate.name ? ` (${predicate.name})` : ''} on socket ${socket.__label ?? socket.id}`)
    .finally(() => {
      const i = socket.__waiters.indexOf(waiter);
      if (i >= 0) socket.__waiters.splice(i, 1);
    });
  r.catch(() => {}); // handled by whoever awaits it; avoid unhandled-rejection noise
  return r;
}

/** Wait (event-driven, with a timeout) for the next not-yet-consumed `event` matching `predicate`; resolves with its payload. */
export async function waitFor(socket, event, predicate = () => true, timeout = DEFAULT_TIMEOUT) {
  const entry = await waitForEntry(socket, event, predicate, timeout);
  return entry.data;
}

/** All recorded payloads of `event` (consumed or not) received before log sequence `beforeSeq` (default: all). */
export function received(socket, event, { beforeSeq = Infinity, predicate = () => true } = {}) {
  return socket.__log.filter((e) => e.event === event && e.seq < beforeSeq && predicate(e.data)).map((e) => e.data);
}

/** Wait for the server to disconnect this socket; resolves {reason, details}. */
export function waitForDisconnect(socket, timeout = DEFAULT_TIMEOUT) {
  return withTimeout(socket.__disconnected, timeout, `disconnect of ${socket.__label ?? socket.id}`);
}

/** emit with an ack and a 5 s timeout; resolves with the ack payload. */
export function emitAck(socket, event, ...data) {
  return socket.timeout(DEFAULT_TIMEOUT).emitWithAck(event, ...data);
}

/**
 * Create a socket.io-client socket for `mode` ({transports}) and wait for `connect`.
 * opts are passed to io() (e.g. {auth:{token}}). opts.label names it in timeout messages.
 * With opts.autoConnect === false the socket is returned unconnected (instrumented).
 */
export async function connect(url, mode, opts = {}) {
  const { label, ...ioOpts } = opts;
  const socket = io(url, {
    transports: mode.transports,
    forceNew: true,
    reconnection: false,
    timeout: DEFAULT_TIMEOUT,
    ...ioOpts,
  });
  socket.__label = label;
  socket.__mode = mode;
  instrument(socket);
  const hookUpgrade = () => {
    socket.__upgraded = new Promise((res) => socket.io.engine.once('upgrade', (t) => res(t.name)));
    socket.__upgraded.catch(() => {});
  };
  if (ioOpts.autoConnect === false) {
    socket.__hookUpgrade = hookUpgrade;
    return socket;
  }
  hookUpgrade();
  await waitConnected(socket);
  return socket;
}

/** connect() an autoConnect:false socket and wait for `connect`. */
export async function openSocket(socket) {
  socket.connect();
  if (socket.__hookUpgrade) socket.__hookUpgrade();
  await waitConnected(socket);
  return socket;
}

function waitConnected(socket) {
  if (socket.connected) return Promise.resolve();
  return withTimeout(new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('connect_error', (err) => reject(new Error(`connect_error: ${err.message}`)));
  }), DEFAULT_TIMEOUT, `connect of ${socket.__label ?? 'socket'}`);
}

/** In upgrade mode: wait for the engine `upgrade` event and check the transport is now websocket. */
export async function assertUpgraded(socket, timeout = DEFAULT_TIMEOUT) {
  const name = await withTimeout(socket.__upgraded, timeout, `transport upgrade of ${socket.__label ?? socket.id}`);
  assert.equal(name, 'websocket');
  assert.equal(socket.io.engine.transport.name, 'websocket');
}

/**
 * A pool of sockets for one describe(): `pool.connect(...)` tracks sockets,
 * `pool.finish()` (call it from afterEach) asserts that, in upgrade mode, every
 * still-connected socket has upgraded to websocket, then closes them all.
 */
export function socketPool(getUrl, mode) {
  let sockets = [];
  let n = 0;
  return {
    async connect(opts = {}) {
      // Cluster mode: every second socket goes to the server's peer instance.
      let url = getUrl();
      const peer = PEERS.get(url);
      if (peer && n++ % 2 === 1) url = peer.url;
      const s = await connect(url, mode, opts);
      sockets.push(s);
      return s;
    },
    /** connect + authenticate; resolves with the socket (s.userId/s.username set). */
    async user(userId = uid('u'), username = `name-${userId}`, opts = {}) {
      const s = await this.connect({ label: userId, ...opts });
      const ack = await emitAck(s, 'authenticate', { userId, username });
      assert.equal(ack?.success, true, `authenticate failed: ${JSON.stringify(ack)}`);
      s.userId = userId;
      s.username = username;
      return s;
    },
    track(s) { sockets.push(s); return s; },
    async finish() {
      const list = sockets;
      sockets = [];
      try {
        if (mode.name === 'upgrade') {
          for (const s of list) {
            if (s.connected && s.__upgraded) await assertUpgraded(s);
          }
        }
      } finally {
        for (const s of list) s.disconnect();
      }
    },
  };
}

// ---------------------------------------------------------------------------
// payload shape assertions

export function keysOf(obj) {
  assert.ok(obj !== null && typeof obj === 'object' && !Array.isArray(obj), `expected an object, got ${JSON.stringify(obj)}`);
  return Object.keys(obj).sort();
}

export const MESSAGE_KEYS = ['message', 'messageId', 'messageType', 'roomId', 'timestamp', 'userId', 'username'];

/** Assert a new_message / history entry has exactly the contract's fields with the right types. */
export function assertMessageShape(m, expected = {}) {
  assert.deepEqual(keysOf(m), MESSAGE_KEYS, `message keys: ${JSON.stringify(m)}`);
  assert.equal(typeof m.messageId, 'string');
  assert.ok(m.messageId.length > 0);
  assert.ok(Number.isInteger(m.timestamp), `timestamp must be an integer: ${m.timestamp}`);
  assert.ok(m.timestamp > 1.6e12 && m.timestamp < Date.now() + 60000, `timestamp plausible epoch ms: ${m.timestamp}`);
  for (const [k, v] of Object.entries(expected)) assert.deepEqual(m[k], v, `message.${k}`);
}

/**
 * A message_history / REST history item: the new_message fields plus `reactions` (SPEC 10;
 * `replyTo`, `editedAt` and `deleted` only when they apply).
 */
export function assertHistoryItemShape(m, expected = {}) {
  const { reactions, ...rest } = m;
  assert.ok(Array.isArray(reactions), `history item reactions: ${JSON.stringify(m)}`);
  assertMessageShape(rest, expected);
}

/** A refused event: failed ack {success:false, error:{code,message}} with the given code. */
export function assertFailedAck(ack, code) {
  assert.deepEqual(keysOf(ack), ['error', 'success'], `failed ack shape: ${JSON.stringify(ack)}`);
  assert.equal(ack.success, false);
  assert.deepEqual(keysOf(ack.error), ['code', 'message']);
  assert.equal(ack.error.code, code, `ack error code: ${JSON.stringify(ack)}`);
  assert.equal(typeof ack.error.message, 'string');
  assert.ok(ack.error.message.length > 0);
}

/** Wait for an `error` event with the given code and check its shape. */
export async function expectErrorEvent(socket, code, timeout = DEFAULT_TIMEOUT) {
  const e = await waitFor(socket, 'error', () => true, timeout);
  assert.deepEqual(keysOf(e), ['code', 'message'], `error event shape: ${JSON.stringify(e)}`);
  assert.equal(e.code, code, `error event code: ${JSON.stringify(e)}`);
  assert.equal(typeof e.message, 'string');
  assert.ok(e.message.length > 0);
  return e;
}

export function sortUsers(users) {
  return [...users].sort((a, b) => (a.userId < b.userId ? -1 : a.userId > b.userId ? 1 : 0));
}

// ---------------------------------------------------------------------------
// room helpers

/** join_room and collect the joiner's message_history + room_users. */
export async function join(socket, roomId, extra = {}) {
  const history = waitFor(socket, 'message_history');
  const users = waitFor(socket, 'room_users');
  const ack = await emitAck(socket, 'join_room', { roomId, ...extra });
  assert.deepEqual(ack, { success: true, roomId }, `join_room ack: ${JSON.stringify(ack)}`);
  return { ack, history: await history, users: await users };
}

/** send_message and check the ack; resolves with the ack. */
export async function send(socket, roomId, message, extra = {}) {
  const ack = await emitAck(socket, 'send_message', { roomId, message, ...extra });
  assert.equal(ack?.success, true, `send_message ack: ${JSON.stringify(ack)}`);
  assert.deepEqual(keysOf(ack), ['messageId', 'success', 'timestamp']);
  return ack;
}

// ---------------------------------------------------------------------------
// REST

/**
 * Plain fetch against the server. opts: {user, username, token, body, headers}.
 * Resolves {status, headers, body} where body is parsed JSON when possible.
 */
export async function api(server, method, urlPath, opts = {}) {
  const headers = { ...(opts.headers ?? {}) };
  if (opts.user) headers['X-User-Id'] = opts.user;
  if (opts.username) headers['X-Username'] = opts.username;
  if (opts.token) headers.Authorization = `Bearer ${opts.token}`;
  let body;
  if (opts.body !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body);
  }
  const res = await fetch(server.url + urlPath, { method, headers, body, signal: AbortSignal.timeout(DEFAULT_TIMEOUT) });
  const text = await res.text();
  let parsed = text;
  try { parsed = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, headers: res.headers, body: parsed, text };
}

/** Raw node:http GET/OPTIONS with arbitrary headers (fetch may refuse e.g. Origin). */
export function rawRequest(server, method, urlPath, headers = {}) {
  return withTimeout(new Promise((resolve, reject) => {
    const req = http.request(server.url + urlPath, { method, headers }, (res) => {
      let data = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { data += d; });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: data }));
    });
    req.on('error', reject);
    req.end();
  }), DEFAULT_TIMEOUT, `${method} ${urlPath}`);
}

// ---------------------------------------------------------------------------
// JWT (HS256), signed with node:crypto

const b64url = (buf) => Buffer.from(buf).toString('base64url');

export function signJwt(payload, secret, { alg = 'HS256', header = {} } = {}) {
  const h = b64url(JSON.stringify({ alg, typ: 'JWT', ...header }));
  const p = b64url(JSON.stringify(payload));
  if (alg === 'none') return `${h}.${p}.`;
  const sig = createHmac('sha256', secret).update(`${h}.${p}`).digest();
  return `${h}.${p}.${b64url(sig)}`;
}

export const nowSec = () => Math.floor(Date.now() / 1000);

// ---------------------------------------------------------------------------
// Plain WebSocket client (RFC 6455, text frames only) on node:http, for the
// raw JSON-frame transport ({"event","data","id"?}). No npm dependency.

/**
 * Open a plain WebSocket to server path (default "/").
 * Resolves {send(event, data), request(event, data) -> ack data, waitFor(event, pred), log, close(), closed}.
 */
export function rawWs(server, wsPath = '/') {
  return withTimeout(new Promise((resolve, reject) => {
    const key = randomBytes(16).toString('base64');
    const req = http.request(server.url + wsPath, {
      headers: {
        Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Version': '13', 'Sec-WebSocket-Key': key,
      },
    });
    req.on('response', (res) => reject(new Error(`no upgrade on ${wsPath}: HTTP ${res.statusCode}`)));
    req.on('error', reject);
    req.on('upgrade', (res, sock, head) => {
      const log = [];
      const waiters = [];
      let buf = head;
      let fragments = [];
      let nextId = 1;
      let closedResolve;
      const closed = new Promise((r) => { closedResolve = r; });
      const deliver = (text) => {
        let frame;
        try { frame = JSON.parse(text); } catch { frame = { event: '__non_json__', data: text }; }
        const entry = { frame, consumed: false };
        log.push(entry);
        for (const w of [...waiters]) {
          if (!entry.consumed && w.match(frame)) {
            entry.consumed = true;
            waiters.splice(waiters.indexOf(w), 1);
            w.resolve(frame);
          }
        }
      };
      const writeFrame = (opcode, payload) => {
        const data = Buffer.from(payload);
        const mask = randomBytes(4);
        let header;
        if (data.length < 126) {
          header = Buffer.from([0x80 | opcode, 0x80 | data.length]);
        } else if (data.length < 65536) {
          header = Buffer.alloc(4);
          header[0] = 0x80 | opcode; header[1] = 0x80 | 126; header.writeUInt16BE(data.length, 2);
        } else {
          header = Buffer.alloc(10);
          header[0] = 0x80 | opcode; header[1] = 0x80 | 127; header.writeBigUInt64BE(BigInt(data.length), 2);
        }
        const masked = Buffer.alloc(data.length);
        for (let i = 0; i < data.length; i++) masked[i] = data[i] ^ mask[i % 4];
        sock.write(Buffer.concat([header, mask, masked]));
      };
      sock.on('data', (chunk) => {
        buf = Buffer.concat([buf, chunk]);
        for (;;) {
          if (buf.length < 2) return;
          const fin = (buf[0] & 0x80) !== 0;
          const opcode = buf[0] & 0x0f;
          const masked = (buf[1] & 0x80) !== 0;
          let len = buf[1] & 0x7f;
          let off = 2;
          if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); off = 4; }
          else if (len === 127) { if (buf.length < 10) return; len = Number(buf.readBigUInt64BE(2)); off = 10; }
          const maskLen = masked ? 4 : 0;
          if (buf.length < off + maskLen + len) return;
          let payload = buf.subarray(off + maskLen, off + maskLen + len);
          if (masked) {
            const m = buf.subarray(off, off + 4);
            payload = Buffer.from(payload.map((b, i) => b ^ m[i % 4]));
          }
          buf = buf.subarray(off + maskLen + len);
          if (opcode === 0x9) writeFrame(0xA, payload);
          else if (opcode === 0x8) { try { writeFrame(0x8, payload.subarray(0, 2)); } catch { /* gone */ } sock.end(); }
          else if (opcode === 0x1 || opcode === 0x0) {
            fragments.push(payload);
            if (fin) { deliver(Buffer.concat(fragments).toString('utf8')); fragments = []; }
          }
        }
      });
      sock.on('close', () => closedResolve());
      sock.on('error', () => {});
      const client = {
        log,
        closed,
        sendRaw(text) { writeFrame(0x1, text); },
        send(event, data) { writeFrame(0x1, JSON.stringify({ event, data })); },
        /** send with an id and resolve with the ack's data */
        async request(event, data, timeout = DEFAULT_TIMEOUT) {
          const id = nextId++;
          const p = client.waitFrame((f) => f.event === 'ack' && f.id === id, timeout, `ack ${id} for ${event}`);
          writeFrame(0x1, JSON.stringify({ event, data, id }));
          return (await p).data;
        },
        waitFrame(match, timeout = DEFAULT_TIMEOUT, what = 'frame') {
          const found = log.find((e) => !e.consumed && match(e.frame));
          if (found) { found.consumed = true; return Promise.resolve(found.frame); }
          let w;
          const p = new Promise((res) => { w = { match, resolve: res }; waiters.push(w); });
          const r = withTimeout(p, timeout, `${what} on raw ws`).finally(() => {
            const i = waiters.indexOf(w);
            if (i >= 0) waiters.splice(i, 1);
          });
          r.catch(() => {});
          return r;
        },
        async waitFor(event, pred = () => true, timeout) {
          return (await client.waitFrame((f) => f.event === event && pred(f.data), timeout, `event "${event}"`)).data;
        },
        close() { try { writeFrame(0x8, Buffer.from([0x03, 0xe8])); } catch { /* ignore */ } sock.end(); return closed; },
      };
      resolve(client);
    });
    req.end();
  }), DEFAULT_TIMEOUT, `websocket upgrade on ${wsPath}`);
}

// ---------------------------------------------------------------------------
// multi-instance (SPEC 7): Redis and nginx

export const REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';

/**
 * The first address of the test Redis: its host and port, or with a Redis Cluster URL
 * (`redis+cluster://host:port,host:port,...`, see scripts/services.sh) its first seed node.
 */
function redisAddress() {
  const cluster = REDIS_URL.match(/^redis\+cluster:\/\/(?:[^@]*@)?([^,/]+)/);
  const u = new URL(cluster ? `redis://${cluster[1]}` : REDIS_URL);
  return { host: u.hostname, port: Number(u.port || 6379) };
}

/** Fails loudly unless the test Redis answers PING (scripts/test.sh starts one). */
export async function assertRedisUp() {
  const net = await import('node:net');
  await withTimeout(new Promise((resolve, reject) => {
    const s = net.createConnection(redisAddress(), () => s.write('PING\r\n'));
    s.on('data', (d) => { s.destroy(); if (String(d).startsWith('+PONG')) resolve(); else reject(new Error(`Redis answered ${d}`)); });
    s.on('error', (e) => reject(new Error(`Redis is not reachable at ${REDIS_URL} (start it: scripts/test.sh does): ${e.message}`)));
  }), DEFAULT_TIMEOUT, `Redis at ${REDIS_URL}`);
}

/**
 * One command to the test Redis (RESP); resolves with the raw reply text. On a Redis Cluster a
 * `-MOVED <slot> <host:port>` reply sends it once more, to the node that owns the key.
 */
export async function redisCommand(...args) {
  const net = await import('node:net');
  const req = `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`).join('')}`;
  const send = (address) => withTimeout(new Promise((resolve, reject) => {
    const s = net.createConnection(address, () => s.write(req));
    s.once('data', (d) => { s.destroy(); resolve(String(d)); });
    s.on('error', reject);
  }), DEFAULT_TIMEOUT, `Redis ${args[0]}`);
  const reply = await send(redisAddress());
  const moved = reply.match(/^-MOVED \d+ ([^:\s]+):(\d+)/);
  return moved ? send({ host: moved[1], port: Number(moved[2]) }) : reply;
}

/** Two instances on the test Redis; each with its own DATA_DIR. */
export async function startCluster(env = {}) {
  await assertRedisUp();
  const a = await startServer({ REDIS_URL, ...env }, { cluster: false });
  const b = await startServer({ REDIS_URL, ...env }, { cluster: false });
  return { a, b, stop: () => Promise.all([a.stop(), b.stop()]) };
}

/** A free TCP port on 127.0.0.1 (bound and released). */
export async function freePort() {
  const net = await import('node:net');
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Runs the real nginx (Debian package) in the foreground with deploy/nginx.conf, its upstream
 * pointed at `servers` and its listen address at a free port, in a temporary prefix.
 * Resolves {url, stop()} once nginx answers /health.
 */
export async function startNginx(servers) {
  const bin = process.env.NGINX_BIN ?? '/usr/sbin/nginx';
  const { existsSync, readFileSync } = await import('node:fs');
  if (!existsSync(bin)) throw new Error(`nginx not found at ${bin}: install the Debian package (scripts/setup.sh does)`);
  const prefix = mkdtempSync(path.join(tmpdir(), 'chat-nginx-'));
  dataDirs.add(prefix);
  const port = await freePort();
  let site = readFileSync(path.resolve(E2E_DIR, '../deploy/nginx.conf'), 'utf8');
  const upstream = servers.map((s) => `server 127.0.0.1:${s.port};`).join('\n    ');
  const before = site;
  site = site.replace(/server 10\.0\.0\.11:5004;[^\n]*\n\s*server 10\.0\.0\.12:5004;[^\n]*/, upstream);
  assert.notEqual(site, before, 'deploy/nginx.conf: upstream server lines not found');
  assert.match(site, /listen 80;/, 'deploy/nginx.conf: listen 80 not found');
  site = site.replace('listen 80;', `listen 127.0.0.1:${port};`);
  writeFileSync(path.join(prefix, 'chat-service.conf'), site);
  writeFileSync(path.join(prefix, 'nginx.conf'), `
daemon off;
master_process off;
pid ${prefix}/nginx.pid;
error_log stderr warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path ${prefix}/body;
    proxy_temp_path ${prefix}/proxy;
    fastcgi_temp_path ${prefix}/fastcgi;
    uwsgi_temp_path ${prefix}/uwsgi;
    scgi_temp_path ${prefix}/scgi;
    include ${prefix}/chat-service.conf;
}
`);
  const proc = spawn(bin, ['-p', prefix, '-c', path.join(prefix, 'nginx.conf')], { stdio: ['ignore', 'pipe', 'pipe'] });
  liveChildren.add(proc);
  let stderr = '';
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (d) => { stderr += d; });
  const exited = new Promise((res) => proc.once('exit', (code) => { liveChildren.delete(proc); res(code); }));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + START_TIMEOUT;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`nginx exited (${proc.exitCode}): ${stderr}`);
    try {
      const r = await fetch(`${url}/health`);
      if (r.status === 200) break;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) throw new Error(`nginx did not answer within ${START_TIMEOUT} ms: ${stderr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url,
    port,
    stderr: () => stderr,
    stop: async () => { if (proc.exitCode === null) { proc.kill('SIGQUIT'); await exited; } },
  };
}
