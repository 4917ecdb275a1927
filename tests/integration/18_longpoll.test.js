'use strict';
// The Phoenix LongPoll transport (<mount>/longpoll), as /tmp/lp-spec.md
// describes it. Raw HTTP first, to check the wire exactly: the open
// ({"status":410,"token",...}), held polls answered with the frames a
// WebSocket would carry, 204 after longpoll.poll_ms, ndjson POSTs and
// their refusals (400, 413, a malformed Phoenix message ending the
// session), forged, expired and foreign tokens (410, counted by reason),
// CORS and the preflight, 405, the mounts table and its config errors,
// the authenticate hook (403) and herald.disconnect, limits (503 with
// status 500, a slow consumer closed), binary pushes skipped (counted),
// V1 frames. Then phoenix.js's own LongPoll in Node (fetch): join, push,
// presence beside a WebSocket client, a hook's reply, history recovery,
// and a drain after which it reconnects by itself to the next process on
// the same port.
const test = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const h = require('./lib/harness');
const { LongPoll } = require('phoenix');

const QUIET = { reconnectAfterMs: () => 600000, rejoinAfterMs: () => 600000 };

// ---- raw HTTP ---------------------------------------------------------------------

// One request on a fresh connection (h.request, with a longer deadline:
// some wait for a held poll).
function req(port, method, p, opts = {}) { return h.request(port, method, p, { ms: 20000, ...opts }); }

const lpPath = (mount) => (mount === '/' ? '/longpoll' : `${mount}/longpoll`);

// Opens a session: GET without a token. Resolves the raw answer.
function openRaw(port, { mount = '/socket', query = 'vsn=2.0.0', headers, localAddress } = {}) {
  return req(port, 'GET', `${lpPath(mount)}?${query}`, { headers: { accept: 'application/json', ...headers }, localAddress });
}

// The open answer exactly: HTTP 200 {"status":410,"token":"<token>","messages":[]}.
function assertOpened(r, what = 'the open') {
  assert.equal(r.status, 200, `${what}: ${r.status} ${r.body}`);
  assert.ok(r.json, `${what}: not JSON: ${r.body}`);
  assert.deepEqual(Object.keys(r.json).sort(), ['messages', 'status', 'token'], `${what}: ${r.body}`);
  assert.equal(r.json.status, 410, what);
  assert.deepEqual(r.json.messages, [], what);
  assert.equal(typeof r.json.token, 'string', what);
  assert.ok(r.json.token.length > 0, what);
  return r.json.token;
}

// A raw long-poll session: poll(), post(), and messages(n) which polls
// (a bounded number of times) until n messages came.
async function session(port, opts = {}) {
  const { mount = '/socket', query = 'vsn=2.0.0' } = opts;
  const token = assertOpened(await openRaw(port, opts));
  const url = (tok = token) => `${lpPath(mount)}?${query}&token=${encodeURIComponent(tok)}`;
  const s = {
    token,
    url,
    poll(tok = token, headers = {}) { return req(port, 'GET', url(tok), { headers: { accept: 'application/json', ...headers } }); },
    // lines: an array (ndjson, joined with \n) or a string (sent as is).
    post(lines, type = 'application/x-ndjson', tok = token) {
      const body = Array.isArray(lines) ? lines.map((l) => (typeof l === 'string' ? l : JSON.stringify(l))).join('\n') : lines;
      return req(port, 'POST', url(tok), { body, headers: { 'content-type': type } });
    },
    // Polls until n messages (frame texts; a V1 session's: the frames' objects)
    // came; each answer must be a 200 or a 204 of this session.
    async messages(n, maxPolls = 20) {
      const got = [];
      for (let i = 0; i < maxPolls && got.length < n; i++) {
        const r = await s.poll();
        assert.equal(r.status, 200, `poll: ${r.status} ${r.body}`);
        if (r.json.status === 204) { assert.deepEqual(r.json, { status: 204, token, messages: [] }); continue; }
        assert.equal(r.json.status, 200, `poll: ${r.body}`);
        assert.equal(r.json.token, token);
        const v1 = !/(^|&)vsn=2\./.test(query);
        for (const m of r.json.messages) {
          assert.equal(typeof m, v1 ? 'object' : 'string', `a message that is not a frame ${v1 ? 'object' : 'text'}: ${r.body}`);
        }
        got.push(...r.json.messages);
      }
      assert.ok(got.length >= n, `${got.length} of ${n} messages after ${maxPolls} polls: ${JSON.stringify(got)}`);
      return got;
    },
    // Polls until the session is reported gone ({"status":410}); what came
    // before it must be 200s or 204s.
    async untilGone(maxPolls = 10) {
      for (let i = 0; i < maxPolls; i++) {
        const r = await s.poll();
        assert.equal(r.status, 200, `poll: ${r.status} ${r.body}`);
        if (r.json.status === 410) { assert.deepEqual(r.json, { status: 410 }); return; }
        assert.ok([200, 204].includes(r.json.status), `poll: ${r.body}`);
      }
      assert.fail(`the session was not gone after ${maxPolls} polls`);
    },
  };
  return s;
}

const JOIN = (topic, ref = '1', payload = {}) => [ref, ref, topic, 'phx_join', payload];
const okReply = (topic, ref = '1', response = {}, joinRef = ref) => JSON.stringify([joinRef, ref, topic, 'phx_reply', { status: 'ok', response }]);

// Replaces one letter or digit near the middle of s by another of its kind.
function flip(s) {
  for (let k = 0; k < s.length; k++) {
    const i = (Math.floor(s.length / 2) + k) % s.length;
    const c = s[i];
    let d = null;
    if (/[a-z]/.test(c)) d = c === 'a' ? 'b' : 'a';
    else if (/[A-Z]/.test(c)) d = c === 'A' ? 'B' : 'A';
    else if (/[0-9]/.test(c)) d = c === '0' ? '1' : '0';
    if (d) return s.slice(0, i) + d + s.slice(i + 1);
  }
  throw new Error(`nothing to flip in ${s}`);
}

const metric = (m, name) => m[name] || 0;

function assertCommonHeaders(r, what) {
  assert.equal(r.headers['access-control-allow-origin'], '*', `${what}: Access-Control-Allow-Origin`);
  assert.match(r.headers['cache-control'] || '', /no-store/, `${what}: Cache-Control`);
  assert.match(r.headers['content-type'] || '', /^application\/json/, `${what}: Content-Type`);
}

// A TCP port on 127.0.0.1 that nothing listens on (the kernel's pick).
function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

// ---- the wire ---------------------------------------------------------------------

