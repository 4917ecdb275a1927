'use strict';
// Hooks that wait for I/O (herald.http.request) against a real backend
// (lib/backend.js: Node's http on 127.0.0.1), through the webhook_auth
// plugin and through operator scripts: decisions, a held answer while
// everyone else is served, per-socket order, failures and on_failure, a
// socket closing while its hook waits, a reload while hooks wait, the API
// refused in a topic hook, and 10,000 suspended hooks at shutdown.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const h = require('./lib/harness');
const { Backend, deferred, deadPort } = require('./lib/backend');

const UNAVAILABLE = 'auth backend unavailable';

// A Lua value written from a JS string, number, boolean, array or object.
function lua(v) {
  if (Array.isArray(v)) return `{ ${v.map(lua).join(', ')} }`;
  if (v && typeof v === 'object') return `{ ${Object.entries(v).map(([k, x]) => `${k} = ${lua(x)}`).join(', ')} }`;
  return JSON.stringify(v);
}
// The config line enabling webhook_auth with options.
function webhook(options) { return `plugins = { { "webhook_auth", ${lua(options).slice(2, -2)} } }\n`; }

// A phoenix.js transport: `ws` with extra options (a source address,
// request headers).
function transport(wsOptions) {
  return class extends h.WebSocket { constructor(url, protocols) { super(url, protocols, wsOptions); } };
}
function sock(port, params, opts = {}) {
  return h.phoenixSocket(port, { params, reconnectAfterMs: () => 60000, rejoinAfterMs: () => 60000, ...opts });
}
const joinFrame = (ref, topic, payload = {}) => [ref, ref, topic, 'phx_join', payload];
const isJoin = (topic) => (r) => r.path === '/join' && r.json && r.json.topic === topic;

// Clients (raw or phoenix.js) closed when the test ends, before the server
// stops when this is called before h.serve (t.after runs in order): a raw
// client does not answer the close frame of the server's drain, and a
// phoenix.js channel closed by it would keep a rejoin timer.
function closing(t) {
  const list = [];
  t.after(() => list.forEach((c) => (c.disconnect ? c.disconnect() : c.end())));
  return (c) => { list.push(c); return c; };
}

async function metric(port, name) { return h.metricSum(await h.metrics(port), name); }
async function metricReaches(port, name, want, ms = 20000) {
  return h.eventually(async () => (await metric(port, name)) === want, ms, `${name} = ${want}`);
}

test('webhook_auth: the backend allows with an identity and assigns later hooks see, and refuses with reasons the client gets', async (t) => {
  const b = await Backend.start(t, (r) => {
    if (r.path === '/connect') {
      const user = r.json.params.user;
      if (user === 'mallory') return { json: { allow: false, reason: 'banned' } };
      return { json: { allow: true, id: `user-${user}`, assigns: { role: 'admin', tenant: r.json.headers['x-tenant'] } } };
    }
    if (r.json.topic === 'private:no') return { json: { allow: false, reason: 'no entry' } };
    if (r.json.topic === 'plain') return { json: { allow: true } };
    return { json: { allow: true, assigns: { last: r.json.topic }, reply: { id: r.json.id, assigns: r.json.assigns } } };
  });
  const keep = closing(t);
  const srv = await h.serve(t, webhook({ connect_url: b.url('/connect'), join_url: b.url('/join'),
    params: ['user'], headers: ['X-Tenant'], auth_token: 'backend-token' }));

  const s = keep(sock(srv.port, { user: 'ann', other: 'not forwarded' }, {
    authToken: 'client-token',
    transport: transport({ headers: { 'X-Tenant': 'acme', Cookie: 'not=forwarded' } }),
  }));
  await h.connect(s);
  const [connect] = b.matching((r) => r.path === '/connect');
  assert.equal(connect.method, 'POST');
  assert.equal(connect.headers.authorization, 'Bearer backend-token');
  assert.match(connect.headers['content-type'], /^application\/json/);
  assert.deepEqual(connect.json.params, { user: 'ann' });
  assert.deepEqual(connect.json.headers, { 'x-tenant': 'acme' });
  assert.equal(connect.json.token, 'client-token');
  assert.equal(typeof connect.json.remote_addr, 'string');

  // The identity and assigns from the connect reach the join hook, and
  // what the first join's answer merged into the assigns reaches the next.
  const room = s.channel('room:1');
  assert.deepEqual(await h.join(room), { id: 'user-ann', assigns: { role: 'admin', tenant: 'acme' } });
  assert.deepEqual(await h.join(s.channel('room:2')),
    { id: 'user-ann', assigns: { role: 'admin', tenant: 'acme', last: 'room:1' } });
  assert.deepEqual(await h.join(s.channel('plain')), {});
  const presence = (await h.request(srv.port, 'GET', '/api/presence/room:1')).json;
  assert.deepEqual(Object.keys(presence), ['user-ann']);

  const no = s.channel('private:no');
  await assert.rejects(h.join(no), (e) => e.response.reason === 'no entry');
  no.leave(); // phoenix.js would rejoin a refused channel later

  const refused = await h.rawWs(srv.port, '/socket/websocket?vsn=2.0.0&user=mallory');
  assert.equal(refused.status, 403);
  assert.deepEqual(refused.response.json, { error: 'banned' });
  refused.end();

  // Without a token: none in the body.
  const anon = await h.rawWs(srv.port, '/socket/websocket?vsn=2.0.0&user=bob');
  assert.equal(anon.status, 101);
  const last = b.matching((r) => r.path === '/connect').pop();
  assert.equal('token' in last.json, false);
  anon.end();
  assert.equal(srv.log.includes('backend-token'), false);
});

