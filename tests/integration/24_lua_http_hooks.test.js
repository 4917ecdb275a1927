'use strict';
// The other hooks that may wait for herald.http.request (23_lua_http has
// authenticate, join, message, timers): api_auth and publish hold the
// HTTP answer until the backend answered; shutdown holds the drain's
// phase; and the budget counts a hook's running time across its waits.
// A real backend (lib/backend.js) holds answers on promises the test
// settles: every wait below is on an event.
const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('./lib/harness');
const { Backend, deferred } = require('./lib/backend');

// Resolves to 'pending' when p has not settled by the time the backend saw
// its next request (an event, not a clock): used to show an answer waits.
async function stillPending(p, b, n, pred) {
  let settled = false;
  p.then(() => (settled = true), () => (settled = true));
  await b.waitFor(n, pred);
  await new Promise((r) => setImmediate(r));
  return settled ? 'settled' : 'pending';
}

// The data.text of each msg pushed to topic, as a phoenix.js client that
// joined it receives them (PushEx's envelope: { event, data }).
async function texts(t, port, topic) {
  const { ch } = await h.joined(t, port, topic);
  const events = [];
  ch.on('msg', (m) => events.push(m.data.text));
  return events;
}

test('api_auth waits for the backend: the push is answered after it, allowed or refused', async (t) => {
  const held = deferred();
  const b = await Backend.start(t, (r) => held.promise.then(() => ({ json: { ok: r.json.token === 'good' } })));
  const script = `return { api_auth = function(req)
    local res, err = herald.http.request{ method = "POST", url = "${b.url('/api-auth')}",
      headers = { ["content-type"] = "application/json" },
      body = herald.json.encode({ token = req.token or "" }) }
    if not res then return false, err end
    return herald.json.decode(res.body).ok
  end }`;
  const srv = await h.serve(t, 'api = { token = "static-token" }\nscripts = { "auth.lua" }\n', { 'auth.lua': script });
  const s = h.phoenixSocket(srv.port);
  t.after(() => s.disconnect());
  await h.connect(s);
  const ch = s.channel('room:api', {});
  await h.join(ch);
  const got = h.nextEvent(ch, 'msg'); // (PushEx's envelope: { event, data })

  const good = h.push(srv.port, { channel: 'room:api', event: 'hi', data: { n: 1 } },
    { 'content-type': 'application/json', authorization: 'Bearer good' });
  const bad = h.push(srv.port, { channel: 'room:api', event: 'hi', data: { n: 2 } },
    { 'content-type': 'application/json', authorization: 'Bearer bad' });
  assert.equal(await stillPending(Promise.all([good, bad]), b, 2), 'pending', 'answered before the backend was');
  held.resolve();
  assert.equal((await good).status, 200);
  assert.equal((await bad).status, 403); // the hook's refusal; the static token is not asked
  assert.deepEqual(await got, { event: 'hi', data: { n: 1 } });
  assert.equal(h.metricSum(await h.metrics(srv.port), 'herald_hook_calls_total{hook="api_auth"}'), 2);
});

test('publish waits for the backend: the message goes out as it answered, the 200 after it', async (t) => {
  const held = deferred();
  const b = await Backend.start(t, (r) => held.promise.then(() => ({
    json: r.json.data.text === 'spam' ? { drop: true } : { text: r.json.data.text.toUpperCase() },
  })));
  const script = `return { publish = function(msg)
    local res, err = herald.http.request{ method = "POST", url = "${b.url('/moderate')}",
      body = herald.json.encode(msg) }
    if not res then return false, err end
    local verdict = herald.json.decode(res.body)
    if verdict.drop then return false, "moderated" end
    msg.data.text = verdict.text
    return msg
  end }`;
  const srv = await h.serve(t, 'scripts = { "mod.lua" }\n', { 'mod.lua': script });
  const events = await texts(t, srv.port, 'room:mod');

  const batch = h.push(srv.port, [
    { channel: 'room:mod', event: 'said', data: { text: 'hello' } },
    { channel: 'room:mod', event: 'said', data: { text: 'spam' } },
  ]);
  assert.equal(await stillPending(batch, b, 2), 'pending', 'the push was answered before its publishes went out');
  assert.deepEqual(events, []);
  held.resolve();
  assert.equal((await batch).status, 200);
  const last = h.push(srv.port, { channel: 'room:mod', event: 'said', data: { text: 'bye' } });
  assert.equal((await last).status, 200);
  await h.eventually(() => events.length === 2, 10000, 'two deliveries');
  assert.deepEqual(events, ['HELLO', 'BYE']);
  const m = await h.metrics(srv.port);
  assert.equal(h.metricSum(m, 'herald_hooks_waiting'), 0);
  assert.equal(h.metricSum(m, 'herald_lua_http_requests_total'), 3);
});

