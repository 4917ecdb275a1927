'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const h = require('./lib/harness');

test('drain under load: every accepted publish delivered in order, no resets, 1012 paced, exit 0', async (t) => {
  const RATE = 500, N = 1000;
  const srv = await h.startHerald(`drain = { timeout_ms = 20000, disconnect_rate = ${RATE}, http_idle_ms = 200 }\n`);
  t.after(() => srv.stop());
  const clients = [];
  for (let i = 0; i < N; i += 100) {
    const batch = await Promise.all(Array.from({ length: 100 }, async () => {
      const socket = h.phoenixSocket(srv.port, { reconnectAfterMs: () => 3600000, heartbeatIntervalMs: 3600000 });
      const c = { socket, got: [], close: null };
      socket.onClose((e) => { if (!c.close) c.close = { code: e.code, clean: e.wasClean, at: Date.now() }; });
      await h.connect(socket);
      const ch = socket.channel('drain:feed');
      ch.on('msg', (m) => c.got.push(m.data.i));
      await h.join(ch);
      return c;
    }));
    clients.push(...batch);
  }
  t.after(() => clients.forEach((c) => c.socket.disconnect()));

  // A keep-alive publisher, numbered messages, until the server stops answering.
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const accepted = [];
  const failures = [];
  let closeHeaders = 0;
  const publisher = (async () => {
    for (let i = 0; i < 100000; i++) {
      const res = await new Promise((resolve) => {
        const req = http.request({ host: '127.0.0.1', port: srv.port, method: 'POST', path: '/api/push', agent,
          headers: { 'content-type': 'application/json' } }, (r) => {
          let body = '';
          r.on('data', (d) => (body += d));
          r.on('end', () => resolve({ status: r.statusCode, connection: r.headers.connection, body }));
        });
        req.on('error', (e) => resolve({ error: e.code }));
        req.end(JSON.stringify({ channel: 'drain:feed', event: 'n', data: { i } }));
      });
      if (res.error) { failures.push(res.error); return; }
      if (res.status === 200) accepted.push(i);
      // "Connection: close" says the node is going away: a well-behaved
      // publisher (or its balancer, on /readyz 503) sends elsewhere now.
      if (res.connection === 'close') { closeHeaders++; return; }
      if (i === 300) srv.proc.kill('SIGTERM'); // mid-stream
    }
  })();
  await publisher;
  const exit = await srv.exited;
  agent.destroy();

  assert.equal(exit.code, 0, srv.log);
  assert.ok(accepted.length > 300);
  // Every request got a full answer: no reset, no refusal while it was told to go on.
  assert.deepEqual(failures, []);
  assert.equal(closeHeaders, 1, 'the last answer says Connection: close');
  for (const c of clients) {
    assert.deepEqual(c.got, accepted, 'every accepted publish exactly once, in order');
    assert.equal(c.close && c.close.code, 1012);
    assert.equal(c.close.clean, true, 'close handshake completed');
  }
  // Paced: N closes at RATE per second cannot happen in much less than N / RATE seconds.
  const times = clients.map((c) => c.close.at).sort((a, b) => a - b);
  assert.ok(times[times.length - 1] - times[0] >= (N / RATE) * 1000 * 0.7, `closes spread over ${times[times.length - 1] - times[0]} ms`);
  for (const phase of ['announce', 'stop_accepting', 'http', 'flush', 'disconnect', 'presence'])
    assert.match(srv.log, new RegExp(`drain: phase ${phase} done in \\d+ ms`));
  assert.deepEqual(srv.errors(), []);
});

test('POST /admin/drain: readyz turns 503, status shows the phase', async (t) => {
  const srv = await h.startHerald('drain = { announce_ms = 300 }\n');
  t.after(() => srv.stop());
  const c = await h.rawWs(srv.port);
  const r = await h.request(srv.port, 'POST', '/admin/drain');
  assert.equal(r.status, 202);
  const ready = await h.request(srv.port, 'GET', '/readyz');
  assert.equal(ready.status, 503);
  const st = await h.request(srv.port, 'GET', '/admin/status');
  assert.equal(st.json.state, 'draining');
  assert.equal(st.json.phase, 'announce');
  assert.equal(await c.closeCode(), 1012);
  const code = Buffer.alloc(2); code.writeUInt16BE(1012); c.send(8, code);
  assert.equal((await srv.exited).code, 0);
});
