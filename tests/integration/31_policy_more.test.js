'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('./lib/harness');

test('a presence meta update reaches phoenix.js Presence as the new meta under the same key', async (t) => {
  const script = `
return {
  authenticate = function(req) return { id = req.params.user } end,
  message = function(socket, topic, event, payload)
    if event == "status" then return { ok = herald.presence_update(socket, topic, { status = payload.status }) } end
  end,
}`;
  const srv = await h.startHerald('topics = { { match = "room:*", presence = true } }\npresence = { batch_ms = 20 }\nscripts = { "p.lua" }\n', { 'p.lua': script });
  t.after(() => srv.stop());
  const a = h.phoenixSocket(srv.port, { params: { user: 'ann' } });
  t.after(() => a.disconnect());
  await h.connect(a);
  const ch = a.channel('room:u');
  const presence = new h.Presence(ch);
  await h.join(ch);
  const before = await h.eventually(() => presence.list((k, p) => p.metas[0].phx_ref)[0], 5000, 'presence state');
  const updated = new Promise((resolve) => presence.onSync(() => {
    const metas = presence.list((k, p) => p.metas)[0];
    if (metas && metas.length === 1 && metas[0].status === 'away') resolve(metas[0]);
  }));
  const r = await new Promise((resolve, reject) => ch.push('status', { status: 'away' }).receive('ok', resolve).receive('error', reject));
  assert.deepEqual(r, { ok: true });
  const meta = await updated;
  assert.notEqual(meta.phx_ref, before);
  assert.equal(meta.phx_ref_prev, before);
  assert.deepEqual(presence.list((k) => k), ['ann']);
});

test('the drain releases held (throttled) messages before disconnecting', async (t) => {
  const srv = await h.startHerald('topics = { { match = "slow:*", throttle_ms = 60000 } }\n');
  t.after(() => srv.stop());
  const c = await h.rawWs(srv.port);
  c.sendText(['1', '1', 'slow:1', 'phx_join', {}]);
  await c.nextJson();
  await h.push(srv.port, { channel: 'slow:1', event: 'first', data: 1 });
  assert.equal((await c.nextJson())[4].event, 'first'); // opens the window
  await h.push(srv.port, { channel: 'slow:1', event: 'held', data: 2 }); // held for a minute
  srv.proc.kill('SIGTERM');
  const f = await c.next();
  assert.equal(JSON.parse(f.payload)[4].event, 'held');
  assert.equal(await c.closeCode(), 1012);
  const code = Buffer.alloc(2); code.writeUInt16BE(1012); c.send(8, code);
  assert.equal((await srv.exited).code, 0);
});

test('limits.max_queued_bytes sheds the largest queue first', async (t) => {
  const srv = await h.startHerald('limits = { max_queued_bytes = 200000, send_queue_bytes = 1048576 }\n');
  t.after(() => srv.stop());
  const stuck = await h.rawWs(srv.port);
  stuck.sendText(['1', '1', 'feed', 'phx_join', {}]);
  await stuck.nextJson();
  stuck.socket.pause();
  const healthy = await h.rawWs(srv.port);
  healthy.sendText(['1', '1', 'feed', 'phx_join', {}]);
  await healthy.nextJson();
  const pad = 'z'.repeat(20000);
  for (let i = 0; i < 500; i++) {
    await h.push(srv.port, { channel: 'feed', event: 'e', data: { i, pad } });
    assert.equal((await healthy.nextJson())[4].data.i, i);
    if (i % 10 === 9 && (await h.metrics(srv.port)).herald_shed_connections_total >= 1) break;
  }
  const m = await h.metrics(srv.port);
  assert.equal(m.herald_shed_connections_total, 1);
  assert.ok(m.herald_queued_bytes <= 200000 + 21000);
  stuck.socket.resume();
  assert.equal(await stuck.closeCode(), 1013);
  healthy.end();
});
