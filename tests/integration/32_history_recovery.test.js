'use strict';
// History and recovery (topic policy history_size > 0) seen by real
// clients: phoenix.js with examples/recovery.js in Node and in headless
// Chromium. Each client reaches herald through the test balancer
// (lib/balancer.js), which the test empties to keep a cut client away
// while it publishes, and fills again to let phoenix.js reconnect by
// itself.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const h = require('./lib/harness');
const { balancer } = require('./lib/balancer');
const { PHOENIX_JS, SKIP, webServer, openPage } = require('./lib/browser');
const HeraldRecovery = require('../../examples/recovery.js');

const RECOVERY_JS = path.join(h.ROOT, 'examples', 'recovery.js');

const config = (ttl = 300000, recoverMax = 300) =>
  `topics = { { match = "room:*", history_size = 100, history_ttl_ms = ${ttl}, recover_max = ${recoverMax} } }\n`;
const FAST = { reconnectAfterMs: () => 20, rejoinAfterMs: () => 20 };

const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

async function publish(port, topic, numbers) {
  for (const n of numbers) assert.equal((await h.push(port, { channel: topic, event: 'n', data: n })).status, 200);
}

async function subscribers(port, topic) {
  return (await h.request(port, 'GET', `/api/topics/${topic}`)).json.subscribers;
}

// A phoenix.js socket with a HeraldRecovery channel on topic, connected
// and joined (disconnected when the test ends): what the helper delivers
// (got), the first join reply (first) and the ok join replies after it in
// order (replies), how often onRecovered and onGap ran, and the raw "msg"
// frames of the topic as they came off the socket (frames), to check
// herald itself sends nothing twice.
async function recoveringClient(t, port, topic, opts = {}) {
  const socket = h.phoenixSocket(port, FAST);
  t.after(() => socket.disconnect());
  const c = { socket, got: [], frames: [], replies: new h.Inbox(), recovered: 0, gaps: 0, waiters: [] };
  socket.onMessage((m) => { if (m.topic === topic && m.event === 'msg') c.frames.push(m.payload.offset); });
  c.ch = HeraldRecovery.channel(socket, topic, {
    ...opts,
    onMessage: (event, data, offset) => {
      c.got.push({ event, data, offset });
      for (const w of c.waiters.slice()) if (c.got.length >= w.n) { c.waiters.splice(c.waiters.indexOf(w), 1); w.resolve(); }
    },
    onJoin: (reply) => c.replies.push(reply),
    onRecovered: () => c.recovered++,
    onGap: () => c.gaps++,
  });
  // Resolves once the helper has delivered n messages.
  c.count = (n, ms = 10000) => (c.got.length >= n ? Promise.resolve()
    : h.within(new Promise((resolve) => c.waiters.push({ n, resolve })), ms, `${n} messages (got ${c.got.length})`));
  c.data = () => c.got.map((m) => m.data);
  c.offsets = () => c.got.map((m) => m.offset);
  socket.connect();
  c.ch.join();
  c.first = await c.replies.next(10000, 'the join reply');
  return c;
}

// The test balancer in front of port, closed when the test ends.
async function balanced(t, port) {
  const lb = await balancer([port]);
  t.after(() => lb.close());
  return lb;
}

// Cuts the client's WebSocket from its side without a leave (ws's
// terminate: the TCP connection is destroyed, as when a network drops),
// with the balancer empty so that phoenix.js's reconnects fail until
// reopen(); resolves once herald has seen the subscriber go.
async function cutAway(c, lb, srv, topic, stay = 0) {
  const backends = lb.backends.splice(0);
  c.reopen = () => lb.backends.push(...backends);
  c.socket.conn.terminate();
  await h.eventually(async () => (await subscribers(srv.port, topic)) === stay, 10000, 'herald to see the cut');
}