test('open, a held poll answered with the frame a WebSocket gets, a superseded poll, posts, metrics', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, '');
  // Every way of saying "no token" opens a session (phoenix.js 1.8 sends
  // no token parameter at all on its first request; others token=null).
  const tokens = [];
  for (const query of ['vsn=2.0.0', 'vsn=2.0.0&token=null', 'vsn=2.0.0&token=undefined', 'vsn=2.0.0&token=']) {
    const r = await openRaw(srv.port, { query });
    tokens.push(assertOpened(r, query));
    assertCommonHeaders(r, query);
  }
  assert.equal(new Set(tokens).size, tokens.length, 'each open has its own token');
  let m = await h.metrics(srv.port);
  assert.equal(m.herald_longpoll_sessions, 4);
  assert.equal(m.herald_longpoll_sessions_opened_total, 4);

  // A join posted as ndjson; its reply on the next poll, as a WebSocket text frame.
  const s = await session(srv.port);
  const p = await s.post([JOIN('room:lp')]);
  assert.equal(p.status, 200, p.body);
  assert.deepEqual(p.json, { status: 200 });
  assertCommonHeaders(p, 'the POST');
  assert.deepEqual(await s.messages(1), [okReply('room:lp')]);

  // A WebSocket on the same topic, joined with the same refs.
  const ws = await h.rawWs(srv.port);
  ws.sendText(JOIN('room:lp'));
  assert.equal(await ws.nextText(), okReply('room:lp'));

  // A held poll is answered with the push, as the same text the WebSocket gets.
  const held = s.poll();
  const r = await h.push(srv.port, { channel: 'room:lp', event: 'hello', data: { text: 'hï', n: [1, 2] } });
  assert.equal(r.status, 200);
  const wsText = await ws.nextText();
  assert.equal(wsText, '[null,null,"room:lp","msg",{"data":{"text":"hï","n":[1,2]},"event":"hello"}]');
  const got = await held;
  assert.equal(got.status, 200, got.body);
  assert.deepEqual(got.json, { status: 200, token: s.token, messages: [wsText] });
  assertCommonHeaders(got, 'the poll');

  // The token may come in X-Phoenix-Longpoll-Token instead of the query.
  const viaHeader = req(srv.port, 'GET', '/socket/longpoll?vsn=2.0.0', { headers: { 'x-phoenix-longpoll-token': s.token } });
  await h.push(srv.port, { channel: 'room:lp', event: 'again', data: 1 });
  const hv = await viaHeader;
  assert.deepEqual(hv.json, { status: 200, token: s.token, messages: ['[null,null,"room:lp","msg",{"data":1,"event":"again"}]'] });
  await ws.nextText();

  // A second poll while one is held: the older one is answered 204 first.
  m = await h.metrics(srv.port);
  const polls = metric(m, 'herald_longpoll_polls_total');
  const first = s.poll();
  await h.eventually(async () => metric(await h.metrics(srv.port), 'herald_longpoll_polls_total') > polls, 10000,
    'herald_longpoll_polls_total to count the held poll');
  const second = s.poll();
  const f = await first;
  assert.equal(f.status, 200, f.body);
  assert.deepEqual(f.json, { status: 204, token: s.token, messages: [] });
  await h.push(srv.port, { channel: 'room:lp', event: 'third', data: 3 });
  const sec = await second;
  assert.deepEqual(sec.json, { status: 200, token: s.token, messages: ['[null,null,"room:lp","msg",{"data":3,"event":"third"}]'] });

  m = await h.metrics(srv.port);
  assert.ok(m.herald_longpoll_polls_total >= 4, `polls_total ${m.herald_longpoll_polls_total}`);
  assert.ok(m.herald_longpoll_posts_total >= 1, `posts_total ${m.herald_longpoll_posts_total}`);
  assert.equal(m.herald_longpoll_sessions, 5);
  ws.end();
});

test('an idle poll is answered 204 after longpoll.poll_ms; no heartbeat is needed', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, 'longpoll = { poll_ms = 300 }\n');
  const s = await session(srv.port);
  for (let i = 0; i < 3; i++) {
    const r = await s.poll();
    assert.equal(r.status, 200, r.body);
    assert.deepEqual(r.json, { status: 204, token: s.token, messages: [] });
    assertCommonHeaders(r, 'the 204 poll');
  }
  // The session is still there and delivers (no heartbeat was ever sent).
  assert.deepEqual((await s.post([JOIN('room:idle')])).json, { status: 200 });
  assert.deepEqual(await s.messages(1), [okReply('room:idle')]);
  assert.equal((await h.metrics(srv.port)).herald_longpoll_sessions, 1);
});

test('window_ms runs only while no poll is held: held polls longer than the window keep the session', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, 'longpoll = { poll_ms = 1200, window_ms = 500 }\n');
  const s = await session(srv.port);
  for (let i = 0; i < 2; i++) {
    const r = await s.poll();
    assert.deepEqual(r.json, { status: 204, token: s.token, messages: [] }, `poll ${i}: the session outlives its held poll`);
  }
  const m = await h.metrics(srv.port);
  assert.equal(m.herald_longpoll_sessions_expired_total, 0);
  assert.equal(m.herald_longpoll_sessions, 1);
});

test('window_ms starts again when a held poll is answered by a message: a client that stops then is abandoned', { timeout: 30000 }, async (t) => {
  // poll_ms far longer than the window: only the window may end the session.
  const srv = await h.serve(t, 'longpoll = { poll_ms = 60000, window_ms = 300 }\n');
  const s = await session(srv.port);
  assert.deepEqual((await s.post([JOIN('room:w')])).json, { status: 200 });
  assert.deepEqual(await s.messages(1), [okReply('room:w')]);
  const polls = metric(await h.metrics(srv.port), 'herald_longpoll_polls_total');
  const held = s.poll();
  await h.eventually(async () => metric(await h.metrics(srv.port), 'herald_longpoll_polls_total') > polls, 10000, 'the poll to be held');
  await h.push(srv.port, { channel: 'room:w', event: 'e', data: 1 });
  assert.deepEqual((await held).json, { status: 200, token: s.token, messages: ['[null,null,"room:w","msg",{"data":1,"event":"e"}]'] });
  // No poll from now on: the session is abandoned window_ms later (not when the answered poll's poll_ms would have run out).
  await h.eventually(async () => metric(await h.metrics(srv.port), 'herald_longpoll_sessions_expired_total') === 1, 5000,
    'the session to expire window_ms (300 ms) after its poll was answered');
  assert.deepEqual((await s.poll()).json, { status: 410 });
});

test('window_ms starts when the client drops its held poll (a closed tab): the session is abandoned', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, 'longpoll = { poll_ms = 60000, window_ms = 300 }\n');
  const s = await session(srv.port);
  const polls = metric(await h.metrics(srv.port), 'herald_longpoll_polls_total');
  const c = await h.httpConn(srv.port);
  c.write(`GET ${s.url()} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n`);
  await h.eventually(async () => metric(await h.metrics(srv.port), 'herald_longpoll_polls_total') > polls, 10000, 'the poll to be held');
  c.end(); // the client goes away with its poll
  await h.eventually(async () => metric(await h.metrics(srv.port), 'herald_longpoll_sessions_expired_total') === 1, 5000,
    'the session to expire window_ms (300 ms) after its held poll\'s connection closed');
  assert.deepEqual((await s.poll()).json, { status: 410 });
});

