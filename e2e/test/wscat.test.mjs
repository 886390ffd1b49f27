// The README's wscat example, verbatim, with the real `wscat` CLI (npm package, pinned in
// package.json) driven through its stdin like a person typing:
//
//   npx wscat -c "ws://localhost:5004"
//   > {"event":"authenticate","data":{"userId":"user-123","username":"john"}}
//   > {"event":"join_room","data":{"roomId":"room-123"}}
//   > {"event":"send_message","data":{"roomId":"room-123","message":"Hello!"},"id":1}
//
// plus a wscat user and socket.io-client users in one room seeing each other.
//
// Why wscat runs inside a pseudo-terminal (util-linux `script`, part of Debian's essential
// bsdutils): with plain pipes wscat (6.x) is unusable as an interactive client:
//   - it prints control messages such as "Connected (press CTRL+C to quit)" only when stdout is
//     a TTY, so a piped caller has no way to know when the socket is open;
//   - its readline `line` listener is installed only in the socket's `open` handler, so lines
//     that arrive on stdin before the connection is open are silently dropped (piping the three
//     lines in at start-up sends nothing at all);
//   - and an EOF on stdin closes the socket at once.
// Under a pty it behaves exactly as for a person: it prints "Connected ...", then every
// incoming frame as a line `< {json}` (after an ANSI clear-line sequence, and followed by the
// `> ` prompt and the readline echo of what we type). So we wait for "Connected" before typing
// (no sleeps), strip ANSI escapes, split on CR/LF and parse the segments that start with `< `.
// Each incoming frame is a single write ending in "\n", so it never interleaves with the echo.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import {
  E2E_DIR, DEFAULT_TIMEOUT, MODES, startServer, socketPool, uid, withTimeout, waitFor, join, send, api,
  assertMessageShape, keysOf, CLUSTER, redisCommand,
} from './helpers.mjs';

const WSCAT = path.join(E2E_DIR, 'node_modules', '.bin', 'wscat');
const CONNECT_TIMEOUT = 20000; // node start-up of wscat on a busy machine
const EXIT_TIMEOUT = 5000;

