'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const h = require('./lib/harness');

const POLICY = `
local M = {}
function M.authenticate(req)
  if req.params.token ~= "secret" then return nil, "bad token" end
  return { id = "user:" .. (req.params.user or "1"), assigns = { role = req.params.role or "guest" } }
end
function M.join(socket, topic, payload)
  if topic == "loop" then while true do end end
  if topic == "loop-pcall" then while true do pcall(function() while true do end end) end end
  if topic == "loop-xpcall" then xpcall(function() while true do end end, function() while true do end end) end
  if topic == "tamper" then string.match = nil; math.floor = nil; return false, "tampered" end
  if topic == "crash" then error("boom in join") end
  if topic:match("^private:") and topic ~= "private:" .. socket.id then return false, "unauthorized" end
  if topic == "admin" and socket.assigns.role ~= "admin" then return false, "admins only" end
  return true, { reply = { role = socket.assigns.role, id = socket.id } }
end
function M.publish(msg)
  if msg.event == "secret" then return false end
  if type(msg.data) == "table" then msg.data.stamped = true end
  return msg
end
function M.message(socket, topic, event, payload)
  if event == "echo" then return { echo = payload, by = socket.id } end
  if event == "nope" then return false, "not allowed" end
end
return M
`;

function sock(port, params) { return h.phoenixSocket(port, { params, reconnectAfterMs: () => 60000 }); }

test('hooks: authenticate, join, assigns, publish, message, runaway loop', async (t) => {
  const srv = await h.startHerald('scripts = { "policy.lua", budget_ms = 50 }\n', { 'policy.lua': POLICY });
  t.after(() => srv.stop());

  await t.test('connect denied: HTTP 403 with the reason, the client sees an error', async () => {
    const hs = 'GET /socket/websocket?vsn=2.0.0&token=wrong HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
      'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n';
    const out = (await h.rawExchange(srv.port, hs)).toString();
    assert.match(out, /^HTTP\/1\.1 403 /);
    assert.match(out, /\{"error":"bad token"\}/);
    const s = sock(srv.port, { token: 'wrong' });
    await assert.rejects(h.connect(s));
    s.disconnect();
  });

  const s = sock(srv.port, { token: 'secret', user: '7', role: 'admin' });
  t.after(() => s.disconnect());
  await h.connect(s);

  await t.test('join allowed with a reply built from assigns; refused with the reason', async () => {
    assert.deepEqual(await h.join(s.channel('private:user:7')), { role: 'admin', id: 'user:7' });
    await assert.rejects(h.join(s.channel('private:user:8')), (e) => e.response.reason === 'unauthorized');
    assert.deepEqual(await h.join(s.channel('admin')), { role: 'admin', id: 'user:7' });
  });

  await t.test('a hook error refuses with a generic reason; the log has file:line', async () => {
    await assert.rejects(h.join(s.channel('crash')), (e) => e.response.reason === 'join crashed');
    await srv.waitLog(/policy\.lua:\d+: boom in join/);
  });

  await t.test('publish hook changes and drops messages', async () => {
    const ch = s.channel('room:pub');
    await h.join(ch);
    const got = [];
    ch.on('msg', (m) => got.push(m));
    const done = new Promise((resolve) => { const id = ch.on('msg', (m) => { if (m.event === 'last') { ch.off('msg', id); resolve(); } }); });
    await h.push(srv.port, { channel: 'room:pub', event: 'secret', data: { x: 1 } });
    await h.push(srv.port, { channel: 'room:pub', event: 'last', data: { x: 2 } });
    await done;
    assert.deepEqual(got, [{ event: 'last', data: { x: 2, stamped: true } }]);
    const m = await h.metrics(srv.port);
    assert.equal(m['herald_dropped_total{reason="publish_hook"}'], 1);
  });

  await t.test('message hook replies', async () => {
    const ch = s.channel('room:msg');
    await h.join(ch);
    const reply = await new Promise((resolve, reject) => ch.push('echo', { a: 1 }).receive('ok', resolve).receive('error', reject));
    assert.deepEqual(reply, { echo: { a: 1 }, by: 'user:7' });
    const refused = await new Promise((resolve, reject) => ch.push('nope', {}).receive('error', resolve).receive('ok', reject));
    assert.deepEqual(refused, { reason: 'not allowed' });
  });

  await t.test('an endless loop in a hook is stopped; other clients are served meanwhile', async () => {
    const other = sock(srv.port, { token: 'secret', user: '9' });
    await h.connect(other);
    const och = other.channel('room:other');
    await h.join(och);
    const looping = h.join(s.channel('loop')).then(() => 'joined', (e) => e.response.reason);
    const got = h.nextEvent(och, 'msg');
    await h.push(srv.port, { channel: 'room:other', event: 'still', data: {} });
    assert.deepEqual(await got, { event: 'still', data: { stamped: true } });
    assert.equal(await looping, 'join crashed');
    await srv.waitLog(/join hook \(.*policy\.lua\) failed: .*policy\.lua:\d+: join hook exceeded its budget/);
    const m = await h.metrics(srv.port);
    assert.ok(m.herald_hook_budget_exceeded_total >= 1);
    other.disconnect();
  });

  await t.test('pcall and xpcall (even with a looping handler) cannot swallow the budget error', async () => {
    const before = (await h.metrics(srv.port)).herald_hook_budget_exceeded_total;
    for (const topic of ['loop-pcall', 'loop-xpcall']) {
      const r = await h.join(s.channel(topic)).then(() => 'joined', (e) => e.response.reason);
      assert.equal(r, 'join crashed', topic);
    }
    const m = await h.metrics(srv.port);
    assert.equal(m.herald_hook_budget_exceeded_total, before + 2);
  });

  await t.test('a script that assigns into string or math changes only its own copy', async () => {
    const r = await h.join(s.channel('tamper')).then(() => 'joined', (e) => e.response.reason);
    assert.equal(r, 'tampered');
    // The next join runs topic:match (the real string library, through the string metatable).
    const ch = s.channel('room:after-tamper');
    const reply = await h.join(ch);
    assert.equal(reply.id, 'user:7');
  });
});