const BINARY_HOOK = `
return {
  message = function(socket, topic, event, payload, meta)
    if meta and meta.binary then
      local hex = {}
      for i = 1, #payload do hex[i] = string.format("%02x", payload:byte(i)) end
      return { hex = table.concat(hex), event = event, topic = topic }
    end
    return { echo = payload }
  end,
}`;

test('POST: ndjson lines and base64 binary lines, a plain body, max_batch, bad base64, oversized, malformed', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, 'longpoll = { max_batch = 3 }\nlimits = { max_message_bytes = 1024 }\nscripts = { "m.lua" }\n',
    { 'm.lua': BINARY_HOOK });
  const s = await session(srv.port);
  // max_batch lines at once: fine, answered in order.
  let r = await s.post([JOIN('room:a', '1'), JOIN('room:b', '2'), JOIN('room:c', '3')]);
  assert.deepEqual([r.status, r.json], [200, { status: 200 }], r.body);
  assert.deepEqual(await s.messages(3), [okReply('room:a', '1'), okReply('room:b', '2'), okReply('room:c', '3')]);

  // Another content type: the whole body is one text message.
  r = await s.post(JSON.stringify(['1', '4', 'room:a', 'say', { x: 1 }]), 'application/json');
  assert.deepEqual([r.status, r.json], [200, { status: 200 }], r.body);
  assert.deepEqual(await s.messages(1), [JSON.stringify(['1', '4', 'room:a', 'phx_reply', { status: 'ok', response: { echo: { x: 1 } } }])]);

  // A line that is not JSON text is base64 of a V2 binary push (as phoenix.js sends one).
  const B = (...a) => Buffer.from(a.flatMap((x) => (typeof x === 'string' ? [...Buffer.from(x)] : [x])));
  const bin = B(0, 1, 1, 6, 6, '1', '5', 'room:a', 'upload', 0, 0xff, 0x22, 0x5d);
  r = await s.post([bin.toString('base64')]);
  assert.deepEqual([r.status, r.json], [200, { status: 200 }], r.body);
  // (the reply's object comes from a Lua table: compared parsed, its key order is Lua's)
  assert.deepEqual((await s.messages(1)).map((x) => JSON.parse(x)),
    [['1', '5', 'room:a', 'phx_reply', { status: 'ok', response: { hex: '00ff225d', event: 'upload', topic: 'room:a' } }]]);

  // Refusals.
  r = await s.post([JOIN('room:d', '6'), JOIN('room:e', '7'), JOIN('room:f', '8'), JOIN('room:g', '9')]);
  assert.equal(r.status, 413, `over max_batch: ${r.status} ${r.body}`);
  assert.equal(r.json && r.json.status, 413, r.body);
  assert.equal(typeof r.json.error, 'string');
  assertCommonHeaders(r, 'the 413');
  r = await s.post(['%%% not base64 %%%']);
  assert.equal(r.status, 400, `bad base64: ${r.status} ${r.body}`);
  assert.equal(r.json && r.json.status, 400, r.body);
  assert.equal(typeof r.json.error, 'string');
  assertCommonHeaders(r, 'the 400');
  r = await s.post([['1', '10', 'room:a', 'say', { pad: 'x'.repeat(2000) }]]);
  assert.equal(r.status, 413, `over max_message_bytes: ${r.status} ${r.body}`);
  assert.equal(r.json && r.json.status, 413, r.body);
  r = await s.post(JSON.stringify(['1', '11', 'room:a', 'say', { pad: 'x'.repeat(2000) }]), 'application/json');
  assert.equal(r.status, 413, `a plain body over max_message_bytes: ${r.status} ${r.body}`);
  assert.equal(r.json && r.json.status, 413, r.body);
  const m = await h.metrics(srv.port);
  assert.ok(m.herald_longpoll_posts_total >= 3, `posts_total ${m.herald_longpoll_posts_total}`);

  // A malformed Phoenix message closes the session (1007): 410 with the error, then gone.
  const bad = await session(srv.port);
  r = await bad.post(['["1","1","room:a"']);
  assert.deepEqual(r.json, { status: 410, error: 'invalid Phoenix message' }, r.body);
  const after = await bad.poll();
  assert.equal(after.status, 200);
  assert.deepEqual(after.json, { status: 410 });

  // A malformed binary message (valid base64, a truncated header) closes it too (1007 on a WebSocket).
  const badBin = await session(srv.port);
  r = await badBin.post([Buffer.from([0, 1]).toString('base64')]);
  assert.equal(r.status, 200, r.body);
  assert.equal(r.json.status, 410, r.body);
  assert.equal(typeof r.json.error, 'string', r.body);
  assert.deepEqual((await badBin.poll()).json, { status: 410 });
  // Binary on a V1 session (1003 on a WebSocket): closed as well.
  const v1 = await session(srv.port, { query: 'vsn=1.0.0' });
  r = await v1.post([B(0, 0, 0, 1, 1, 't', 'e').toString('base64')]);
  assert.equal(r.status, 200, r.body);
  assert.equal(r.json.status, 410, r.body);
  assert.deepEqual((await v1.poll()).json, { status: 410 });
});

test('tokens: a forged one and a session expired after window_ms get 410, counted by reason', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, 'longpoll = { window_ms = 300 }\n');
  const s = await session(srv.port);
  let m = await h.metrics(srv.port);
  const forged = metric(m, 'herald_longpoll_tokens_rejected_total{reason="forged"}');
  const gone = metric(m, 'herald_longpoll_tokens_rejected_total{reason="gone"}');
  const expired = metric(m, 'herald_longpoll_sessions_expired_total');

  // One character changed: it does not verify.
  const f = await s.poll(flip(s.token));
  assert.equal(f.status, 200, f.body);
  assert.deepEqual(f.json, { status: 410 });
  assertCommonHeaders(f, 'the 410');
  m = await h.metrics(srv.port);
  assert.equal(metric(m, 'herald_longpoll_tokens_rejected_total{reason="forged"}'), forged + 1);
  // Garbage, and a forged token on a POST.
  assert.deepEqual((await s.poll('not-a-token')).json, { status: 410 });
  const fp = await s.post([JOIN('room:x')], 'application/x-ndjson', flip(s.token));
  assert.deepEqual([fp.status, fp.json], [200, { status: 410 }], fp.body);
  m = await h.metrics(srv.port);
  assert.ok(metric(m, 'herald_longpoll_tokens_rejected_total{reason="forged"}') >= forged + 2);

  // Nobody polls s: it expires after window_ms.
  await h.eventually(async () => metric(await h.metrics(srv.port), 'herald_longpoll_sessions_expired_total') > expired, 10000,
    'herald_longpoll_sessions_expired_total to grow');
  m = await h.metrics(srv.port);
  assert.equal(m.herald_longpoll_sessions, 0);
  const g = await s.poll();
  assert.equal(g.status, 200, g.body);
  assert.deepEqual(g.json, { status: 410 });
  m = await h.metrics(srv.port);
  assert.equal(metric(m, 'herald_longpoll_tokens_rejected_total{reason="gone"}'), gone + 1);
  assert.equal(metric(m, 'herald_longpoll_sessions_expired_total'), expired + 1);
});

