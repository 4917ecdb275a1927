'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const h = require('./lib/harness');

test('scripts run in an allow-listed environment', async (t) => {
  const probe = `
return {
  message = function(socket, topic, event, payload)
    return { io = type(io), debug = type(debug), ffi = type(ffi), require = type(require),
             load = type(load), loadstring = type(loadstring), dofile = type(dofile),
             coroutine = type(coroutine), os_execute = type(os.execute), getenv = type(os.getenv),
             string = type(string), herald = type(herald) }
  end,
}`;
  const srv = await h.startHerald('scripts = { "probe.lua" }\n', { 'probe.lua': probe });
  t.after(() => srv.stop());
  const c = await h.rawWs(srv.port);
  c.sendText(['1', '1', 't', 'phx_join', {}]);
  await c.nextJson();
  c.sendText(['1', '2', 't', 'probe', {}]);
  const r = (await c.nextJson())[4].response;
  assert.deepEqual(r, { io: 'nil', debug: 'nil', ffi: 'nil', require: 'nil', load: 'nil', loadstring: 'nil',
    dofile: 'nil', coroutine: 'nil', os_execute: 'nil', getenv: 'function', string: 'table', herald: 'table' });
  c.end();
});

test('scripts.memory_mb stops a hook that piles up memory; string.rep is capped; the server stays well', async (t) => {
  const hog = `
local kept = {}
return {
  message = function(socket, topic, event, payload)
    if event == "hog" then
      local t = {}
      for i = 1, 1e8 do t[i] = ("x"):rep(1000) .. i end
    elseif event == "rep" then
      return { len = #(("x"):rep(2^31)) }
    end
    return { ok = true }
  end,
}`;
  const srv = await h.startHerald('scripts = { "hog.lua", budget_ms = 5000, memory_mb = 32 }\n', { 'hog.lua': hog });
  t.after(() => srv.stop());
  const c = await h.rawWs(srv.port);
  c.sendText(['1', '1', 't', 'phx_join', {}]);
  await c.nextJson();
  c.sendText(['1', '2', 't', 'hog', {}]);
  assert.equal((await c.nextJson())[4].status, 'error');
  await srv.waitLog(/message hook \(.*hog\.lua\) failed: .*Lua memory is over 32 MiB/);
  c.sendText(['1', '3', 't', 'rep', {}]);
  assert.equal((await c.nextJson())[4].status, 'error');
  await srv.waitLog(/string\.rep: the result would be over 16 MiB/);
  // The next call runs normally: the runaway's garbage is gone.
  c.sendText(['1', '4', 't', 'fine', {}]);
  assert.deepEqual((await c.nextJson())[4], { status: 'ok', response: { ok: true } });
  const m = await h.metrics(srv.port);
  assert.ok(m.herald_hook_budget_exceeded_total >= 1);
  c.end();
});

test('scripts.watch reloads on save; the old timers stop; herald.disconnect closes by identity', async (t) => {
  const v1 = `
local M = {}
function M.init() herald.every(30, function() herald.publish("ticks", "v1", {}) end) end
function M.authenticate(req) return { id = req.params.user } end
function M.message(socket, topic, event, payload)
  if event == "kick" then return { closed = herald.disconnect(payload.id, 4000) } end
end
return M`;
  const srv = await h.startHerald('scripts = { "w.lua", watch = true }\n', { 'w.lua': v1 });
  t.after(() => srv.stop());
  const a = await h.rawWs(srv.port, '/socket/websocket?vsn=2.0.0&user=alice');
  a.sendText(['1', '1', 'ticks', 'phx_join', {}]);
  await a.nextJson();
  assert.equal((await a.nextJson())[4].event, 'v1');

  fs.writeFileSync(path.join(srv.dir, 'w.lua'), v1.replace(/"v1"/g, '"v2"'));
  await srv.waitLog(/scripts reloaded \(generation 2\)/);
  // After the swap only v2 ticks arrive: the v1 timer was cancelled.
  for (;;) { const f = await a.nextJson(); if (f[4].event === 'v2') break; }
  for (let i = 0; i < 5; i++) assert.equal((await a.nextJson())[4].event, 'v2');

  const b = await h.rawWs(srv.port, '/socket/websocket?vsn=2.0.0&user=bob');
  b.sendText(['1', '1', 'x', 'phx_join', {}]);
  await b.nextJson();
  b.sendText(['1', '2', 'x', 'kick', { id: 'alice' }]);
  assert.deepEqual((await b.nextJson())[4], { status: 'ok', response: { closed: 1 } });
  assert.equal(await a.closeCode(), 4000);
  a.end(); b.end();
});
