'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('./lib/harness');

const INVALID = { error: 'Invalid push arguments: channel, data, event are required.' };

test('push API: JSON and form bodies, validation, token, topic info', async (t) => {
  const srv = await h.startHerald('api = { token = "s3cret" }\n');
  t.after(() => srv.stop());
  const auth = { 'content-type': 'application/json', authorization: 'Bearer s3cret' };

  let r = await h.push(srv.port, { channel: ['a', 'b', 'a'], event: 'e', data: { x: [1, 2] } }, auth);
  assert.equal(r.status, 200);
  assert.deepEqual(r.json, { channel: ['a', 'b'], data: { x: [1, 2] }, event: 'e' });

  r = await h.push(srv.port, { channel: 'a', event: 'e', data: null }, auth);
  assert.deepEqual(r.json, { channel: ['a'], data: null, event: 'e' });

  r = await h.request(srv.port, 'POST', '/api/push', {
    body: 'channel[]=x&channel[]=y&channel[]=x&event=ev&data=hello%20there',
    headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: 'Bearer s3cret' },
  });
  assert.equal(r.status, 200);
  assert.deepEqual(r.json, { channel: ['x', 'y'], data: 'hello there', event: 'ev' });

  for (const bad of [{ event: 'e', data: 1 }, { channel: 'a', data: 1 }, { channel: 'a', event: 'e' },
    { channel: 'a', event: 5, data: 1 }, { channel: [1], event: 'e', data: 1 }, { channel: [], event: 'e', data: 1 }, [1]]) {
    r = await h.push(srv.port, bad, auth);
    assert.equal(r.status, 422, JSON.stringify(bad));
    if (!Array.isArray(bad)) assert.deepEqual(r.json, INVALID);
  }
  r = await h.request(srv.port, 'POST', '/api/push', { body: '{"channel":', headers: auth });
  assert.equal(r.status, 400);
  assert.match(r.json.error, /^invalid JSON/);
  r = await h.request(srv.port, 'POST', '/api/push', { body: 'x', headers: { 'content-type': 'text/plain', authorization: 'Bearer s3cret' } });
  assert.equal(r.status, 415);

  for (const headers of [{ 'content-type': 'application/json' }, { 'content-type': 'application/json', authorization: 'Bearer nope' }]) {
    r = await h.push(srv.port, { channel: 'a', event: 'e', data: 1 }, headers);
    assert.equal(r.status, 403);
    assert.deepEqual(r.json, { error: 'Access forbidden' });
  }

  // Batch: all or nothing.
  r = await h.push(srv.port, [{ channel: 'a', event: 'e', data: 1 }, { channel: 'b', event: 'f', data: 2 }], auth);
  assert.equal(r.status, 200);
  assert.equal(r.json.length, 2);
  r = await h.push(srv.port, [{ channel: 'a', event: 'e', data: 1 }, { channel: 'b' }], auth);
  assert.equal(r.status, 422);
  assert.equal(r.json.index, 1);

  // Topic info counts sockets joined on this node.
  const s = await h.rawWs(srv.port);
  s.sendText(['1', '1', 'room:9', 'phx_join', {}]);
  assert.equal((await s.nextJson())[4].status, 'ok');
  r = await h.request(srv.port, 'GET', '/api/topics/room:9', { headers: { authorization: 'Bearer s3cret' } });
  assert.equal(r.json.subscribers, 1);
  assert.equal(r.json.listening, true);
  r = await h.request(srv.port, 'GET', '/api/topics/room:none', { headers: { authorization: 'Bearer s3cret' } });
  assert.equal(r.json.subscribers, 0);
  assert.equal(r.json.listening, false);
  s.end();
  assert.deepEqual(srv.errors(), []);
});

test('push API without a token answers loopback clients', async (t) => {
  const srv = await h.startHerald('');
  t.after(() => srv.stop());
  const r = await h.push(srv.port, { channel: 'a', event: 'e', data: 1 });
  assert.equal(r.status, 200);
  assert.match(srv.log, /loopback addresses only/);
});