test('a held join: 100 other clients connect, join and get pushes while it waits; then it completes', async (t) => {
  const held = deferred();
  const b = await Backend.start(t, (r) => {
    if (r.path === '/connect') return { json: { allow: true, id: r.json.params.user } };
    if (r.json.topic === 'held') return held.promise.then(() => ({ json: { allow: true, reply: { released: true } } }));
    return { json: { allow: true } };
  });
  const keep = closing(t);
  const srv = await h.serve(t, webhook({ connect_url: b.url('/connect'), join_url: b.url('/join'), params: ['user'] }));

  const waiting = keep(sock(srv.port, { user: 'waiting' }, { timeout: 30000 }));
  await h.connect(waiting);
  let heldDone = false;
  const heldJoin = h.join(waiting.channel('held')).then((r) => { heldDone = true; return r; });
  await b.waitFor(1, isJoin('held'));

  const channels = await Promise.all(Array.from({ length: 100 }, async (_, i) => {
    const s = keep(sock(srv.port, { user: `u${i}` }, { transport: transport({ localAddress: `127.0.0.${10 + i}` }) }));
    await h.connect(s);
    const ch = s.channel('fast');
    await h.join(ch);
    return ch;
  }));
  const got = channels.map((ch) => h.nextEvent(ch, 'msg'));
  assert.equal((await h.push(srv.port, { channel: 'fast', event: 'news', data: { n: 1 } })).status, 200);
  for (const m of await Promise.all(got)) assert.deepEqual(m, { event: 'news', data: { n: 1 } });
  assert.equal(b.matching((r) => r.path === '/connect').length, 101);

  assert.equal(heldDone, false, 'the held join was answered before its backend answered');
  assert.equal(await metric(srv.port, 'herald_hooks_waiting'), 1);
  held.resolve();
  assert.deepEqual(await heldJoin, { released: true });
  assert.equal(await metric(srv.port, 'herald_hooks_waiting'), 0);
});