test('a cut WebSocket: after phoenix.js reconnects by itself, every message exactly once and in order', { timeout: 60000 }, async (t) => {
  const srv = await h.serve(t, config());
  const lb = await balanced(t, srv.port);
  const c = await recoveringClient(t, lb.port, 'room:cut');
  assert.match(c.first.epoch, /^[0-9a-f]{16}$/);
  assert.equal(c.first.offset, 0);
  assert.equal('recovered' in c.first, false, 'a join without since has no "recovered"');

  await publish(srv.port, 'room:cut', range(1, 5));
  await c.count(5);
  assert.deepEqual(c.offsets(), range(1, 5));
  assert.deepEqual(c.ch.recovery.since(), { epoch: c.first.epoch, offset: 5 });

  await cutAway(c, lb, srv, 'room:cut');
  await publish(srv.port, 'room:cut', range(6, 15)); // while the client is away
  c.reopen();
  const again = await c.replies.next(10000, 'the rejoin reply');
  assert.deepEqual(again, { recovered: true, epoch: c.first.epoch, offset: 15 });
  await c.count(15);
  await publish(srv.port, 'room:cut', range(16, 20)); // live again
  await c.count(20);
  await publish(srv.port, 'room:cut', ['end']);
  await c.count(21);

  assert.deepEqual(c.data(), [...range(1, 20), 'end']);
  assert.deepEqual(c.offsets(), range(1, 21));
  assert.deepEqual(c.frames, range(1, 21), 'herald sent each offset once, in order');
  assert.equal(c.recovered, 1);
  assert.equal(c.gaps, 0);
  const m = await h.metrics(srv.port);
  assert.equal(m['herald_recoveries_total{result="recovered"}'], 1);
  assert.equal(m['herald_recoveries_total{result="not_recovered"}'], 0);
});

test('after a server restart the rejoin is not recovered (another epoch), and the stream starts again', { timeout: 60000 }, async (t) => {
  const a = await h.startHerald(config());
  const lb = await balanced(t, a.port);
  t.after(() => a.stop());
  const c = await recoveringClient(t, lb.port, 'room:restart');
  await publish(a.port, 'room:restart', range(1, 3));
  await c.count(3);

  // SIGTERM: the drain closes the WebSocket with 1012 and phoenix.js
  // reconnects, through the balancer, to the new process.
  lb.backends.splice(0);
  await h.finish(a);
  const b = await h.serve(t, config());
  lb.backends.push(b.port);
  const again = await c.replies.next(15000, 'the rejoin reply from the new process');
  assert.equal(again.recovered, false);
  assert.match(again.epoch, /^[0-9a-f]{16}$/);
  assert.notEqual(again.epoch, c.first.epoch);
  assert.equal(again.offset, 0);
  assert.equal(c.gaps, 1);
  assert.equal(c.recovered, 0);

  // The helper now follows the new stream: its offset 1 is not taken for
  // a message seen already.
  await publish(b.port, 'room:restart', ['new']);
  await c.count(4);
  assert.deepEqual(c.data(), [1, 2, 3, 'new']);
  assert.deepEqual(c.offsets(), [1, 2, 3, 1]);
  assert.deepEqual(c.ch.recovery.since(), { epoch: again.epoch, offset: 1 });
});

test('a client away longer than history_ttl_ms is not recovered', { timeout: 60000 }, async (t) => {
  const srv = await h.serve(t, config(200));
  const lb = await balanced(t, srv.port);
  // Another subscriber keeps the topic's stream (and its epoch) alive.
  const keeper = h.phoenixSocket(srv.port, FAST);
  t.after(() => keeper.disconnect());
  await h.connect(keeper);
  const kch = keeper.channel('room:ttl');
  const kept = [];
  kch.on('msg', (p) => kept.push(p.offset));
  await h.join(kch);

  const c = await recoveringClient(t, lb.port, 'room:ttl');
  await publish(srv.port, 'room:ttl', [1, 2]);
  await c.count(2);

  await cutAway(c, lb, srv, 'room:ttl', 1);
  await publish(srv.port, 'room:ttl', [3, 4]);
  await h.eventually(() => kept.length === 4, 10000, 'the keeper to get 4 messages');
  // The sweep drops messages older than history_ttl_ms: then they are gone.
  await h.eventually(async () => (await h.metrics(srv.port)).herald_history_messages === 0, 10000, 'the messages to expire');
  c.reopen();
  const again = await c.replies.next(10000, 'the rejoin reply');
  assert.deepEqual(again, { recovered: false, epoch: c.first.epoch, offset: 4 });
  assert.equal(c.gaps, 1);
  await publish(srv.port, 'room:ttl', [5]);
  await c.count(3);
  assert.deepEqual(c.data(), [1, 2, 5]);
  assert.deepEqual(c.offsets(), [1, 2, 5]);
});