test('a push\'s publishes go out in its order, whichever hook answers first', async (t) => {
  // w1's answer is held; "fast" asks nobody; w3 is answered at once. Each
  // waits for those before it: W1, fast, W3 (not fast, W3, W1).
  const held = deferred();
  const b = await Backend.start(t, (r) => (r.json.data.text === 'w1' ? held.promise : Promise.resolve())
    .then(() => ({ json: { text: r.json.data.text.toUpperCase() } })));
  const script = `return { publish = function(msg)
    if msg.data.text:sub(1, 1) ~= "w" then return msg end
    local res, err = herald.http.request{ method = "POST", url = "${b.url('/moderate')}",
      body = herald.json.encode(msg) }
    if not res then return false, err end
    msg.data.text = herald.json.decode(res.body).text
    return msg
  end }`;
  const srv = await h.serve(t, 'scripts = { "order.lua" }\n', { 'order.lua': script });
  const events = await texts(t, srv.port, 'room:order');

  const batch = h.push(srv.port, ['w1', 'fast', 'w3'].map((text) => ({ channel: 'room:order', event: 'said', data: { text } })));
  assert.equal(await stillPending(batch, b, 2), 'pending', 'the push was answered before its publishes went out');
  held.resolve();
  assert.equal((await batch).status, 200);
  await h.eventually(() => events.length === 3, 10000, 'three deliveries');
  assert.deepEqual(events, ['W1', 'fast', 'W3']);
  assert.equal(h.metricSum(await h.metrics(srv.port), 'herald_hooks_waiting'), 0);
});

test('shutdown waits for the backend: the drain goes on to the next phase only after it answered', async (t) => {
  const held = deferred(), last = deferred();
  const b = await Backend.start(t, (r) => (r.json.phase === 'stop_accepting' ? held.promise
    : r.json.phase === 'stopped' ? last.promise : Promise.resolve()).then(() => ({ json: {} })));
  const script = `return { shutdown = function(phase)
    herald.http.request{ method = "POST", url = "${b.url('/phase')}", body = herald.json.encode({ phase = phase }) }
  end }`;
  const srv = await h.startHerald('scripts = { "bye.lua" }\n', { 'bye.lua': script });
  t.after(() => srv.kill9());
  srv.proc.kill('SIGTERM');
  await b.waitFor(2, (r) => r.path === '/phase'); // announce, then stop_accepting (held)
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(b.matching().map((r) => r.json.phase), ['announce', 'stop_accepting']);
  assert.equal(srv.alive, true);
  held.resolve();
  // The stopped phase's hook may wait too: the process exits once it is answered.
  await b.waitFor(7, (r) => r.path === '/phase');
  await new Promise((r) => setImmediate(r));
  assert.equal(srv.alive, true, 'the process exited while the stopped phase\'s hook waited');
  last.resolve();
  const exit = await srv.exited;
  assert.equal(exit.code, 0);
  assert.deepEqual(b.matching().map((r) => r.json.phase),
    ['announce', 'stop_accepting', 'http', 'flush', 'disconnect', 'presence', 'stopped']);
});

test('the budget counts a hook\'s running time across its waits, not the wait', async (t) => {
  const b = await Backend.start(t, () => ({ json: {} }));
  // budget_ms = 400: each half burns 240 ms of its own; the wait between
  // them is not counted, the two halves together are over.
  const script = `local function burn(ms)
      local t0 = herald.monotonic_ms()
      while herald.monotonic_ms() - t0 < ms do end
    end
    return { join = function(socket, topic)
      if topic == "burn:one" then burn(240) herald.http.request{ url = "${b.url('/one')}" } return true end
      burn(240)
      herald.http.request{ url = "${b.url('/half')}" }
      burn(240)
      return true
    end }`;
  const srv = await h.serve(t, 'scripts = { "burn.lua", budget_ms = 400 }\n', { 'burn.lua': script }, { allowErrors: true });
  const s = h.phoenixSocket(srv.port);
  t.after(() => s.disconnect());
  await h.connect(s);
  // One half, then a wait: within the budget.
  await h.join(s.channel('burn:one', {}));
  // Two halves around a wait: over it, though neither half is.
  const r = await new Promise((resolve) => s.channel('burn:two', {}).join()
    .receive('ok', () => resolve('ok')).receive('error', (e) => resolve(e.reason)));
  assert.equal(r, 'join crashed');
  assert.equal(b.matching((x) => x.path === '/half').length, 1, 'the first half did not reach its wait');
  assert.match(srv.log, /join hook \(.*burn\.lua\) failed: .*burn\.lua:\d+: join hook exceeded its budget of 400 ms/);
  assert.equal(h.metricSum(await h.metrics(srv.port), 'herald_hook_budget_exceeded_total'), 1);
});