test('while its join waits, a socket\'s later messages wait in order; another socket is served', async (t) => {
  const held = deferred();
  const b = await Backend.start(t, (r) => {
    if (r.json.topic === 'held') return held.promise.then(() => ({ json: { allow: true, reply: { first: true } } }));
    return { json: { allow: true, reply: { topic: r.json.topic } } };
  });
  const script = `return { message = function(socket, topic, event, payload)
    if event == "ping" then return { pong = payload.n, topic = topic } end
  end }`;
  const raw = closing(t);
  const srv = await h.serve(t, `scripts = { "order.lua" }\n` + webhook({ join_url: b.url('/join') }), { 'order.lua': script });

  const s = raw(await h.rawWs(srv.port));
  const other = raw(await h.rawWs(srv.port));
  s.sendText(joinFrame('1', 'held'));
  await b.waitFor(1, isJoin('held'));
  s.sendText(joinFrame('2', 'room:s'));
  s.sendText(['2', '3', 'room:s', 'ping', { n: 1 }]);

  other.sendText(joinFrame('1', 'room:o'));
  assert.deepEqual(await other.nextJson(), ['1', '1', 'room:o', 'phx_reply', { status: 'ok', response: { topic: 'room:o' } }]);
  other.sendText(['1', '2', 'room:o', 'ping', { n: 9 }]);
  assert.deepEqual(await other.nextJson(), ['1', '2', 'room:o', 'phx_reply', { status: 'ok', response: { pong: 9, topic: 'room:o' } }]);

  assert.equal(s.frames.length, 0, 'the waiting socket got an answer before its first join was decided');
  assert.equal(b.matching(isJoin('room:s')).length, 0, 'the second join reached the backend before the first was answered');
  held.resolve();
  assert.deepEqual(await s.nextJson(), ['1', '1', 'held', 'phx_reply', { status: 'ok', response: { first: true } }]);
  assert.deepEqual(await s.nextJson(), ['2', '2', 'room:s', 'phx_reply', { status: 'ok', response: { topic: 'room:s' } }]);
  assert.deepEqual(await s.nextJson(), ['2', '3', 'room:s', 'phx_reply', { status: 'ok', response: { pong: 1, topic: 'room:s' } }]);
});

test('assigns: a waiting join\'s changes merge with a change made meanwhile (herald.assign from a timer)', async (t) => {
  const held = deferred();
  const b = await Backend.start(t, (r) => (r.path === '/hold' ? held.promise.then(() => ({ json: {} })) : { json: {} }));
  const script = `return { join = function(socket, topic)
    if topic == "assign:wait" then
      local seen = socket.assigns.seen          -- read before the wait
      local id = socket.conn_id
      herald.after(0, function()                -- meanwhile, through another socket table
        herald.assign({ conn_id = id }, "other", "timer")
        herald.http.request{ url = "${b.url('/timer-done')}" }
      end)
      herald.http.request{ url = "${b.url('/hold')}" }
      socket.assigns.mine = "join"
      socket.assigns.seen = nil
      return true
    end
    if topic == "assign:show" then return true, { reply = socket.assigns } end
    return true
  end }`;
  const raw = closing(t);
  const srv = await h.serve(t, 'scripts = { "assign.lua" }\n', { 'assign.lua': script });
  const s = raw(await h.rawWs(srv.port));
  s.sendText(joinFrame('1', 'assign:wait'));
  await b.waitFor(1, (r) => r.path === '/timer-done');
  held.resolve();
  assert.deepEqual(await s.nextJson(), ['1', '1', 'assign:wait', 'phx_reply', { status: 'ok', response: {} }]);
  s.sendText(joinFrame('2', 'assign:show'));
  assert.deepEqual(await s.nextJson(),
    ['2', '2', 'assign:show', 'phx_reply', { status: 'ok', response: { mine: 'join', other: 'timer' } }]);
});

// Answers by mode: the connect's `mode` param, the join's topic.
function failing(r) {
  const mode = r.path === '/connect' ? r.json.params.mode : r.path === '/join' ? r.json.topic : 'hang';
  switch (mode) {
    case 'garbage': return { body: 'this is not JSON' };
    case 'notbool': return { json: { allow: 'yes' } };
    case 'big': return { json: { allow: true, pad: 'x'.repeat(8192) } };
    case '5xx': return { status: 503, json: { allow: true } };
    case 'badhttp': return { raw: 'SPDY/9 what is this\r\n\r\n' };
    case 'hang': return new Promise(() => {}); // never answered; dropped when the backend closes
    default: return { json: { allow: true } };
  }
}
const MODES = ['garbage', 'notbool', 'big', '5xx', 'badhttp', 'hang'];
const TRANSPORT_FAILURES = ['big', 'badhttp', 'hang']; // no HTTP answer to decide on: herald.http.request's errors

