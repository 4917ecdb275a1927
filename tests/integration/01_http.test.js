'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const { once } = require('node:events');
const h = require('./lib/harness');

test('HTTP: health, readiness, metrics, keep-alive, pipelining, chunked, idle close', async (t) => {
  const srv = await h.startHerald('timeouts = { http_idle_ms = 300 }\n');
  t.after(() => srv.stop());

  const health = await h.request(srv.port, 'GET', '/healthz');
  assert.equal(health.status, 200);
  assert.deepEqual(health.json, { status: 'ok' });
  assert.match(health.headers['content-type'], /application\/json/);
  const ready = await h.request(srv.port, 'GET', '/readyz');
  assert.equal(ready.status, 200);
  assert.deepEqual(ready.json, { status: 'ready' });
  const m = await h.request(srv.port, 'GET', '/metrics');
  assert.equal(m.status, 200);
  assert.match(m.headers['content-type'], /text\/plain/);
  for (const name of ['herald_connections', 'herald_publishes_total', 'herald_deliveries_total',
    'herald_dropped_total{reason="slow_consumer"}', 'herald_slow_consumer_closes_total'])
    assert.ok(m.body.split('\n').some((l) => l.startsWith(name + ' ')), `metrics lack ${name}`);

  await t.test('pipelined requests are answered in order on one connection', async () => {
    const req = (p) => `GET ${p} HTTP/1.1\r\nHost: x\r\n\r\n`;
    const out = (await h.rawExchange(srv.port, req('/healthz') + req('/nope') + req('/readyz') +
      'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')).toString();
    const statuses = [...out.matchAll(/HTTP\/1\.1 (\d+)/g)].map((x) => Number(x[1]));
    assert.deepEqual(statuses, [200, 404, 200, 200]);
    assert.match(out, /Connection: keep-alive/);
    // The last asked for close: the server closed after answering it.
    assert.match(out.slice(out.lastIndexOf('HTTP/1.1')), /Connection: close/);
  });

  await t.test('chunked request body', async () => {
    const body = JSON.stringify({ channel: 'c', event: 'e', data: { x: 1 } });
    const chunked = `${(10).toString(16)}\r\n${body.slice(0, 10)}\r\n${(body.length - 10).toString(16)}\r\n${body.slice(10)}\r\n0\r\n\r\n`;
    const out = (await h.rawExchange(srv.port, 'POST /api/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
      'Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n' + chunked)).toString();
    assert.match(out, /^HTTP\/1\.1 200/);
    assert.match(out, /\{"channel":\["c"\],"data":\{"x":1\},"event":"e"\}/);
  });

  await t.test('an idle keep-alive connection is closed after http_idle_ms', async () => {
    const s = net.connect(srv.port, '127.0.0.1');
    await once(s, 'connect');
    s.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    await once(s, 'data');
    await once(s, 'end'); // the server ends it; the test would time out otherwise
    s.destroy();
  });

  await t.test('unknown path 404, wrong method 405 with Allow', async () => {
    const nf = await h.request(srv.port, 'GET', '/nothing-here');
    assert.equal(nf.status, 404);
    assert.deepEqual(nf.json, { error: 'not found' });
    const wm = await h.request(srv.port, 'GET', '/api/push');
    assert.equal(wm.status, 405);
    assert.equal(wm.headers.allow, 'POST');
    assert.ok(wm.json.error);
  });
  assert.deepEqual(srv.errors(), []);
});
