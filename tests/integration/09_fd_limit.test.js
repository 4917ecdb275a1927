'use strict';
// The descriptor limit. herald runs under `prlimit --nofile=160:160` with
// limits.max_connections far above it: it says so at start-up, caps
// WebSocket connections below the limit (503 to the upgrade beyond), answers
// 503 to connections over its TCP cap without reading them, survives
// connections beyond its descriptors (a spare descriptor makes room to
// accept, answer 503 and close each), counts every refusal by reason, and
// serves again once clients leave.
const test = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const { once } = require('node:events');
const h = require('./lib/harness');

const FILES = 160;

// A TCP connection that sends nothing and collects what the server sends
// until it closes.
async function silent(port) {
  const s = net.connect(port, '127.0.0.1');
  let buf = '';
  s.setEncoding('latin1');
  s.on('data', (d) => { buf += d; });
  s.on('error', () => {});
  const closed = once(s, 'close').then(() => buf);
  await h.within(Promise.race([once(s, 'connect'), closed]), 10000, 'TCP connect');
  return { socket: s, closed, get received() { return buf; } };
}

test('connections beyond RLIMIT_NOFILE are refused with 503, and the server recovers', { timeout: 90000 }, async (t) => {
  const srv = await h.serve(t, 'limits = { max_connections = 1000 }\n', {},
    { prefix: ['prlimit', `--nofile=${FILES}:${FILES}`] });
  const m = /limits\.max_connections is 1000 but this process may open only (\d+) files \(RLIMIT_NOFILE\): WebSocket connections beyond (\d+) get 503/.exec(srv.log);
  assert.ok(m, `no start-up warning about the descriptor limit in:\n${srv.log}`);
  assert.equal(Number(m[1]), FILES);
  const cap = Number(m[2]);
  assert.ok(cap > 0 && cap < FILES, `cap ${cap}`);

  // Up to the cap, upgrades succeed.
  const clients = [];
  t.after(() => { for (const c of clients) c.end(); });
  for (let i = 0; i < cap; i++) {
    const c = await h.rawWs(srv.port);
    assert.equal(c.status, 101, `upgrade ${i + 1} of ${cap}`);
    clients.push(c);
  }
  // The next one gets a 503 with a JSON body before any upgrade.
  const over = await h.rawWs(srv.port);
  assert.equal(over.status, 503);
  assert.deepEqual(JSON.parse(over.response.body.toString()), { error: 'server at capacity', status: 500 });
  over.end();

  // Connections that keep descriptors busy without a request: those over
  // the TCP cap are answered 503 and closed at once, and so are those
  // beyond the process's descriptors. None hangs.
  const before = await h.metrics(srv.port);
  const idle = [];
  t.after(() => { for (const c of idle) c.socket.destroy(); });
  for (let i = 0; i < FILES; i++) idle.push(await silent(srv.port));
  const answers = await Promise.all(idle.slice(-40).map((c) => h.within(c.closed, 20000, 'the server to close an over-limit connection')));
  assert.ok(answers.some((a) => a.startsWith('HTTP/1.1 503 Service Unavailable\r\n') && a.endsWith('{"error":"server at capacity","status":500}')),
    `no 503 among the last connections: ${JSON.stringify(answers.slice(0, 3))}`);
  for (const a of answers) assert.ok(a === '' || a.startsWith('HTTP/1.1 503 '), `unexpected answer ${JSON.stringify(a)}`);
  for (const c of idle) c.socket.destroy();

  // The held clients still work, and once some leave, new ones get in.
  for (const c of clients.splice(0, 10)) c.end();
  await h.eventually(async () => (await h.metrics(srv.port)).herald_connections <= cap - 10, 20000, 'the closed clients to be gone');
  const after = await h.metrics(srv.port);
  const refused = (m) => h.metricSum(m, 'herald_tcp_refused_total');
  assert.ok(refused(after) > refused(before), 'refusals are counted');
  assert.ok(after['herald_tcp_refused_total{reason="capacity"}'] > before['herald_tcp_refused_total{reason="capacity"}'],
    'refusals over the TCP cap are counted under their reason');
  assert.ok(after['herald_tcp_refused_total{reason="ws_capacity"}'] >= 1, 'the upgrade over the cap is counted');
  assert.match(srv.log, /refused \d+ connection\(s\) in the last second/);
  const again = await h.rawWs(srv.port);
  assert.equal(again.status, 101);
  again.end();
  const last = clients[clients.length - 1];
  last.sendText(['1', '1', 'room:1', 'phx_join', {}]);
  assert.deepEqual(await last.nextJson(), ['1', '1', 'room:1', 'phx_reply', { status: 'ok', response: {} }]);
});
