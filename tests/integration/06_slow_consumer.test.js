'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('./lib/harness');

test('a client that stops reading is closed with 1013; a healthy one gets everything', async (t) => {
  const srv = await h.startHerald('limits = { send_queue_bytes = 65536 }\ntimeouts = { ws_close_ms = 60000 }\n');
  t.after(() => srv.stop());
  const slow = await h.rawWs(srv.port);
  slow.sendText(['1', '1', 'big', 'phx_join', {}]);
  assert.equal((await slow.nextJson())[4].status, 'ok');
  slow.socket.pause(); // stops reading: the kernel buffers fill, then herald's queue

  const socket = h.phoenixSocket(srv.port);
  t.after(() => socket.disconnect());
  await h.connect(socket);
  const ch = socket.channel('big');
  await h.join(ch);
  let received = 0;
  ch.on('msg', () => received++);

  const pad = 'x'.repeat(10000);
  let sent = 0;
  // Bounded: stop once the slow client was shed (or after 2,000 pushes).
  for (; sent < 2000; sent++) {
    const r = await h.push(srv.port, { channel: 'big', event: 'e', data: { i: sent, pad } });
    assert.equal(r.status, 200);
    if (sent % 20 === 19 && (await h.metrics(srv.port)).herald_slow_consumer_closes_total >= 1) { sent++; break; }
  }
  const m = await h.metrics(srv.port);
  assert.equal(m.herald_slow_consumer_closes_total, 1);
  assert.ok(m['herald_dropped_total{reason="slow_consumer"}'] >= 1);
  // The healthy client receives every push.
  await h.eventually(() => received === sent, 20000, `all ${sent} pushes on the healthy client`);
  // The slow client, reading again, finds 1013 after what was already queued.
  slow.socket.resume();
  assert.equal(await slow.closeCode(20000), 1013);
  const status = await h.request(srv.port, 'GET', '/api/topics/big');
  assert.equal(status.json.subscribers, 1);
});
