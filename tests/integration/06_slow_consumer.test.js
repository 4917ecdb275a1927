'use strict';
// Backpressure: a subscriber that stops reading is closed with 1013 once its
// queued bytes pass limits.send_queue_bytes, while a healthy subscriber on
// the same topic gets every message; the counters show it.
const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('./lib/harness');

const MAX_PUSHES = 3000; // 30 MB at most: past any loopback socket buffers
const PAD = 'x'.repeat(10000);

test('a client that stops reading is closed with 1013; a healthy one gets everything', { timeout: 90000 }, async (t) => {
  const srv = await h.serve(t, 'limits = { send_queue_bytes = 65536 }\ntimeouts = { ws_close_ms = 60000 }\n');
  const before = await h.metrics(srv.port);

  // The slow client: joins, then stops reading (the kernel buffers fill,
  // then herald's queue for it).
  const slow = await h.rawWs(srv.port);
  slow.sendText(['1', '1', 'big', 'phx_join', {}]);
  assert.deepEqual(await slow.nextJson(), ['1', '1', 'big', 'phx_reply', { status: 'ok', response: {} }]);
  slow.socket.pause();

  // The healthy client: phoenix.js, counting what it gets.
  const socket = h.phoenixSocket(srv.port, { reconnectAfterMs: () => 600000 });
  t.after(() => socket.disconnect());
  await h.connect(socket);
  const ch = socket.channel('big');
  await h.join(ch);
  const received = [];
  let wantCount = Infinity, onAll;
  const all = new Promise((resolve) => (onAll = resolve));
  ch.on('msg', (p) => { received.push(p.data.i); if (received.length >= wantCount) onAll(); });

  // Publish over one keep-alive connection until the slow client is shed.
  const api = await h.httpConn(srv.port);
  let sent = 0, shed = false;
  while (sent < MAX_PUSHES && !shed) {
    const body = JSON.stringify({ channel: 'big', event: 'e', data: { i: sent, pad: PAD } });
    api.write(`POST /api/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
    const r = await api.response();
    assert.equal(r.status, 200);
    sent++;
    if (sent % 10 === 0) shed = (await h.metrics(srv.port)).herald_slow_consumer_closes_total > before.herald_slow_consumer_closes_total;
  }
  api.end();
  assert.ok(shed, `the slow client was not closed after ${sent} pushes of 10 KB`);

  const m = await h.metrics(srv.port);
  assert.equal(m.herald_slow_consumer_closes_total, before.herald_slow_consumer_closes_total + 1);
  assert.ok(m['herald_dropped_total{reason="slow_consumer"}'] > before['herald_dropped_total{reason="slow_consumer"}'],
    'herald_dropped_total{reason="slow_consumer"} did not grow');
  assert.ok(m.herald_publishes_total >= before.herald_publishes_total + sent);

  // The healthy client receives every push, in order.
  wantCount = sent;
  if (received.length >= wantCount) onAll();
  await h.within(all, 30000, `all ${sent} pushes on the healthy client (got ${received.length})`);
  assert.deepEqual(received, [...Array(sent).keys()]);

  // The slow client, reading again, finds an in-order prefix of the
  // messages and then the close frame with 1013.
  slow.socket.resume();
  let next = 0, code;
  for (let i = 0; i <= MAX_PUSHES; i++) {
    const f = await slow.next(30000);
    if (f.opcode === 8) { code = f.payload.readUInt16BE(0); break; }
    assert.equal(f.opcode, 1);
    const msg = JSON.parse(f.payload.toString());
    assert.equal(msg[3], 'msg');
    assert.equal(msg[4].data.i, next, 'the slow client got messages out of order or with a gap');
    next++;
  }
  assert.equal(code, 1013);
  assert.ok(next < sent, 'the slow client got everything, so nothing was dropped');
  slow.write(h.frame(8, h.closePayload(1013)));
  await slow.waitClosed();

  const topic = await h.request(srv.port, 'GET', '/api/topics/big');
  assert.equal(topic.json.subscribers, 1, 'only the healthy client is left on the topic');
  // The healthy client is still fine.
  const got = h.nextEvent(ch, 'msg');
  await h.push(srv.port, { channel: 'big', event: 'after', data: { i: -1 } });
  assert.deepEqual(await got, { data: { i: -1 }, event: 'after' });
});