test('a join with a wrong epoch, or a since herald cannot serve, gets recovered: false and nothing replayed', { timeout: 60000 }, async (t) => {
  const srv = await h.serve(t, config(300000, 5));
  const ws = await h.wsClient(srv.port);
  t.after(() => ws.close());
  ws.send(['1', '1', 'room:e', 'phx_join', {}]);
  const { epoch } = (await ws.nextJson())[4].response;
  await publish(srv.port, 'room:e', range(1, 8));
  for (let i = 1; i <= 8; i++) assert.equal((await ws.nextJson())[4].offset, i);

  // The helper resuming from a saved position of another epoch.
  const wrong = epoch.replace(/^./, (d) => (d === '0' ? '1' : '0'));
  const c = await recoveringClient(t, srv.port, 'room:e', { since: { epoch: wrong, offset: 6 } });
  assert.deepEqual(c.first, { recovered: false, epoch, offset: 8 });
  assert.equal(c.gaps, 1);
  await publish(srv.port, 'room:e', [9]);
  await c.count(1);
  assert.deepEqual(c.got, [{ event: 'n', data: 9, offset: 9 }], 'nothing replayed before the live message');
  assert.equal((await ws.nextJson())[4].offset, 9);

  // The same position in the right epoch is replayed (the control).
  const d = await recoveringClient(t, srv.port, 'room:e', { since: { epoch, offset: 6 } });
  assert.deepEqual(d.first, { recovered: true, epoch, offset: 9 });
  await d.count(3);
  assert.deepEqual(d.offsets(), [7, 8, 9]);

  // Each of these is answered recovered: false with the stream's position,
  // and the next frame is the next live message.
  const refused = [
    { epoch, offset: 99 },          // in the future
    { epoch, offset: 3 },           // 6 missing, recover_max = 5
    { epoch, offset: -1 },
    { epoch, offset: 1.5 },
    { epoch },
    { offset: 8 },
    { epoch: 7, offset: 8 },
    'since',
    null,
  ];
  let live = 10;
  for (const since of refused) {
    ws.send(['2', '2', 'room:e', 'phx_join', { since }]);
    const close = await ws.nextJson();
    assert.equal(close[3], 'phx_close'); // the earlier join of the same socket
    const reply = await ws.nextJson();
    assert.deepEqual(reply[4], { status: 'ok', response: { recovered: false, epoch, offset: live - 1 } }, JSON.stringify(since));
    await publish(srv.port, 'room:e', [live]);
    const next = await ws.nextJson();
    assert.deepEqual(next[4], { data: live, event: 'n', offset: live }, JSON.stringify(since));
    live++;
  }
});

test('a replay too large for the send queue is refused once (recovered: false), not closed with 1013 at every reconnect', { timeout: 60000 }, async (t) => {
  const srv = await h.serve(t, 'limits = { send_queue_bytes = 65536 }\n' + config());
  const lb = await balanced(t, srv.port);
  const c = await recoveringClient(t, lb.port, 'room:big');
  await publish(srv.port, 'room:big', [1]);
  await c.count(1);
  await cutAway(c, lb, srv, 'room:big');
  const big = 'x'.repeat(4000);
  for (let i = 0; i < 30; i++) await h.push(srv.port, { channel: 'room:big', event: 'big', data: big }); // ~120 KB
  c.reopen();
  // (Before the fix, the replay overflowed the queue: 1013 before the
  // reply was out, at every reconnect, and no reply ever came.)
  const again = await c.replies.next(10000, 'the rejoin reply');
  assert.equal(again.recovered, false);
  assert.equal(again.offset, 31);
  await publish(srv.port, 'room:big', ['live']);
  await c.count(2);
  assert.deepEqual(c.data(), [1, 'live']);
  assert.equal(c.gaps, 1);
  assert.equal((await h.metrics(srv.port)).herald_slow_consumer_closes_total, 0);
});

