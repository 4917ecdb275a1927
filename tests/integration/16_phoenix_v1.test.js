'use strict';
// The V1 serializer (a handshake with no vsn, or vsn=1.x): the real
// phoenix.js 1.2.1 (npm alias `phoenix-v1`, the last release that speaks
// V1) beside a current phoenix.js on the same topic; V1's exact frames
// (replies, pushes, phx_close, presence, history replays) over a raw
// socket; malformed V1 objects closed with 1007.
const test = require('node:test');
const assert = require('node:assert/strict');
const WebSocket = require('ws');
const V1 = require('phoenix-v1');
const h = require('./lib/harness');

const QUIET = { reconnectAfterMs: () => 600000, rejoinAfterMs: () => 600000 };

const CONFIG = `
topics = {
  { match = "pres:*", presence = true },
  { match = "hist:*", history_size = 10 },
}
presence = { batch_ms = 20 }
scripts = { "p.lua" }
`;
const POLICY = `
return {
  authenticate = function(req) return { id = req.params.user or "anon" } end,
  join = function(socket, topic) return true, { meta = { via = "test" } } end,
}`;

function v1Join(channel) {
  return new Promise((resolve, reject) => {
    channel.join()
      .receive('ok', resolve)
      .receive('error', (r) => reject(new Error('join refused: ' + JSON.stringify(r))))
      .receive('timeout', () => reject(new Error('join timed out')));
  });
}

test('phoenix.js 1.2.1 (V1) and a current phoenix.js (V2) on one topic: join, push, heartbeat, leave', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, '');
  const old = new V1.Socket(`ws://127.0.0.1:${srv.port}/socket`, { transport: WebSocket, ...QUIET });
  const cur = h.phoenixSocket(srv.port, QUIET);
  // (1.2.1's disconnect leaves its heartbeat interval running: cleared here)
  t.after(() => { old.disconnect(); clearInterval(old.heartbeatTimer); old.reconnectTimer.reset(); cur.disconnect(); });
  assert.match(old.endPointURL(), /vsn=1\.0\.0$/);
  await h.within(new Promise((resolve) => { old.onOpen(resolve); old.connect(); }), 10000, 'the V1 socket to open');
  await h.connect(cur);

  // Every frame the V1 client gets is a V1 object (no join_ref anywhere).
  const raw = [];
  old.onMessage((m) => raw.push(m));
  const a = old.channel('room:mixed', {});
  const b = cur.channel('room:mixed');
  assert.deepEqual(await v1Join(a), {});
  await h.join(b);
  assert.equal((await h.request(srv.port, 'GET', '/api/topics/room:mixed')).json.subscribers, 2);

  // One push reaches both, each in its serializer.
  const gotA = new Promise((resolve) => a.on('msg', resolve));
  const gotB = h.nextEvent(b, 'msg');
  const r = await h.push(srv.port, { channel: 'room:mixed', event: 'hello', data: { text: 'hi', n: [1, 2] } });
  assert.equal(r.status, 200);
  const want = { data: { text: 'hi', n: [1, 2] }, event: 'hello' };
  assert.deepEqual(await h.within(gotA, 10000, 'the push on the V1 client'), want);
  assert.deepEqual(await gotB, want);
  const pushed = raw.find((m) => m.event === 'msg');
  assert.deepEqual(pushed, { topic: 'room:mixed', event: 'msg', payload: want, ref: null });

  // V1's heartbeat: {"topic":"phoenix","event":"heartbeat",...} answered with its ref.
  const hb = new Promise((resolve) => old.onMessage((m) => { if (m.topic === 'phoenix') resolve(m); }));
  old.sendHeartbeat();
  const hbReply = await h.within(hb, 10000, 'the V1 heartbeat reply');
  assert.deepEqual(hbReply, { topic: 'phoenix', event: 'phx_reply', payload: { status: 'ok', response: {} }, ref: String(old.ref) });

  // Leave: the reply, phx_close, and the server counts one subscriber.
  const closed = new Promise((resolve) => a.onClose(resolve));
  await h.within(new Promise((resolve) => a.leave().receive('ok', resolve)), 10000, 'the V1 leave');
  await h.within(closed, 10000, 'the V1 channel to close');
  assert.equal((await h.request(srv.port, 'GET', '/api/topics/room:mixed')).json.subscribers, 1);
  assert.ok(raw.some((m) => m.event === 'phx_close' && m.topic === 'room:mixed'), 'no phx_close frame');
  for (const m of raw) assert.deepEqual(Object.keys(m).sort(), ['event', 'payload', 'ref', 'topic']);
  // The current client still gets pushes.
  const again = h.nextEvent(b, 'msg');
  await h.push(srv.port, { channel: 'room:mixed', event: 'after', data: 2 });
  assert.deepEqual(await again, { data: 2, event: 'after' });
});

