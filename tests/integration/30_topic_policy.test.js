'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('./lib/harness');

const CONFIG = `
topics = {
  { match = "room:*", presence = true },
  { match = "fast:*", throttle_ms = 500, coalesce = "latest" },
  { match = "quiet:*", debounce_ms = 100, max_wait_ms = 400 },
  { match = "lossy:*", on_overflow = "drop_oldest", max_queue_bytes = 65536 },
  { match = "public:*", tracked = false },
}
presence = { batch_ms = 100 }
timeouts = { ws_idle_ms = 600000 }
scripts = { "p.lua" }
`;
const POLICY = `
return {
  authenticate = function(req) return { id = req.params.user } end,
  join = function(socket, topic) return true, { meta = { device = "node" } } end,
}`;

function presenceOf(socket, topic) {
  const ch = socket.channel(topic);
  const presence = new h.Presence(ch);
  return { ch, presence };
}

test('presence: phoenix.js Presence sees joins, leaves and meta updates; lists match the API', async (t) => {
  const srv = await h.startHerald(CONFIG, { 'p.lua': POLICY });
  t.after(() => srv.stop());
  const a = h.phoenixSocket(srv.port, { params: { user: 'alice' } });
  const b = h.phoenixSocket(srv.port, { params: { user: 'bob' } });
  t.after(() => { a.disconnect(); b.disconnect(); });
  await h.connect(a);
  await h.connect(b);
  const pa = presenceOf(a, 'room:lobby');
  const synced = (p, keys) => new Promise((resolve) => {
    const check = () => { if (JSON.stringify(p.list((k) => k).sort()) === JSON.stringify(keys)) resolve(); };
    p.onSync(check);
    check();
  });
  await h.join(pa.ch);
  await synced(pa.presence, ['alice']);
  const pb = presenceOf(b, 'room:lobby');
  await h.join(pb.ch);
  await Promise.all([synced(pa.presence, ['alice', 'bob']), synced(pb.presence, ['alice', 'bob'])]);

  const api = (await h.request(srv.port, 'GET', '/api/presence/room:lobby')).json;
  assert.deepEqual(Object.keys(api).sort(), ['alice', 'bob']);
  const bobMeta = pa.presence.list((k, p) => (k === 'bob' ? p.metas[0] : null)).find(Boolean);
  assert.equal(bobMeta.device, 'node');
  assert.equal(bobMeta.phx_ref, api.bob.metas[0].phx_ref);
  assert.equal(typeof bobMeta.online_at, 'number');

  const left = new Promise((resolve) => pa.presence.onLeave((key) => { if (key === 'bob') resolve(); }));
  pb.ch.leave();
  await left;
  await synced(pa.presence, ['alice']);
  assert.deepEqual(srv.errors(), []);
});

test('presence: a 2,000-client join storm reaches an observer as a handful of diffs', async (t) => {
  const srv = await h.startHerald(CONFIG, { 'p.lua': POLICY });
  t.after(() => srv.stop());
  const obs = await h.rawWs(srv.port, '/socket/websocket?vsn=2.0.0&user=observer');
  obs.sendText(['1', '1', 'room:storm', 'phx_join', {}]);
  assert.equal((await obs.nextJson())[4].status, 'ok');
  assert.equal((await obs.nextJson())[3], 'presence_state');
  const N = 2000;
  const clients = [];
  for (let i = 0; i < N; i += 250) {
    const batch = await Promise.all(Array.from({ length: 250 }, (_, j) => h.rawWs(srv.port, `/socket/websocket?vsn=2.0.0&user=u${i + j}`)));
    for (const c of batch) { c.sendText(['1', '1', 'room:storm', 'phx_join', {}]); c.socket.resume(); }
    clients.push(...batch);
  }
  t.after(() => clients.forEach((c) => c.end()));
  const seen = new Set(['observer']);
  let diffs = 0;
  while (seen.size < N + 1) {
    const f = await obs.nextJson(15000);
    assert.equal(f[3], 'presence_diff');
    diffs++;
    for (const k of Object.keys(f[4].joins)) seen.add(k);
  }
  // Batched by presence.batch_ms: far fewer frames than joins.
  assert.ok(diffs <= 40, `${diffs} diff frames for ${N} joins`);
  const api = (await h.request(srv.port, 'GET', '/api/presence/room:storm')).json;
  assert.equal(Object.keys(api).length, N + 1);
});

