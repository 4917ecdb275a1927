'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('./lib/harness');

test('phoenix client: connect, join, receive a push, leave, heartbeat', async (t) => {
  const srv = await h.startHerald('');
  t.after(() => srv.stop());
  const socket = h.phoenixSocket(srv.port);
  t.after(() => socket.disconnect());
  await h.connect(socket);
  const ch = socket.channel('room:1');
  await h.join(ch);
  const got = h.nextEvent(ch, 'msg');
  const r = await h.push(srv.port, { channel: 'room:1', event: 'hello', data: { text: 'hi', n: 1 } });
  assert.equal(r.status, 200);
  assert.deepEqual(await got, { data: { text: 'hi', n: 1 }, event: 'hello' });

  // Heartbeat: phoenix.js sends one and awaits the reply (ok keeps the socket).
  const ref = socket.makeRef();
  const reply = new Promise((resolve) => {
    const id = socket.onMessage((m) => { if (m.ref === ref) { socket.off([id]); resolve(m); } });
  });
  socket.push({ topic: 'phoenix', event: 'heartbeat', payload: {}, ref });
  const m = await reply;
  assert.equal(m.event, 'phx_reply');
  assert.equal(m.payload.status, 'ok');

  await new Promise((resolve, reject) => ch.leave().receive('ok', resolve).receive('timeout', reject));
  const topic = await h.request(srv.port, 'GET', '/api/topics/room:1');
  assert.equal(topic.json.subscribers, 0);
  assert.deepEqual(srv.errors(), []);
});

test('pushex-style mount, auth-token subprotocol', async (t) => {
  const srv = await h.startHerald('');
  t.after(() => srv.stop());
  const socket = h.phoenixSocket(srv.port, { authToken: 'tok-123' }, '/push_socket');
  t.after(() => socket.disconnect());
  await h.connect(socket);
  assert.equal(socket.conn.protocol, 'phoenix');
  const ch = socket.channel('user:1');
  await h.join(ch);
  const got = h.nextEvent(ch, 'msg');
  await h.push(srv.port, { channel: 'user:1', event: 'ev', data: [1, 'two'] });
  assert.deepEqual(await got, { data: [1, 'two'], event: 'ev' });
});

test('the client reconnects and rejoins after the server closes with 1001', async (t) => {
  const srv = await h.startHerald('timeouts = { ws_idle_ms = 400 }\n');
  t.after(() => srv.stop());
  // No heartbeats: the server's idle timeout closes the socket with 1001.
  const socket = h.phoenixSocket(srv.port, { heartbeatIntervalMs: 3600000, reconnectAfterMs: () => 50 });
  t.after(() => socket.disconnect());
  const closes = [];
  socket.onClose((e) => closes.push(e.code));
  await h.connect(socket);
  const ch = socket.channel('room:r');
  await h.join(ch);
  // Wait for the server's close, then for the rejoin (a second join ok).
  await new Promise((resolve) => { const id = socket.onClose(() => { socket.off([id]); resolve(); }); });
  assert.equal(closes[0], 1001);
  await new Promise((resolve) => { const id = socket.onOpen(() => { socket.off([id]); resolve(); }); });
  await h.eventually(async () => (await h.request(srv.port, 'GET', '/api/topics/room:r')).json.subscribers === 1, 10000, 'rejoin');
  const got = h.nextEvent(ch, 'msg');
  await h.push(srv.port, { channel: 'room:r', event: 'back', data: {} });
  assert.deepEqual(await got, { data: {}, event: 'back' });
});
