'use strict';
// Fan-out backpressure (limits.fanout_backlog): while a fan-out larger than
// one flush slice (1,024 connections) is being written, the answer to the
// next publish waits. Publishers are paced; nothing is lost: every publish
// answered 200 reaches every subscriber, in order. With fanout_backlog = 0
// answers are never held.
const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('./lib/harness');

const SUBS = 2000;
const PUBS = 20;

async function subscribers(port, n) {
  const clients = [];
  for (let i = 0; i < n; i += 250) {
    const batch = await Promise.all(Array.from({ length: Math.min(250, n - i) }, () => h.rawWs(port)));
    for (const c of batch) c.sendText(['1', '1', 'big', 'phx_join', {}]);
    for (const c of batch) assert.equal((await c.nextJson())[4].status, 'ok');
    clients.push(...batch);
  }
  return clients;
}

// Publishes PUBS messages one after another over one keep-alive connection;
// returns how many answers herald held back meanwhile.
async function publishAll(srv, clients) {
  const before = await h.metrics(srv.port);
  const api = await h.httpConn(srv.port);
  for (let i = 0; i < PUBS; i++) {
    const body = JSON.stringify({ channel: 'big', event: 'n', data: { i } });
    api.write(`POST /api/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
    const r = await api.response(30000);
    assert.equal(r.status, 200, `publish ${i}`);
  }
  api.end();
  // Every subscriber gets every message, in order.
  for (const c of clients) {
    for (let i = 0; i < PUBS; i++) {
      const f = await c.nextJson(30000);
      assert.deepEqual(f, [null, null, 'big', 'msg', { data: { i }, event: 'n' }]);
    }
  }
  const after = await h.metrics(srv.port);
  assert.equal(after.herald_queued_bytes, 0);
  return after.herald_http_answers_held_total - before.herald_http_answers_held_total;
}

test('a publish during a large fan-out is answered once the fan-out is written; nothing is lost', { timeout: 120000 }, async (t) => {
  const srv = await h.serve(t, '');
  const clients = await subscribers(srv.port, SUBS);
  t.after(() => clients.forEach((c) => c.end()));
  const held = await publishAll(srv, clients);
  clients.forEach((c) => c.end()); // before the drain, which would wait for their close frames
  assert.ok(held > 0, 'no answer was held during fan-outs to 2,000 subscribers');
});

test('limits.fanout_backlog = 0 never holds an answer', { timeout: 120000 }, async (t) => {
  const srv = await h.serve(t, 'limits = { fanout_backlog = 0 }\n');
  const clients = await subscribers(srv.port, SUBS);
  t.after(() => clients.forEach((c) => c.end()));
  const held = await publishAll(srv, clients);
  clients.forEach((c) => c.end());
  assert.equal(held, 0);
});