test('reload: broken script keeps the old policy; a good one applies to the next join; connections survive', async (t) => {
  const v1 = `return { join = function(s, topic) if topic == "b" then return false, "v1 says no" end return true end }`;
  const srv = await h.startHerald('scripts = { "p.lua" }\n', { 'p.lua': v1 });
  t.after(() => srv.stop());
  const N = 5000;
  // 5,000 raw WebSocket clients, each joined to "a".
  const clients = [];
  for (let i = 0; i < N; i += 250) {
    const batch = await Promise.all(Array.from({ length: Math.min(250, N - i) }, () => h.rawWs(srv.port)));
    for (const c of batch) c.sendText(['1', '1', 'a', 'phx_join', {}]);
    for (const c of batch) assert.equal((await c.nextJson())[4].status, 'ok');
    clients.push(...batch);
  }
  t.after(() => clients.forEach((c) => c.end()));

  fs.writeFileSync(path.join(srv.dir, 'p.lua'), 'return { join = function( }');
  let r = await h.request(srv.port, 'POST', '/admin/reload');
  assert.equal(r.status, 422);
  assert.match(r.json.error, /p\.lua:1:/);
  r = await h.request(srv.port, 'GET', '/admin/status');
  assert.match(r.json.scripts.last_error, /p\.lua:1:/);
  assert.equal(r.json.scripts.generation, 1);

  const probe = await h.rawWs(srv.port);
  probe.sendText(['1', '1', 'b', 'phx_join', {}]);
  assert.deepEqual((await probe.nextJson())[4], { status: 'error', response: { reason: 'v1 says no' } });

  fs.writeFileSync(path.join(srv.dir, 'p.lua'),
    'return { join = function(s, topic) if topic == "c" then return false, "v2 says no" end return true end }');
  srv.proc.kill('SIGHUP');
  await srv.waitLog(/scripts reloaded \(generation 2\)/);
  probe.sendText(['2', '2', 'b', 'phx_join', {}]);
  assert.equal((await probe.nextJson())[4].status, 'ok');
  probe.sendText(['3', '3', 'c', 'phx_join', {}]);
  assert.deepEqual((await probe.nextJson())[4], { status: 'error', response: { reason: 'v2 says no' } });
  probe.end();

  // Every one of the 5,000 is still connected and still receives.
  r = await h.request(srv.port, 'GET', '/api/topics/a');
  assert.equal(r.json.subscribers, N);
  await h.push(srv.port, { channel: 'a', event: 'after', data: 1 });
  for (const c of clients) assert.equal((await c.nextJson())[3], 'msg');
  const m = await h.metrics(srv.port);
  assert.equal(m['herald_reloads_total{result="ok"}'], 1);
  assert.equal(m['herald_reloads_total{result="error"}'], 1);
});

test('reload.recheck_joins closes channels the new policy refuses', async (t) => {
  const srv = await h.startHerald('scripts = { "p.lua" }\nreload = { recheck_joins = true }\n', { 'p.lua': 'return {}' });
  t.after(() => srv.stop());
  const c = await h.rawWs(srv.port);
  c.sendText(['1', '1', 'keep', 'phx_join', {}]);
  c.sendText(['2', '2', 'drop', 'phx_join', {}]);
  await c.nextJson(); await c.nextJson();
  fs.writeFileSync(path.join(srv.dir, 'p.lua'), 'return { join = function(s, t) if t == "drop" then return false, "no" end return true end }');
  const r = await h.request(srv.port, 'POST', '/admin/reload');
  assert.equal(r.status, 200);
  assert.deepEqual(await c.nextJson(), ['2', '2', 'drop', 'phx_close', {}]);
  assert.equal((await h.request(srv.port, 'GET', '/api/topics/keep')).json.subscribers, 1);
  assert.equal((await h.request(srv.port, 'GET', '/api/topics/drop')).json.subscribers, 0);
  c.end();
});

test('timers, herald.publish, shutdown hook, and startup failure on a broken script', async (t) => {
  const script = `
local M = {}
local n = 0
local t
function M.init()
  t = herald.every(20, function()
    n = n + 1
    herald.publish("tick", "tick", { n = n })
    if n == 3 then t:cancel() end
  end)
end
function M.shutdown(phase) herald.log("info", "shutdown phase " .. phase) end
return M`;
  const srv = await h.startHerald('scripts = { "t.lua" }\n', { 't.lua': script });
  const c = await h.rawWs(srv.port);
  c.sendText(['1', '1', 'tick', 'phx_join', {}]);
  await c.nextJson();
  const f = await c.nextJson();
  assert.equal(f[3], 'msg');
  assert.equal(f[4].event, 'tick');
  c.end();
  const r = await srv.stop();
  assert.equal(r.code, 0);
  for (const phase of ['announce', 'stop_accepting', 'http', 'flush', 'disconnect', 'presence', 'stopped'])
    assert.match(srv.log, new RegExp(`t\\.lua:\\d+: shutdown phase ${phase}`));

  const bad = await h.startHerald('scripts = { "b.lua" }\n', { 'b.lua': 'return { joinn = function() end }' }, { expectFail: true });
  assert.notEqual(bad.result.code, 0);
  assert.match(bad.log, /b\.lua: returned an unknown key 'joinn'/);
});