test('a token from another node, or from an earlier process on the same port, gets 410', { timeout: 30000 }, async (t) => {
  const port = await freePort();
  const a = await h.startHerald(`listen = { host = "127.0.0.1", port = ${port} }\n`);
  const other = await h.serve(t, '');
  const s = await session(port);
  const at = (srv) => req(srv.port, 'GET', `/socket/longpoll?vsn=2.0.0&token=${encodeURIComponent(s.token)}`);
  // Another node (e.g. behind a balancer without sticky sessions).
  let r = await at(other);
  assert.equal(r.status, 200, r.body);
  assert.deepEqual(r.json, { status: 410 });
  assert.equal(h.metricSum(await h.metrics(other.port), 'herald_longpoll_tokens_rejected_total'), 1);
  // The next process on the same port.
  await h.finish(a);
  const b = await h.serve(t, `listen = { host = "127.0.0.1", port = ${port} }\n`);
  r = await at(b);
  assert.equal(r.status, 200, r.body);
  assert.deepEqual(r.json, { status: 410 });
  const m = await h.metrics(b.port);
  assert.equal(h.metricSum(m, 'herald_longpoll_tokens_rejected_total'), 1);
  assert.equal(m.herald_longpoll_sessions, 0);
});

test('draining: an open on a kept-alive connection after stop_accepting gets 503 {"status":500,"error":"server is shutting down"}', { timeout: 30000 }, async (t) => {
  const srv = await h.startHerald('drain = { http_idle_ms = 15000, http_ms = 20000, timeout_ms = 30000 }\n');
  t.after(() => srv.stop());
  const c = await h.httpConn(srv.port);
  t.after(() => c.end());
  c.write('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
  assert.equal((await c.response()).status, 200);
  const from = srv.log.length;
  srv.proc.kill('SIGTERM');
  await srv.waitLog(/drain: phase stop_accepting done in \d+ ms/, from);
  c.write('GET /socket/longpoll?vsn=2.0.0&token=null HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n');
  const r = await c.response();
  assert.equal(r.status, 503, r.body);
  assert.deepEqual(r.json, { status: 500, error: 'server is shutting down' });
  assert.equal(r.headers['access-control-allow-origin'], '*');
  const exit = await h.within(srv.exited, 25000, 'herald to exit');
  assert.equal(exit.code, 0, srv.log);
});

test('an abandoned session (no poll for window_ms) leaves presence', { timeout: 30000 }, async (t) => {
  // (drain.flush_ms: a session left over by a failure would hold the stop for 5 s)
  const srv = await h.serve(t, 'longpoll = { window_ms = 1000 }\ndrain = { flush_ms = 500 }\n' + APP_CONFIG, { 'app.lua': APP });
  const ws = h.phoenixSocket(srv.port, { ...QUIET, params: { user: 'watcher' } });
  t.after(() => ws.disconnect());
  await h.connect(ws);
  const ch = ws.channel('room:gone');
  const presence = new h.Presence(ch);
  await h.join(ch);
  // (a poll is held under the join, so the window does not run out before it)
  const s = await session(srv.port, { query: 'vsn=2.0.0&user=ghost' });
  const held = s.poll();
  assert.deepEqual((await s.post([JOIN('room:gone')])).json, { status: 200 });
  const hr = (await held).json;
  assert.deepEqual([hr.status, hr.token, hr.messages[0]], [200, s.token, okReply('room:gone')], JSON.stringify(hr));
  // (then presence_state, in that answer or the next; not polled for)
  await synced(presence, ['ghost', 'watcher']);
  // Nobody polls any more: the session expires (window_ms, 1 s) and ghost leaves.
  await synced(presence, ['watcher'], 6000);
  const m = await h.metrics(srv.port);
  assert.equal(m.herald_longpoll_sessions_expired_total, 1);
  assert.equal(m.herald_longpoll_sessions, 0);
  ws.disconnect();
});

test('OPTIONS preflight, other methods 405, vsn', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, '');
  const o = await req(srv.port, 'OPTIONS', '/socket/longpoll?vsn=2.0.0', {
    headers: { origin: 'http://page.example', 'access-control-request-method': 'POST',
      'access-control-request-headers': 'content-type,x-phoenix-authtoken' },
  });
  assert.equal(o.status, 200, o.body);
  assert.equal(o.headers['access-control-allow-origin'], '*');
  const methods = (o.headers['access-control-allow-methods'] || '').toUpperCase().split(/\s*,\s*/);
  for (const x of ['GET', 'POST', 'OPTIONS']) assert.ok(methods.includes(x), `allow-methods: ${o.headers['access-control-allow-methods']}`);
  const allowed = (o.headers['access-control-allow-headers'] || '').toLowerCase().split(/\s*,\s*/);
  for (const x of ['content-type', 'x-phoenix-authtoken', 'x-phoenix-longpoll-token', 'x-requested-with'])
    assert.ok(allowed.includes(x), `allow-headers lacks ${x}: ${o.headers['access-control-allow-headers']}`);

  const head = await req(srv.port, 'HEAD', '/socket/longpoll?vsn=2.0.0');
  assert.equal(head.status, 405, `HEAD: ${head.status}`);
  for (const method of ['PUT', 'DELETE', 'PATCH']) {
    const r = await req(srv.port, method, '/socket/longpoll?vsn=2.0.0', { body: method === 'DELETE' ? undefined : '{}' });
    assert.equal(r.status, 405, `${method}: ${r.status} ${r.body}`);
    assert.ok(r.json !== undefined, `${method}: a JSON body: ${r.body}`);
    assertCommonHeaders(r, `the 405 of ${method}`);
  }
  // vsn as for a WebSocket: 1.x and 2.x open, another is refused.
  assertOpened(await openRaw(srv.port, { query: 'vsn=1.0.0' }));
  assertOpened(await openRaw(srv.port, { query: '' }));
  const v = await openRaw(srv.port, { query: 'vsn=3.0.0' });
  assert.equal(v.status, 403, v.body);
  assert.equal(v.json && v.json.status, 403, v.body);
});