test('topics without history keep their frames as they were: no offset, no epoch', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, config());
  const ws = await h.wsClient(srv.port);
  t.after(() => ws.close());
  ws.send(['1', '1', 'plain:1', 'phx_join', { since: { epoch: '0123456789abcdef', offset: 1 } }]);
  assert.equal(await ws.next(), '["1","1","plain:1","phx_reply",{"status":"ok","response":{}}]');
  await h.push(srv.port, { channel: 'plain:1', event: 'e', data: { x: 1 } });
  assert.equal(await ws.next(), '[null,null,"plain:1","msg",{"data":{"x":1},"event":"e"}]');
});

function page(port) {
  return `<!doctype html><meta charset="utf-8"><title>herald recovery</title>
<script src="/phoenix.js"></script>
<script src="/recovery.js"></script>
<script>
  window.got = []; window.replies = []; window.recovered = 0; window.gaps = 0;
  window.socket = new Phoenix.Socket("ws://127.0.0.1:${port}/socket", { reconnectAfterMs: () => 50, rejoinAfterMs: () => 50 });
  socket.connect();
  window.ch = HeraldRecovery.channel(socket, "room:page", {
    onMessage: (event, data, offset) => got.push({ data, offset }),
    onJoin: (reply) => replies.push(reply),
    onRecovered: () => recovered++,
    onGap: () => gaps++,
  });
  ch.join();
</script>`;
}

test('in headless Chromium: messages published while the page is cut arrive after the reconnect, once each, in order', { timeout: 90000, skip: SKIP }, async (t) => {
  const srv = await h.serve(t, config());
  const lb = await balanced(t, srv.port);
  const url = await webServer(t, {
    '/': page(lb.port), '/phoenix.js': fs.readFileSync(PHOENIX_JS), '/recovery.js': fs.readFileSync(RECOVERY_JS),
  });
  const { tab, pageErrors } = await openPage(t, `${url}/`);
  const wait = (fn, arg) => tab.waitForFunction(fn, arg, { timeout: 15000 });
  await wait(() => window.replies.length === 1);
  const first = (await tab.evaluate(() => window.replies))[0];
  assert.equal(first.offset, 0);

  await publish(srv.port, 'room:page', range(1, 3));
  await wait(() => window.got.length === 3);
  // Cut from the page: close the WebSocket under phoenix.js (no leave).
  const backends = lb.backends.splice(0);
  await tab.evaluate(() => window.socket.conn.close());
  await h.eventually(async () => (await subscribers(srv.port, 'room:page')) === 0, 10000, 'herald to see the close');
  await publish(srv.port, 'room:page', range(4, 8));
  lb.backends.push(...backends);
  await wait(() => window.replies.length === 2 && window.got.length === 8);
  await publish(srv.port, 'room:page', range(9, 10));
  await wait(() => window.got.length === 10);

  const s = await tab.evaluate(() => ({ got: window.got, replies: window.replies, recovered: window.recovered, gaps: window.gaps }));
  assert.deepEqual(s.replies[1], { recovered: true, epoch: first.epoch, offset: 8 });
  assert.deepEqual(s.got.map((m) => m.data), range(1, 10));
  assert.deepEqual(s.got.map((m) => m.offset), range(1, 10));
  assert.equal(s.recovered, 1);
  assert.equal(s.gaps, 0);
  assert.deepEqual(pageErrors, []);
});
