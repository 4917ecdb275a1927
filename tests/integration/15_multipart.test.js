'use strict';
// POST /api/push with multipart/form-data, as PushEx (Plug.Parsers) takes
// it: Node's own FormData sent by fetch (undici picks the boundary), and
// handcrafted bodies; the fields of the urlencoded form (channel,
// channel[], event, data, every value a string), file parts ignored, the
// bearer token checked as for any push; malformed bodies answer 400 with
// a JSON error and publish nothing.
const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('./lib/harness');

const TOKEN = 'multipart-token';

async function postForm(srv, form, headers = {}) {
  const r = await h.within(fetch(`${srv.url}/api/push`, {
    method: 'POST', body: form, headers: { authorization: `Bearer ${TOKEN}`, ...headers },
  }), 15000, 'fetch /api/push');
  return { status: r.status, type: r.headers.get('content-type'), json: await r.json() };
}

test('multipart/form-data pushes reach phoenix.js subscribers', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, `api = { token = "${TOKEN}" }\n`);
  const s = h.phoenixSocket(srv.port);
  await h.connect(s);
  t.after(() => s.disconnect());
  const a = s.channel('room:a');
  const b = s.channel('room:b');
  await h.join(a);
  await h.join(b);

  // One channel, data a JSON text (a string, as with the urlencoded form).
  let form = new FormData();
  form.append('channel', 'room:a');
  form.append('event', 'hello');
  form.append('data', '{"text":"hi"}');
  let got = h.nextEvent(a, 'msg'); // PushEx's frames: event msg, payload { data, event }
  let r = await postForm(srv, form);
  assert.equal(r.status, 200);
  assert.equal(r.type, 'application/json');
  assert.deepEqual(r.json, { channel: ['room:a'], data: '{"text":"hi"}', event: 'hello' });
  assert.deepEqual(await got, { data: '{"text":"hi"}', event: 'hello' });

  // channel[] twice, a file part (ignored, even one named data), UTF-8 and
  // CRLF in a value.
  form = new FormData();
  form.append('channel[]', 'room:a');
  form.append('channel[]', 'room:b');
  form.append('data', new Blob(['not this']), 'data.txt');
  form.append('event', 'many');
  form.append('data', 'é€ line 1\r\nline 2');
  form.append('other', 'ignored');
  const gotA = h.nextEvent(a, 'msg');
  const gotB = h.nextEvent(b, 'msg');
  r = await postForm(srv, form);
  assert.equal(r.status, 200);
  assert.deepEqual(r.json, { channel: ['room:a', 'room:b'], data: 'é€ line 1\r\nline 2', event: 'many' });
  assert.deepEqual(await gotA, { data: 'é€ line 1\r\nline 2', event: 'many' });
  assert.deepEqual(await gotB, { data: 'é€ line 1\r\nline 2', event: 'many' });

  // The token is checked as for any push; a missing field is 422.
  form = new FormData();
  form.append('channel', 'room:a');
  form.append('event', 'x');
  form.append('data', '1');
  assert.equal((await postForm(srv, form, { authorization: 'Bearer wrong' })).status, 403);
  form.delete('data');
  r = await postForm(srv, form);
  assert.equal(r.status, 422);
  assert.deepEqual(r.json, { error: 'Invalid push arguments: channel, data, event are required.' });

  // A handcrafted body: a quoted boundary, a preamble and an epilogue, the
  // event from the query (as PushEx: the query fills in what the body lacks).
  const body = 'preamble\r\n--b1\r\nContent-Disposition: form-data; name="channel"\r\n\r\nroom:b\r\n' +
    '--b1\r\nContent-Disposition: form-data; name=data\r\n\r\n42\r\n--b1--\r\nepilogue';
  got = h.nextEvent(b, 'msg');
  const q = await h.request(srv.port, 'POST', '/api/push?event=q', {
    body,
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'multipart/form-data; boundary="b1"' },
  });
  assert.equal(q.status, 200);
  assert.deepEqual(q.json, { channel: ['room:b'], data: '42', event: 'q' });
  assert.deepEqual(await got, { data: '42', event: 'q' });
});

test('malformed multipart bodies answer 400 with a JSON error and publish nothing', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, `api = { token = "${TOKEN}" }\n`);
  const auth = { authorization: `Bearer ${TOKEN}` };
  const part = 'Content-Disposition: form-data; name="channel"\r\n\r\nroom:a\r\n';
  const cases = [
    ['multipart/form-data', `--x\r\n${part}--x--`, 'multipart/form-data without a boundary parameter'],
    ['multipart/form-data; boundary=' + 'b'.repeat(71), '--b--', 'multipart/form-data with a malformed boundary parameter'],
    ['multipart/form-data; boundary=x', 'channel=room:a&event=e&data=1', 'malformed multipart body: no boundary'],
    ['multipart/form-data; boundary=x', `--x\r\n${part}`, 'malformed multipart body: no closing boundary'],
    ['multipart/form-data; boundary=x', '--x\r\nContent-Disposition: form-data; name="a"', 'malformed multipart body: a part\'s headers do not end'],
    ['multipart/form-data; boundary=x', '--xjunk\r\n', 'malformed multipart body: a boundary line does not end with CRLF'],
  ];
  for (const [type, body, error] of cases) {
    const r = await h.request(srv.port, 'POST', '/api/push', { body, headers: { ...auth, 'content-type': type } });
    assert.equal(r.status, 400, `${type}: ${JSON.stringify(body)}`);
    assert.equal(r.headers['content-type'], 'application/json');
    assert.deepEqual(r.json, { error });
  }
  const m = await h.metrics(srv.port, auth);
  assert.equal(h.metricSum(m, 'herald_publishes_total'), 0);
});