test('mounts: the default serves /socket/longpoll, not /push_socket/longpoll; a mount table chooses transports', { timeout: 30000 }, async (t) => {
  const def = await h.serve(t, '');
  assertOpened(await openRaw(def.port));
  assert.equal((await openRaw(def.port, { mount: '/push_socket' })).status, 404);
  const ws = await h.rawWs(def.port, '/push_socket/websocket?vsn=2.0.0');
  assert.equal(ws.status, 101);
  ws.end();

  const srv = await h.serve(t, 'mounts = { { "/socket", websocket = false }, { "/push_socket", longpoll = true }, "/" }\n');
  const noWs = await h.rawWs(srv.port, '/socket/websocket?vsn=2.0.0');
  assert.equal(noWs.status, 404);
  noWs.end();
  assertOpened(await openRaw(srv.port), '/socket/longpoll');
  assertOpened(await openRaw(srv.port, { mount: '/push_socket' }), '/push_socket/longpoll');
  const push = await h.rawWs(srv.port, '/push_socket/websocket?vsn=2.0.0');
  assert.equal(push.status, 101);
  push.end();
  // Mount "/": /websocket and /longpoll.
  const root = await h.rawWs(srv.port, '/websocket?vsn=2.0.0');
  assert.equal(root.status, 101);
  root.end();
  const s = await session(srv.port, { mount: '/' });
  assert.deepEqual((await s.post([JOIN('room:root')])).json, { status: 200 });
  assert.deepEqual(await s.messages(1), [okReply('room:root')]);
});

test('config: a bad mount table or longpoll section names the setting', { timeout: 30000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-lp-check-'));
  try {
    let n = 0;
    const check = (text) => {
      const file = path.join(dir, `c${++n}.lua`);
      fs.writeFileSync(file, text);
      const r = spawnSync(h.BIN, ['check', file], { encoding: 'utf8', timeout: 20000 });
      return { file, code: r.status, out: (r.stdout || '') + (r.stderr || '') };
    };
    for (const text of ['mounts = { { "/socket", websocket = false } }\n', 'mounts = { { "/socket", longpoll = false }, "/x" }\n',
      'mounts = { { "/push_socket", longpoll = true, websocket = true } }\n',
      'longpoll = { poll_ms = 100, window_ms = 3600000, max_batch = 10000 }\n',
      'longpoll = { poll_ms = 300000, window_ms = 100, max_batch = 1 }\n']) {
      const r = check(text);
      assert.equal(r.code, 0, `${text}: ${r.out}`);
    }
    for (const [text, re] of [
      ['mounts = { { "/socket", websocket = false, longpoll = false } }\n', /mounts/],
      ['mounts = { { "/push_socket", websocket = false } }\n', /mounts/], // longpoll is false there by default
      ['mounts = { { "/socket", sse = true } }\n', /mounts.*sse|sse.*mounts/],
      ['mounts = { { "/socket", websocket = "yes" } }\n', /mounts/],
      ['mounts = { { websocket = true } }\n', /mounts/],
      ['longpoll = { poll_ms = 99 }\n', /longpoll\.poll_ms/],
      ['longpoll = { poll_ms = 300001 }\n', /longpoll\.poll_ms/],
      ['longpoll = { window_ms = 50 }\n', /longpoll\.window_ms/],
      ['longpoll = { max_batch = 0 }\n', /longpoll\.max_batch/],
      ['longpoll = { max_batch = 10001 }\n', /longpoll\.max_batch/],
      ['longpoll = { hold_ms = 10 }\n', /longpoll\.hold_ms/],
    ]) {
      const r = check(text);
      assert.equal(r.code, 1, `${text}: exit ${r.code}: ${r.out}`);
      assert.match(r.out, re, text);
      assert.ok(r.out.includes(r.file), `the message names the file: ${r.out}`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  // At start-up too.
  const bad = await h.startHerald('mounts = { { "/socket", websocket = false, longpoll = false } }\n', {}, { expectFail: true });
  assert.notEqual(bad.result.code, 0, bad.log);
  assert.match(bad.log, /mounts/);
  assert.doesNotMatch(bad.log, /listening on/);
  fs.rmSync(bad.dir, { recursive: true, force: true });
});

// ---- hooks, origins, limits ------------------------------------------------------

const AUTH = `
return {
  authenticate = function(req)
    if req.token == "let-me-in" then return { id = req.params.user, assigns = { role = req.params.role or "guest" } } end
    return nil, "bad token"
  end,
  message = function(socket, topic, event, payload)
    if event == "kick" then return { closed = herald.disconnect(payload.id) } end
    if event == "whoami" then return { id = socket.id, role = socket.assigns.role } end
  end,
}`;

test('authenticate over LongPoll: X-Phoenix-AuthToken refused (403) or allowed; origins; herald.disconnect ends the session', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, 'scripts = { "a.lua" }\nws = { allowed_origins = { "http://good.example" } }\n', { 'a.lua': AUTH });
  let r = await openRaw(srv.port, { query: 'vsn=2.0.0&user=alice' });
  assert.equal(r.status, 403, r.body);
  assert.deepEqual(r.json, { status: 403, error: 'bad token' });
  assertCommonHeaders(r, 'the 403');
  r = await openRaw(srv.port, { query: 'vsn=2.0.0&user=alice', headers: { 'x-phoenix-authtoken': 'wrong' } });
  assert.equal(r.status, 403, r.body);
  assert.deepEqual(r.json, { status: 403, error: 'bad token' });
  r = await openRaw(srv.port, { query: 'vsn=2.0.0&user=alice', headers: { 'x-phoenix-authtoken': 'let-me-in', origin: 'http://evil.example' } });
  assert.equal(r.status, 403, r.body);
  assert.deepEqual(r.json, { status: 403, error: 'origin not allowed' });
  assert.equal(metric(await h.metrics(srv.port), 'herald_longpoll_sessions'), 0);

  // Allowed: the identity is alice's.
  const alice = await session(srv.port, { query: 'vsn=2.0.0&user=alice&role=admin', headers: { 'x-phoenix-authtoken': 'let-me-in', origin: 'http://good.example' } });
  assert.deepEqual((await alice.post([JOIN('room:k'), ['1', '2', 'room:k', 'whoami', {}]])).json, { status: 200 });
  // (the identity and the assigns reach the hook; the reply's object is a Lua table: compared parsed)
  assert.deepEqual((await alice.messages(2)).map((x) => JSON.parse(x)),
    [JSON.parse(okReply('room:k')), ['1', '2', 'room:k', 'phx_reply', { status: 'ok', response: { id: 'alice', role: 'admin' } }]]);

  // bob (phoenix.js over a WebSocket, authToken) kicks alice by identity.
  const bob = h.phoenixSocket(srv.port, { ...QUIET, params: { user: 'bob' }, authToken: 'let-me-in' });
  t.after(() => bob.disconnect());
  await h.connect(bob);
  const ch = bob.channel('room:k');
  await h.join(ch);
  const kicked = await new Promise((resolve, reject) => ch.push('kick', { id: 'alice' })
    .receive('ok', resolve).receive('error', reject).receive('timeout', () => reject(new Error('kick timed out'))));
  assert.deepEqual(kicked, { closed: 1 });
  await alice.untilGone();
  bob.disconnect();
});

test('limits.max_connections counts sessions with WebSockets (503, status 500)', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, 'limits = { max_connections = 3 }\n');
  for (let i = 0; i < 3; i++) assertOpened(await openRaw(srv.port));
  let r = await openRaw(srv.port);
  assert.equal(r.status, 503, `over max_connections: ${r.status} ${r.body}`);
  assert.equal(r.json && r.json.status, 500, r.body);
  assert.equal(typeof r.json.error, 'string');
  assertCommonHeaders(r, 'the 503');
  // Three sessions: a WebSocket is over capacity too.
  const ws = await h.rawWs(srv.port);
  assert.notEqual(ws.status, 101, 'a WebSocket over max_connections with three sessions open');
  ws.end();
  assert.equal((await h.metrics(srv.port)).herald_longpoll_sessions, 3);

  // And the other way round: two WebSockets and a session fill it.
  const other = await h.serve(t, 'limits = { max_connections = 3 }\n');
  const a = await h.rawWs(other.port);
  const b = await h.rawWs(other.port);
  assert.deepEqual([a.status, b.status], [101, 101]);
  assertOpened(await openRaw(other.port));
  r = await openRaw(other.port);
  assert.equal(r.status, 503, `over max_connections with two WebSockets: ${r.status} ${r.body}`);
  assert.equal(r.json && r.json.status, 500, r.body);
  a.end();
  b.end();
});

