'use strict';
// limits.client_messages_per_s: phoenix.js pushing 30 messages at once gets
// the burst processed and "rate limited" error replies for the rest (its
// push().receive('error') fires), stays connected and joined, and is served
// again once the bucket refills; a raw client that keeps flooding is closed
// with 1008 "message rate exceeded".
const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('./lib/harness');

const CONFIG = 'limits = { client_messages_per_s = 5, client_messages_burst = 10 }\n' +
  'scripts = { "echo.lua" }\n';
const ECHO = `
local M = {}
function M.message(socket, topic, event, payload)
  if event == "echo" then return payload end
end
return M
`;
const QUIET = { reconnectAfterMs: () => 600000, rejoinAfterMs: () => 600000, heartbeatIntervalMs: 600000 };

// Resolves with 'ok' and the response, or 'error' and the reason.
function pushed(ch, event, payload) {
  return new Promise((resolve, reject) => {
    ch.push(event, payload)
      .receive('ok', (r) => resolve({ status: 'ok', r }))
      .receive('error', (r) => resolve({ status: 'error', r }))
      .receive('timeout', () => reject(new Error(`push ${JSON.stringify(payload)} timed out`)));
  });
}

test('phoenix.js over the rate: error replies, the socket stays, served after a refill', { timeout: 60000 }, async (t) => {
  const srv = await h.serve(t, CONFIG, { 'echo.lua': ECHO });
  const socket = h.phoenixSocket(srv.port, QUIET);
  t.after(() => socket.disconnect());
  await h.connect(socket);
  const ch = socket.channel('room:1');
  await h.join(ch); // one token
  const replies = await Promise.all([...Array(30).keys()].map((i) => pushed(ch, 'echo', { i })));
  for (let i = 0; i < 9; i++) assert.deepEqual(replies[i], { status: 'ok', r: { i } });
  const refused = replies.filter((x) => x.status === 'error');
  assert.ok(refused.length >= 15, `${refused.length} refused`);
  for (const x of refused) assert.deepEqual(x.r, { reason: 'rate limited' });
  for (const [i, x] of replies.entries()) if (x.status === 'ok') assert.deepEqual(x.r, { i });
  const m = await h.metrics(srv.port);
  assert.equal(m.herald_client_messages_limited_total, refused.length);
  assert.equal(m.herald_client_rate_closes_total, 0);
  assert.equal(socket.isConnected(), true);
  assert.equal(ch.state, 'joined');
  // Tokens come back at 5 a second: a push is processed again.
  const back = await h.eventually(async () => {
    const x = await pushed(ch, 'echo', { again: true });
    return x.status === 'ok' && x;
  }, 10000, 'a push to be processed again');
  assert.deepEqual(back.r, { again: true });
  assert.equal(socket.isConnected(), true);
});

test('a client that keeps flooding is closed with 1008 "message rate exceeded"', { timeout: 60000 }, async (t) => {
  const srv = await h.serve(t, CONFIG, { 'echo.lua': ECHO });
  const ws = await h.rawWs(srv.port);
  t.after(() => ws.end());
  let n = 0;
  const timer = setInterval(() => ws.sendText([null, String(++n), 'phoenix', 'heartbeat', {}]), 10);
  t.after(() => clearInterval(timer));
  const cf = await ws.closeFrame(20000);
  clearInterval(timer);
  assert.deepEqual([cf.code, cf.reason], [1008, 'message rate exceeded']);
  await ws.waitClosed();
  const m = await h.metrics(srv.port);
  assert.equal(m.herald_client_rate_closes_total, 1);
  assert.equal(m['herald_ws_closes_sent_total{code="1008"}'], 1);
  assert.ok(m.herald_client_messages_limited_total > 0);
});