test('V1 frames exactly: replies, pushes, errors, phx_close, presence and a history replay', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, CONFIG, { 'p.lua': POLICY });
  const c = await h.rawWs(srv.port, '/socket/websocket?user=ann');
  c.sendText({ topic: 'room:1', event: 'phx_join', payload: {}, ref: '1' });
  assert.deepEqual(await c.nextJson(), { topic: 'room:1', event: 'phx_reply', payload: { status: 'ok', response: {} }, ref: '1' });
  await h.push(srv.port, { channel: 'room:1', event: 'e', data: { x: '"]}' } });
  assert.equal(await c.nextText(), '{"topic":"room:1","event":"msg","payload":{"data":{"x":"\\"]}"},"event":"e"},"ref":null}');
  c.sendText({ topic: 'nope', event: 'x', payload: {}, ref: '2' });
  assert.deepEqual(await c.nextJson(), { topic: 'nope', event: 'phx_reply', payload: { status: 'error', response: { reason: 'unmatched topic' } }, ref: '2' });
  c.sendText({ topic: 'room:1', event: 'phx_leave', payload: {}, ref: '3' });
  assert.deepEqual(await c.nextJson(), { topic: 'room:1', event: 'phx_reply', payload: { status: 'ok', response: {} }, ref: '3' });
  assert.deepEqual(await c.nextJson(), { topic: 'room:1', event: 'phx_close', payload: {}, ref: '1' });

  // Presence: the state on join, a diff when a V2 socket joins too.
  c.sendText({ topic: 'pres:1', event: 'phx_join', payload: {}, ref: '4' });
  assert.equal((await c.nextJson()).ref, '4');
  const st = await c.nextJson();
  assert.equal(st.topic, 'pres:1');
  assert.equal(st.event, 'presence_state');
  assert.equal(st.ref, null);
  assert.deepEqual(Object.keys(st.payload), ['ann']);
  const v2 = await h.rawWs(srv.port, '/socket/websocket?vsn=2.0.0&user=bob');
  v2.sendText(['9', '9', 'pres:1', 'phx_join', {}]);
  assert.equal((await v2.nextJson())[3], 'phx_reply');
  // (ann's own join may come first, in a diff of its own or with bob's)
  let diff;
  do {
    diff = await c.nextJson();
    assert.equal(diff.event, 'presence_diff');
    assert.equal(diff.topic, 'pres:1');
    assert.equal(diff.ref, null);
  } while (!diff.payload.joins.bob);

  // History: the live frame and the replay carry the offset, in V1.
  c.sendText({ topic: 'hist:1', event: 'phx_join', payload: {}, ref: '5' });
  const jr = await c.nextJson();
  assert.equal(jr.payload.status, 'ok');
  const { epoch } = jr.payload.response;
  await h.push(srv.port, { channel: 'hist:1', event: 'h', data: 1 });
  await h.push(srv.port, { channel: 'hist:1', event: 'h', data: 2 });
  const live = [await c.nextJson(), await c.nextJson()];
  assert.deepEqual(live.map((m) => m.payload), [{ data: 1, event: 'h', offset: 1 }, { data: 2, event: 'h', offset: 2 }]);
  const d = await h.rawWs(srv.port, '/socket/websocket?vsn=1.0.0&user=cy');
  d.sendText({ topic: 'hist:1', event: 'phx_join', payload: { since: { epoch, offset: 0 } }, ref: '1' });
  const rj = await d.nextJson();
  assert.equal(rj.payload.response.recovered, true);
  assert.deepEqual([await d.nextJson(), await d.nextJson()], live);
  c.end();
  v2.end();
  d.end();
});

test('malformed V1 objects are closed with 1007', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, '');
  const bad = [
    '["1","1","room:1","phx_join",{}]', // a V2 array on a V1 socket
    '{"topic":"room:1","event":"phx_join","ref":"1"}', // no payload
    '{"topic":"room:1","event":"phx_join","payload":[],"ref":"1"}',
    '{"topic":1,"event":"phx_join","payload":{},"ref":"1"}',
    '{"topic":"room:1","event":"phx_join","payload":{},"ref":7}',
    '{"topic":"room:1","payload":{},"ref":"1"}',
    '{"topic":"a\\u0000b","event":"phx_join","payload":{},"ref":"1"}',
    '{"topic":"room:1"',
    '"x"',
  ];
  for (const text of bad) {
    const c = await h.rawWs(srv.port, '/socket/websocket');
    c.sendText(text);
    const cf = await c.closeFrame();
    assert.deepEqual([cf.code, cf.reason], [1007, 'invalid Phoenix message'], text);
    c.end();
  }
  const m = await h.metrics(srv.port);
  assert.equal(h.metricSum(m, 'herald_ws_bad_messages_total'), bad.length);
});