test('limits.max_connections_per_ip counts an address\'s sessions (503, status 500)', { timeout: 30000 }, async (t) => {
  // (loopback is a trusted proxy by default, exempt from per-address limits: only 127.0.0.1 is here)
  const srv = await h.serve(t, 'listen = { host = "127.0.0.1", port = 0, trusted_proxies = { "127.0.0.1" } }\n' +
    'limits = { max_connections_per_ip = 2 }\n');
  const two = { localAddress: '127.0.0.2' };
  // Each open's own HTTP connection is gone before the next (only the scrape's is left),
  // so that the address holds its sessions and nothing else.
  const settled = () => h.eventually(async () => (await h.metrics(srv.port)).herald_tcp_connections === 1, 10000,
    'the open\'s HTTP connection to be closed');
  assertOpened(await openRaw(srv.port, two), 'the first session of 127.0.0.2');
  await settled();
  assertOpened(await openRaw(srv.port, two), 'the second session of 127.0.0.2');
  await settled();
  const r = await openRaw(srv.port, two);
  assert.equal(r.status, 503, `a third session from 127.0.0.2: ${r.status} ${r.body}`);
  assert.equal(r.json && r.json.status, 500, r.body);
  assert.equal(typeof r.json.error, 'string');
  // Another address is not concerned.
  assertOpened(await openRaw(srv.port, { localAddress: '127.0.0.3' }));
});

test('limits.send_queue_bytes: a session that does not poll through a burst is closed (next poll 410)', { timeout: 30000 }, async (t) => {
  const slow = await h.serve(t, 'limits = { send_queue_bytes = 4096 }\n');
  const s = await session(slow.port);
  assert.deepEqual((await s.post([JOIN('room:flood')])).json, { status: 200 });
  assert.deepEqual(await s.messages(1), [okReply('room:flood')]);
  for (let i = 0; i < 12; i++) assert.equal((await h.push(slow.port, { channel: 'room:flood', event: 'big', data: { i, pad: 'y'.repeat(1000) } })).status, 200);
  const g = await s.poll();
  assert.equal(g.status, 200, g.body);
  assert.deepEqual(g.json, { status: 410 });
  assert.equal((await h.metrics(slow.port)).herald_longpoll_sessions, 0);
});

test('POSTed messages meet the channel layer as a WebSocket\'s do: max_topics_per_socket, the client message rate', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, 'limits = { max_topics_per_socket = 2, client_messages_per_s = 5, client_messages_burst = 10 }\n' +
    'scripts = { "m.lua" }\n', { 'm.lua': BINARY_HOOK });
  const s = await session(srv.port);
  const ws = await h.rawWs(srv.port);
  const joins = [JOIN('room:1', '1'), JOIN('room:2', '2'), JOIN('room:3', '3')];
  for (const j of joins) ws.sendText(j);
  const wsReplies = [await ws.nextText(), await ws.nextText(), await ws.nextText()];
  assert.deepEqual((await s.post(joins)).json, { status: 200 });
  assert.deepEqual(await s.messages(3), wsReplies, 'the same replies, the third over max_topics_per_socket');
  assert.equal(JSON.parse(wsReplies[2])[4].status, 'error');

  // 3 tokens went on the joins: of 12 pushes at once, the burst's rest is served, the others refused.
  const pushes = [...Array(12).keys()].map((i) => ['1', String(10 + i), 'room:1', 'say', { i }]);
  assert.deepEqual((await s.post(pushes)).json, { status: 200 });
  const replies = (await s.messages(12)).map((x) => JSON.parse(x));
  assert.deepEqual(replies.map((x) => x[1]), pushes.map((x) => x[1]), 'a reply to each, in order');
  const refused = replies.filter((x) => x[4].status === 'error');
  assert.ok(refused.length >= 3, `${refused.length} refused`);
  for (const x of refused) assert.deepEqual(x[4].response, { reason: 'rate limited' });
  for (const x of replies.filter((y) => y[4].status === 'ok')) assert.deepEqual(x[4].response, { echo: { i: Number(x[1]) - 10 } });
  ws.end();
});

test('a binary push reaches a WebSocket subscriber but not a long-poll one (counted)', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, '');
  const { socket, ch } = await h.joined(t, srv.port, 'room:bin', QUIET);
  const s = await session(srv.port);
  assert.deepEqual((await s.post([JOIN('room:bin')])).json, { status: 200 });
  assert.deepEqual(await s.messages(1), [okReply('room:bin')]);

  const bytes = Buffer.from([1, 2, 3, 0, 0xff]);
  const got = h.nextEvent(ch, 'blob');
  const r = await h.request(srv.port, 'POST', '/api/push?channel=room:bin&event=blob', { body: bytes, headers: { 'content-type': 'application/octet-stream' } });
  assert.equal(r.status, 200, r.body);
  assert.deepEqual(Buffer.from(await got), bytes);
  await h.push(srv.port, { channel: 'room:bin', event: 'marker', data: 1 });
  assert.deepEqual(await s.messages(1), ['[null,null,"room:bin","msg",{"data":1,"event":"marker"}]']);
  const m = await h.metrics(srv.port);
  assert.equal(m['herald_dropped_total{reason="binary_to_longpoll"}'], 1);
  socket.disconnect();
});

