'use strict';
// POST /api/push (JSON and form bodies), validation, bearer token, and
// GET /api/topics/<topic>.
const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('./lib/harness');

const INVALID = { error: 'Invalid push arguments: channel, data, event are required.' };
const TOKEN = 's3cret';
const JSON_AUTH = { 'content-type': 'application/json', authorization: `Bearer ${TOKEN}` };
const FORM_AUTH = { 'content-type': 'application/x-www-form-urlencoded', authorization: `Bearer ${TOKEN}` };

// Joins topics with a ws client; returns it.
async function subscriber(port, topics) {
  const c = await h.wsClient(port);
  let ref = 0;
  for (const topic of topics) {
    ref++;
    c.send([String(ref), String(ref), topic, 'phx_join', {}]);
    assert.deepEqual(await c.nextJson(), [String(ref), String(ref), topic, 'phx_reply', { status: 'ok', response: {} }]);
  }
  return c;
}

// Reads frames until the one on topic `marker`; returns the frames before it.
async function framesUntil(c, marker) {
  const got = [];
  for (let i = 0; i < 100; i++) {
    const f = await c.nextJson();
    if (f[2] === marker) return got;
    got.push(f);
  }
  throw new Error('marker never arrived');
}

test('push API with a token', { timeout: 60000 }, async (t) => {
  const srv = await h.serve(t, `api = { token = "${TOKEN}" }\n`);

  await t.test('JSON push: channel array deduplicated in order, delivered once per channel', async () => {
    const sub = await subscriber(srv.port, ['a', 'b', 'end']);
    const r = await h.push(srv.port, { channel: ['b', 'a', 'b', 'a'], event: 'e', data: { x: [1, 2] } }, JSON_AUTH);
    assert.equal(r.status, 200);
    assert.match(r.headers['content-type'], /^application\/json/);
    assert.deepEqual(r.json, { channel: ['b', 'a'], data: { x: [1, 2] }, event: 'e' });
    await h.push(srv.port, { channel: 'end', event: 'e', data: 0 }, JSON_AUTH);
    const got = (await framesUntil(sub, 'end')).sort((x, y) => x[2].localeCompare(y[2]));
    assert.deepEqual(got, [
      [null, null, 'a', 'msg', { data: { x: [1, 2] }, event: 'e' }],
      [null, null, 'b', 'msg', { data: { x: [1, 2] }, event: 'e' }],
    ]);
    await sub.close(1000);
  });

  await t.test('JSON push: channel string becomes an array; data may be any JSON value', async () => {
    for (const data of [null, false, 0, -1.5, 'text', [], [1, 'two', null], {}, { nested: { deep: [{ a: 'ü' }] } }]) {
      const r = await h.push(srv.port, { channel: 'one', event: 'ev', data }, JSON_AUTH);
      assert.equal(r.status, 200, JSON.stringify(data));
      assert.deepEqual(r.json, { channel: ['one'], data, event: 'ev' });
    }
  });

  await t.test('form push: channel, channel[], data as a string', async () => {
    const sub = await subscriber(srv.port, ['x', 'y', 'end']);
    let r = await h.request(srv.port, 'POST', '/api/push', {
      body: 'channel=x&event=ev&data=hello+there%21', headers: FORM_AUTH });
    assert.equal(r.status, 200, r.body);
    assert.deepEqual(r.json, { channel: ['x'], data: 'hello there!', event: 'ev' });
    r = await h.request(srv.port, 'POST', '/api/push', {
      body: 'channel%5B%5D=y&channel[]=x&channel[]=y&event=e%20v&data=%7B%22k%22%3A1%7D', headers: FORM_AUTH });
    assert.equal(r.status, 200, r.body);
    assert.deepEqual(r.json, { channel: ['y', 'x'], data: '{"k":1}', event: 'e v' });
    await h.push(srv.port, { channel: 'end', event: 'e', data: 0 }, JSON_AUTH);
    const got = await framesUntil(sub, 'end');
    assert.deepEqual(got.map((f) => [f[2], f[4]]).sort(), [
      ['x', { data: 'hello there!', event: 'ev' }],
      ['x', { data: '{"k":1}', event: 'e v' }],
      ['y', { data: '{"k":1}', event: 'e v' }],
    ].sort());
    await sub.close(1000);
  });

  await t.test('query parameters fill what the body lacks (as PushEx merges them); the body wins', async () => {
    const sub = await subscriber(srv.port, ['q1', 'q2', 'end']);
    let r = await h.request(srv.port, 'POST', '/api/push?channel=q1&event=from-query', {
      body: { data: { n: 1 } }, headers: JSON_AUTH });
    assert.equal(r.status, 200, r.body);
    assert.deepEqual(r.json, { channel: ['q1'], data: { n: 1 }, event: 'from-query' });
    r = await h.request(srv.port, 'POST', '/api/push?channel[]=q1&channel[]=q2&event=ignored&data=ignored', {
      body: 'event=from-body&data=x', headers: FORM_AUTH });
    assert.equal(r.status, 200, r.body);
    assert.deepEqual(r.json, { channel: ['q1', 'q2'], data: 'x', event: 'from-body' });
    r = await h.request(srv.port, 'POST', '/api/push?event=e', { body: { channel: 'q1' }, headers: JSON_AUTH });
    assert.equal(r.status, 422, 'data is still required');
    await h.push(srv.port, { channel: 'end', event: 'e', data: 0 }, JSON_AUTH);
    const got = await framesUntil(sub, 'end');
    assert.deepEqual(got.map((f) => [f[2], f[4]]).sort(), [
      ['q1', { data: { n: 1 }, event: 'from-query' }],
      ['q1', { data: 'x', event: 'from-body' }],
      ['q2', { data: 'x', event: 'from-body' }],
    ].sort());
    await sub.close(1000);
  });

  await t.test('422 for a missing or wrong-typed field', async () => {
    const bad = [
      { event: 'e', data: 1 },
      { channel: 'a', data: 1 },
      { channel: 'a', event: 'e' },
      { channel: 'a', event: 5, data: 1 },
      { channel: 'a', event: null, data: 1 },
      { channel: 5, event: 'e', data: 1 },
      { channel: null, event: 'e', data: 1 },
      { channel: { a: 1 }, event: 'e', data: 1 },
      { channel: [1], event: 'e', data: 1 },
      { channel: ['a', null], event: 'e', data: 1 },
      {},
    ];
    for (const body of bad) {
      const r = await h.push(srv.port, body, JSON_AUTH);
      assert.equal(r.status, 422, JSON.stringify(body));
      assert.deepEqual(r.json, INVALID, JSON.stringify(body));
      assert.match(r.headers['content-type'], /^application\/json/);
    }
    for (const body of ['event=e&data=1', 'channel=a&data=1', 'channel=a&event=e', '']) {
      const r = await h.request(srv.port, 'POST', '/api/push', { body, headers: FORM_AUTH });
      assert.equal(r.status, 422, body);
      assert.deepEqual(r.json, INVALID, body);
    }
  });

  await t.test('422 for a JSON body that parses but is not a push object', async () => {
    // Valid JSON (RFC 8259 allows any value at the top level), so not a 400.
    for (const body of ['"a string"', '42', 'null', 'true']) {
      const r = await h.request(srv.port, 'POST', '/api/push', { body, headers: JSON_AUTH });
      assert.equal(r.status, 422, `${body}: ${r.body}`);
      assert.deepEqual(r.json, INVALID, body);
    }
  });

  await t.test('400 for unparseable JSON', async () => {
    for (const body of ['{"channel":', '{channel: "a"}', '', "{'a':1}", '{"channel":"a","event":"e","data":1} trailing']) {
      const r = await h.request(srv.port, 'POST', '/api/push', { body, headers: JSON_AUTH });
      assert.equal(r.status, 400, JSON.stringify(body));
      assert.match(r.headers['content-type'], /^application\/json/);
      assert.match(r.json?.error ?? '', /^invalid JSON: ./, JSON.stringify(body));
    }
  });

  await t.test('415 for other content types', async () => {
    for (const ct of ['text/plain', 'application/xml', 'image/png']) {
      const r = await h.request(srv.port, 'POST', '/api/push', {
        body: '{"channel":"a","event":"e","data":1}', headers: { 'content-type': ct, authorization: `Bearer ${TOKEN}` } });
      assert.equal(r.status, 415, ct);
      assert.match(r.headers['content-type'], /^application\/json/);
      assert.equal(typeof r.json?.error, 'string');
    }
    // Parameters on the media type are fine.
    const r = await h.push(srv.port, { channel: 'a', event: 'e', data: 1 },
      { 'content-type': 'application/json; charset=utf-8', authorization: `Bearer ${TOKEN}` });
    assert.equal(r.status, 200);
  });

  await t.test('bearer token: missing or wrong gives 403, right gives 200', async () => {
    const msg = { channel: 'tok', event: 'e', data: 1 };
    for (const headers of [
      { 'content-type': 'application/json' },
      { 'content-type': 'application/json', authorization: 'Bearer nope' },
      { 'content-type': 'application/json', authorization: `Bearer ${TOKEN}x` },
      { 'content-type': 'application/json', authorization: `Basic ${Buffer.from('u:' + TOKEN).toString('base64')}` },
      { 'content-type': 'application/json', authorization: TOKEN },
      { 'content-type': 'application/json', authorization: 'Bearer ' },
    ]) {
      const r = await h.push(srv.port, msg, headers);
      assert.equal(r.status, 403, JSON.stringify(headers));
      assert.deepEqual(r.json, { error: 'Access forbidden' });
    }
    const sub = await subscriber(srv.port, ['tok']);
    const r = await h.push(srv.port, msg, JSON_AUTH);
    assert.equal(r.status, 200);
    // Only the authorised push was delivered.
    assert.deepEqual(await sub.nextJson(), [null, null, 'tok', 'msg', { data: 1, event: 'e' }]);
    // The topics endpoint is under /api too.
    const tr = await h.request(srv.port, 'GET', '/api/topics/tok');
    assert.equal(tr.status, 403);
    assert.deepEqual(tr.json, { error: 'Access forbidden' });
    await sub.close(1000);
  });

  await t.test('GET /api/topics/<topic> counts the sockets joined on this node', async () => {
    const auth = { authorization: `Bearer ${TOKEN}` };
    const info = async (name) => {
      const r = await h.request(srv.port, 'GET', `/api/topics/${name}`, { headers: auth });
      assert.equal(r.status, 200, r.body);
      assert.match(r.headers['content-type'], /^application\/json/);
      // Only the documented fields are compared; extra fields are allowed.
      const { topic, subscribers, listening } = r.json;
      return { topic, subscribers, listening };
    };
    assert.deepEqual(await info('room:9'), { topic: 'room:9', subscribers: 0, listening: false });
    const one = await subscriber(srv.port, ['room:9']);
    const two = await subscriber(srv.port, ['room:9', 'room:other']);
    assert.deepEqual(await info('room:9'), { topic: 'room:9', subscribers: 2, listening: true });
    assert.deepEqual(await info(encodeURIComponent('room:9')), { topic: 'room:9', subscribers: 2, listening: true });
    assert.deepEqual(await info('room:other'), { topic: 'room:other', subscribers: 1, listening: true });
    // A leave takes one away.
    two.send(['1', '3', 'room:9', 'phx_leave', {}]);
    assert.deepEqual(await two.nextJson(), ['1', '3', 'room:9', 'phx_reply', { status: 'ok', response: {} }]);
    assert.deepEqual(await two.nextJson(), ['1', '1', 'room:9', 'phx_close', {}]);
    assert.deepEqual(await info('room:9'), { topic: 'room:9', subscribers: 1, listening: true });
    // A closed socket takes its joins away.
    await one.close(1000);
    await two.close(1000);
    await h.eventually(async () => (await info('room:9')).subscribers === 0 && (await info('room:other')).subscribers === 0,
      10000, 'subscribers to drop to 0 after the sockets closed');
    assert.deepEqual(await info('room:9'), { topic: 'room:9', subscribers: 0, listening: false });
  });
});

test('push API without a token answers loopback clients', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, '');
  const r = await h.push(srv.port, { channel: 'a', event: 'e', data: 1 });
  assert.equal(r.status, 200);
  assert.deepEqual(r.json, { channel: ['a'], data: 1, event: 'e' });
  const tr = await h.request(srv.port, 'GET', '/api/topics/a');
  assert.equal(tr.status, 200);
  assert.equal(tr.json.topic, 'a');
  assert.equal(tr.json.subscribers, 0);
  assert.equal(tr.json.listening, false);
});

test('batch push: an array of pushes, all or nothing', { timeout: 30000 }, async (t) => {
  // Beyond PushEx: DESIGN.md's "batch form" of the publish API.
  const srv = await h.serve(t, '');
  let r = await h.push(srv.port, [{ channel: 'a', event: 'e', data: 1 }, { channel: ['b', 'b'], event: 'f', data: 2 }]);
  assert.equal(r.status, 200);
  assert.deepEqual(r.json, [{ channel: ['a'], data: 1, event: 'e' }, { channel: ['b'], data: 2, event: 'f' }]);
  r = await h.push(srv.port, [{ channel: 'a', event: 'e', data: 1 }, { channel: 'b' }]);
  assert.equal(r.status, 422);
});