test('a join hook that closes its own socket before or after it waits: no reply, nothing left waiting', async (t) => {
  const b = await Backend.start(t, () => ({ json: {} }));
  const script = `return {
  authenticate = function(req) return { id = "user-" .. (req.params.n or "?") } end, -- (herald.disconnect takes an identity)
  join = function(socket, topic)
    if topic == "close:before" then herald.disconnect(socket.id) end
    herald.http.request{ url = "${b.url('/' + 'x')}" .. topic }
    if topic == "close:after" then herald.disconnect(socket.id) end
    return true
  end }`;
  const srv = await h.serve(t, 'scripts = { "close.lua" }\n', { 'close.lua': script });
  for (const [n, topic] of ['close:before', 'close:after'].entries()) {
    const ws = await h.rawWs(srv.port, `/socket/websocket?vsn=2.0.0&n=${n}`);
    ws.sendText(['1', '1', topic, 'phx_join', {}]);
    const f = await ws.next(); // herald.disconnect: a close frame with 1001, and no reply before it
    assert.equal(f.opcode, 8, `${topic}: a frame before the close: ${f.payload}`);
    assert.equal(f.payload.readUInt16BE(0), 1001, topic);
    ws.end();
  }
  // (close:before's request is cancelled as it starts: the socket is gone)
  await b.waitFor(1, (r) => r.path === '/xclose:after');
  await h.eventually(async () => h.metricSum(await h.metrics(srv.port), 'herald_hooks_waiting') === 0, 10000,
    'no hook left waiting');
  const m = await h.metrics(srv.port);
  assert.equal(h.metricSum(m, 'herald_hook_errors_total{hook="join"}'), 0);
  assert.ok(h.metricSum(m, 'herald_hooks_discarded_total') >= 2, `discarded: ${h.metricSum(m, 'herald_hooks_discarded_total')}`);
});

test('reload.recheck_joins with a join hook that asks the backend: the channels it now refuses close once it answered', async (t) => {
  const held = deferred();
  let phase = 'before';
  const b = await Backend.start(t, (r) => (phase === 'before'
    ? { json: { ok: true } }
    : held.promise.then(() => ({ json: { ok: r.json.topic !== 'drop' } }))));
  const script = `return { join = function(socket, topic)
    local res = herald.http.request{ method = "POST", url = "${b.url('/may-join')}",
      body = herald.json.encode({ topic = topic }) }
    return res ~= nil and herald.json.decode(res.body).ok
  end }`;
  const srv = await h.serve(t, 'scripts = { "p.lua" }\nreload = { recheck_joins = true }\n', { 'p.lua': script });
  const c = await h.rawWs(srv.port);
  c.sendText(['1', '1', 'keep', 'phx_join', {}]);
  c.sendText(['2', '2', 'drop', 'phx_join', {}]);
  assert.equal((await c.nextJson())[4].status, 'ok');
  assert.equal((await c.nextJson())[4].status, 'ok');
  phase = 'after';
  const r = await h.request(srv.port, 'POST', '/admin/reload');
  assert.equal(r.status, 200); // (the rechecks wait for the backend: nothing closed yet)
  await b.waitFor(2, (x) => x.json && x.json.topic && b.requests.indexOf(x) >= 2);
  assert.equal(c.frames.length, 0);
  held.resolve();
  assert.deepEqual(await c.nextJson(), ['2', '2', 'drop', 'phx_close', {}]);
  assert.equal((await h.request(srv.port, 'GET', '/api/topics/keep')).json.subscribers, 1);
  assert.equal((await h.request(srv.port, 'GET', '/api/topics/drop')).json.subscribers, 0);
  c.end();
});

// A long-poll POST whose first message's join hook waits: the socket's
// later messages queue behind it (64 at most), the rest of the batch waits
// in the session, and the POST is answered once all were handed on; the
// replies then come in order.
test('long poll: a batch behind a waiting join hook is held, then handled in order, then answered', async (t) => {
  const held = deferred();
  const b = await Backend.start(t, () => held.promise.then(() => ({ json: {} })));
  t.after(() => held.resolve());
  const script = `return { join = function(socket, topic)
    if topic == "held" then herald.http.request{ url = "${b.url('/join')}" } end
    return true
  end }`;
  const srv = await h.serve(t, 'limits = { client_messages_per_s = 0 }\nscripts = { "j.lua" }\n', { 'j.lua': script });
  const call = (method, p, body, headers = {}) => h.request(srv.port, method, p, { body, headers });
  const open = await call('GET', '/socket/longpoll?vsn=2.0.0');
  assert.equal(open.json.status, 410);
  const url = `/socket/longpoll?vsn=2.0.0&token=${open.json.token}`;
  const lines = [JSON.stringify(['1', '1', 'held', 'phx_join', {}])];
  for (let i = 2; i <= 100; i++) lines.push(JSON.stringify([null, String(i), 'phoenix', 'heartbeat', {}]));
  let answered = false;
  const post = call('POST', url, lines.join('\n'), { 'content-type': 'application/x-ndjson' })
    .then((r) => { answered = true; return r; });
  await b.waitFor(1, (r) => r.path === '/join');
  await h.eventually(async () => h.metricSum(await h.metrics(srv.port), 'herald_hooks_waiting') === 1, 10000, 'the join waits');
  assert.equal(answered, false, 'the POST was answered while its batch waited');
  held.resolve();
  assert.deepEqual((await post).json, { status: 200 });
  const refs = [];
  for (let i = 0; i < 20 && refs.length < 100; i++) {
    const r = await call('GET', url);
    for (const m of r.json.messages || []) refs.push(JSON.parse(m)[1]);
  }
  assert.deepEqual(refs, Array.from({ length: 100 }, (_, i) => String(i + 1)), 'every reply, in order');
});
