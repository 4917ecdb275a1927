'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('./lib/harness');

test('Phoenix frames, exactly', async (t) => {
  const srv = await h.startHerald('limits = { max_topics_per_socket = 2 }\n');
  t.after(() => srv.stop());
  const c = await h.rawWs(srv.port);
  assert.equal(c.status, 101);
  c.sendText([null, '9', 'phoenix', 'heartbeat', {}]);
  assert.deepEqual(await c.nextJson(), [null, '9', 'phoenix', 'phx_reply', { status: 'ok', response: {} }]);
  c.sendText(['3', '3', 'room:1', 'phx_join', {}]);
  assert.deepEqual(await c.nextJson(), ['3', '3', 'room:1', 'phx_reply', { status: 'ok', response: {} }]);
  await h.push(srv.port, { channel: 'room:1', event: 'e', data: { a: 1 } });
  assert.equal((await c.next()).payload.toString(), '[null,null,"room:1","msg",{"data":{"a":1},"event":"e"}]');
  // Duplicate join closes the old channel first.
  c.sendText(['5', '5', 'room:1', 'phx_join', {}]);
  assert.deepEqual(await c.nextJson(), ['3', '3', 'room:1', 'phx_close', {}]);
  assert.deepEqual(await c.nextJson(), ['5', '5', 'room:1', 'phx_reply', { status: 'ok', response: {} }]);
  // A message on a topic not joined.
  c.sendText(['1', '6', 'other', 'custom', {}]);
  assert.deepEqual(await c.nextJson(), [null, '6', 'other', 'phx_reply', { status: 'error', response: { reason: 'unmatched topic' } }]);
  // Stale join_ref: dropped; the heartbeat after it is answered first.
  c.sendText(['3', '7', 'room:1', 'custom', {}]);
  c.sendText([null, '8', 'phoenix', 'heartbeat', {}]);
  assert.deepEqual(await c.nextJson(), [null, '8', 'phoenix', 'phx_reply', { status: 'ok', response: {} }]);
  // Limits on topics.
  c.sendText(['9', '9', 'room:2', 'phx_join', {}]);
  assert.equal((await c.nextJson())[4].status, 'ok');
  c.sendText(['10', '10', 'room:3', 'phx_join', {}]);
  assert.deepEqual(await c.nextJson(), ['10', '10', 'room:3', 'phx_reply', { status: 'error', response: { reason: 'too many channels joined' } }]);
  c.sendText(['11', '11', 'x'.repeat(256), 'phx_join', {}]);
  assert.deepEqual((await c.nextJson())[4], { status: 'error', response: { reason: 'invalid topic' } });
  // Leave.
  c.sendText(['5', '12', 'room:1', 'phx_leave', {}]);
  assert.deepEqual(await c.nextJson(), ['5', '12', 'room:1', 'phx_reply', { status: 'ok', response: {} }]);
  assert.deepEqual(await c.nextJson(), ['5', '5', 'room:1', 'phx_close', {}]);
  c.sendText(['5', '13', 'room:1', 'phx_leave', {}]);
  assert.deepEqual(await c.nextJson(), ['5', '13', 'room:1', 'phx_reply', { status: 'ok', response: {} }]);
  c.end();
  assert.deepEqual(srv.errors(), []);
});

test('RFC 6455: ping, fragments, handshake bytes, close handshake', async (t) => {
  const srv = await h.startHerald('');
  t.after(() => srv.stop());
  const c = await h.rawWs(srv.port);
  c.send(9, 'hello');
  const pong = await c.next();
  assert.equal(pong.opcode, 10);
  assert.equal(pong.payload.toString(), 'hello');
  // A fragmented text message with a ping between the fragments.
  const msg = JSON.stringify([null, '1', 'phoenix', 'heartbeat', {}]);
  c.send(1, msg.slice(0, 5), { fin: false });
  c.send(9, 'mid');
  c.send(0, msg.slice(5, 12), { fin: false });
  c.send(0, msg.slice(12), { fin: true });
  assert.equal((await c.next()).opcode, 10);
  assert.deepEqual(await c.nextJson(), [null, '1', 'phoenix', 'phx_reply', { status: 'ok', response: {} }]);
  // The client closes with 4001: the server echoes 4001 and closes TCP.
  const code = Buffer.alloc(2);
  code.writeUInt16BE(4001);
  c.send(8, code);
  assert.equal(await c.closeCode(), 4001);
  await c.waitClosed();
});