test('failures: a dead backend, garbage, an oversized answer, 5xx, timeouts: on_failure decides, /metrics counts', async (t) => {
  const b = await Backend.start(t, failing);
  const http = 'http = { max_response_bytes = 4096 }';

  await t.test('on_failure refuse: every failure refuses the connect and the join', async (t) => {
    const slow = `return { message = function(socket, topic, event)
      if event == "slow" then
        local res = herald.http.request { method = "GET", url = "${b.url('/slow')}", timeout_ms = 60000 }
        return { status = res and res.status }
      end
    end }`;
    const raw = closing(t);
    const srv = await h.serve(t, `scripts = { "slow.lua", ${http}, io_timeout_ms = 1000 }\n` + webhook({
      connect_url: b.url('/connect'), join_url: b.url('/join'), params: ['mode'], timeout_ms: 200, auth_token: 'backend-token',
    }), { 'slow.lua': slow }, { allowErrors: true });
    for (const mode of MODES) {
      const c = raw(await h.rawWs(srv.port, `/socket/websocket?vsn=2.0.0&mode=${mode}`));
      assert.equal(c.status, 403, mode);
      assert.deepEqual(c.response.json, { error: UNAVAILABLE }, mode);
      c.end();
    }
    const c = raw(await h.rawWs(srv.port, '/socket/websocket?vsn=2.0.0&mode=ok'));
    for (const [i, mode] of MODES.entries()) {
      c.sendText(joinFrame(String(i + 1), mode));
      assert.deepEqual((await c.nextJson())[4], { status: 'error', response: { reason: UNAVAILABLE } }, mode);
    }
    c.sendText(joinFrame('10', 'ok'));
    assert.equal((await c.nextJson())[4].status, 'ok');

    // A hook that outlives scripts.io_timeout_ms is abandoned: the
    // message hook's safe default, an error reply.
    c.sendText(['10', '11', 'ok', 'slow', {}]);
    assert.deepEqual((await c.nextJson())[4], { status: 'error', response: { reason: 'internal error' } });
    assert.equal(await metric(srv.port, 'herald_hook_io_timeouts_total'), 1);

    const m = await h.metrics(srv.port);
    assert.ok(h.metricSum(m, 'herald_lua_http_errors_total') >= 2 * TRANSPORT_FAILURES.length,
      `herald_lua_http_errors_total: ${h.metricSum(m, 'herald_lua_http_errors_total')}`);
    assert.ok(h.metricSum(m, 'herald_lua_http_requests_total') >= 2 * MODES.length + 2);
    assert.equal(h.metricSum(m, 'herald_hooks_waiting'), 0);
    assert.ok(h.metricSum(m, 'herald_lua_http_timeouts_total') >= 2, 'the "hang" mode timed out at timeout_ms');
    assert.equal(h.metricSum(m, 'herald_lua_http_in_flight'), 0);
    assert.ok(h.metricSum(m, 'herald_lua_http_reused_total') >= 1, 'no call went on a kept-alive connection');
    const origin = `http://127\\.0\\.0\\.1:${b.port}`;
    for (const [what, said] of [['answered HTTP 503', '5xx'], ['not a JSON object', 'garbage'],
      ['without a boolean "allow"', 'notbool'], ['timeout', 'hang'], ['too large', 'big'], ['malformed', 'badhttp']]) {
      for (const hook of ['connect', 'join']) {
        assert.match(srv.log, new RegExp(`\\[warn\\] .*webhook_auth: ${hook} backend ${origin} failed: .*${what}`), `${hook} ${said}`);
      }
    }
    assert.equal(srv.log.includes('backend-token'), false);
  });

  await t.test('on_failure allow: a dead connect backend and every failing join let the client in', async (t) => {
    const dead = await deadPort();
    const raw = closing(t);
    const srv = await h.serve(t, `scripts = { ${http} }\n` + webhook({
      connect_url: `http://127.0.0.1:${dead}/connect`, join_url: b.url('/join'), on_failure: 'allow', timeout_ms: 200,
    }));
    const c = raw(await h.rawWs(srv.port));
    assert.equal(c.status, 101);
    for (const [i, mode] of MODES.entries()) {
      c.sendText(joinFrame(String(i + 1), mode));
      assert.deepEqual((await c.nextJson())[4], { status: 'ok', response: {} }, mode);
    }
    const joins = b.matching((r) => r.path === '/join' && r.json.topic === 'garbage');
    assert.deepEqual(joins[joins.length - 1].json.assigns, {}, 'no assigns from the dead backend');
    assert.match(srv.log, new RegExp(`\\[warn\\] .*webhook_auth: connect backend http://127\\.0\\.0\\.1:${dead} failed: connection refused`));
    assert.ok(await metric(srv.port, 'herald_lua_http_errors_total') >= 1 + TRANSPORT_FAILURES.length);
  });
});

