'use strict';
// Binary payloads (the V2 binary format): POST /api/push with
// application/octet-stream reaches phoenix.js as an ArrayBuffer of the
// exact bytes (V1 subscribers skip it, counted); a binary client push
// reaches the message hook as a string with meta.binary; malformed binary
// messages close with a clear code and reason.
const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('./lib/harness');

const QUIET = { reconnectAfterMs: () => 600000, rejoinAfterMs: () => 600000 };

const CONFIG = `scripts = { "m.lua" }\n`;
const HOOKS = `
return {
  message = function(socket, topic, event, payload, meta)
    if meta and meta.binary then
      local hex = {}
      for i = 1, #payload do hex[i] = string.format("%02x", payload:byte(i)) end
      return { kind = type(payload), hex = table.concat(hex), event = event, topic = topic }
    end
    return { kind = type(payload), meta = type(meta) }
  end,
}`;

function binaryPush(port, query, body, type = 'application/octet-stream') {
  return h.request(port, 'POST', `/api/push?${query}`, { body, headers: { 'content-type': type } });
}

test('an octet-stream push reaches phoenix.js as an ArrayBuffer of its bytes; V1 sockets skip it', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, '');
  const { ch } = await h.joined(t, srv.port, 'room:bin', QUIET);
  const v1 = await h.rawWs(srv.port, '/socket/websocket');
  v1.sendText({ topic: 'room:bin', event: 'phx_join', payload: {}, ref: '1' });
  assert.equal((await v1.nextJson()).payload.status, 'ok');

  const bytes = Buffer.alloc(300);
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7) & 0xff;
  const got = h.nextEvent(ch, 'blob');
  const r = await binaryPush(srv.port, 'channel=room:bin&event=blob', bytes);
  assert.equal(r.status, 200);
  assert.deepEqual(r.json, { channel: ['room:bin'], bytes: 300, event: 'blob' });
  const payload = await got;
  assert.ok(payload instanceof ArrayBuffer, `not an ArrayBuffer: ${Object.prototype.toString.call(payload)}`);
  assert.deepEqual(Buffer.from(payload), bytes);

  // The V1 socket got nothing for it: the next frame it sees is a later JSON push.
  await h.push(srv.port, { channel: 'room:bin', event: 'marker', data: 1 });
  const next = await v1.next();
  assert.equal(next.opcode, 1);
  assert.equal(JSON.parse(next.payload).payload.event, 'marker');
  const m = await h.metrics(srv.port);
  assert.equal(m['herald_dropped_total{reason="binary_to_v1"}'], 1);

  // An empty body is a push of no bytes; the query's channel[] lists work too.
  const none = h.nextEvent(ch, 'empty');
  const e = await binaryPush(srv.port, 'channel[]=room:bin&channel[]=other&event=empty', Buffer.alloc(0));
  assert.deepEqual(e.json, { channel: ['room:bin', 'other'], bytes: 0, event: 'empty' });
  assert.equal((await none).byteLength, 0);

  // Refusals: no event, a channel over 255 bytes.
  let bad = await binaryPush(srv.port, 'channel=room:bin', bytes);
  assert.equal(bad.status, 422);
  assert.match(bad.json.error, /channel and event are required in the query/);
  bad = await binaryPush(srv.port, `channel=${'x'.repeat(256)}&event=e`, bytes);
  assert.equal(bad.status, 422);
  assert.match(bad.json.error, /at most 255 bytes/);
  v1.end();
});

test('a binary client push reaches the message hook as a string with meta.binary', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, CONFIG, { 'm.lua': HOOKS });
  const { ch } = await h.joined(t, srv.port, 'room:up', QUIET);
  const buf = new Uint8Array([0, 1, 2, 0xfe, 0xff, 0x22, 0x5d]).buffer;
  const reply = await new Promise((resolve, reject) => {
    ch.push('upload', buf).receive('ok', resolve).receive('error', reject).receive('timeout', () => reject(new Error('timeout')));
  });
  assert.deepEqual(reply, { kind: 'string', hex: '000102feff225d', event: 'upload', topic: 'room:up' });
  // A JSON push is unchanged: a table, and no fifth argument.
  const json = await new Promise((resolve, reject) => {
    ch.push('text', { a: 1 }).receive('ok', resolve).receive('error', reject).receive('timeout', () => reject(new Error('timeout')));
  });
  assert.deepEqual(json, { kind: 'table', meta: 'nil' });
});

test('malformed binary messages close with 1007 (1003 on a V1 socket)', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, CONFIG, { 'm.lua': HOOKS });
  const B = (...a) => Buffer.from(a.flatMap((x) => (typeof x === 'string' ? [...Buffer.from(x)] : [x])));
  const cases = [
    [B(0, 1), 'invalid binary message: truncated header'],
    [B(0, 0, 0, 4, 4, 'room'), 'invalid binary message: truncated header'],
    [B(0, 200, 200, 200, 200, 'ab'), 'invalid binary message: truncated header'],
    [B(1, 0, 0, 1, 1, 't', 'e'), 'invalid binary message: unknown kind (a client sends pushes, kind 0)'],
    [B(0, 0, 0, 0, 1, 'e'), 'invalid binary message: topic or event empty'],
    [B(0, 0, 0, 2, 1, 'a', 0, 'e'), 'invalid binary message: a header string that is not UTF-8 without NUL'],
    [B(0, 1, 1, 1, 8, '1', '1', 't', 'phx_join'), 'invalid binary message: a control event (send it as JSON text)'],
  ];
  for (const [bytes, reason] of cases) {
    const c = await h.rawWs(srv.port);
    c.send(2, bytes);
    const cf = await c.closeFrame();
    assert.deepEqual([cf.code, cf.reason], [1007, reason], reason);
    c.end();
  }
  // A push to a topic not joined is answered, as for JSON.
  const c = await h.rawWs(srv.port);
  c.send(2, B(0, 0, 1, 4, 1, '5', 'nope', 'e', 'x'));
  assert.deepEqual(await c.nextJson(), [null, '5', 'nope', 'phx_reply', { status: 'error', response: { reason: 'unmatched topic' } }]);
  c.end();
  const v1 = await h.rawWs(srv.port, '/socket/websocket?vsn=1.0.0');
  v1.send(2, B(0, 0, 0, 1, 1, 't', 'e'));
  const cf = await v1.closeFrame();
  assert.deepEqual([cf.code, cf.reason], [1003, 'binary frames are not supported in V1']);
  v1.end();
});
