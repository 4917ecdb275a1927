'use strict';
// The real phoenix.js client (npm `phoenix`) over `ws`: connect, join,
// receive pushes, leave, heartbeat, the PushEx mount, the authToken
// subprotocol, and reconnect + rejoin after a server close with 1001.
const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('./lib/harness');

// No automatic reconnects unless a test wants them.
const QUIET = { reconnectAfterMs: () => 600000, rejoinAfterMs: () => 600000 };

test('phoenix client: connect, join, receive pushes, heartbeat, leave', { timeout: 60000 }, async (t) => {
  const srv = await h.serve(t, '');
  const socket = h.phoenixSocket(srv.port, QUIET);
  t.after(() => socket.disconnect());
  await h.connect(socket);
  assert.equal(socket.isConnected(), true);
  assert.match(socket.endPointURL(), /\/socket\/websocket\?vsn=2\.0\.0$/);

  const ch = socket.channel('room:1');
  const joinReply = await h.join(ch);
  assert.deepEqual(joinReply, {});
  assert.equal(ch.state, 'joined');
  const ch2 = socket.channel('room:2');
  await h.join(ch2);

  // A push over HTTP arrives as "msg" with {data, event}.
  let got = h.nextEvent(ch, 'msg');
  let r = await h.push(srv.port, { channel: 'room:1', event: 'hello', data: { text: 'hi', n: 1 } });
  assert.equal(r.status, 200);
  assert.deepEqual(await got, { data: { text: 'hi', n: 1 }, event: 'hello' });

  // Several pushes arrive in publish order, each once.
  const seen = [];
  const id = ch.on('msg', (p) => seen.push(p.data));
  for (let i = 0; i < 20; i++) await h.push(srv.port, { channel: 'room:1', event: 'n', data: i });
  got = h.nextEvent(ch2, 'msg');
  await h.push(srv.port, { channel: 'room:2', event: 'marker', data: null });
  await got; // room:2's marker was published after all of room:1's pushes
  ch.off('msg', id);
  assert.deepEqual(seen, [...Array(20).keys()]);

  // Heartbeat: the reply carries the heartbeat's ref.
  const ref = socket.makeRef();
  const reply = h.nextSocketMessage(socket, (m) => m.ref === ref, 10000, 'the heartbeat reply');
  socket.push({ topic: 'phoenix', event: 'heartbeat', payload: {}, ref });
  const m = await reply;
  assert.equal(m.topic, 'phoenix');
  assert.equal(m.event, 'phx_reply');
  assert.deepEqual(m.payload, { status: 'ok', response: {} });
  // phoenix.js's own heartbeat: the reply matches its pending heartbeat ref.
  const own = h.nextSocketMessage(socket, (x) => x.topic === 'phoenix' && x.event === 'phx_reply', 10000, 'the client heartbeat reply');
  socket.sendHeartbeat();
  const hbRef = socket.pendingHeartbeatRef;
  const ownReply = await own;
  assert.equal(ownReply.ref, hbRef);
  assert.equal(ownReply.payload.status, 'ok');

  // Leave: phx_close arrives, the server no longer counts the socket, and
  // pushes to the topic stop reaching it.
  const closed = new Promise((resolve) => ch.onClose(resolve));
  await h.leave(ch);
  await closed;
  assert.equal(ch.state, 'closed');
  const topic = await h.request(srv.port, 'GET', '/api/topics/room:1');
  assert.equal(topic.json.subscribers, 0);
  const stray = [];
  socket.onMessage((x) => { if (x.topic === 'room:1' && x.event === 'msg') stray.push(x); });
  await h.push(srv.port, { channel: 'room:1', event: 'after-leave', data: 1 });
  got = h.nextEvent(ch2, 'msg');
  await h.push(srv.port, { channel: 'room:2', event: 'marker', data: 2 });
  await got;
  assert.deepEqual(stray, [], 'a push reached a topic the socket had left');
});

test('PushEx-style /push_socket mount with params, and the authToken subprotocol', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, '');
  // pushex.js: Socket("/push_socket", {params: {token}}), join "user:1", on("msg").
  const socket = h.phoenixSocket(srv.port, { ...QUIET, params: { token: 'jwt-abc' }, authToken: 'tok-123' }, '/push_socket');
  t.after(() => socket.disconnect());
  await h.connect(socket);
  assert.equal(socket.conn.protocol, 'phoenix', 'the server must select the "phoenix" subprotocol');
  assert.match(socket.endPointURL(), /\/push_socket\/websocket\?token=jwt-abc&vsn=2\.0\.0$/);
  const ch = socket.channel('user:1');
  await h.join(ch);
  const got = h.nextEvent(ch, 'msg');
  await h.push(srv.port, { channel: ['user:1'], event: 'ev', data: [1, 'two'] });
  assert.deepEqual(await got, { data: [1, 'two'], event: 'ev' });
});

test('the client reconnects and rejoins after the server closes with 1001', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, 'timeouts = { ws_idle_ms = 500 }\n');
  // No heartbeats at first: the server's idle timeout closes the socket.
  const socket = h.phoenixSocket(srv.port, { heartbeatIntervalMs: 600000, reconnectAfterMs: () => 20, rejoinAfterMs: () => 20 });
  t.after(() => socket.disconnect());
  await h.connect(socket);
  const ch = socket.channel('room:r');
  await h.join(ch);
  const firstJoinRef = ch.joinRef();

  const closeEvent = new Promise((resolve) => { const id = socket.onClose((e) => { socket.off([id]); resolve(e); }); });
  const e = await h.within(closeEvent, 10000, 'the server to close the idle socket');
  assert.equal(e.code, 1001, `close code ${e.code}`);
  assert.equal(e.wasClean, true, 'the server must complete the close handshake');
  // Keep the next connection alive with heartbeats well inside ws_idle_ms.
  socket.heartbeatIntervalMs = 100;

  // phoenix.js reconnects on its own and rejoins room:r with a fresh ref.
  const rejoined = await h.nextSocketMessage(socket,
    (m) => m.topic === 'room:r' && m.event === 'phx_reply' && m.payload.status === 'ok', 10000, 'the rejoin reply');
  assert.notEqual(rejoined.join_ref, firstJoinRef);
  assert.equal(socket.isConnected(), true);
  assert.equal(ch.state, 'joined');
  const topic = await h.request(srv.port, 'GET', '/api/topics/room:r');
  assert.equal(topic.json.subscribers, 1);
  const got = h.nextEvent(ch, 'msg');
  await h.push(srv.port, { channel: 'room:r', event: 'back', data: { again: true } });
  assert.deepEqual(await got, { data: { again: true }, event: 'back' });
});