// A V1 session's messages are the frames' JSON objects themselves (not
// their text, as V2's are): phoenix 1.2's LongPoll stringifies each.
test('V1 over LongPoll: V1 objects in and out, the objects a V1 WebSocket gets', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, '');
  // No vsn is V1 too.
  const novsn = await session(srv.port, { query: 'user=x' });
  assert.deepEqual((await novsn.post([{ topic: 'room:nv', event: 'phx_join', payload: {}, ref: '7' }])).json, { status: 200 });
  assert.deepEqual(await novsn.messages(1),
    [{ topic: 'room:nv', event: 'phx_reply', payload: { status: 'ok', response: {} }, ref: '7' }]);
  const s = await session(srv.port, { query: 'vsn=1.0.0' });
  const join = { topic: 'room:v1', event: 'phx_join', payload: {}, ref: '1' };
  assert.deepEqual((await s.post([join])).json, { status: 200 });
  assert.deepEqual(await s.messages(1),
    [{ topic: 'room:v1', event: 'phx_reply', payload: { status: 'ok', response: {} }, ref: '1' }]);
  const ws = await h.rawWs(srv.port, '/socket/websocket?vsn=1.0.0');
  ws.sendText(join);
  await ws.nextText();
  await h.push(srv.port, { channel: 'room:v1', event: 'e', data: { x: '"]}' } });
  const text = await ws.nextText();
  assert.equal(text, '{"topic":"room:v1","event":"msg","payload":{"data":{"x":"\\"]}"},"event":"e"},"ref":null}');
  assert.deepEqual(await s.messages(1), [JSON.parse(text)]);
  ws.end();
});

// ---- phoenix.js's LongPoll in Node ------------------------------------------------

function lpSocket(port, opts = {}, mount = '/socket') {
  return new h.Socket(`http://127.0.0.1:${port}${mount}`, { transport: LongPoll, ...opts });
}

function pushAndReply(ch, event, payload) {
  return new Promise((resolve, reject) => ch.push(event, payload)
    .receive('ok', resolve).receive('error', (e) => reject(new Error('error reply: ' + JSON.stringify(e))))
    .receive('timeout', () => reject(new Error(`${event}: no reply`))));
}

function synced(presence, keys, ms = 10000) {
  return h.within(new Promise((resolve) => {
    const check = () => { if (JSON.stringify(presence.list((k) => k).sort()) === JSON.stringify(keys)) resolve(); };
    presence.onSync(check);
    check();
  }), ms, `presence ${keys}`);
}

const APP = `
return {
  authenticate = function(req) return { id = req.params.user } end,
  join = function(socket, topic) return true, { meta = { via = "test" } } end,
  message = function(socket, topic, event, payload)
    if event == "ping" then return { pong = payload.n, id = socket.id } end
  end,
}`;
const APP_CONFIG = `
topics = { { match = "room:*", presence = true }, { match = "hist:*", history_size = 20 } }
presence = { batch_ms = 20 }
scripts = { "app.lua" }
`;

test('phoenix.js LongPoll in Node: join, a push, a hook reply, presence beside a WebSocket client', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, APP_CONFIG, { 'app.lua': APP });
  const lp = lpSocket(srv.port, { ...QUIET, params: { user: 'bob' } });
  const ws = h.phoenixSocket(srv.port, { ...QUIET, params: { user: 'alice' } });
  t.after(() => { lp.disconnect(); ws.disconnect(); });
  await h.connect(lp);
  assert.equal(lp.transport, LongPoll);
  assert.match(lp.conn.pollEndpoint, /^http:\/\/127\.0\.0\.1:\d+\/socket\/longpoll\?user=bob&vsn=2\.0\.0$/);
  await h.connect(ws);
  assert.equal((await h.metrics(srv.port)).herald_longpoll_sessions, 1);

  const lch = lp.channel('room:mix');
  const lpres = new h.Presence(lch);
  const wch = ws.channel('room:mix');
  const wpres = new h.Presence(wch);
  await h.join(lch);
  await synced(lpres, ['bob']);
  await h.join(wch);
  await Promise.all([synced(lpres, ['alice', 'bob']), synced(wpres, ['alice', 'bob'])]);
  const api = (await h.request(srv.port, 'GET', '/api/presence/room:mix')).json;
  assert.deepEqual(Object.keys(api).sort(), ['alice', 'bob']);
  assert.equal(api.bob.metas[0].via, 'test');

  // A push reaches both transports alike.
  const gotL = h.nextEvent(lch, 'msg');
  const gotW = h.nextEvent(wch, 'msg');
  assert.equal((await h.push(srv.port, { channel: 'room:mix', event: 'hello', data: { text: 'über' } })).status, 200);
  assert.deepEqual(await gotL, { data: { text: 'über' }, event: 'hello' });
  assert.deepEqual(await gotW, { data: { text: 'über' }, event: 'hello' });

  // channel.push over LongPoll: the message hook's reply.
  assert.deepEqual(await pushAndReply(lch, 'ping', { n: 5 }), { pong: 5, id: 'bob' });
  // Several pushes in one tick (one batched POST), each answered.
  const replies = await Promise.all([1, 2, 3].map((n) => pushAndReply(lch, 'ping', { n })));
  assert.deepEqual(replies.map((x) => x.pong), [1, 2, 3]);
  // 150 in one tick: phoenix.js posts them 100 to a batch (longpoll.max_batch's default is 100).
  const many = await Promise.all([...Array(150).keys()].map((n) => pushAndReply(lch, 'ping', { n })));
  assert.deepEqual(many.map((x) => x.pong), [...Array(150).keys()]);

  // bob leaves over LongPoll: alice sees it.
  const left = h.within(new Promise((resolve) => wpres.onLeave((key) => { if (key === 'bob') resolve(); })), 10000, 'bob to leave');
  await h.leave(lch);
  await left;
  await synced(wpres, ['alice']);
  lp.disconnect();
  ws.disconnect();
});

test('phoenix.js LongPoll in Node: history recovery with since', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, APP_CONFIG, { 'app.lua': APP });
  const a = lpSocket(srv.port, { ...QUIET, params: { user: 'a' } });
  const b = lpSocket(srv.port, { ...QUIET, params: { user: 'b' } });
  t.after(() => { a.disconnect(); b.disconnect(); });
  await h.connect(a);
  const ach = a.channel('hist:lp');
  const seen = new h.Inbox();
  ach.on('msg', (p) => seen.push(p));
  const first = await h.join(ach);
  assert.match(first.epoch, /^[0-9a-f]{16}$/);
  assert.equal(first.offset, 0);
  for (const n of [1, 2, 3]) assert.equal((await h.push(srv.port, { channel: 'hist:lp', event: 'n', data: n })).status, 200);
  const live = [await seen.next(), await seen.next(), await seen.next()];
  assert.deepEqual(live, [1, 2, 3].map((n) => ({ data: n, event: 'n', offset: n })));

  await h.connect(b);
  const bch = b.channel('hist:lp', { since: { epoch: first.epoch, offset: 1 } });
  const replay = new h.Inbox();
  bch.on('msg', (p) => replay.push(p));
  const rj = await h.join(bch);
  assert.deepEqual(rj, { recovered: true, epoch: first.epoch, offset: 3 });
  assert.deepEqual([await replay.next(), await replay.next()], live.slice(1));
  a.disconnect();
  b.disconnect();
});