test('a socket that closes while its join waits: the late answer is discarded, nothing breaks', async (t) => {
  const held = deferred();
  const b = await Backend.start(t, (r) => {
    if (r.json.topic === 'held') return held.promise.then(() => ({ json: { allow: true, reply: { late: true } } }));
    return { json: { allow: true } };
  });
  const raw = closing(t);
  const srv = await h.serve(t, webhook({ join_url: b.url('/join') }));
  const c = raw(await h.rawWs(srv.port));
  c.sendText(joinFrame('1', 'held'));
  await b.waitFor(1, isJoin('held'));
  assert.equal(await metric(srv.port, 'herald_hooks_waiting'), 1);
  c.end();
  await metricReaches(srv.port, 'herald_connections', 0);
  held.resolve();
  await metricReaches(srv.port, 'herald_hooks_discarded_total', 1);
  await metricReaches(srv.port, 'herald_hooks_waiting', 0);

  const after = raw(await h.rawWs(srv.port));
  after.sendText(joinFrame('1', 'room'));
  assert.equal((await after.nextJson())[4].status, 'ok');
});

test('an upgrade or an API request whose client leaves while its hook waits: the hook is cancelled at once', async (t) => {
  const held = deferred();
  const b = await Backend.start(t, () => held.promise.then(() => ({ json: { allow: true } })));
  t.after(() => held.resolve());
  const script = `return {
    authenticate = function(req) herald.http.request{ url = "${b.url('/auth')}" } return true end,
    api_auth = function(req) herald.http.request{ url = "${b.url('/api')}" } return true end }`;
  const srv = await h.serve(t, 'scripts = { "wait.lua" }\n', { 'wait.lua': script });
  const net = require('node:net');
  const send = async (text, path) => {
    const sock = net.connect(srv.port, '127.0.0.1');
    await new Promise((r) => sock.once('connect', r));
    sock.write(text);
    await b.waitFor(1, (r) => r.path === path);
    assert.equal(await metric(srv.port, 'herald_hooks_waiting'), 1);
    sock.destroy(); // the client leaves; the backend has not answered
    return sock;
  };
  await send('GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n' +
    'Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n', '/auth');
  await metricReaches(srv.port, 'herald_hooks_waiting', 0);
  assert.equal(await metric(srv.port, 'herald_hooks_discarded_total'), 1);
  await send('POST /api/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 37\r\n\r\n' +
    '{"channel":"a","event":"e","data":{}}', '/api');
  await metricReaches(srv.port, 'herald_hooks_waiting', 0);
  assert.equal(await metric(srv.port, 'herald_hooks_discarded_total'), 2);
  // Later clients are served as usual.
  held.resolve();
  const s = sock(srv.port, {});
  t.after(() => s.disconnect());
  await h.connect(s);
});

