'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const h = require('./lib/harness');
const { balancer } = require('./lib/balancer');

const CONFIG = 'drain = { timeout_ms = 15000, announce_ms = 200, disconnect_rate = 200, http_idle_ms = 100 }\n';

test('rolling restart of two nodes behind a balancer under continuous publishing', async (t) => {
  let a = await h.startHerald(CONFIG);
  let b = await h.startHerald(CONFIG);
  const lb = await balancer([a.port, b.port]);
  t.after(async () => { await lb.close(); await a.stop(); await b.stop(); });

  const N = 100;
  const clients = [];
  for (let i = 0; i < N; i++) {
    const socket = h.phoenixSocket(lb.port, { reconnectAfterMs: () => 20, rejoinAfterMs: () => 20 });
    const c = { socket, got: 0, closes: [] };
    socket.onClose((e) => c.closes.push(e.code));
    clients.push(c);
  }
  t.after(() => clients.forEach((c) => c.socket.disconnect()));
  await Promise.all(clients.map(async (c) => {
    await h.connect(c.socket);
    const ch = c.socket.channel('feed');
    ch.on('msg', () => c.got++);
    await h.join(ch);
  }));

  // Publish continuously to every live node (no cluster layer: each node
  // delivers to its own sockets), over keep-alive, until told to stop.
  let publishing = true;
  const draining = new Set();
  const failures = [];
  let published = 0;
  const agent = new http.Agent({ keepAlive: true });
  const publisher = (async () => {
    while (publishing) {
      await new Promise((r) => setImmediate(r)); // never a synchronous spin
      // A node that answered "Connection: close" is going away: like a
      // balancer that saw its /readyz turn 503, stop sending it requests.
      for (const port of lb.backends.filter((p) => !draining.has(p))) {
        const res = await new Promise((resolve) => {
          const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/api/push', agent,
            headers: { 'content-type': 'application/json' } }, (r) => {
            if (r.headers.connection === 'close') draining.add(port);
            r.resume();
            r.on('end', () => resolve(r.statusCode));
          });
          req.on('error', (e) => resolve(e.code));
          req.end(JSON.stringify({ channel: 'feed', event: 'n', data: { n: published } }));
        });
        if (res === 200) published++;
        else failures.push(res);
      }
    }
  })();

  const subscribers = async (port) => {
    try { return (await h.request(port, 'GET', '/api/topics/feed')).json.subscribers; } catch { return 0; }
  };
  // Restart a: drain it, start a new node in its place.
  const rotate = async (old) => {
    old.proc.kill('SIGTERM');
    const exit = await old.exited;
    assert.equal(exit.code, 0, old.log);
    for (const phase of ['announce', 'stop_accepting', 'http', 'flush', 'disconnect', 'presence'])
      assert.match(old.log, new RegExp(`drain: phase ${phase} done in \\d+ ms`));
    const fresh = await h.startHerald(CONFIG);
    lb.backends[lb.backends.indexOf(old.port)] = fresh.port;
    return fresh;
  };
  a = await rotate(a);
  // Every client is back (on b, or on the new a once it is up).
  await h.eventually(async () => (await subscribers(a.port)) + (await subscribers(b.port)) === N, 20000, 'all clients back');
  b = await rotate(b);
  await h.eventually(async () => (await subscribers(a.port)) + (await subscribers(b.port)) === N, 20000, 'all clients on the new nodes');
  publishing = false;
  await publisher;
  agent.destroy();

  assert.deepEqual(failures, [], 'no publish got a reset or an error status');
  for (const c of clients) {
    assert.ok(c.closes.length >= 1 && c.closes.every((code) => code === 1012), JSON.stringify(c.closes));
    assert.ok(c.got > 0);
  }
  // After both restarts, a push to each node reaches everyone.
  const before = clients.map((c) => c.got);
  await h.push(a.port, { channel: 'feed', event: 'final', data: {} });
  await h.push(b.port, { channel: 'feed', event: 'final', data: {} });
  await h.eventually(() => clients.every((c, i) => c.got > before[i]), 10000, 'the final push');
  assert.ok(published > 0);
});
