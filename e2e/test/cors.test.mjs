// CORS_ORIGIN applies to the Socket.IO polling transport.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, rawRequest } from './helpers.mjs';

const GOOD = 'http://good.example';
const EVIL = 'http://evil.example';
const HANDSHAKE = '/socket.io/?EIO=4&transport=polling';

describe('CORS', () => {
  let server;
  before(async () => { server = await startServer({ CORS_ORIGIN: GOOD }); });
  after(async () => { await server?.stop(); });

  function assertHandshake(res) {
    assert.equal(res.status, 200, res.body);
    assert.match(res.body, /^0\{/, `Engine.IO open packet: ${res.body}`);
    const open = JSON.parse(res.body.slice(1));
    assert.equal(typeof open.sid, 'string');
    assert.ok(Array.isArray(open.upgrades) && open.upgrades.includes('websocket'), res.body);
    assert.ok(Number.isInteger(open.pingInterval) && Number.isInteger(open.pingTimeout), res.body);
  }

  it('a polling handshake from a foreign origin does not get that origin allowed', async () => {
    const res = await rawRequest(server, 'GET', HANDSHAKE, { Origin: EVIL });
    const allowed = res.headers['access-control-allow-origin'];
    assert.notEqual(allowed, EVIL);
    assert.notEqual(allowed, '*');
  });

  it('a preflight from a foreign origin does not get that origin allowed', async () => {
    const res = await rawRequest(server, 'OPTIONS', HANDSHAKE, {
      Origin: EVIL, 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'content-type',
    });
    const allowed = res.headers['access-control-allow-origin'];
    assert.notEqual(allowed, EVIL);
    assert.notEqual(allowed, '*');
  });

  it('the configured origin gets access-control-allow-origin back', async () => {
    const res = await rawRequest(server, 'GET', HANDSHAKE, { Origin: GOOD });
    assertHandshake(res);
    assert.equal(res.headers['access-control-allow-origin'], GOOD);
  });

  it('the configured origin passes a preflight', async () => {
    const res = await rawRequest(server, 'OPTIONS', HANDSHAKE, {
      Origin: GOOD, 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'content-type',
    });
    assert.ok(res.status === 200 || res.status === 204, `preflight status ${res.status}`);
    assert.equal(res.headers['access-control-allow-origin'], GOOD);
  });

  it('a request without Origin (non-browser client) is served', async () => {
    assertHandshake(await rawRequest(server, 'GET', HANDSHAKE));
  });
});