// eslint-disable-next-line no-control-regex
const ANSI = /\x1b\[[0-9;?]*[A-Za-z]/g;
const shellQuote = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;

/**
 * Start `wscat -c <url>` on a pty. Resolves once wscat printed "Connected" with
 * {type(line), waitFrame(match), waitFor(event, pred), frames, close()}.
 */
function startWscat(url) {
  assert.ok(existsSync(WSCAT), `${WSCAT} missing: run npm ci in e2e/`);
  const cmd = `${shellQuote(WSCAT)} -c ${shellQuote(url)}`;
  // script -q: no banner, -f: flush at once, -e: exit code of the child, -c: command, /dev/null: no typescript file.
  const proc = spawn('script', ['-q', '-f', '-e', '-c', cmd, '/dev/null'], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, TERM: 'dumb' },
  });
  const frames = []; // {frame, consumed}
  const waiters = [];
  let raw = '';
  let output = ''; // everything wscat printed, ANSI-stripped (for failure messages)
  let connectedResolve;
  let connectedReject;
  const connected = new Promise((res, rej) => { connectedResolve = res; connectedReject = rej; });
  const exited = new Promise((res) => proc.once('exit', (code, signal) => res({ code, signal })));

  const onSegment = (seg) => {
    if (seg.includes('Connected (press CTRL+C to quit)')) connectedResolve();
    if (!seg.startsWith('< ')) return; // prompt, echo of our typing, other control lines
    let frame;
    try { frame = JSON.parse(seg.slice(2)); } catch { frame = { event: '__non_json__', data: seg.slice(2) }; }
    const entry = { frame, consumed: false };
    frames.push(entry);
    for (const w of [...waiters]) {
      if (!entry.consumed && w.match(frame)) {
        entry.consumed = true;
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(frame);
      }
    }
  };
  proc.stdout.setEncoding('utf8');
  proc.stdout.on('data', (d) => {
    raw += d;
    const end = raw.lastIndexOf('\n'); // only complete lines (an escape sequence may be split across chunks)
    if (end < 0) return;
    const text = raw.slice(0, end + 1).replace(ANSI, '');
    raw = raw.slice(end + 1);
    output += text;
    for (const seg of text.split(/[\r\n]+/)) onSegment(seg);
  });
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (d) => { output += `[stderr] ${d}`; });
  proc.once('error', (e) => connectedReject(new Error(`cannot run util-linux "script" (gives wscat a terminal): ${e.message}`)));
  exited.then(({ code, signal }) => connectedReject(new Error(`wscat exited before "Connected" (code ${code}, signal ${signal}):\n${output}${raw}`)));

  const client = {
    frames,
    output: () => output + raw,
    /** Type one line and press Enter. */
    type(line) { proc.stdin.write(`${line}\r`); },
    waitFrame(match, timeout = DEFAULT_TIMEOUT, what = 'frame') {
      const found = frames.find((e) => !e.consumed && match(e.frame));
      if (found) { found.consumed = true; return Promise.resolve(found.frame); }
      let w;
      const p = new Promise((res) => { w = { match, resolve: res }; waiters.push(w); });
      const r = withTimeout(p, timeout, `${what} in wscat output:\n${client.output()}\n--`).finally(() => {
        const i = waiters.indexOf(w);
        if (i >= 0) waiters.splice(i, 1);
      });
      r.catch(() => {});
      return r;
    },
    async waitFor(event, pred = () => true, timeout = DEFAULT_TIMEOUT) {
      return (await client.waitFrame((f) => f.event === event && pred(f.data), timeout, `event "${event}"`)).data;
    },
    /** EOF on the terminal (Ctrl+D at the prompt) makes wscat close the socket and exit. */
    async close() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.stdin.end();
      try {
        await withTimeout(exited, EXIT_TIMEOUT, 'wscat exit after EOF');
      } catch {
        proc.kill('SIGKILL'); // the pty hangs up, which ends wscat too
        await exited;
      }
    },
  };
  return withTimeout(connected, CONNECT_TIMEOUT, `wscat "Connected" (output so far:\n${output}${raw})`)
    .then(() => client, async (e) => { proc.kill('SIGKILL'); throw e; });
}

let server;
const open = [];
before(async () => {
  // The README's literal room id is shared by every run: in cluster mode its cached history
  // from an earlier run is dropped first (this test's own key; Redis is never flushed).
  if (CLUSTER) await redisCommand('DEL', 'chat:history:room-123');
  server = await startServer({ RATE_LIMIT_PER_SEC: '0' });
});
after(async () => { await server?.stop(); });
afterEach(async () => { await Promise.all(open.splice(0).map((c) => c.close())); });

async function wscat() {
  const c = await startWscat(`ws://127.0.0.1:${server.port}`);
  open.push(c);
  return c;
}