test('throttle with coalesce=latest: 5,000 publishes reach a client as a few frames, the last one last', async (t) => {
  const srv = await h.startHerald(CONFIG, { 'p.lua': POLICY });
  t.after(() => srv.stop());
  const c = await h.rawWs(srv.port, '/socket/websocket?vsn=2.0.0&user=t');
  c.sendText(['1', '1', 'fast:1', 'phx_join', {}]);
  await c.nextJson();
  for (let b = 0; b < 5; b++) {
    const batch = Array.from({ length: 1000 }, (_, i) => ({ channel: 'fast:1', event: 'tick', data: { i: b * 1000 + i } }));
    assert.equal((await h.push(srv.port, batch)).status, 200);
  }
  const frames = [];
  for (;;) {
    const f = await c.nextJson(5000);
    frames.push(f);
    if (f[4].data.i === 4999) break;
  }
  assert.ok(frames.length <= 3, `${frames.length} frames`);
  const m = await h.metrics(srv.port);
  assert.equal(m.herald_shaped_received_total, 5000);
  assert.ok(m.herald_shaped_coalesced_total >= 4990);
  assert.equal(m['herald_topic_messages_total{pattern="fast:*",kind="received"}'], 5000);
  assert.ok(m['herald_topic_messages_total{pattern="fast:*",kind="coalesced"}'] >= 4990);
  assert.equal(m['herald_topic_messages_total{pattern="fast:*",kind="delivered"}'], frames.length);
});

test('debounce with max_wait: a steady stream is released at least every max_wait_ms, in order', async (t) => {
  const srv = await h.startHerald(CONFIG, { 'p.lua': POLICY });
  t.after(() => srv.stop());
  const c = await h.rawWs(srv.port, '/socket/websocket?vsn=2.0.0&user=d');
  c.sendText(['1', '1', 'quiet:1', 'phx_join', {}]);
  await c.nextJson();
  const batch = Array.from({ length: 50 }, (_, i) => ({ channel: 'quiet:1', event: 'e', data: { i } }));
  await h.push(srv.port, batch);
  const got = [];
  while (got.length < 50) got.push((await c.nextJson(5000))[4].data.i);
  assert.deepEqual(got, batch.map((x) => x.data.i)); // coalesce none: all, in order
});

test('slow consumer with drop_oldest: frames dropped (counted), connection kept, others get all', async (t) => {
  const srv = await h.startHerald(CONFIG, { 'p.lua': POLICY });
  t.after(() => srv.stop());
  const slow = await h.rawWs(srv.port, '/socket/websocket?vsn=2.0.0&user=slow');
  slow.sendText(['1', '1', 'lossy:1', 'phx_join', {}]);
  await slow.nextJson();
  slow.socket.pause();
  const fast = await h.rawWs(srv.port, '/socket/websocket?vsn=2.0.0&user=fast');
  fast.sendText(['1', '1', 'lossy:1', 'phx_join', {}]);
  await fast.nextJson();
  const pad = 'y'.repeat(8000);
  let sent = 0;
  for (; sent < 3000; sent++) {
    await h.push(srv.port, { channel: 'lossy:1', event: 'e', data: { i: sent, pad } });
    const f = await fast.nextJson();
    assert.equal(f[4].data.i, sent);
    if (sent % 50 === 49 && (await h.metrics(srv.port))['herald_dropped_total{reason="drop_oldest"}'] > 10) break;
  }
  const m = await h.metrics(srv.port);
  assert.ok(m['herald_dropped_total{reason="drop_oldest"}'] > 10);
  assert.equal(m.herald_slow_consumer_closes_total, 0);
  assert.equal((await h.request(srv.port, 'GET', '/api/topics/lossy:1')).json.subscribers, 2);
  // Memory stays bounded: the queue is capped at max_queue_bytes.
  assert.ok(m.herald_queued_bytes <= 65536 + 9000, `queued ${m.herald_queued_bytes}`);
  slow.end(); fast.end();
});

test('untracked topics: no presence, always listening', async (t) => {
  const srv = await h.startHerald(CONFIG, { 'p.lua': POLICY });
  t.after(() => srv.stop());
  const r = (await h.request(srv.port, 'GET', '/api/topics/public:news')).json;
  assert.equal(r.listening, true);
  assert.equal(r.policy.tracked, false);
  const c = await h.rawWs(srv.port, '/socket/websocket?vsn=2.0.0&user=x');
  c.sendText(['1', '1', 'public:news', 'phx_join', {}]);
  await c.nextJson();
  assert.deepEqual((await h.request(srv.port, 'GET', '/api/presence/public:news')).json, {});
  c.end();
});
