'use strict';
// HTTP surface: health, readiness, metrics, keep-alive, pipelining,
// Connection: close, chunked bodies, idle close, 404/405.
const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('./lib/harness');

const get = (p, extra = '') => `GET ${p} HTTP/1.1\r\nHost: 127.0.0.1\r\n${extra}\r\n`;

function assertJsonError(r, status) {
  assert.equal(r.status, status, r.body);
  assert.match(r.headers['content-type'] || '', /^application\/json/);
  assert.equal(typeof r.json?.error, 'string', `error body for ${status}: ${r.body}`);
}

test('HTTP endpoints and connection handling', { timeout: 60000 }, async (t) => {
  const srv = await h.serve(t, '');

  await t.test('GET /healthz, /readyz', async () => {
    const health = await h.request(srv.port, 'GET', '/healthz');
    assert.equal(health.status, 200);
    assert.deepEqual(health.json, { status: 'ok' });
    assert.match(health.headers['content-type'], /^application\/json/);
    const ready = await h.request(srv.port, 'GET', '/readyz');
    assert.equal(ready.status, 200);
    assert.deepEqual(ready.json, { status: 'ready' });
    assert.match(ready.headers['content-type'], /^application\/json/);
  });

  await t.test('GET /metrics is Prometheus text with the documented series', async () => {
    const m = await h.request(srv.port, 'GET', '/metrics');
    assert.equal(m.status, 200);
    assert.match(m.headers['content-type'], /^text\/plain/);
    const lines = m.body.split('\n');
    for (const name of ['herald_connections', 'herald_publishes_total', 'herald_deliveries_total',
      'herald_dropped_total{reason="slow_consumer"}', 'herald_slow_consumer_closes_total']) {
      const line = lines.find((l) => l.startsWith(name + ' '));
      assert.ok(line, `/metrics lacks a sample line for ${name}`);
      assert.match(line, /^\S+ -?[0-9.e+]+$/, line);
    }
    // herald_connections follows the WebSocket connections, and publishes
    // and deliveries are counted.
    const before = h.parseMetrics(m.body);
    const c = await h.wsClient(srv.port);
    c.send(['1', '1', 'metrics:t', 'phx_join', {}]);
    assert.equal((await c.nextJson())[4].status, 'ok');
    let after = await h.metrics(srv.port);
    assert.equal(after.herald_connections, before.herald_connections + 1);
    assert.equal((await h.push(srv.port, { channel: 'metrics:t', event: 'e', data: 1 })).status, 200);
    await c.next();
    after = await h.metrics(srv.port);
    assert.ok(after.herald_publishes_total >= before.herald_publishes_total + 1, 'herald_publishes_total did not grow');
    assert.ok(after.herald_deliveries_total >= before.herald_deliveries_total + 1, 'herald_deliveries_total did not grow');
    await c.close(1000);
    await h.eventually(async () => (await h.metrics(srv.port)).herald_connections === before.herald_connections,
      10000, 'herald_connections to go back down after the close');
  });

  await t.test('keep-alive: two requests, one after the other, on one connection', async () => {
    const c = await h.httpConn(srv.port);
    c.write(get('/healthz'));
    const a = await c.response();
    assert.equal(a.status, 200);
    assert.deepEqual(a.json, { status: 'ok' });
    assert.doesNotMatch(a.headers.connection || '', /close/i);
    assert.equal(c.ended, false);
    c.write(get('/readyz'));
    const b = await c.response();
    assert.equal(b.status, 200);
    assert.deepEqual(b.json, { status: 'ready' });
    assert.equal(c.ended, false, 'the server closed a keep-alive connection');
    c.end();
  });

  await t.test('pipelining: three requests in one write are answered in order', async () => {
    const c = await h.httpConn(srv.port);
    c.write(get('/healthz') + get('/no-such-path') + get('/readyz'));
    const rs = [await c.response(), await c.response(), await c.response()];
    assert.deepEqual(rs.map((r) => r.status), [200, 404, 200]);
    assert.deepEqual(rs.map((r) => r.json), [{ status: 'ok' }, { error: 'not found' }, { status: 'ready' }]);
    // Still open after the batch; a fourth request asks to close.
    c.write(get('/healthz', 'Connection: close\r\n'));
    const last = await c.response();
    assert.equal(last.status, 200);
    assert.match(last.headers.connection || '', /close/i);
    await c.closed();
  });

  await t.test('pipelined POSTs with bodies, split across writes', async () => {
    const c = await h.httpConn(srv.port);
    const post = (ch) => {
      const body = JSON.stringify({ channel: ch, event: 'e', data: { ch } });
      return `POST /api/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
    };
    const all = post('p1') + post('p2') + get('/healthz');
    // Split in the middle of the second request's headers.
    const cut = all.indexOf('Content-Type', all.indexOf('p1') + 40);
    c.write(all.slice(0, cut));
    const first = await c.response();
    c.write(all.slice(cut));
    const rs = [first, await c.response(), await c.response()];
    assert.deepEqual(rs.map((r) => r.status), [200, 200, 200]);
    assert.deepEqual(rs[0].json, { channel: ['p1'], data: { ch: 'p1' }, event: 'e' });
    assert.deepEqual(rs[1].json, { channel: ['p2'], data: { ch: 'p2' }, event: 'e' });
    assert.deepEqual(rs[2].json, { status: 'ok' });
    c.end();
  });

  await t.test('Connection: close is honoured', async () => {
    const c = await h.httpConn(srv.port);
    c.write(get('/healthz', 'Connection: close\r\n'));
    const r = await c.response();
    assert.equal(r.status, 200);
    assert.match(r.headers.connection || '', /close/i);
    const { leftover } = await c.closed();
    assert.equal(leftover.length, 0, 'bytes after the response');
  });

  await t.test('chunked request body, chunks in separate writes, delivered to a subscriber', async () => {
    const sub = await h.wsClient(srv.port);
    sub.send(['1', '1', 'chunky', 'phx_join', {}]);
    assert.equal((await sub.nextJson())[4].status, 'ok');
    const body = JSON.stringify({ channel: 'chunky', event: 'e', data: { x: 1, s: 'é€' } });
    const bytes = Buffer.from(body);
    const c = await h.httpConn(srv.port);
    c.write('POST /api/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n');
    const pieces = [bytes.slice(0, 7), bytes.slice(7, 20), bytes.slice(20)];
    for (const p of pieces) c.write(Buffer.concat([Buffer.from(p.length.toString(16) + '\r\n'), p, Buffer.from('\r\n')]));
    c.write('0\r\n\r\n');
    const r = await c.response();
    assert.equal(r.status, 200, r.body);
    assert.deepEqual(r.json, { channel: ['chunky'], data: { x: 1, s: 'é€' }, event: 'e' });
    assert.deepEqual(await sub.nextJson(), [null, null, 'chunky', 'msg', { data: { x: 1, s: 'é€' }, event: 'e' }]);
    // The connection stays usable after a chunked body.
    c.write(get('/healthz'));
    assert.equal((await c.response()).status, 200);
    c.end();
    await sub.close(1000);
  });

  await t.test('unknown path 404, wrong method 405 with Allow', async () => {
    const nf = await h.request(srv.port, 'GET', '/nothing-here');
    assertJsonError(nf, 404);
    assert.deepEqual(nf.json, { error: 'not found' });
    const wm = await h.request(srv.port, 'GET', '/api/push');
    assertJsonError(wm, 405);
    assert.match(wm.headers.allow || '', /\bPOST\b/);
    const wm2 = await h.request(srv.port, 'POST', '/healthz', { body: '{}', headers: { 'content-type': 'application/json' } });
    assertJsonError(wm2, 405);
    assert.match(wm2.headers.allow || '', /\bGET\b/);
    const wm3 = await h.request(srv.port, 'DELETE', '/metrics');
    assertJsonError(wm3, 405);
    assert.match(wm3.headers.allow || '', /\bGET\b/);
  });
});

test('an idle keep-alive connection is closed after timeouts.http_idle_ms', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, 'timeouts = { http_idle_ms = 300 }\n');
  const c = await h.httpConn(srv.port);
  c.write(get('/healthz'));
  const r = await c.response();
  assert.equal(r.status, 200);
  // No further request: the server must close it (bounded wait, no sleep).
  const { leftover } = await c.closed(10000);
  assert.equal(leftover.length, 0, 'bytes after the response');
  // The server is fine afterwards.
  assert.equal((await h.request(srv.port, 'GET', '/healthz')).status, 200);
});