describe('wscat (README example, typed on stdin)', () => {
  it('authenticate, join_room, send_message "Hello!" with id 1: events, ack, stored', async () => {
    const c = await wscat();
    // The three README lines, verbatim, typed without waiting in between (events of one
    // connection are handled in arrival order).
    c.type('{"event":"authenticate","data":{"userId":"user-123","username":"john"}}');
    c.type('{"event":"join_room","data":{"roomId":"room-123"}}');
    c.type('{"event":"send_message","data":{"roomId":"room-123","message":"Hello!"},"id":1}');

    assert.deepEqual(await c.waitFor('authenticated'), { userId: 'user-123', username: 'john' });
    assert.deepEqual(await c.waitFor('message_history'), []); // fresh DATA_DIR
    assert.deepEqual(await c.waitFor('room_users'), [{ userId: 'user-123', username: 'john' }]);
    const m = await c.waitFor('new_message', (d) => d.message === 'Hello!');
    assertMessageShape(m, { roomId: 'room-123', userId: 'user-123', username: 'john', message: 'Hello!', messageType: 'text' });
    const ack = await c.waitFrame((f) => f.event === 'ack' && f.id === 1, DEFAULT_TIMEOUT, 'ack with id 1');
    assert.deepEqual(keysOf(ack), ['data', 'event', 'id']);
    assert.deepEqual(ack.data, { success: true, messageId: m.messageId, timestamp: m.timestamp });

    // Only the frame with an "id" was acked, and the events came in the order they were typed.
    assert.deepEqual(c.frames.filter((e) => e.frame.event === 'ack').map((e) => e.frame.id), [1]);
    const order = c.frames.map((e) => e.frame.event).filter((ev) => ev !== 'ack');
    assert.deepEqual(order, ['authenticated', 'message_history', 'room_users', 'new_message'], c.output());

    // REST (AUTH_MODE=none): the README's curl without any header.
    const r = await api(server, 'GET', '/api/chat/room-123/history?limit=50');
    assert.equal(r.status, 200, r.text);
    assert.equal(r.body.success, true, r.text);
    assert.deepEqual(r.body.messages, [{ ...m, reactions: [] }]);
  });

  for (const mode of MODES) {
    describe(`wscat and socket.io-client (${mode.name}) in one room`, () => {
      const pool = socketPool(() => server.url, mode);
      afterEach(() => pool.finish());

      it('see each other join and chat', async () => {
        const roomId = uid('mixed');
        const rawUser = uid('wscat');
        const c = await wscat();
        c.type(JSON.stringify({ event: 'authenticate', data: { userId: rawUser, username: 'Cat' } }));
        c.type(JSON.stringify({ event: 'join_room', data: { roomId }, id: 1 }));
        assert.deepEqual((await c.waitFrame((f) => f.event === 'ack' && f.id === 1)).data, { success: true, roomId });

        const s = await pool.user(uid('sio'), 'Sio');
        const joined = await join(s, roomId);
        assert.deepEqual(
          [...joined.users].sort((a, b) => a.username.localeCompare(b.username)),
          [{ userId: rawUser, username: 'Cat' }, { userId: s.userId, username: 'Sio' }],
        );
        assert.deepEqual(await c.waitFor('user_joined'), { roomId, userId: s.userId, username: 'Sio' });

        // socket.io -> wscat
        const sioAck = await send(s, roomId, 'hi from socket.io');
        const atCat = await c.waitFor('new_message', (d) => d.message === 'hi from socket.io');
        assertMessageShape(atCat, {
          messageId: sioAck.messageId, timestamp: sioAck.timestamp, roomId, userId: s.userId, username: 'Sio', messageType: 'text',
        });

        // wscat -> socket.io
        c.type(JSON.stringify({ event: 'send_message', data: { roomId, message: 'hi from wscat' }, id: 2 }));
        const catAck = (await c.waitFrame((f) => f.event === 'ack' && f.id === 2)).data;
        assert.equal(catAck.success, true, JSON.stringify(catAck));
        const atSio = await waitFor(s, 'new_message', (d) => d.message === 'hi from wscat');
        assertMessageShape(atSio, {
          messageId: catAck.messageId, timestamp: catAck.timestamp, roomId, userId: rawUser, username: 'Cat', messageType: 'text',
        });

        // typing from wscat reaches the socket.io user
        c.type(JSON.stringify({ event: 'typing', data: { roomId, isTyping: true } }));
        assert.deepEqual(await waitFor(s, 'user_typing'), { roomId, userId: rawUser, username: 'Cat', isTyping: true });

        // wscat quits (EOF): the socket.io user sees it leave
        await c.close();
        assert.deepEqual(await waitFor(s, 'user_left'), { roomId, userId: rawUser, username: 'Cat' });
      });
    });
  }
});