test('phoenix.js LongPoll in Node with authToken: sent as X-Phoenix-AuthToken; a refusal is a 403 (error 403, close 1008)', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, 'scripts = { "a.lua" }\n', { 'a.lua': AUTH });
  const good = lpSocket(srv.port, { ...QUIET, params: { user: 'carol' }, authToken: 'let-me-in' });
  t.after(() => good.disconnect());
  await h.connect(good);
  const ch = good.channel('room:auth');
  await h.join(ch);
  assert.deepEqual(await pushAndReply(ch, 'whoami', {}), { id: 'carol', role: 'guest' });
  good.disconnect();

  const bad = lpSocket(srv.port, { ...QUIET, params: { user: 'mallory' }, authToken: 'nope' });
  t.after(() => bad.disconnect());
  const errors = [];
  bad.onError((e) => errors.push(e));
  const closed = h.within(new Promise((resolve) => bad.onClose(resolve)), 10000, 'the refused socket to close');
  bad.connect();
  const e = await closed;
  assert.equal(e.code, 1008);
  assert.deepEqual(errors, [403]);
  bad.disconnect();
});

test('phoenix.js LongPoll at its address\'s max_connections_per_ip is told so (an error, then a retry), never stuck', { timeout: 30000 }, async (t) => {
  // 127.0.0.1 counted like any client address (not a trusted proxy here).
  const srv = await h.serve(t, 'listen = { host = "127.0.0.1", port = 0, trusted_proxies = { "10.9.9.9" } }\n' +
    'limits = { max_connections_per_ip = 2 }\ndrain = { flush_ms = 500 }\n');
  const socket = lpSocket(srv.port, { ...QUIET, timeout: 3000 });
  t.after(() => socket.disconnect());
  const errors = [];
  const outcome = h.within(new Promise((resolve) => {
    socket.onError((e) => { errors.push(e); resolve('error'); });
    socket.connect();
    socket.channel('room:ip').join().receive('ok', () => resolve('joined'));
  }), 8000, 'the join, or an error telling the client it was refused (a refusal answered {"status":500} makes phoenix.js retry)');
  const how = await outcome;
  // A refusal is {"status":500,...}: phoenix.js's error is 500 (an answer without a status leaves
  // its poll loop stopped: nothing more until its join times out).
  assert.ok(how === 'joined' || errors[0] === 500, `${how}: errors ${JSON.stringify(errors)}`);
  socket.disconnect();
});

// (phoenix.js 1.2.1's LongPoll needs window and XMLHttpRequest: it runs in
// Chromium, in 19_longpoll_browser.)

test('drain: a phoenix.js LongPoll client is ended (3410), counted, and reconnects by itself to the next process on the port', { timeout: 40000 }, async (t) => {
  const port = await freePort();
  const ADMIN = /admin listening on http:\/\/127\.0\.0\.1:(\d+)/;
  const config = `listen = { host = "127.0.0.1", port = ${port} }
admin = { host = "127.0.0.1", port = 0 }
drain = { timeout_ms = 20000, disconnect_rate = 1000, http_idle_ms = 50, flush_ms = 2000 }
timeouts = { ws_close_ms = 15000 }
`;
  const a = await h.startHerald(config);
  t.after(() => a.stop());
  await a.waitLog(ADMIN);
  const aAdmin = Number(ADMIN.exec(a.log)[1]);
  const socket = lpSocket(port, { reconnectAfterMs: () => 50, rejoinAfterMs: () => 50 });
  t.after(() => socket.disconnect());
  const closes = new h.Inbox();
  socket.onClose((e) => closes.push(e.code));
  await h.connect(socket);
  const ch = socket.channel('room:drain');
  const msgs = new h.Inbox();
  ch.on('msg', (p) => msgs.push(p));
  await h.join(ch);
  await h.push(port, { channel: 'room:drain', event: 'a', data: 1 });
  assert.deepEqual(await msgs.next(), { data: 1, event: 'a' });

  // A raw WebSocket that never answers the server's close keeps A in its
  // disconnect phase (up to ws_close_ms) while its metrics are read.
  const holder = await h.rawWs(port);
  // And a raw session whose poll is held when the drain starts.
  const raw = await session(port);
  const polls = metric(await h.metrics(aAdmin), 'herald_longpoll_polls_total');
  const held = raw.poll();
  await h.eventually(async () => metric(await h.metrics(aAdmin), 'herald_longpoll_polls_total') > polls, 10000, 'the raw poll to be held');
  a.proc.kill('SIGTERM');
  const hr = await held;
  assert.equal(hr.status, 200, hr.body);
  assert.deepEqual(hr.json, { status: 410 }, 'a held poll with nothing queued is answered 410 by the drain');
  const code = await closes.next(15000, 'the LongPoll client to be ended by the drain');
  assert.equal(code, 3410, 'phoenix.js closes with 3410 (session gone) after the drain ended its session');
  const m = await h.metrics(aAdmin);
  assert.equal(metric(m, 'herald_drain_longpoll_closed_total'), 2, 'the two sessions');
  assert.equal(await holder.closeCode(), 1012);
  holder.end();
  const exit = await h.within(a.exited, 20000, 'A to exit');
  assert.equal(exit.code, 0, a.log);
  for (const phase of ['stop_accepting', 'flush', 'disconnect'])
    assert.match(a.log, new RegExp(`drain: phase ${phase} done in \\d+ ms`));
  assert.deepEqual(a.errors(), []);

  // B on the same port: phoenix.js reopens a session and rejoins by itself.
  const rejoined = h.nextSocketMessage(socket, (x) => x.topic === 'room:drain' && x.event === 'phx_reply' && x.payload.status === 'ok',
    20000, 'the rejoin on B');
  const b = await h.serve(t, config);
  await rejoined;
  assert.equal((await h.request(port, 'GET', '/api/topics/room:drain')).json.subscribers, 1);
  await h.push(port, { channel: 'room:drain', event: 'b', data: 2 });
  assert.deepEqual(await msgs.next(), { data: 2, event: 'b' });
  await b.waitLog(ADMIN);
  const mb = await h.metrics(Number(ADMIN.exec(b.log)[1]));
  assert.equal(mb.herald_longpoll_sessions, 1);
  socket.disconnect();
});