test('reload while 50 hooks wait: they finish on the old scripts, new joins use the new ones', async (t) => {
  const N = 50;
  const held = deferred();
  const b = await Backend.start(t, (r) => {
    if (r.body.startsWith('hold:')) return held.promise.then(() => ({ body: `answer ${r.body}` }));
    return { body: `answer ${r.body}` };
  });
  const policy = (gen) => `return { join = function(socket, topic)
    local res, err = herald.http.request { method = "POST", url = "${b.url('/gen')}", body = topic }
    if not res then return false, err end
    return true, { reply = { gen = "${gen}", answer = res.body } }
  end }`;
  const raw = closing(t);
  const srv = await h.serve(t, 'scripts = { "p.lua", http = { pool_size = 64 } }\n', { 'p.lua': policy('v1') });
  const clients = await Promise.all(Array.from({ length: N }, async () => raw(await h.rawWs(srv.port))));
  clients.forEach((c, i) => c.sendText(joinFrame('1', `hold:${i}`)));
  await b.waitFor(N, (r) => r.body.startsWith('hold:'));
  assert.equal(await metric(srv.port, 'herald_hooks_waiting'), N);

  fs.writeFileSync(path.join(srv.dir, 'p.lua'), policy('v2'));
  const r = await h.request(srv.port, 'POST', '/admin/reload');
  assert.equal(r.status, 200, r.body);
  assert.equal(await metric(srv.port, 'herald_script_states'), 2);

  const fresh = raw(await h.rawWs(srv.port));
  fresh.sendText(joinFrame('1', 'fresh'));
  assert.deepEqual((await fresh.nextJson())[4], { status: 'ok', response: { gen: 'v2', answer: 'answer fresh' } });

  held.resolve();
  const replies = await Promise.all(clients.map((c) => c.nextJson()));
  replies.forEach((f, i) => assert.deepEqual(f[4], { status: 'ok', response: { gen: 'v1', answer: `answer hold:${i}` } }));
  await srv.waitLog(/scripts: generation 1 freed after its last waiting hook/, 0, 5000);
  assert.equal(await metric(srv.port, 'herald_hooks_waiting'), 0);
  await metricReaches(srv.port, 'herald_script_states', 1, 5000);
});

test('herald.http.request in a topic hook raises, naming the hook; the topic keeps its defaults', async (t) => {
  const b = await Backend.start(t, () => ({ json: {} }));
  const script = `return { topic = function(name)
    herald.http.request { url = "${b.url('/policy')}" }
    return { tracked = false }
  end }`;
  const raw = closing(t);
  const srv = await h.serve(t, 'scripts = { "topic.lua" }\n', { 'topic.lua': script }, { allowErrors: true });
  const c = raw(await h.rawWs(srv.port));
  c.sendText(joinFrame('1', 'room:x'));
  assert.equal((await c.nextJson())[4].status, 'ok');
  await srv.waitLog(/herald\.http\.request is not available in hook topic/, 0, 5000);
  // Had the hook's { tracked = false } applied, the join would not be in presence.
  const presence = (await h.request(srv.port, 'GET', '/api/presence/room:x')).json;
  assert.equal(Object.keys(presence).length, 1);
  assert.equal(b.requests.length, 0);
});

test('10,000 suspended hooks: the server stops cleanly (LeakSanitizer checks the exit under ASan)', async (t) => {
  const N = 10000;
  const b = await Backend.start(t, () => new Promise(() => {})); // holds every answer
  const script = `local M = {}
function M.init()
  herald.after(0, function()
    for i = 1, ${N} do
      herald.after(0, function()
        herald.http.request { method = "POST", url = "${b.url('/many')}", body = tostring(i), timeout_ms = 60000 }
      end)
    end
  end)
end
return M`;
  const srv = await h.startHerald(
    `scripts = { "many.lua", budget_ms = 2000, io_timeout_ms = 60000, http = { pool_size = 16, max_in_flight = ${2 * N} } }\n`,
    { 'many.lua': script });
  let finished = false;
  t.after(() => (finished ? undefined : h.finish(srv)));
  await metricReaches(srv.port, 'herald_hooks_waiting', N);
  await b.waitFor(1);
  finished = true;
  await h.finish(srv); // SIGTERM: exit 0 on its own, no [error] line
});
